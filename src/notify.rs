//! The master's side of systemd's notify protocol: one private datagram socket per worker.
//!
//! Each worker gets `NOTIFY_SOCKET=<dir>/w<slot>-<n>.sock`, a socket of its own in a 0700
//! directory of the master's, so every message is attributed to exactly one worker without
//! trusting credentials. A message is newline-separated `KEY=VALUE` lines: `READY=1` marks the
//! worker ready, `STATUS=…` is its status line, and every message is passed to the embedder's
//! message handler.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::thread;

use crate::cluster::WorkerKey;
use crate::supervisor::Input;

/// The master's private directory of notify sockets, removed when dropped.
#[derive(Debug)]
pub(crate) struct NotifyDir {
    path: PathBuf,
}

impl NotifyDir {
    /// Creates `mcluster-<pid>` (mode 0700) in `$XDG_RUNTIME_DIR` or the temp directory.
    pub(crate) fn create() -> io::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|dir| dir.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        Self::create_in(&base)
    }

    fn create_in(base: &Path) -> io::Result<Self> {
        remove_dead_masters_dirs(base);
        let path = base.join(format!("mcluster-{}", std::process::id()));
        // A directory of a dead master whose pid we reuse.
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self { path })
    }

    /// Binds a worker's socket and starts the thread that forwards its messages.
    pub(crate) fn open(
        &self,
        key: WorkerKey,
        slot: usize,
        events: Sender<Input>,
    ) -> io::Result<NotifySocket> {
        let path = self.path.join(format!("w{slot}-{}.sock", key.0));
        let socket = UnixDatagram::bind(&path)?;
        let reader = socket.try_clone()?;
        thread::Builder::new()
            .name(format!("notify-w{slot}"))
            .spawn(move || forward_messages(&reader, key, &events))?;
        Ok(NotifySocket { path, socket })
    }
}

/// A master killed by SIGKILL cannot remove its directory: the next master removes the
/// directories of masters that no longer run (those it may remove: its user's).
fn remove_dead_masters_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("mcluster-"))
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        // A master in another PID namespace sharing this directory looks dead from here: its
        // sockets still have a reader, though.
        if gone && !has_live_socket(&entry.path()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether a notify socket in `dir` still has a reader.
fn has_live_socket(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries
        .flatten()
        .any(|entry| UnixDatagram::unbound().is_ok_and(|probe| probe.connect(entry.path()).is_ok()))
}

impl Drop for NotifyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One worker's notify socket; closing it ends its reader thread and removes the file.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    /// The value of the worker's `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        // Shutting the socket down wakes the reader blocked in recv with a 0-byte read.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn forward_messages(socket: &UnixDatagram, key: WorkerKey, events: &Sender<Input>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        match socket.recv(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(len) => {
                let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
                if events.send(Input::Notify { key, text }).is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether a notify message holds the assignment `line` (`READY=1`, `WATCHDOG=1`, …).
pub(crate) fn says(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

/// The `STATUS=` text of a notify message, if any.
pub(crate) fn status(message: &str) -> Option<&str> {
    message
        .lines()
        .find_map(|line| line.strip_prefix("STATUS="))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn messages_are_forwarded_and_closing_ends_the_reader() {
        let dir = NotifyDir::create().unwrap();
        let (tx, rx) = mpsc::channel();
        let socket = dir.open(WorkerKey(7), 0, tx).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client
            .send_to(b"READY=1\nSTATUS=up", socket.path())
            .unwrap();
        let Input::Notify { key, text } = rx.recv_timeout(Duration::from_secs(10)).unwrap() else {
            panic!("expected a notify message");
        };
        assert_eq!(key, WorkerKey(7));
        assert!(says(&text, "READY=1"));
        assert_eq!(status(&text), Some("up"));
        let path = socket.path().to_owned();
        drop(socket);
        assert!(!path.exists());
        // The reader thread dropped its sender: the channel disconnects.
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ));
        let dir_path = dir.path.clone();
        drop(dir);
        assert!(!dir_path.exists());
    }

    #[test]
    fn directories_of_dead_masters_are_removed() {
        let base = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = base.path().join(format!("mcluster-{dead}"));
        std::fs::create_dir(&stale).unwrap();
        drop(UnixDatagram::bind(stale.join("w0-1.sock")).unwrap());
        // A master in another PID namespace: its pid means nothing here, its socket is read.
        let elsewhere = base.path().join(format!("mcluster-{}", i32::MAX));
        std::fs::create_dir(&elsewhere).unwrap();
        let _reader = UnixDatagram::bind(elsewhere.join("w0-1.sock")).unwrap();
        // A live master's (this process's parent stands in for one) is left alone.
        let live = base
            .path()
            .join(format!("mcluster-{}", std::os::unix::process::parent_id()));
        std::fs::create_dir(&live).unwrap();
        let unrelated = base.path().join("mcluster-notes");
        std::fs::create_dir(&unrelated).unwrap();
        let dir = NotifyDir::create_in(base.path()).unwrap();
        assert!(!stale.exists(), "a dead master's directory is removed");
        assert!(live.exists() && unrelated.exists() && elsewhere.exists());
        assert!(dir.path.is_dir());
    }

    #[test]
    fn ready_must_be_a_whole_line() {
        assert!(says("STATUS=x\nREADY=1\n", "READY=1"));
        assert!(!says("READY=10", "READY=1"));
        assert_eq!(status("READY=1"), None);
    }
}
