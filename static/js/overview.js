// Draws the overview's spend chart from the JSON the page embeds (#overview-data).
// Clicking a bar opens the ledger filtered to that slice: project, dimension value and day.
(function () {
  "use strict";
  const source = document.getElementById("overview-data");
  const canvas = document.getElementById("spend-chart");
  if (!source || !canvas || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);

  const palette = ["#2f5bd3", "#1f9d8a", "#e0913a", "#9b59b6", "#d64b4b", "#4aa3df", "#7a8b2b", "#c2668f", "#9aa3b5"];
  // Tooltips to four places, as the overview's tables; axis ticks to cents once they reach a dollar.
  const usd = window.costcontrolMoney.usd;
  const tick = (v) => usd(v, Math.abs(v) >= 1 ? 2 : 4);

  function ledgerUrl(datasetIndex, index) {
    const params = new URLSearchParams();
    const day = data.days[index];
    params.set("date_from", day);
    params.set("date_to", day);
    if (data.drill.project) params.set("project", data.drill.project);
    const key = data.datasets[datasetIndex].key;
    if (key && key !== data.drill.other) params.set(data.drill.param, key);
    return data.drill.url + "?" + params.toString();
  }

  new Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: data.datasets.map((ds, i) => ({
        label: ds.label,
        data: ds.data,
        backgroundColor: palette[i % palette.length],
        borderWidth: 0,
        maxBarThickness: 48,
      })),
    },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "nearest", intersect: true },
      scales: {
        x: { stacked: true, grid: { display: false } },
        y: { stacked: true, beginAtZero: true, ticks: { callback: tick } },
      },
      plugins: {
        legend: { position: "bottom", labels: { boxWidth: 12 } },
        tooltip: { callbacks: { label: (ctx) => ctx.dataset.label + ": " + usd(ctx.parsed.y, 4) } },
      },
      onHover: (event, elements) => {
        event.native.target.style.cursor = elements.length ? "pointer" : "default";
      },
      onClick: (event, elements) => {
        if (!elements.length) return;
        window.location.href = ledgerUrl(elements[0].datasetIndex, elements[0].index);
      },
    },
  });
})();
