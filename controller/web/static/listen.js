// "Nghe thử": the form's text spoken as the clusters would hear it, played here; nothing
// is sent. Without JavaScript the button opens the same audio in a new tab.
(function () {
  var button = document.getElementById("listen");
  var form = document.getElementById("send-form");
  var player = document.getElementById("listen-audio");
  var note = document.getElementById("listen-note");
  if (!button || !form || !player || !window.fetch || !window.FormData) { return; }
  var help = note.textContent;

  // Why it was refused: the service's words (plain text), or those of the page the
  // sign-in and form checks answer with.
  function refusal(answer, type) {
    return answer.text().then(function (body) {
      if (type.indexOf("text/html") === 0) {
        var page = new DOMParser().parseFromString(body, "text/html");
        var said = page.querySelector("#error") || page.querySelector("main");
        body = said ? said.textContent : "";
      }
      throw new Error(body.trim() || String(answer.status));
    });
  }

  button.addEventListener("click", function (event) {
    event.preventDefault();
    var data = new FormData(form);
    data.delete("audio");  // a recording is heard as it is; only the text is spoken
    button.disabled = true;
    note.textContent = button.dataset.busy;
    fetch("/send/preview", { method: "POST", body: data, credentials: "same-origin" })
      .then(function (answer) {
        var type = answer.headers.get("content-type") || "";
        if (answer.ok && type.indexOf("audio/") === 0) { return answer.blob(); }
        if (answer.redirected) {  // signed out: to the sign-in page
          window.location.assign(answer.url);
          throw new Error("");
        }
        return refusal(answer, type);
      })
      .then(function (audio) {
        if (player.src) { URL.revokeObjectURL(player.src); }
        player.src = URL.createObjectURL(audio);
        player.hidden = false;
        note.textContent = help;
        return player.play();
      })
      .catch(function (err) { note.textContent = err.message; })
      .then(function () { button.disabled = false; });
  });
})();
