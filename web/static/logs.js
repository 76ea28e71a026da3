// Follow an app's logs: new lines arrive over Server-Sent Events and are appended as text.
"use strict";
(function () {
  const box = document.getElementById("logs");
  const state = document.getElementById("follow-state");
  if (!box || !box.dataset.follow || !window.EventSource) return;
  const source = new EventSource(box.dataset.follow);
  const say = (text) => { if (state) state.textContent = text; };
  source.onopen = () => say("following");
  source.addEventListener("line", (e) => {
    const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    box.appendChild(document.createTextNode(JSON.parse(e.data) + "\n"));
    if (atEnd) box.scrollTop = box.scrollHeight;
  });
  source.addEventListener("problem", (e) => say("stopped: " + JSON.parse(e.data)));
  source.addEventListener("end", () => { source.close(); say("the pods' log streams ended"); });
})();
