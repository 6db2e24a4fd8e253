"""Live reload (issue 11): save → the page repainted with the new text in headless Chromium, for
`mcluster dev` (its live-reload channel, the script put in by mcluster::serve::livereload) and
for tower-livereload under systemfd + cargo-watch, on one app: bench/apps/livereload-axum."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .build import git_describe, install_dev_tools
from .config import BENCH, MCLUSTER, ROOT, TOOLS
from .probe import wait_systemfd_serving
from .procs import Server, free_port, kill_all, start_on_free_port
from .report import loadavg, summary
from .stats import Budget, parse_human


LR_APP = BENCH / "apps" / "livereload-axum"
LR_WORK = ROOT / "target" / "bench-livereload"  # the app's copy, mcluster's snapshot, the target dir
LR_HEADING = "## Live reload: save → page repainted in headless Chromium"
LR_EDITS = 5  # per system
LR_POLL = 0.020  # between two reads of the page's DOM
LR_WAIT = 90.0  # the longest one edit may take to show (build included)
LR_SETTLE = 1.0  # quiet time before each edit: the page loaded, its reload channel connected
LR_BUDGET = 240.0  # seconds for the section once the app is built and the tools installed
LR_TEXT = re.compile(r'^const TEXT: &str = "livereload v\d+";$', re.M)
LR_CHROMIUM = Path("/usr/bin/chromium")
LR_CHROMEDRIVER = Path("/usr/bin/chromedriver")
LR_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1000,700",
)  # fmt: skip
LR_READ = "var e = document.getElementById('text'); return e ? e.textContent : null;"


class LrApp:
    """A copy of bench/apps/livereload-axum in a temp dir (what the tools watch: not under
    target/, which .gitignore hides from both watchers), its mcluster dependency pointed at a
    snapshot of mcluster's sources in target/bench-livereload (edits to src/ during the run
    must not rebuild it), built into target/bench-livereload/target (kept between runs)."""

    def __init__(self, workdir: Path) -> None:
        LR_WORK.mkdir(parents=True, exist_ok=True)
        src = LR_WORK / "mcluster-src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        for name in ("Cargo.toml", "Cargo.lock"):
            shutil.copy2(ROOT / name, src / name)
        for name in ("src", "fixtures", "tests"):
            shutil.copytree(ROOT / name, src / name)  # copy2: the times kept, no needless rebuild
        self.dir = workdir / "livereload-axum"
        shutil.copytree(LR_APP, self.dir, ignore=shutil.ignore_patterns("target"))
        manifest = self.dir / "Cargo.toml"
        text = manifest.read_text()
        if 'path = "../../.."' not in text:
            raise RuntimeError(f"{LR_APP}/Cargo.toml: no mcluster path dependency")
        manifest.write_text(text.replace('path = "../../.."', f'path = "{src}"'))
        self.main = self.dir / "src" / "main.rs"
        self.source = self.main.read_text()
        if not LR_TEXT.search(self.source):
            raise RuntimeError(f"{LR_APP}/src/main.rs: no `const TEXT` line to edit")
        # Written anew, not with the time copytree kept: an older time than the last build's
        # would leave that build's binary (and its text) in place.
        self.main.write_text(self.source)
        self.version = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CARGO_TARGET_DIR"] = str(LR_WORK / "target")
        env["PATH"] = f"{TOOLS / 'bin'}:{env.get('PATH', '')}"
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "PORT",
                    "MCLUSTER_LIVERELOAD", "MCLUSTER_LIVERELOAD_ADDR"):  # fmt: skip
            env.pop(key, None)
        return env

    def edit(self) -> int:
        """Rewrites main.rs in place with `TEXT` = `livereload vN`, N new; returns N."""
        self.version += 1
        self.main.write_text(LR_TEXT.sub(f'const TEXT: &str = "livereload v{self.version}";', self.source))
        return self.version

    def build(self, feature: str) -> float:
        t0 = time.monotonic()
        out = subprocess.run(
            ["cargo", "build", "--features", feature], cwd=self.dir, env=self.env(),
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"cargo build --features {feature} of livereload-axum failed:\n{out.stderr[-2000:]}")
        return time.monotonic() - t0


class LrMcluster:
    key = "mcluster"
    label = "mcluster dev"
    feature = "mcluster"

    def __init__(self, app: LrApp) -> None:
        self.app = app

    def command(self) -> str:
        return ("CARGO_TARGET_DIR=… mcluster dev -n 1 -l 127.0.0.1:0 --livereload 127.0.0.1:PORT2 "
                "--features mcluster --manifest-path <copy>/Cargo.toml")  # fmt: skip

    def start(self) -> Server:
        argv = [
            str(MCLUSTER), "dev", "-n", "1", "-l", "127.0.0.1:0", "--livereload", f"127.0.0.1:{free_port()}",
            "--features", "mcluster", "--manifest-path", str(self.app.dir / "Cargo.toml"),
        ]  # fmt: skip
        server = Server("mcluster dev", argv, cwd=self.app.dir, env=self.app.env(), scope=self.app.dir)
        _, _, m = server.wait_line(r"^mcluster: listening on 127\.0\.0\.1:(\d+) \(master pid \d+\)$", timeout=LR_WAIT)
        server.port = int(m.group(1))
        server.wait_line(r"^mcluster: (?:all 1 workers?|the worker is) ready in ", timeout=LR_WAIT)
        return server

    def build_time(self, server: Server, mark: int) -> float:
        """mcluster's own build time, from the reload's line."""
        _, _, m = server.wait_line(r"^mcluster: \S.* changed → (.*)$", mark, timeout=LR_WAIT)
        done = re.match(r"built in (\S+) → ", m.group(1))
        if not done:
            raise RuntimeError(f"reload failed: {m.group(0)}")
        return parse_human(done.group(1))


class LrAnchor:
    key = "anchor"
    label = "tower-livereload, systemfd + cargo watch"
    feature = "tower"

    def __init__(self, app: LrApp) -> None:
        self.app = app

    def command(self) -> str:
        return "CARGO_TARGET_DIR=… systemfd --no-pid -s http::127.0.0.1:PORT -- cargo watch -x 'run --features tower'"

    def start(self) -> Server:
        def spawn(port: int) -> Server:
            argv = [
                str(TOOLS / "bin" / "systemfd"), "--no-pid", "-s", f"http::127.0.0.1:{port}",
                "--", "cargo", "watch", "-x", "run --features tower",
            ]  # fmt: skip
            server = Server(self.label, argv, cwd=self.app.dir, env=self.app.env(), scope=self.app.dir, merge_stdout=True)
            server.port = port
            return server

        return start_on_free_port(spawn, lambda server: wait_systemfd_serving(server, LR_WAIT))

    def build_time(self, server: Server, mark: int) -> float:
        """cargo's `Finished … in B` line of the rebuild."""
        _, _, m = server.wait_line(r"^\s*Finished `dev` profile .* in (\S+)$", mark, timeout=LR_WAIT)
        return parse_human(m.group(1))


def lr_browser():
    """A headless Chromium driven by chromedriver (the flags tests/browser/driver.py uses)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(LR_CHROMIUM)
    for flag in LR_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(LR_CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(LR_WAIT)
    driver.set_script_timeout(LR_WAIT)
    return driver


def lr_text(driver) -> str | None:
    try:
        return driver.execute_script(LR_READ)
    except Exception:  # the page between two documents: read again
        return None


def lr_measure(system, server: Server, driver, budget: Budget) -> list[dict]:
    """Opens the page once, then LR_EDITS edits: write main.rs, read the page's text every
    LR_POLL until it is the new one (the page reloads by itself); the tool's build time."""
    driver.get(f"http://127.0.0.1:{server.port}/")
    want = f"livereload v{system.app.version}"
    if lr_text(driver) != want:
        raise RuntimeError(f"the page does not show {want!r}: {driver.page_source[:300]!r}")
    if "<script" not in driver.page_source:
        raise RuntimeError("no live-reload <script> in the page")
    samples = []
    for _ in range(LR_EDITS):
        if budget.left() < 15:
            break
        time.sleep(LR_SETTLE)
        mark = len(server.lines)
        t0 = time.monotonic()
        n = system.app.edit()
        want = f"livereload v{n}"
        deadline = t0 + LR_WAIT
        while lr_text(driver) != want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never showed {want!r}:\n{server.tail()}")
            time.sleep(LR_POLL)
        t1 = time.monotonic()
        samples.append({"shown": t1 - t0, "build": system.build_time(server, mark)})
    return samples


def run_livereload(workdir: Path, notes: list[str], out: dict) -> None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise RuntimeError("Python selenium is not installed: nothing measured") from None
    for path in (LR_CHROMIUM, LR_CHROMEDRIVER):
        if not path.exists():
            raise RuntimeError(f"{path} missing: nothing measured")
    versions, why = install_dev_tools(("systemfd", "cargo-watch"))
    out["tools"], out["tools_why"] = versions or {}, why
    out["cargo"] = subprocess.run(["cargo", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    out["chromium"] = subprocess.run([str(LR_CHROMIUM), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    app = LrApp(workdir)
    systems = [LrMcluster(app)]
    if versions is not None:
        systems.append(LrAnchor(app))
    out["systems"] = {s.key: (s.label, s.command()) for s in systems}
    budget = Budget(LR_BUDGET)
    for system in systems:
        if budget.left() < 30:
            notes.append(f"{system.label}: skipped (time budget)")
            continue
        server = driver = None
        try:
            # Its own feature built just before: the binary of the other feature is in the same
            # place, and the first measured build must not be the one that replaces it.
            print(f"bench: live reload: building livereload-axum --features {system.feature} into {LR_WORK / 'target'}", file=sys.stderr, flush=True)
            out[f"warm_build_{system.key}"] = system.app.build(system.feature)
            print(f"bench: live reload: {system.command()}", file=sys.stderr, flush=True)
            server = system.start()
            driver = lr_browser()
            out[system.key] = lr_measure(system, server, driver, budget)
        except Exception as e:
            notes.append(f"{system.label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            print(f"bench: live reload: {system.label} failed: {e}", file=sys.stderr, flush=True)
        finally:
            if driver is not None:
                driver.quit()
            if server is not None:
                server.stop()


def measure_livereload() -> tuple[dict, list[str]]:
    out: dict = {}
    notes: list[str] = []
    load_start = loadavg()
    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-livereload-"))
    try:
        run_livereload(workdir, notes, out)
    except Exception as e:
        notes.append(f"live-reload section: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        print(f"bench: live-reload section failed: {e}", file=sys.stderr, flush=True)
    finally:
        kill_all()
        shutil.rmtree(workdir, ignore_errors=True)
    out["elapsed"] = time.monotonic() - t_start
    notes.append(f"load average (1/5/15 min) at the start of this section: {load_start}; at the end: {loadavg()}")
    return out, notes


def lr_report(lr: dict, notes: list[str]) -> list[str]:
    keys = ["mcluster", "anchor"]
    labels = {"mcluster": "mcluster dev -n 1", "anchor": "tower-livereload under systemfd + cargo watch"}

    def cell(key: str, fn) -> str:
        if not lr.get(key):
            why = lr.get("tools_why") if key == "anchor" else ""
            return f"not measured (systemfd/cargo-watch {why})" if why else "not measured (see notes)"
        try:
            return fn(lr[key])
        except (KeyError, ValueError, TypeError, statistics.StatisticsError):
            return "n/a"

    def col(field):
        return lambda r: summary([s[field] for s in r], want=LR_EDITS)

    def after_build(r):
        return summary([s["shown"] - s["build"] for s in r], want=LR_EDITS)

    rows = [
        ("save → page shows the new text", col("shown")),
        ("the tool's own build time (its log)", col("build")),
        ("the rest: debounce, restart or roll, reload signal, page load", after_build),
    ]
    lines = [
        LR_HEADING,
        "",
        f"`python3 bench/run.py --livereload-only`; run {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M')} UTC, mcluster {git_describe()}, {lr.get('cargo', 'cargo ?')}, "
        f"{lr.get('chromium', 'Chromium ?')}, selenium + chromedriver; "
        f"tools: {', '.join(f'{k} {v}' for k, v in lr.get('tools', {}).items()) or 'none'}; "
        f"tower-livereload 0.10.3 (its defaults). The app: `bench/apps/livereload-axum` (axum 0.8, plain "
        "`axum::serve` with listenfd), `/` an HTML page with `<p id=\"text\">livereload vN</p>`, built with "
        "`--features mcluster` (the `mcluster::serve::livereload` middleware) or `--features tower` "
        "(`tower_livereload::LiveReloadLayer`). Each system: the page opened once in headless Chromium, then "
        f"{LR_EDITS} edits of the text in `src/main.rs` ({LR_SETTLE:.0f} s apart), each timed from the write "
        f"until the page's DOM (read every {LR_POLL * 1000:.0f} ms, nothing else done to the page) shows the "
        "new text. Median (min – max).",
        "",
        "| | " + " | ".join(labels[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, fn in rows:
        lines.append(f"| {name} | " + " | ".join(cell(k, fn) for k in keys) + " |")
    lines.append("")
    for key in keys:
        if key in lr.get("systems", {}):
            lines.append(f"- {lr['systems'][key][0]}: `{lr['systems'][key][1]}`")
    builds = [f"`--features {f}` {lr[f'warm_build_{k}']:.1f} s" for k, f in (("mcluster", "mcluster"), ("anchor", "tower")) if f"warm_build_{k}" in lr]
    if builds:
        lines.append(f"- each feature built just before its system ran (the other feature's binary replaced): {', '.join(builds)}")
    for key in keys:
        if lr.get(key):
            raw = ", ".join(f"{s['shown'] * 1000:.0f}/{s['build'] * 1000:.0f}" for s in lr[key])
            lines.append(f"- raw samples, {labels[key]} (save → shown / build, ms): {raw}")
    lines.append(f"- section time: {lr.get('elapsed', 0):.0f} s")
    for note in notes:
        lines.append(f"- {note}")
    lines.append("")
    return lines
