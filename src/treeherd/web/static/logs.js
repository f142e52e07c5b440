// A task's live logs on its page: the API's log stream (`follow=true`) read as it arrives and appended
// to the page, the last 2,000 lines kept; the operator can pause and resume following.
(function () {
  "use strict";
  var out = document.getElementById("logs");
  var status = document.getElementById("logs-status");
  var toggle = document.getElementById("logs-toggle");
  if (!out) { return; }
  var KEEP = 2000;
  var controller = null;
  var lines = [];
  var partial = "";

  function show(text) { status.textContent = text; }

  function append(text) {
    var parts = (partial + text).split("\n");
    partial = parts.pop();
    Array.prototype.push.apply(lines, parts);
    if (lines.length > KEEP) { lines.splice(0, lines.length - KEEP); }
    var atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.textContent = lines.join("\n") + (partial ? "\n" + partial : "");
    if (atEnd) { out.scrollTop = out.scrollHeight; }
  }

  function follow() {
    controller = new AbortController();
    lines = [];
    partial = "";
    show("following");
    toggle.textContent = "pause";
    fetch(out.dataset.source, { signal: controller.signal })
      .then(function (answer) {
        if (!answer.ok) {
          return answer.json().then(function (body) { throw new Error(body.detail || "HTTP " + answer.status); },
                                    function () { throw new Error("HTTP " + answer.status); });
        }
        var reader = answer.body.getReader();
        var decoder = new TextDecoder();
        function next() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { show("the task's output ended"); controller = null; toggle.textContent = "follow again"; return; }
            append(decoder.decode(chunk.value, { stream: true }));
            return next();
          });
        }
        return next();
      })
      .catch(function (error) {
        if (error.name === "AbortError") { return; }
        show("no logs: " + error.message);
        controller = null;
        toggle.textContent = "follow again";
      });
  }

  toggle.addEventListener("click", function () {
    if (controller) {
      controller.abort();
      controller = null;
      show("paused");
      toggle.textContent = "follow";
    } else {
      follow();
    }
  });
  window.addEventListener("pagehide", function () { if (controller) { controller.abort(); } });
  follow();
})();
