// The one money formatter of the browser side, the twin of the `usd` template filter
// (apps/dashboard/templatetags/dashboard.py): a fixed number of decimals, thousands separators, and the
// sign before the dollar ("-$0.0062"). Charts' ticks and tooltips use it, so a bar reads as the table does.
(function () {
  "use strict";
  function usd(value, places) {
    var digits = places === undefined ? 6 : places;
    var amount = Number(value) || 0;
    var text = Math.abs(amount).toLocaleString("en-US", {
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    });
    // A negative amount that rounds to zero reads "$0.00", as the filter's does.
    var negative = amount < 0 && /[1-9]/.test(text);
    return (negative ? "-$" : "$") + text;
  }
  var root = typeof window !== "undefined" ? window : globalThis;
  root.costcontrolMoney = { usd: usd };
})();
