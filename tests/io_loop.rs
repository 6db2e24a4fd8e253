//! The master's I/O on its loop: a constant number of threads whatever the number of workers,
//! and a worker flooding its notify socket while nobody reads the master's stderr costs the
//! master neither its memory nor its supervision.

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

use crate::support::fixture::mcluster;
use crate::support::process::{DEADLINE, proc_status, wait_until};
use crate::support::{Master, fixture, python3};

/// The most threads the master may run, whatever the number of workers (issue 17).
const THREADS_MAX: u64 = 16;

/// The master's memory budget under a notify flood with its stderr unread (issue 17).
const FLOOD_PEAK_MAX: u64 = 64 * 1024 * 1024;

/// How many notify messages the flooding workers send, in all, before the master's memory is
/// looked at: unbounded, at about 1 KiB each, they would take several times the budget.
const FLOOD_MESSAGES: u64 = 200_000;

/// `mcluster status --json --control SOCKET`: the status, or `None` if the client did not
/// get an answer within [`DEADLINE`] (it is killed then).
fn status(control: &Path) -> Option<Value> {
    let mut child = Command::new(mcluster())
        .args(["status", "--json", "--control"])
        .arg(control)
        .env_remove("MCLUSTER_CONTROL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mcluster status");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    serde_json::from_slice(&output.stdout).ok()
}

/// The pids of the ready workers in a status.
fn ready_pids(status: &Value) -> Vec<i64> {
    let mut pids: Vec<i64> = status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|worker| worker["state"] == "ready")
        .filter_map(|worker| worker["pid"].as_i64())
        .collect();
    pids.sort_unstable();
    pids
}

/// The threads of the master, by name: the thread that called `run` (named as the binary),
/// waiting for the end; the I/O loop, which runs the driver, the signals, the workers' pipes and
/// notify sockets and every server; and one writer per standard stream that was written to.
const MASTER_THREADS: [&str; 4] = [
    "mcluster",
    "mcluster-io",
    "mcluster-stderr",
    "mcluster-stdout",
];

/// The names of the threads of process `pid`, sorted.
fn thread_names(pid: i32) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect();
    names.sort();
    names
}

/// The threads of a master of `size` workers once every part has run: workers wrote output and
/// sent READY=1, a client asked.
fn threads_with(size: usize) -> Vec<String> {
    let dir = TempDir::new().unwrap();
    let control = dir.path().join("control.sock");
    let (master, _) = Master::start_ready(
        &[
            "-l",
            "127.0.0.1:0",
            "-n",
            &size.to_string(),
            "--control",
            control.to_str().unwrap(),
        ],
        fixture("fixture-echo"),
        &[],
        size,
    );
    let answer = status(&control).expect("mcluster status answers");
    assert_eq!(ready_pids(&answer).len(), size, "{answer}");
    let names = thread_names(master.pid());
    assert_eq!(
        u64::try_from(names.len()).unwrap(),
        proc_status(master.pid(), "Threads:")
    );
    names
}

/// The master's threads are a small constant, the same with 2 workers as with 32 (issue 17:
/// the code before had three per worker, 99 in all with 32; then 4 with the signals' thread and
/// the driver on a thread of its own).
#[test]
fn the_master_runs_a_few_threads_whatever_the_number_of_workers() {
    let few = threads_with(2);
    let many = threads_with(32);
    eprintln!("master threads with 2 workers: {few:?}; with 32: {many:?}");
    assert_eq!(few, many, "the threads depend on the number of workers");
    assert!(
        many.iter()
            .all(|name| MASTER_THREADS.contains(&name.as_str()))
            && many.len() <= MASTER_THREADS.len(),
        "the master runs other threads than {MASTER_THREADS:?}: {many:?}"
    );
    assert!(u64::try_from(many.len()).unwrap() <= THREADS_MAX);
}

/// What each flooding worker runs: READY=1, then `STATUS=` messages of about 1 KiB as fast as
/// it can, writing how many it sent into `<dir>/sent-<pid>` every 10,000.
const FLOOD: &str = r"
import os, socket, sys
path = os.environ['NOTIFY_SOCKET']
out = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b'READY=1', path)
pad = b'x' * 1000
n = 0
while True:
    n += 1
    s.sendto(b'STATUS=flood %d ' % n + pad, path)
    if n % 10000 == 0:
        tmp = '%s/.sent-%d' % (out, os.getpid())
        with open(tmp, 'w') as f:
            f.write(str(n))
        os.rename(tmp, '%s/sent-%d' % (out, os.getpid()))
";

/// How many messages the flooding workers have sent so far, in all.
fn sent(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("sent-"))
        .filter_map(|entry| {
            fs::read_to_string(entry.path())
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Workers flood their notify sockets with `STATUS=` lines while the master's stderr is a pipe
/// nobody reads: the master stays small, still replaces a worker killed by SIGKILL and answers
/// `mcluster status`, and once its stderr is read again it says how many lines it dropped.
#[test]
fn a_notify_flood_with_stderr_unread_leaves_the_master_small_and_supervising() {
    let dir = TempDir::new().unwrap();
    let flood = dir.path().join("flood.py");
    fs::write(&flood, FLOOD).unwrap();
    let sent_dir = dir.path().join("sent");
    fs::create_dir(&sent_dir).unwrap();
    let control = dir.path().join("control.sock");
    let (stderr_read, stderr_write) = io::pipe().unwrap();
    let master = Master::builder(
        &[
            "-l",
            "127.0.0.1:0",
            "-n",
            "2",
            "--ready",
            "notify",
            "--control",
            control.to_str().unwrap(),
        ],
        python3(),
        &[flood.to_str().unwrap(), sent_dir.to_str().unwrap()],
    )
    .stderr(stderr_write)
    .start();

    wait_until("the control socket", || control.exists());
    let mut workers = Vec::new();
    wait_until("two ready workers in mcluster status", || {
        let answer = status(&control).expect("mcluster status answers with stderr unread");
        workers = ready_pids(&answer);
        workers.len() == 2
    });
    wait_until(&format!("{FLOOD_MESSAGES} notify messages sent"), || {
        sent(&sent_dir) >= FLOOD_MESSAGES
    });

    // With stderr still unread, a SIGKILLed worker is replaced.
    let victim = workers[0];
    kill(
        Pid::from_raw(i32::try_from(victim).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    let mut now_ready = Vec::new();
    wait_until("a replacement for the killed worker", || {
        let answer = status(&control).expect("mcluster status answers with stderr unread");
        now_ready = ready_pids(&answer);
        now_ready.len() == 2 && !now_ready.contains(&victim)
    });
    let replaced_in = killed.elapsed();
    assert!(now_ready.contains(&workers[1]), "{now_ready:?}");

    let peak = proc_status(master.pid(), "VmHWM:") * 1024;
    let threads = proc_status(master.pid(), "Threads:");
    eprintln!(
        "notify flood, stderr unread: {} messages sent, master VmHWM {} KiB, {threads} \
         threads, a SIGKILLed worker replaced (ready in status) in {replaced_in:?}",
        sent(&sent_dir),
        peak / 1024
    );
    assert!(
        peak < FLOOD_PEAK_MAX,
        "the master's peak RSS is {} MiB",
        peak / 1024 / 1024
    );

    // Read at last: the lines that could not be written are counted.
    let dropped_seen = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&dropped_seen);
    thread::spawn(move || {
        let mut reader = BufReader::new(stderr_read);
        let mut line = Vec::new();
        // Drains to the end, so the master never blocks on it again.
        while reader
            .read_until(b'\n', &mut line)
            .is_ok_and(|read| read > 0)
        {
            let text = String::from_utf8_lossy(&line);
            if text.starts_with("mcluster: ")
                && text.contains(" lines dropped: stderr did not keep up")
            {
                eprintln!("{}", text.trim_end());
                seen.store(true, Ordering::Release);
            }
            line.clear();
        }
    });
    wait_until("a line counting the dropped lines", || {
        dropped_seen.load(Ordering::Acquire)
    });

    // Read again, and still flooded: the other worker, killed, is replaced as well.
    let victim = workers[1];
    kill(
        Pid::from_raw(i32::try_from(victim).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    wait_until("a replacement for the second killed worker", || {
        let answer = status(&control).expect("mcluster status answers");
        let ready = ready_pids(&answer);
        ready.len() == 2 && !ready.contains(&victim)
    });
    eprintln!(
        "stderr read again: a SIGKILLed worker replaced in {:?}",
        killed.elapsed()
    );
    drop(master);
}
