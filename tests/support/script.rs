//! Shell-script workers the tests can rewrite while the master runs (`/bin/sh <script>`).

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A shell script in a temporary directory of its own. Tests run it as `/bin/sh <path>`, so it
/// needs no exec bit, and a script that ends in `exec <program>` keeps its pid (so `LISTEN_PID`
/// stays right).
pub(crate) struct Script {
    dir: TempDir,
    path: PathBuf,
}

impl Script {
    pub(crate) fn new(body: &str) -> Self {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("worker.sh");
        let script = Self { dir, path };
        script.rewrite(body);
        script
    }

    /// A script that runs `program` in its own place.
    pub(crate) fn exec(program: &Path) -> Self {
        Self::new(&exec_line(program))
    }

    /// The script's directory, for marker files.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the script atomically: a worker starting meanwhile reads the old or the new one.
    pub(crate) fn rewrite(&self, body: &str) {
        let next = self.dir.path().join("worker.sh.next");
        fs::write(&next, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::rename(&next, &self.path).unwrap();
    }

    /// `/bin/sh` arguments that run this script.
    pub(crate) fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// `exec '<program>'`, quoted for sh.
pub(crate) fn exec_line(program: &Path) -> String {
    format!("exec {}", quote(program))
}

/// `path` in single quotes for sh.
pub(crate) fn quote(path: &Path) -> String {
    format!("'{}'", path.to_str().unwrap().replace('\'', r"'\''"))
}
