// Operator network page: redraw the live fragment every 2 s (no reload) and confirm twin fault injection.
(function () {
  "use strict";
  var box = document.getElementById("network-live");
  if (!box) return;
  var busy = false;
  function refresh() {
    if (busy || document.hidden || box.contains(document.activeElement) && document.activeElement.tagName === "BUTTON") return;
    busy = true;
    fetch(box.dataset.liveUrl, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
      .then(function (html) { box.innerHTML = html; })
      .catch(function (err) { box.setAttribute("data-error", String(err)); })
      .finally(function () { busy = false; });
  }
  setInterval(refresh, 2000);
  box.addEventListener("submit", function (event) {
    var button = event.submitter;
    if (button && button.classList.contains("danger") && !window.confirm(button.textContent.trim() + "?")) {
      event.preventDefault();
    }
  });
})();
