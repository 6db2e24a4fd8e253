"""A headless Chromium driven by commands on stdin, one per line, for the live-reload tests.

Usage: driver.py URL. Opens URL, then for each command prints one line: `ok …` or `fail …`.

Commands (each waits up to DEADLINE seconds for its condition):
  text SUBSTRING        the element #message (or, without one, the body) contains SUBSTRING
  still SUBSTRING       the text contains SUBSTRING now and at every look for the next second
                        (a reload onto an old version would take it away)
  body SUBSTRING        the page's whole text contains SUBSTRING
  overlay SUBSTRING     the live-reload overlay is shown and contains SUBSTRING
  hostile-css           adds a stylesheet that hides, moves and clears everything it can
  overlay-readable      the overlay covers the window, on top, opaque, its text visible
  no-overlay            no overlay is shown
  mark                  sets a JavaScript variable that a page reload would lose
  marked                the variable is still set (the page was not reloaded)
  style PROP VALUE      getComputedStyle(body)[PROP] == VALUE
  screenshot PATH       saves a PNG of the page
  quit
"""

import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

DEADLINE = 60


def main():
    url = sys.argv[1]
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1000,700",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_page_load_timeout(DEADLINE)
        driver.get(url)
        print("ok opened", flush=True)
        for line in sys.stdin:
            words = line.rstrip("\n").split(" ", 1)
            command, arg = words[0], (words[1] if len(words) > 1 else "")
            if command == "quit":
                break
            print(run(driver, command, arg), flush=True)
    finally:
        driver.quit()


def wait(driver, what, check):
    end = time.time() + DEADLINE
    last = None
    while time.time() < end:
        try:
            last = check()
            if last is True:
                return "ok " + what
        except Exception as error:  # the page may be reloading right now
            last = repr(error)
        time.sleep(0.05)
    return "fail " + what + ": " + str(last)[:500]


def page_text(driver):
    return driver.execute_script(
        "var m = document.getElementById('message');"
        "return (m || document.body).innerText;"
    )


def overlay_text(driver):
    return driver.execute_script(
        "var o = document.getElementById('mcluster-overlay');"
        "return o ? (o.shadowRoot || o).textContent : null;"
    )


# What a page may do to elements it does not know: every rule important, for every element.
HOSTILE_CSS = (
    "*, *::before, *::after { display: none !important; opacity: 0 !important;"
    " background: transparent !important; color: transparent !important;"
    " z-index: -1 !important; position: static !important; font-size: 0 !important; }"
    " html, body { display: block !important; }"
    " pre { visibility: hidden !important; }"
)

# Why the overlay is not readable, or true: it is what the window's centre and corners show,
# its text box covers the window with an opaque background, and its text is not transparent.
OVERLAY_READABLE = """
var o = document.getElementById('mcluster-overlay');
if (!o) { return 'no overlay'; }
var w = window.innerWidth, h = window.innerHeight;
var points = [[w / 2, h / 2], [2, 2], [w - 3, h - 3]];
for (var i = 0; i < points.length; i++) {
  var top = document.elementFromPoint(points[i][0], points[i][1]);
  if (top !== o) { return 'at ' + points[i] + ' the window shows ' + (top && top.outerHTML.slice(0, 80)); }
}
var pre = (o.shadowRoot || o).firstChild;
var box = pre.getBoundingClientRect();
if (box.left > 0 || box.top > 0 || box.right < w || box.bottom < h) {
  return 'the text box is ' + JSON.stringify(box);
}
var style = getComputedStyle(pre);
if (style.backgroundColor !== 'rgb(24, 24, 24)') { return 'background ' + style.backgroundColor; }
if (style.color !== 'rgb(238, 238, 238)' || style.visibility !== 'visible' || style.opacity !== '1'
    || parseFloat(style.fontSize) < 10) {
  return 'text ' + style.color + ' ' + style.visibility + ' ' + style.opacity + ' ' + style.fontSize;
}
return true;
"""


def run(driver, command, arg):
    if command == "text":
        return wait(driver, "text " + arg, lambda: arg in page_text(driver) or page_text(driver))
    if command == "still":
        end = time.time() + 1
        while True:
            try:
                text = page_text(driver)
            except Exception as error:  # the page is reloading: it must not be
                return "fail still " + arg + ": " + repr(error)[:300]
            if arg not in text:
                return "fail still " + arg + ": the page shows " + text[:300]
            if time.time() >= end:
                return "ok still " + arg
            time.sleep(0.05)
    if command == "body":
        return wait(
            driver,
            "body " + arg,
            lambda: arg in driver.execute_script("return document.body.innerText;"),
        )
    if command == "overlay":
        return wait(
            driver, "overlay " + arg, lambda: arg in (overlay_text(driver) or "") or overlay_text(driver)
        )
    if command == "hostile-css":
        driver.execute_script(
            "var s = document.createElement('style'); s.textContent = arguments[0];"
            "document.head.appendChild(s);",
            HOSTILE_CSS,
        )
        return "ok hostile css"
    if command == "overlay-readable":
        return wait(driver, "overlay readable", lambda: driver.execute_script(OVERLAY_READABLE))
    if command == "no-overlay":
        return wait(driver, "no overlay", lambda: overlay_text(driver) is None)
    if command == "mark":
        driver.execute_script("window.__mclusterMark = 42;")
        return "ok marked"
    if command == "marked":
        value = driver.execute_script("return window.__mclusterMark || null;")
        return "ok still marked" if value == 42 else "fail the page was reloaded"
    if command == "style":
        prop, value = arg.split(" ", 1)
        script = "return getComputedStyle(document.body)[arguments[0]];"
        return wait(
            driver,
            "style " + arg,
            lambda: driver.execute_script(script, prop) == value or driver.execute_script(script, prop),
        )
    if command == "screenshot":
        driver.save_screenshot(arg)
        return "ok screenshot"
    return "fail unknown command " + command


if __name__ == "__main__":
    main()
