// The app page's Usage and Runs sections: each fetched after the page, so the page never waits on the
// cluster.  The server renders (and escapes) a section; we parse it inert and move its nodes in.
// A section is <section id="X" data-X="URL"> holding [data-field="X-loading"]; its fragment, #X-body.
"use strict";
(function () {
  const load = (id, what) => {
    const panel = document.getElementById(id);
    if (!panel || !panel.dataset[id]) return;
    const state = panel.querySelector('[data-field="' + id + '-loading"]');
    const say = (text) => { if (state) state.textContent = text; panel.dataset.loaded = "failed"; };
    fetch(panel.dataset[id], { credentials: "same-origin", headers: { accept: "text/html" } })
      .then((r) => {
        if (r.redirected) { say("Signed out: reload the page to sign in again."); return null; }
        if (!r.ok) { say(what + " could not be read (HTTP " + r.status + ")."); return null; }
        return r.text();
      })
      .then((html) => {
        if (html === null) return;
        const body = new DOMParser().parseFromString(html, "text/html").getElementById(id + "-body");
        if (!body) { say(what + " could not be read."); return; }
        if (state) state.remove();
        panel.appendChild(document.adoptNode(body));
        panel.dataset.loaded = "yes";
      })
      .catch(() => say(what + " could not be read: the dashboard did not answer."));
  };
  if (!window.fetch) return;
  load("usage", "Usage");
  load("runs", "Runs");
})();
