// The app page's Usage section: fetched after the page, so the page never waits on the cluster's
// Metrics API.  The server renders (and escapes) the section; we parse it inert and move its nodes in.
"use strict";
(function () {
  const panel = document.getElementById("usage");
  if (!panel || !panel.dataset.usage || !window.fetch) return;
  const state = panel.querySelector('[data-field="usage-loading"]');
  const say = (text) => { if (state) state.textContent = text; panel.dataset.loaded = "failed"; };
  fetch(panel.dataset.usage, { credentials: "same-origin", headers: { accept: "text/html" } })
    .then((r) => {
      if (r.redirected) { say("Signed out: reload the page to sign in again."); return null; }
      if (!r.ok) { say("Usage could not be read (HTTP " + r.status + ")."); return null; }
      return r.text();
    })
    .then((html) => {
      if (html === null) return;
      const body = new DOMParser().parseFromString(html, "text/html").getElementById("usage-body");
      if (!body) { say("Usage could not be read."); return; }
      if (state) state.remove();
      panel.appendChild(document.adoptNode(body));
      panel.dataset.loaded = "yes";
    })
    .catch(() => say("Usage could not be read: the dashboard did not answer."));
})();
