// Live rollout on the app page: the server pushes deploy states (Server-Sent Events); we update the
// rows and the summary in place.  Text only (textContent), never HTML.  Without JavaScript the page is
// complete as served; a reload shows the same.
"use strict";
(function () {
  const panel = document.getElementById("rollout");
  if (!panel || !window.EventSource) return;
  const words = (s) => s.replace(/_/g, " ");

  function badge(state, tone) {
    const b = document.createElement("span");
    b.className = "badge " + tone;
    b.textContent = words(state);
    return b;
  }
  function field(root, name) { return root.querySelector('[data-field="' + name + '"]'); }
  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    return td;
  }

  function updateSummary(d) {
    let shown = field(panel, "summary-id");
    if (!shown) {
      // First deploy of the app: build the summary line.
      const p = document.createElement("p");
      for (const name of ["summary-id", "summary-status", "summary-ready", "summary-revision"]) {
        const s = document.createElement("span");
        s.dataset.field = name;
        p.appendChild(s);
        p.appendChild(document.createTextNode(" "));
      }
      const err = document.createElement("p");
      err.className = "error"; err.dataset.field = "summary-error"; err.hidden = true;
      panel.querySelectorAll("p.muted").forEach((e) => e.remove());
      panel.insertBefore(err, panel.children[1] || null);
      panel.insertBefore(p, err);
      shown = field(panel, "summary-id");
    }
    const current = parseInt((shown.textContent || "#0").slice(1), 10) || 0;
    if (d.id < current) return;
    shown.textContent = "#" + d.id;
    const st = field(panel, "summary-status");
    st.replaceChildren(badge(d.status, d.tone));
    field(panel, "summary-ready").textContent = d.ready + " of " + d.desired + " ready";
    const rev = field(panel, "summary-revision");
    if (rev) rev.textContent = d.revision;
    const img = field(panel, "summary-image");
    if (img) img.textContent = d.image;
    const err = field(panel, "summary-error");
    if (err) { err.textContent = d.error; err.hidden = !d.error; }
    if (d.status === "succeeded") {
      // What runs now: the page's header follows the newest successful rollout.
      const image = document.querySelector('[data-field="app-image"]');
      if (image) image.textContent = d.image;
      const revision = document.querySelector('[data-field="app-revision"]');
      if (revision) revision.textContent = d.revision;
    }
  }

  function updateRow(d) {
    const body = document.querySelector("#deploys tbody");
    if (!body) return;
    let row = body.querySelector('tr[data-deploy="' + d.id + '"]');
    if (!row) {
      body.querySelectorAll("tr.empty-row").forEach((e) => e.remove());
      row = document.createElement("tr");
      row.dataset.deploy = String(d.id);
      const status = cell(""); status.dataset.field = "status";
      const ready = cell("", "num"); ready.dataset.field = "ready";
      const image = document.createElement("td");
      const code = document.createElement("code"); code.textContent = d.image; image.appendChild(code);
      row.append(cell(String(d.id)), status, ready, cell(String(d.revision)), image, cell(d.actor),
                 cell(d.created), cell(""));
      body.insertBefore(row, body.firstChild);
    }
    field(row, "status").replaceChildren(badge(d.status, d.tone));
    field(row, "ready").textContent = d.ready + "/" + d.desired;
  }

  const source = new EventSource(panel.dataset.events);
  source.addEventListener("deploy", (e) => {
    const d = JSON.parse(e.data);
    updateRow(d);
    updateSummary(d);
    panel.dataset.live = "on";
  });
  source.addEventListener("signedout", () => {
    source.close();
    panel.dataset.live = "off";
  });
  source.onopen = () => { panel.dataset.live = "on"; };
})();
