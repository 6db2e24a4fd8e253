// mcluster dev's live reload: reloads the page when a switch is complete, reloads stylesheets in
// place, shows a failed build's errors in an overlay. Served by the dev master; see livereload.rs.
(function () {
  "use strict";
  var script = document.currentScript;
  var origin = script ? new URL(script.src).origin : "http://127.0.0.1:35729";
  var key = "mcluster-livereload-instance";
  var overlay = null;

  // Declarations set inline and important: no rule of the page's own can hide the overlay,
  // move it, or show through it.
  function pin(element, declarations) {
    for (var name in declarations) {
      element.style.setProperty(name, declarations[name], "important");
    }
  }

  function show(text) {
    // The dev master's own building page shows the errors already.
    if (document.body && document.body.hasAttribute("data-mcluster-building")) {
      return;
    }
    if (!overlay) {
      overlay = document.createElement("mcluster-overlay");
      overlay.id = "mcluster-overlay";
      pin(overlay, {
        all: "initial",
        position: "fixed",
        inset: "0",
        "z-index": "2147483647",
        display: "block",
      });
      // In a shadow root, the page's selectors (`pre`, `*`, `::before`) cannot reach the text.
      var root = overlay.attachShadow ? overlay.attachShadow({ mode: "open" }) : overlay;
      var pre = document.createElement("pre");
      pin(pre, {
        all: "initial",
        display: "block",
        "box-sizing": "border-box",
        height: "100%",
        margin: "0",
        padding: "24px",
        overflow: "auto",
        background: "#181818",
        color: "#eee",
        font: "13px/1.45 ui-monospace, monospace",
        "white-space": "pre-wrap",
      });
      root.appendChild(pre);
      document.documentElement.appendChild(overlay);
    }
    (overlay.shadowRoot || overlay).firstChild.textContent = "mcluster: the build failed\n\n" + text;
  }

  function hide() {
    if (overlay) {
      overlay.remove();
      overlay = null;
    }
  }

  function reloadStylesheets() {
    var links = document.querySelectorAll('link[rel="stylesheet"]');
    for (var i = 0; i < links.length; i++) {
      var url = new URL(links[i].href, location.href);
      url.searchParams.set("mcluster-reload", String(Date.now()));
      links[i].href = url.toString();
    }
  }

  function connect() {
    var events = new EventSource(origin + "/events");
    events.addEventListener("hello", function (event) {
      var hello = JSON.parse(event.data);
      // A new master (restarted): the page it serves may be new too.
      var seen = sessionStorage.getItem(key);
      sessionStorage.setItem(key, hello.instance);
      if (seen && seen !== hello.instance) {
        location.reload();
        return;
      }
      // A switch completed after this page began to load, while it was not listening yet.
      if (hello.reloaded_at > performance.timeOrigin) {
        location.reload();
      }
    });
    events.addEventListener("reload", function () {
      location.reload();
    });
    events.addEventListener("css", reloadStylesheets);
    events.addEventListener("error-overlay", function (event) {
      show(JSON.parse(event.data));
    });
    events.addEventListener("clear", hide);
    events.onerror = function () {
      events.close();
      setTimeout(connect, 500);
    };
  }

  connect();
})();
