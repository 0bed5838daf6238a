// circuitbook pages: a little progressive enhancement. Everything works without JS except the live
// filter of the static export; text from the book is only ever set through textContent.
(function () {
  "use strict";
  var isStatic = document.body.getAttribute("data-static") === "true";

  // Label / notes / status editor: save through the JSON API without leaving the page.
  var form = document.getElementById("label-form");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var saved = document.getElementById("saved");
      var body = {
        label: document.getElementById("label").value,
        notes: document.getElementById("notes").value,
        status: document.getElementById("status").value
      };
      saved.textContent = "saving…";
      fetch(form.getAttribute("data-api"), {
        method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)
      }).then(function (r) {
        return r.json().then(function (j) { return {ok: r.ok, j: j}; });
      }).then(function (res) {
        if (!res.ok) { saved.textContent = "error: " + (res.j.detail || "not saved"); return; }
        saved.textContent = "saved";
        document.getElementById("title-label").textContent = res.j.label;
        document.title = document.title.replace(/^(\S+).*? · circuitbook$/, "$1 " + res.j.label + " · circuitbook");
      }).catch(function (e) { saved.textContent = "error: " + e; });
    });
  }

  // Static export: filter the index table in the page (the server filters on submit instead).
  var filters = document.getElementById("filters");
  if (filters && isStatic) {
    var val = function (id) { var el = document.getElementById(id); return el ? el.value : ""; };
    var apply = function () {
      var words = val("q").toLowerCase().split(/\s+/).filter(Boolean);
      var kind = val("f-kind"), layer = val("f-layer"), type = val("f-type"), cls = val("f-cls");
      var label = val("f-label") || "any";
      var rows = document.querySelectorAll("#units tbody tr"), shown = 0;
      for (var i = 0; i < rows.length; i++) {
        var d = rows[i].dataset, ok = true;
        if (kind && d.kind !== kind) ok = false;
        if (ok && layer && d.layer !== layer) ok = false;
        if (ok && type && d.type !== type) ok = false;
        if (ok && cls && d.cls !== cls) ok = false;
        if (ok && label === "labelled" && d.labelled !== "yes") ok = false;
        if (ok && label === "unlabelled" && d.labelled !== "no") ok = false;
        if (ok && ["any", "labelled", "unlabelled"].indexOf(label) < 0 && d.status !== label) ok = false;
        for (var w = 0; ok && w < words.length; w++) if (d.text.indexOf(words[w]) < 0) ok = false;
        rows[i].style.display = ok ? "" : "none";
        if (ok) shown++;
      }
      document.getElementById("shown-count").textContent = shown;
    };
    filters.addEventListener("submit", function (ev) { ev.preventDefault(); apply(); });
    filters.addEventListener("input", apply);
    filters.addEventListener("change", apply);
  }
})();

// Prompt page: right-click a graph node to ablate it (re-runs the model with that node knocked out).
(function () {
  "use strict";
  var graph = document.getElementById("graph");
  if (!graph) return;
  graph.addEventListener("contextmenu", function (ev) {
    var node = ev.target.closest(".cb-node");
    if (!node || node.classList.contains("cb-logit")) return;
    ev.preventDefault();
    window.location.href = graph.getAttribute("data-ablate-base") + "&ablate=" + encodeURIComponent(node.getAttribute("data-id"));
  });
})();
