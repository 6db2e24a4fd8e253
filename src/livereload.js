// mcluster dev's live reload: reloads the page when a switch is complete, reloads stylesheets in
// place, shows a failed build's errors in an overlay. Served by the dev master; see livereload.rs.
(function () {
  "use strict";
  var script = document.currentScript;
  var origin = script ? new URL(script.src).origin : "http://127.0.0.1:35729";
  var key = "mcluster-livereload-instance";
  var overlay = null;

  function show(text) {
    // The dev master's own building page shows the errors already.
    if (document.body && document.body.hasAttribute("data-mcluster-building")) {
      return;
    }
    if (!overlay) {
      overlay = document.createElement("div");
      overlay.id = "mcluster-overlay";
      overlay.style.cssText =
        "position:fixed;inset:0;z-index:2147483647;overflow:auto;margin:0;padding:24px;" +
        "background:rgba(24,24,24,.96);color:#eee;font:13px/1.45 ui-monospace,monospace;" +
        "white-space:pre-wrap";
      document.documentElement.appendChild(overlay);
    }
    overlay.textContent = "mcluster: the build failed\n\n" + text;
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
