// The console's live part: one Server-Sent Events connection to the manager's event stream per page.
// A committed change refreshes, through htmx, what shows it: the tree level holding a node that changed,
// and every element that listens for `th-change` (a page's live region). The events page lists them.
(function () {
  "use strict";
  var state = document.getElementById("stream-state");
  var pendingParents = new Set();
  var timer = null;

  function show(text) { if (state) { state.textContent = text; } }

  function nameOf(obj) {
    return obj.path || obj.name || obj.hostname || obj.id || "";
  }

  function parentOf(path) {
    var at = path.lastIndexOf(".");
    return at < 0 ? "" : path.slice(0, at);
  }

  function flush() {
    timer = null;
    pendingParents.forEach(function (parent) {
      document.querySelectorAll("ul.level").forEach(function (list) {
        if (list.getAttribute("data-children-of") === parent) { htmx.trigger(list, "refresh"); }
      });
    });
    pendingParents.clear();
    document.body.dispatchEvent(new CustomEvent("th-change"));
  }

  function changed(event) {
    if (event.object.kind === "node") {
      pendingParents.add(parentOf(event.object.path));
    }
    if (timer === null) { timer = setTimeout(flush, 200); }
    if (window.treeherdEvents) { window.treeherdEvents(event); }
  }

  function connect() {
    if (typeof EventSource === "undefined") { show("no live updates"); return; }
    var source = new EventSource("/api/v1/events?keepalive=10");
    source.onopen = function () { show("live"); };
    source.onerror = function () { show("reconnecting…"); };
    ["created", "updated", "deleted"].forEach(function (type) {
      source.addEventListener(type, function (message) {
        try { changed(JSON.parse(message.data)); } catch (error) { show("bad event: " + error); }
      });
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // The events page: newest first, filtered by kind and by a substring of the object's name.
  var table = document.querySelector("#events tbody");
  if (table) {
    var kind = document.getElementById("event-kind");
    var text = document.getElementById("event-path");
    var shown = function (row) {
      var k = kind.value, t = text.value.trim().toLowerCase();
      return (!k || row.dataset.kind === k) && (!t || row.dataset.name.toLowerCase().indexOf(t) >= 0);
    };
    var refilter = function () {
      table.querySelectorAll("tr").forEach(function (row) { row.hidden = !shown(row); });
    };
    kind.addEventListener("change", refilter);
    text.addEventListener("input", refilter);
    window.treeherdEvents = function (event) {
      var row = document.createElement("tr");
      var obj = event.object;
      var summary = obj.kind === "task" ? (obj.status && obj.status.state) + " " + (obj.status && obj.status.message || "")
        : obj.kind === "machine" ? (obj.availability + (obj.agent ? " · agent " + obj.agent.state : ""))
        : obj.kind === "service" ? "replicas " + obj.replicas : "version " + obj.version;
      [event.revision, event.type, obj.kind, nameOf(obj), summary].forEach(function (value) {
        var cell = document.createElement("td");
        cell.textContent = String(value);
        row.appendChild(cell);
      });
      row.dataset.kind = obj.kind;
      row.dataset.name = nameOf(obj);
      row.hidden = !shown(row);
      table.insertBefore(row, table.firstChild);
      while (table.children.length > 500) { table.removeChild(table.lastChild); }
    };
  }

  // A refreshed tree level comes back collapsed: the levels that were open below it are opened again
  // (each loads its children anew, and the levels open below those follow when they arrive).
  var reopen = new Set();
  document.body.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (target && target.matches && target.matches("ul.level")) {
      target.querySelectorAll("details[open] > ul.level").forEach(function (list) {
        reopen.add(list.getAttribute("data-children-of"));
      });
    }
  });
  document.body.addEventListener("htmx:afterSettle", function () {
    if (reopen.size === 0) { return; }
    document.querySelectorAll("details:not([open]) > ul.level").forEach(function (list) {
      var path = list.getAttribute("data-children-of");
      if (reopen.has(path)) {
        reopen.delete(path);
        list.parentElement.open = true;
      }
    });
  });

  connect();
})();
