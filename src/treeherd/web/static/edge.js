// Availability charts of the edge page (uPlot): every 2 s the gateways' figures are read from
// /api/v1/availability and appended to a series per service and per backend, for the chosen window
// (1 min, 5 min, 1 h): requests and 5xx answers on the left axis, p50/p99 latency (ms) on the right.
// A table beside each chart shows the latest figures as numbers.
(function () {
  "use strict";
  var root = document.getElementById("charts");
  var status = document.getElementById("avail-status");
  var select = document.getElementById("window");
  var KEEP = 900;  // points per chart: 30 min at one every 2 s
  var cards = new Map();  // key -> {times, series, plot, table}

  function card(key, title) {
    var found = cards.get(key);
    if (found) { return found; }
    var box = document.createElement("article");
    box.className = "chart-card";
    box.dataset.key = key;
    var heading = document.createElement("h3");
    heading.textContent = title;
    var holder = document.createElement("div");
    holder.className = "plot";
    var table = document.createElement("table");
    table.className = "figures";
    box.appendChild(heading);
    box.appendChild(holder);
    box.appendChild(table);
    root.appendChild(box);
    var width = Math.max(260, Math.min(holder.clientWidth || box.clientWidth - 16, 900));
    var data = [[], [], [], [], []];
    var plot = new uPlot({
      width: width, height: 200,
      scales: { x: { time: true }, ms: {} },
      series: [
        {},
        { label: "requests", stroke: "#0b5cad", points: { show: true } },
        { label: "5xx", stroke: "#b3261e", points: { show: true } },
        { label: "p50 ms", stroke: "#1e7a3c", scale: "ms", points: { show: true } },
        { label: "p99 ms", stroke: "#8a5a00", scale: "ms", points: { show: true } }
      ],
      axes: [{}, { label: "requests" }, { scale: "ms", side: 1, label: "ms", grid: { show: false } }]
    }, data, holder);
    found = { data: data, plot: plot, table: table };
    cards.set(key, found);
    return found;
  }

  function cell(row, text, header) {
    var c = document.createElement(header ? "th" : "td");
    c.textContent = text;
    row.appendChild(c);
  }

  function add(key, title, windows, now) {
    var stats = windows[select.value] || {};
    var entry = card(key, title);
    var d = entry.data;
    d[0].push(now);
    d[1].push(stats.requests || 0);
    d[2].push(stats.errors || 0);
    d[3].push(stats.p50_ms == null ? null : stats.p50_ms);
    d[4].push(stats.p99_ms == null ? null : stats.p99_ms);
    if (d[0].length > KEEP) { d.forEach(function (s) { s.shift(); }); }
    entry.plot.setData(d);
    var table = entry.table;
    table.textContent = "";
    var head = document.createElement("tr");
    ["window", "requests", "5xx", "availability", "p50 ms", "p99 ms"].forEach(function (t) { cell(head, t, true); });
    table.appendChild(head);
    ["1m", "5m", "1h"].forEach(function (name) {
      var w = windows[name];
      if (!w) { return; }
      var row = document.createElement("tr");
      row.dataset.window = name;
      cell(row, name, true);
      cell(row, String(w.requests));
      cell(row, String(w.errors));
      cell(row, w.availability == null ? "–" : (100 * w.availability).toFixed(2) + " %");
      cell(row, w.p50_ms == null ? "–" : w.p50_ms.toFixed(1));
      cell(row, w.p99_ms == null ? "–" : w.p99_ms.toFixed(1));
      table.appendChild(row);
    });
  }

  function poll() {
    fetch(root.dataset.source, { headers: { accept: "application/json" } })
      .then(function (answer) {
        if (!answer.ok) { throw new Error("HTTP " + answer.status); }
        return answer.json();
      })
      .then(function (gateways) {
        var now = Date.now() / 1000;
        var services = 0;
        gateways.forEach(function (g) {
          g.services.forEach(function (s) {
            services += 1;
            var where = gateways.length > 1 ? " (" + g.gateway + ")" : "";
            add(g.gateway + " " + s.path, "service " + s.path + where + (s.alert ? " · ALERT: " + s.alert : ""), s.windows, now);
            s.backends.forEach(function (b) {
              add(g.gateway + " " + s.path + " " + b.address,
                  "backend " + (b.hostname ? b.hostname + " " : "") + b.address + " of " + s.path + " · " + b.state, b.windows, now);
            });
          });
        });
        status.textContent = gateways.length === 0 ? "no gateway has reported yet"
          : services + " service(s) from " + gateways.length + " gateway(s), " + new Date().toLocaleTimeString();
      })
      .catch(function (error) { status.textContent = "cannot read the figures: " + error.message; });
  }

  select.addEventListener("change", function () {
    cards.forEach(function (entry) { entry.data.forEach(function (s) { s.length = 0; }); entry.plot.setData(entry.data); });
    poll();
  });
  poll();
  setInterval(poll, 2000);
})();
