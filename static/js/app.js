// Behaviour the pages declare with data- attributes, so no page needs an inline script, handler or
// style attribute: the Content-Security-Policy allows scripts and styles from our own files only.
(function () {
  "use strict";

  // <span data-width="42"> inside a .bar: the filled share, in percent (0-100).
  function sizeBars(root) {
    root.querySelectorAll("[data-width]").forEach(function (el) {
      var value = Math.max(0, Math.min(100, parseFloat(el.dataset.width) || 0));
      el.style.width = value + "%";
    });
  }

  // <form data-confirm="Delete this rule?">: ask before submitting.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  // <input data-select-on-click>: a secret shown once is selected whole for copying.
  document.addEventListener("click", function (event) {
    var el = event.target;
    if (el instanceof HTMLInputElement && el.hasAttribute("data-select-on-click")) {
      el.select();
    }
  });

  // The top navigation's "Menu" button on narrow screens: shows or hides the links.
  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest(".nav-toggle") : null;
    if (!button) {
      return;
    }
    var nav = button.closest(".topnav");
    var open = nav.classList.toggle("open");
    button.setAttribute("aria-expanded", open ? "true" : "false");
  });

  // <input data-show-when="scope=team,project">: its .field shows only while the form's control of
  // that name has one of those values (a budget's scope reference, a cascade's settings). Hidden
  // fields are still submitted; the server decides what they mean.
  function showWhen(root) {
    root.querySelectorAll("[data-show-when]").forEach(function (input) {
      var parts = input.dataset.showWhen.split("=");
      var control = input.form && input.form.elements.namedItem(parts[0]);
      var field = input.closest(".field");
      if (!control || !field) {
        return;
      }
      field.hidden = parts[1].split(",").indexOf(control.value) === -1;
    });
  }
  document.addEventListener("change", function (event) {
    if (event.target instanceof Element && event.target.form) {
      showWhen(event.target.form);
    }
  });

  window.costcontrol = {sizeBars: sizeBars};
  document.addEventListener("DOMContentLoaded", function () { sizeBars(document); showWhen(document); });
})();
