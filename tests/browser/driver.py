"""A headless Chromium driven by commands on stdin, one per line, for the live-reload tests.

Usage: driver.py URL. Opens URL, then for each command prints one line: `ok …` or `fail …`.

Commands (each waits up to DEADLINE seconds for its condition):
  text SUBSTRING        the element #message (or, without one, the body) contains SUBSTRING
  body SUBSTRING        the page's whole text contains SUBSTRING
  overlay SUBSTRING     the live-reload overlay is shown and contains SUBSTRING
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
        "var o = document.getElementById('mcluster-overlay'); return o ? o.innerText : null;"
    )


def run(driver, command, arg):
    if command == "text":
        return wait(driver, "text " + arg, lambda: arg in page_text(driver) or page_text(driver))
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
