// Live run log and host progress on the ticket page (no inline scripts under our CSP).
// Follows the run over Server-Sent Events (from the stream process when FERRY_STREAM_URL names it); when the
// server has no stream slot free it sends a `poll` event and the page polls the JSON log endpoint once a second
// instead, from the number of lines it already shows.
(function () {
  "use strict";
  var log = document.getElementById("run-log");
  if (!log || !log.dataset.events) { return; }
  var table = document.querySelector("#progress-table tbody");
  var badge = { ok: "success", changed: "warning", failed: "danger", unreachable: "danger", running: "info", skipped: "secondary" };
  // The page's language: host statuses as the server labels them (the status token stays in data-status).
  var labels = (table && JSON.parse(table.closest("table").dataset.labels || "{}")) || {};
  var shown = 0;  // log lines on the page: the offset polling continues from
  var POLL_MS = 1000;

  function addLine(entry) {
    if (shown === 0) { log.textContent = ""; }
    var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.appendChild(document.createTextNode(entry.line + "\n"));
    shown += 1;
    if (atBottom) { log.scrollTop = log.scrollHeight; }
  }

  function showProgress(hosts) {
    var names = Object.keys(hosts).sort();
    if (!table || names.length === 0) { return; }
    table.textContent = "";
    names.forEach(function (name) {
      var row = document.createElement("tr");
      row.dataset.host = name;
      var cells = [name, hosts[name].status, hosts[name].task || ""];
      cells.forEach(function (text, i) {
        var td = document.createElement("td");
        if (i === 1) {
          var span = document.createElement("span");
          span.className = "badge host-progress text-bg-" + (badge[text] || "secondary");
          span.dataset.status = text;
          span.textContent = labels[text] || text;
          td.appendChild(span);
        } else { td.textContent = text; }
        row.appendChild(td);
      });
      table.appendChild(row);
    });
  }

  function finish(status) {
    var state = document.getElementById("run-state");
    if (state) { state.textContent = status; }
    window.setTimeout(function () { window.location.reload(); }, 800);
  }

  function poll(url) {
    fetch(url + "?offset=" + shown, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        data.lines.forEach(addLine);
        showProgress(data.progress);
        if (data.active) { window.setTimeout(function () { poll(url); }, POLL_MS); } else { finish(data.status); }
      })
      .catch(function () { window.setTimeout(function () { poll(url); }, 3 * POLL_MS); });
  }

  // The stream may come from the stream process on another origin (FERRY_STREAM_URL): send the session cookie.
  var source = new EventSource(log.dataset.events, { withCredentials: true });
  source.addEventListener("line", function (e) { addLine(JSON.parse(e.data)); });
  source.addEventListener("progress", function (e) { showProgress(JSON.parse(e.data)); });
  source.addEventListener("poll", function (e) {
    source.close();
    poll(JSON.parse(e.data).url);
  });
  source.addEventListener("end", function (e) {
    source.close();
    finish(JSON.parse(e.data).status);
  });
  source.addEventListener("error", function () {
    // EventSource retries network errors by itself; it gives up for good only on an answer that is not a
    // stream (e.g. an error page): follow the run by polling then.
    // Poll the page's own origin (the web process), whichever origin streamed.
    if (source.readyState === EventSource.CLOSED) {
      poll(new URL(log.dataset.events, window.location.href).pathname.replace(/\/events$/, "/log"));
    }
  });
}());
