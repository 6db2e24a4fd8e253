//! Where the test workers are: cargo examples next to the `mcluster` binary, built on demand.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `[[example]]` targets that are test workers (see `fixtures/workers/`).
const FIXTURES: &[&str] = &[
    "fixture-echo",
    "fixture-crash-on-start",
    "fixture-never-ready",
    "fixture-ignore-term",
    "fixture-print-env",
    "fixture-listenfd",
    "fixture-accept",
    "fixture-tokio-accept",
    "fixture-channel",
    "fixture-embedded-master",
];

/// The `mcluster` binary under test.
pub(crate) fn mcluster() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mcluster"))
}

/// The path of the fixture worker `name` (for example `fixture-echo`).
///
/// `cargo test` and `cargo nextest` build examples before running tests, so the file is normally
/// at `target/<profile>/examples/<name>`. When it is not (a test binary run by hand after a clean),
/// all fixtures are built once with `cargo build --example …`.
#[track_caller]
pub(crate) fn fixture(name: &str) -> PathBuf {
    assert!(FIXTURES.contains(&name), "unknown fixture {name}");
    let path = examples_dir().join(name);
    if !path.is_file() {
        build_fixtures();
    }
    assert!(path.is_file(), "fixture {} was not built", path.display());
    path
}

/// The Python worker that insists on `LISTEN_PID` being its own pid.
pub(crate) fn strict_listen_pid_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/workers/strict_listen_pid.py")
}

/// The Python worker written as many are: `http.server` on fd 3, no SIGTERM handler.
pub(crate) fn naive_http_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/workers/naive_http.py")
}

/// The real `python3` executable (not a version-manager shim, which would only slow each start).
#[track_caller]
pub(crate) fn python3() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 must be installed to run the Python fixture");
        assert!(out.status.success(), "python3 failed: {out:?}");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

fn examples_dir() -> PathBuf {
    mcluster().parent().unwrap().join("examples")
}

#[track_caller]
fn build_fixtures() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        // target/<profile>/mcluster → the profile and the target directory to build into.
        let profile_dir = mcluster().parent().unwrap();
        let target_dir = profile_dir.parent().unwrap();
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .arg("build")
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => {}
            "release" => {
                cargo.arg("--release");
            }
            other => {
                cargo.args(["--profile", other]);
            }
        }
        for name in FIXTURES {
            cargo.args(["--example", name]);
        }
        let status = cargo.status().expect("run cargo build --example");
        assert!(status.success(), "building the fixtures failed: {status}");
    });
}
