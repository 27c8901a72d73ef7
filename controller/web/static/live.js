// Phát trực tiếp: the microphone (getUserMedia, MediaRecorder) sent a quarter of a
// second at a time to POST /api/v1/live/{id}/audio?seq=N, until Stop or the page closes.
(function () {
  var form = document.getElementById("live-form");
  var csrf = form ? form.dataset.csrf : "";
  function post(url, body, type) {
    var headers = { "X-CSRF-Token": csrf };
    if (type) { headers["Content-Type"] = type; }
    return fetch(url, { method: "POST", headers: headers, body: body,
                        credentials: "same-origin", keepalive: !body || body.size < 60000 });
  }
  document.querySelectorAll("button.cut").forEach(function (b) {
    b.addEventListener("click", function () {
      var token = document.querySelector("[data-csrf]");
      csrf = token ? token.dataset.csrf : csrf;
      post("/api/v1/live/" + b.dataset.session + "/stop").then(function () {
        location.reload();
      });
    });
  });
  if (!form) { return; }
  var button = document.getElementById("live-button");
  var state = document.getElementById("live-state");
  var session = null, recorder = null, stream = null, seq = 0;
  function end(note) {
    if (recorder && recorder.state !== "inactive") { recorder.stop(); }
    if (stream) { stream.getTracks().forEach(function (t) { t.stop(); }); }
    recorder = null; stream = null;
    button.textContent = form.dataset.start;
    state.textContent = note || form.dataset.ended;
  }
  function stop() {
    var id = session;
    session = null;
    if (recorder && recorder.state !== "inactive") { recorder.requestData(); }
    end();
    if (id) { post("/api/v1/live/" + id + "/stop"); }
  }
  button.addEventListener("click", function () {
    if (session) { stop(); return; }
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      state.textContent = form.dataset.noMic; return;
    }
    var targets = Array.prototype.map.call(
      form.querySelectorAll("input[name=targets]:checked"), function (e) { return e.value; });
    var level = form.querySelector("input[name=level]:checked").value;
    navigator.mediaDevices.getUserMedia({ audio: true }).then(function (s) {
      stream = s;
      return post("/api/v1/live", JSON.stringify({ targets: targets, level: level }),
                  "application/json");
    }).then(function (answer) {
      if (!answer.ok) {
        return answer.json().then(function (e) { throw new Error(e.detail || answer.status); });
      }
      return answer.json();
    }).then(function (started) {
      session = started.session_id;
      seq = 0;
      recorder = new MediaRecorder(stream);
      recorder.ondataavailable = function (e) {
        if (!e.data.size || !session) { return; }
        post("/api/v1/live/" + session + "/audio?seq=" + (seq++), e.data,
             recorder ? recorder.mimeType : "audio/webm");
      };
      recorder.start(250);
      button.textContent = form.dataset.stop;
      state.textContent = form.dataset.speaking.replace("{n}", started.clusters.length);
    }).catch(function (err) {
      end(String(err.message || err));
      session = null;
    });
  });
  window.addEventListener("pagehide", function () { if (session) { stop(); } });
})();
