// Record from the phone's microphone into the form's audio file field (MediaRecorder).
(function () {
  var button = document.getElementById("record");
  var input = document.getElementById("audio-file");
  if (!button || !input || !window.MediaRecorder || !navigator.mediaDevices ||
      typeof DataTransfer === "undefined") { return; }
  button.parentElement.hidden = false;
  var recorder = null;
  var parts = [];
  button.addEventListener("click", function () {
    if (recorder && recorder.state === "recording") { recorder.stop(); return; }
    navigator.mediaDevices.getUserMedia({ audio: true }).then(function (stream) {
      parts = [];
      recorder = new MediaRecorder(stream);
      recorder.ondataavailable = function (e) { if (e.data.size) { parts.push(e.data); } };
      recorder.onstop = function () {
        stream.getTracks().forEach(function (t) { t.stop(); });
        var type = recorder.mimeType || "audio/webm";
        var ext = type.indexOf("ogg") >= 0 ? "ogg" : (type.indexOf("mp4") >= 0 ? "m4a" : "webm");
        var file = new File(parts, "ghi-am." + ext, { type: type });
        var dt = new DataTransfer();
        dt.items.add(file);
        input.files = dt.files;
        document.getElementById("recorded").hidden = false;
        button.textContent = button.dataset.start;
      };
      recorder.start();
      button.textContent = button.dataset.stop;
    }).catch(function (err) { alert(err); });
  });
})();
