// Baomi console: the live events view (SSE) and confirmation of dangerous forms.
// No inline script anywhere (the CSP forbids it); event data is only ever set as
// textContent, never parsed as HTML.
"use strict";

(function () {
  const MAX_ROWS = 500; // rows kept in the live table

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function startLive() {
    const status = document.getElementById("live-status");
    const body = document.getElementById("events-body");
    const labels = document.getElementById("labels");
    if (!status || !body || !labels || !window.EventSource) return;
    const source = new EventSource(status.dataset.stream);
    source.onmessage = function (message) {
      const ev = JSON.parse(message.data);
      const empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      const tr = document.createElement("tr");
      const severity = String(ev.severity).replace(/[^a-z]/g, "");
      tr.className = "new sev-" + severity;
      cell(tr, ev.time, "nowrap");
      cell(tr, ev.host);
      const seq = cell(tr, "");
      const a = document.createElement("a");
      a.href = "/events/" + encodeURIComponent(ev.host) + "/" + Number(ev.seq);
      a.textContent = String(ev.seq);
      seq.appendChild(a);
      const sev = cell(tr, "");
      const badge = document.createElement("span");
      badge.className = "sev sev-" + severity;
      badge.textContent = ev.severity_label;
      sev.appendChild(badge);
      cell(tr, ev.kind_label);
      cell(tr, ev.user);
      cell(tr, ev.summary, "summary");
      body.insertBefore(tr, body.firstChild);
      while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
    };
    source.addEventListener("reload", function () { window.location.reload(); });
    source.addEventListener("ended", function () {
      source.close();
      status.textContent = labels.dataset.liveLost;
      status.className = "live lost";
    });
    source.onerror = function () { status.className = "live lost"; };
    source.onopen = function () { status.className = "live"; };
  }

  function confirmForms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.dataset.confirm)) e.preventDefault();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    startLive();
    confirmForms();
  });
})();
