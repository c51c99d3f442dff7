// The portal's only script: live regions refreshed in place, confirmations for actions, copy buttons.
// No library, no CDN. Pages work without it (plain links and forms); it adds liveness and safety nets.
(function () {
  "use strict";
  var status = function (text) {
    var el = document.getElementById("live-status");
    if (el) { el.textContent = text; el.classList.toggle("shown", !!text); }
  };

  // <div data-live="/url" data-every="3">: the fragment at /url replaces the element's content every N seconds.
  // Errors are said in words (the API's {"error": {"message"}} when there is one), never silently dropped.
  function refresh(el) {
    if (document.hidden) return;
    fetch(el.dataset.live, {credentials: "same-origin", headers: {"X-Requested-With": "live"}})
      .then(function (r) {
        return r.text().then(function (body) {
          if (r.ok) { el.innerHTML = body; el.removeAttribute("aria-busy"); status(""); return; }
          var why = r.status + " " + r.statusText;
          try { why = JSON.parse(body).error.message || why; } catch (e) { /* not JSON */ }
          status("Could not refresh " + (el.dataset.liveName || "this view") + ": " + why);
        });
      })
      .catch(function (e) { status("Could not reach the portal to refresh: " + e.message); });
  }
  function startLive() {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var every = Math.max(1, parseFloat(el.dataset.every || "3")) * 1000;
      if (el.querySelector("[aria-busy]")) refresh(el);  // a placeholder: fill it now
      setInterval(function () { refresh(el); }, every);
    });
  }

  // <form data-confirm="Revoke X?">: a modal dialog asks first (keyboard: Tab between buttons, Esc cancels).
  function startConfirm() {
    var dialog = document.getElementById("confirm-dialog");
    if (!dialog || !dialog.showModal) return;
    document.addEventListener("submit", function (ev) {
      var form = ev.target;
      if (!form.dataset || !form.dataset.confirm || form.dataset.confirmed) return;
      ev.preventDefault();
      document.getElementById("confirm-text").textContent = form.dataset.confirm;
      dialog.returnValue = "";
      dialog.onclose = function () {
        if (dialog.returnValue !== "ok") return;
        form.dataset.confirmed = "1";
        var submitter = ev.submitter;
        if (submitter && submitter.name) {  // keep the pressed button's name=value in the post
          var hidden = document.createElement("input");
          hidden.type = "hidden"; hidden.name = submitter.name; hidden.value = submitter.value;
          form.appendChild(hidden);
        }
        form.submit();
      };
      dialog.showModal();
      document.getElementById("confirm-ok").focus();
    });
  }

  // <button data-copy="#id">: copies the text of #id (curl panels, fresh secrets).
  function startCopy() {
    document.addEventListener("click", function (ev) {
      var button = ev.target.closest && ev.target.closest("[data-copy]");
      if (!button) return;
      var source = document.querySelector(button.dataset.copy);
      if (!source || !navigator.clipboard) { status("Copying needs a secure page: select the text instead."); return; }
      navigator.clipboard.writeText(source.textContent).then(
        function () { status("Copied."); }, function () { status("Could not copy: select the text instead."); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { startLive(); startConfirm(); startCopy(); });
})();
