// trainyard dashboard: live logs over Server-Sent Events, and the CSRF header on htmx requests.
// No inline scripts (the pages' Content-Security-Policy forbids them); no token ever in a URL:
// EventSource and htmx send the session cookie, which scripts cannot read (HttpOnly).
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

// One EventSource per <pre data-log-src>: text is appended as it reaches the store; the server
// ends the stream with an "end" event once the job has ended and every byte is in.
function followLog(pre) {
  if (pre.dataset.following) return;
  pre.dataset.following = "1";
  const [rank, stream] = pre.id.replace(/^log-/, "").split("-");
  const label = document.getElementById(`log-state-${rank}-${stream}`);
  const say = (text) => { if (label) label.textContent = text; };
  const source = new EventSource(pre.dataset.logSrc);
  let attempt = null;
  const append = (text) => {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(document.createTextNode(text));
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  };
  source.addEventListener("attempt", (event) => {
    const next = JSON.parse(event.data).attempt;
    if (attempt !== null && next !== attempt) append(`\n--- attempt ${next} ---\n`);
    attempt = next;
    pre.dataset.attempt = String(next);
    say(`following attempt ${next}`);
  });
  source.addEventListener("log", (event) => append(JSON.parse(event.data).text));
  source.addEventListener("end", () => {
    source.close();
    pre.dataset.ended = "1";
    say(attempt === null ? "no output (no attempt ran)" : "complete");
  });
  source.onerror = () => { if (!pre.dataset.ended) say("reconnecting…"); };
}

function followLogs(root) {
  root.querySelectorAll("pre[data-log-src]").forEach(followLog);
}

document.addEventListener("DOMContentLoaded", () => followLogs(document));
document.addEventListener("htmx:configRequest", (event) => {
  event.detail.headers["X-CSRF-Token"] = csrfToken();
});
