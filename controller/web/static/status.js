// Follow an announcement: poll its JSON every second and update the table in place.
(function () {
  var table = document.getElementById("clusters");
  if (!table) { return; }
  var labels = JSON.parse(document.getElementById("labels").textContent);
  var id = table.dataset.id;
  var lang = document.documentElement.lang === "en" ? "en" : "vi";
  var quietAfterDone = 5;
  function render(data) {
    data.clusters.forEach(function (c) {
      var row = table.querySelector('tr[data-cluster="' + c.cluster + '"]');
      if (!row) { return; }
      var cell = row.querySelector(".status");
      if (cell.dataset.status !== c.status) {
        cell.dataset.status = c.status;
        cell.innerHTML = "";
        var span = document.createElement("span");
        span.className = "st st-" + c.status;
        span.textContent = labels[c.status] || c.status;
        cell.appendChild(span);
      }
      var reason = row.querySelector(".reason");
      reason.textContent = c.reason_text || "";
      // The English the cluster wrote, for the technician, where the page translated it.
      reason.title = c.reason && c.reason_text !== c.reason ? c.reason : "";
    });
    var summary = document.getElementById("summary");
    summary.innerHTML = "";
    Object.keys(data.counts).forEach(function (k) {
      var span = document.createElement("span");
      span.className = "st st-" + k;
      span.textContent = (labels[k] || k) + ": " + data.counts[k];
      summary.appendChild(span);
      summary.appendChild(document.createTextNode(" "));
    });
    summary.dataset.done = data.done ? "true" : "false";
    document.getElementById("all-played").hidden = !data.all_played;
  }
  function poll() {
    fetch("/api/v1/announcements/" + encodeURIComponent(id) + "?lang=" + lang,
          { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (data) { render(data); if (data.done) { quietAfterDone -= 1; } }
        if (quietAfterDone > 0) { setTimeout(poll, 1000); }
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 500);
})();
