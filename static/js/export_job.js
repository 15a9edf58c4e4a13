// The export job page: polls the job's status until it is done or failed.
(function () {
  "use strict";
  var box = document.getElementById("export-job");
  if (!box || box.dataset.finished === "true") {
    return;
  }
  var labels = {pending: "Waiting for a worker", running: "Running", done: "Done", failed: "Failed"};

  async function poll() {
    var response = await fetch(box.dataset.statusUrl, {headers: {Accept: "application/json"}});
    if (!response.ok) { setTimeout(poll, 5000); return; }
    var state = await response.json();
    document.getElementById("job-status").textContent = labels[state.status] || state.status;
    document.getElementById("job-bar").style.width = state.percent + "%";
    box.querySelector(".bar").setAttribute("aria-valuenow", state.percent);
    document.getElementById("job-rows").textContent =
      state.rows_written + " rows written" + (state.rows_total ? " of about " + state.rows_total : "");
    if (state.status === "done") {
      var link = document.getElementById("job-download");
      link.querySelector("a").href = state.download_url;
      link.hidden = false;
    } else if (state.status === "failed") {
      var error = document.getElementById("job-error");
      error.textContent = state.error;
      error.hidden = false;
      box.querySelector(".bar").classList.add("over");
    } else {
      setTimeout(poll, 1000);
    }
  }
  setTimeout(poll, 1000);
})();
