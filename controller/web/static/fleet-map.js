// The fleet map on a tile server's map, when the config names one (web.map_tiles).
// Leaflet is served from /static/vendor/leaflet (vendored, never fetched from elsewhere);
// the clusters are the plain map's dots (their place, state and words come from the
// page). Once the tiled map is drawn, the plain map is hidden; without this script, or
// without the tile server, the plain map is what shows.
(function () {
  "use strict";
  var holder = document.getElementById("tile-map");
  if (!holder || typeof L === "undefined") { return; }
  var colours = { online: "#1f8a4c", offline: "#c0392b", unknown: "#8a8f98" };
  var map = L.map(holder);
  L.tileLayer(holder.dataset.tiles, {
    attribution: holder.dataset.attribution || "", maxZoom: 19,
  }).addTo(map);
  var dots = Array.prototype.slice.call(document.querySelectorAll("#map circle.dot"));
  var place = function (dot) {
    return [parseFloat(dot.dataset.lat), parseFloat(dot.dataset.lon)];
  };
  map.fitBounds(dots.map(place), { padding: [30, 30], maxZoom: 14 });
  dots.forEach(function (dot) {
    var at = place(dot);
    var colour = colours[dot.dataset.state] || colours.unknown;
    var marker = L.circleMarker(at, {
      radius: 7, color: "#ffffff", weight: 1.5, fillColor: colour, fillOpacity: 1,
      className: "cluster-marker " + dot.dataset.state,
    }).addTo(map);
    var link = document.createElement("a");
    link.href = "/fleet/" + encodeURIComponent(dot.dataset.cluster);
    link.textContent = dot.dataset.name + " (" + dot.dataset.cluster + ")";
    var popup = document.createElement("div");
    popup.appendChild(link);
    popup.appendChild(document.createTextNode(": " + dot.dataset.stateName));
    marker.bindPopup(popup);
    marker.getElement().setAttribute("data-cluster", dot.dataset.cluster);
  });
  document.getElementById("plain-map").hidden = true;
  holder.dataset.ready = "yes";
})();
