// Keeps the live part of a dashboard page fresh: every 2 s, while the tab is visible, it
// fetches the page's partial (the URL in #live's data-poll) and swaps it in. A page whose
// partial says data-final (a finished job) stops polling; a 401 sends the user to log in.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.poll) return;
  var PERIOD_MS = 2000;

  function finished() {
    return live.querySelector("[data-final]") !== null;
  }

  function tick() {
    if (finished()) return;
    if (document.visibilityState !== "visible") {
      setTimeout(tick, PERIOD_MS);
      return;
    }
    fetch(live.dataset.poll, { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {
        if (answer.status === 401) {
          window.location.assign("/ui/login");
          return null;
        }
        return answer.ok ? answer.text() : null;
      })
      .then(function (html) {
        if (html !== null) live.innerHTML = html;
      })
      .catch(function () { /* the farm is restarting: try again next tick */ })
      .then(function () { setTimeout(tick, PERIOD_MS); });
  }

  setTimeout(tick, PERIOD_MS);
})();
