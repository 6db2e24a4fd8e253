"""Makes the README's live-reload screenshots from the bundled example, as it is.

Usage: python3 docs/screenshots.py   (from anywhere; needs cargo, Chromium, chromedriver and
Selenium, as the browser tests do: `.ci/run` installs them)

- `docs/livereload-overlay.png`: `examples/hello-app` served by `mcluster dev`, then a save that
  breaks it (a mismatched type in `src/main.rs`): the page's overlay with cargo's error.
- `docs/livereload-building.png`: the same project started broken: the building page that the
  app's address answers while no generation serves.

The project is a temporary copy (the example is never edited); the builds go to
`target/screenshots`. Every process started here is stopped on the way out, and every wait has
a deadline.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "hello-app")
DRIVER = os.path.join(ROOT, "tests", "browser", "driver.py")
DEADLINE = 300
# The save that breaks the example: what a slip of the hand does to a typed binding.
GOOD = 'let message = format!('
BROKEN = 'let message: u32 = format!('


def example_copy(into):
    """The example's sources and assets in `into`, depending on this checkout."""
    with open(os.path.join(EXAMPLE, "Cargo.toml")) as manifest:
        text = manifest.read().replace('path = "../.."', "path = " + json.dumps(ROOT))
    with open(os.path.join(into, "Cargo.toml"), "w") as manifest:
        manifest.write(text)
    shutil.copy(os.path.join(EXAMPLE, "Cargo.lock"), into)
    for sub in ("src", "static"):
        shutil.copytree(os.path.join(EXAMPLE, sub), os.path.join(into, sub))


def edit(path, old, new):
    with open(path) as source:
        text = source.read()
    if old not in text:
        sys.exit("screenshots: %r is not in %s" % (old, path))
    with open(path, "w") as source:
        source.write(text.replace(old, new, 1))


class Master:
    """`mcluster dev` on the project, its stderr read line by line; stopped on exit."""

    def __init__(self, binary, project):
        env = dict(os.environ, APP_ENV="dev", CARGO_TARGET_DIR=os.path.join(ROOT, "target", "screenshots"))
        self.process = subprocess.Popen(
            [binary, "dev", "-l", "127.0.0.1:0", "-n", "1", "--livereload", "127.0.0.1:0",
             "--manifest-path", os.path.join(project, "Cargo.toml")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, text=True, start_new_session=True,
        )
        self.lines = []
        self.changed = threading.Condition()
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, pattern):
        """The first line matching `pattern` (a regular expression)."""
        end = time.time() + DEADLINE
        with self.changed:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                left = end - time.time()
                if left <= 0 or self.process.poll() is not None:
                    sys.exit("screenshots: no line %r from mcluster dev:\n%s" % (pattern, "\n".join(self.lines)))
                self.changed.wait(min(left, 0.5))

    def port(self):
        line = self.wait_for(r"listening on 127\.0\.0\.1:\d+")
        return int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))

    def __enter__(self):
        return self

    def __exit__(self, *_):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class Browser:
    """Headless Chromium (tests/browser/driver.py) on `url`; quit on exit."""

    def __init__(self, url):
        self.process = subprocess.Popen(
            [sys.executable, DRIVER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, start_new_session=True,
        )
        self.expect(None)

    def expect(self, command):
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        if not answer.startswith("ok"):
            sys.exit("screenshots: %s: %s" % (command or "open", answer or "the browser ended"))

    def __enter__(self):
        return self

    def __exit__(self, *_):
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def main():
    subprocess.run(["cargo", "build", "--locked", "--quiet", "--bin", "mcluster"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "debug", "mcluster")
    docs = os.path.join(ROOT, "docs")
    with tempfile.TemporaryDirectory() as project:
        example_copy(project)
        main_rs = os.path.join(project, "src", "main.rs")
        with Master(binary, project) as master:
            port = master.port()
            master.wait_for(r"ready")
            with Browser("http://127.0.0.1:%d/" % port) as browser:
                browser.expect("text Hello from worker")
                edit(main_rs, GOOD, BROKEN)
                browser.expect("overlay mismatched types")
                browser.expect("screenshot " + os.path.join(docs, "livereload-overlay.png"))
        # Started broken: nothing serves, the app's address answers with the building page.
        with Master(binary, project) as master:
            port = master.port()
            master.wait_for(r"build failed")
            with Browser("http://127.0.0.1:%d/" % port) as browser:
                browser.expect("body mismatched types")
                browser.expect("screenshot " + os.path.join(docs, "livereload-building.png"))
    print("screenshots: docs/livereload-overlay.png, docs/livereload-building.png")


if __name__ == "__main__":
    main()
