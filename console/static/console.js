// The fleet table refreshes itself: fetch the rows fragment every data-refresh seconds and swap
// it in. A refresh waits while someone is typing an acknowledgement note, so no input is lost.
// A 401 means the session ended: reload, which lands on the login page.
(function () {
  "use strict";
  var box = document.getElementById("fleet");
  if (!box) { return; }
  var every = Math.max(1, parseFloat(box.getAttribute("data-refresh") || "5")) * 1000;
  var src = box.getAttribute("data-src");
  var updated = document.getElementById("updated");
  function busy() {
    var a = document.activeElement;
    if (a && box.contains(a) && (a.tagName === "INPUT" || a.tagName === "BUTTON")) { return true; }
    var notes = box.querySelectorAll("input[name=note]");
    for (var i = 0; i < notes.length; i++) { if (notes[i].value) { return true; } }
    return false;
  }
  function tick() {
    if (busy()) { setTimeout(tick, every); return; }
    fetch(src, {credentials: "same-origin", headers: {"Accept": "text/html"}, cache: "no-store"})
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); throw new Error("logged out"); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        if (!busy()) {
          box.innerHTML = html;
          if (updated) { updated.textContent = "updated " + new Date().toISOString().slice(0, 19).replace("T", " ") + " UTC"; }
          box.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function (e) { if (updated) { updated.textContent = "refresh failed (" + e.message + "), retrying"; } })
      .then(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
