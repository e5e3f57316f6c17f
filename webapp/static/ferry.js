// Live run log and host progress on the ticket page (Server-Sent Events; no inline scripts under our CSP).
(function () {
  "use strict";
  var log = document.getElementById("run-log");
  if (!log || !log.dataset.events) { return; }
  var table = document.querySelector("#progress-table tbody");
  var badge = { ok: "success", changed: "warning", failed: "danger", unreachable: "danger", running: "info", skipped: "secondary" };
  var source = new EventSource(log.dataset.events);
  var first = true;

  source.addEventListener("line", function (e) {
    var entry = JSON.parse(e.data);
    if (first) { log.textContent = ""; first = false; }
    var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.appendChild(document.createTextNode(entry.line + "\n"));
    if (atBottom) { log.scrollTop = log.scrollHeight; }
  });

  source.addEventListener("progress", function (e) {
    var hosts = JSON.parse(e.data);
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
          span.textContent = text;
          td.appendChild(span);
        } else { td.textContent = text; }
        row.appendChild(td);
      });
      table.appendChild(row);
    });
  });

  source.addEventListener("end", function (e) {
    source.close();
    var state = document.getElementById("run-state");
    if (state) { state.textContent = JSON.parse(e.data).status; }
    window.setTimeout(function () { window.location.reload(); }, 800);
  });
}());
