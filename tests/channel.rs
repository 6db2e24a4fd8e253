//! The message channel between the master and its workers (`MCLUSTER_CHANNEL_FD`, Node's
//! `NODE_CHANNEL_FD`): Node workers unmodified, a Python worker, an embedder's replies, and the
//! bounds — a flooding worker, a line of 100 MB, a worker that never reads.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::fixture::mcluster;
use crate::support::process::{proc_status, wait_until, wait_until_or};
use crate::support::{Master, MasterBuilder, fixture, python3};

/// The master's memory budget while a worker floods its channel (issue 20).
const FLOOD_PEAK_MAX: u64 = 64 * 1024 * 1024;

/// How long `mcluster status` may take to answer while a worker floods its channel (issue 20).
const STATUS_DURING_FLOOD_MAX: Duration = Duration::from_secs(2);

/// How long 200 sends to a worker that never reads may take in all (issue 20).
const DEAF_SENDS_MAX: Duration = Duration::from_secs(5);

/// `node`, or `None` (and the test is skipped) where it is not installed; under CI (`CI=true`)
/// a missing `node` fails the test, as `.ci/run` installs it.
fn node() -> Option<PathBuf> {
    let found = Command::new("node")
        .args(["-e", "process.stdout.write(process.execPath)"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8(out.stdout).unwrap()));
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "node is not installed: .ci/run installs it (Debian's nodejs)"
        );
        eprintln!("skipped: node is not installed");
    }
    found
}

/// `mcluster events --control SOCKET`, its records collected as they come.
struct Follower {
    child: Child,
    records: Arc<Mutex<Vec<Value>>>,
}

impl Follower {
    /// Starts following and returns once the master has subscribed it.
    fn start(control: &Path) -> Self {
        let mut child = Command::new(mcluster())
            .args(["events", "--control"])
            .arg(control)
            .env_remove("MCLUSTER_CONTROL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mcluster events");
        let records = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let collected = Arc::clone(&records);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(record) = serde_json::from_str(&line) {
                    collected.lock().unwrap().push(record);
                }
            }
        });
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("following the events"), "{line:?}");
        Self { child, records }
    }

    /// The `message` records so far.
    fn messages(&self) -> Vec<Value> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|record| record["event"] == "message")
            .cloned()
            .collect()
    }

    /// Waits for a `message` record from `slot` whose message is `message`.
    #[track_caller]
    fn wait_message(&self, slot: u64, message: &Value) -> Value {
        let mut found = None;
        wait_until_or(
            &format!("the message {message} from w{slot}"),
            || {
                found = self
                    .messages()
                    .into_iter()
                    .find(|record| record["slot"] == slot && record["message"] == *message);
                found.is_some()
            },
            || format!("{:#?}", self.messages()),
        );
        found.unwrap()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mcluster ARGS --control SOCKET`: its exit code and output.
fn client(control: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(mcluster())
        .args(args)
        .arg("--control")
        .arg(control)
        .env_remove("MCLUSTER_CONTROL")
        .stdin(Stdio::null())
        .output()
        .expect("run mcluster");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// One request on the control socket, in this process: the reply line.
fn request(control: &Path, request: &Value) -> Value {
    let mut stream = UnixStream::connect(control).expect("connect to the control socket");
    let mut line = serde_json::to_vec(request).unwrap();
    line.push(b'\n');
    stream.write_all(&line).unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|_| panic!("a JSON reply: {reply:?}"))
}

/// A Node program, unmodified for mcluster: `process.send` and `process.on('message')`, as
/// under `cluster` or PM2. It serves its listener (for `--ready auto`), says hello, echoes
/// every message, and says goodbye when stopped.
const NODE_WORKER: &str = r"
const net = require('net');
const slot = Number(process.env.MCLUSTER_WORKER_ID);
const generation = Number(process.env.MCLUSTER_GENERATION);
net.createServer((c) => c.end('hi\n')).listen({ fd: 3 });
process.on('message', (m) => process.send({ echo: m, slot }));
process.on('SIGTERM', () => process.send({ bye: slot, generation }, () => process.exit(0)));
process.send({ hello: slot, generation });
";

#[test]
fn node_workers_talk_to_the_master_with_process_send() {
    let Some(node) = node() else { return };
    let dir = TempDir::new().unwrap();
    let script = dir.path().join("worker.js");
    fs::write(&script, NODE_WORKER).unwrap();
    let control = dir.path().join("control.sock");
    let control_arg = control.to_str().unwrap();
    let master = Master::start(
        &["-l", "127.0.0.1:0", "-n", "2", "--control", control_arg],
        &node,
        &[script.to_str().unwrap()],
    );
    master.wait_ready(2);
    let events = Follower::start(&control);

    // A roll: the new generation's hellos, and the old one's goodbyes while it drains.
    let (code, out) = client(&control, &["restart"]);
    assert_eq!(code, 0, "{out}\n{}", master.dump());
    for slot in [0, 1] {
        events.wait_message(slot, &json!({"hello": slot, "generation": 2}));
        let bye = events.wait_message(slot, &json!({"bye": slot, "generation": 1}));
        assert_eq!(bye["generation"], 1, "{bye}");
    }

    let (code, out) = client(&control, &["send", "--all", r#"{"n":1}"#]);
    assert_eq!(
        (code, out.trim()),
        (0, "sent to 2 workers"),
        "{}",
        master.dump()
    );
    for slot in [0, 1] {
        let echo = events.wait_message(slot, &json!({"echo": {"n": 1}, "slot": slot}));
        assert_eq!(echo["generation"], 2, "{echo}");
    }

    let (code, out) = client(&control, &["send", "--slot", "1", r#""only one""#]);
    assert_eq!(
        (code, out.trim()),
        (0, "sent to 1 worker"),
        "{}",
        master.dump()
    );
    events.wait_message(1, &json!({"echo": "only one", "slot": 1}));
    // Each worker's messages come in order: once slot 0 has echoed a later message, it never
    // got the first.
    let (code, out) = client(&control, &["send", "--all", "2"]);
    assert_eq!(code, 0, "{out}");
    events.wait_message(0, &json!({"echo": 2, "slot": 0}));
    let to_zero: Vec<Value> = events
        .messages()
        .into_iter()
        .filter(|record| record["slot"] == 0 && record["message"]["echo"] == "only one")
        .collect();
    assert!(
        to_zero.is_empty(),
        "slot 0 got slot 1's message: {to_zero:?}"
    );

    // Bad input: a value that is not JSON is 2, a slot without a worker 1 with why.
    let (code, out) = client(&control, &["send", "--all", "{nope"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not JSON"), "{out}");
    let (code, out) = client(&control, &["send", "--slot", "7", "1"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no worker runs in slot 7"), "{out}");
    drop(events);
    drop(master);
}

/// On the master's go, a Node worker sends a server handle with a message (`NODE_HANDLE`),
/// then a plain message, which Node holds back until the handle is acknowledged or refused.
const NODE_HANDLE_WORKER: &str = r"
const net = require('net');
net.createServer((c) => c.end('hi\n')).listen({ fd: 3 });
const extra = net.createServer(() => {});
process.on('message', () => extra.listen(0, '127.0.0.1', () => {
  process.send({ with: 'a handle' }, extra);
  process.send({ after: 'the handle' });
}));
";

#[test]
fn a_node_worker_sending_a_handle_is_refused_and_goes_on() {
    let Some(node) = node() else { return };
    let dir = TempDir::new().unwrap();
    let script = dir.path().join("worker.js");
    fs::write(&script, NODE_HANDLE_WORKER).unwrap();
    let control = dir.path().join("control.sock");
    let master = Master::start(
        &[
            "-l",
            "127.0.0.1:0",
            "-n",
            "1",
            "--control",
            control.to_str().unwrap(),
        ],
        &node,
        &[script.to_str().unwrap()],
    );
    master.wait_ready(1);
    let events = Follower::start(&control);
    let (code, out) = client(&control, &["send", "--all", r#""go""#]);
    assert_eq!(code, 0, "{out}");
    events.wait_message(0, &json!({"after": "the handle"}));
    let messages = events.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    drop(events);
    drop(master);
}

/// A Python worker on `MCLUSTER_CHANNEL_FD`: hello, then it answers every message with
/// `{"got": MESSAGE}` (except the embedder's echo of its own answers, which would never end).
const PYTHON_WORKER: &str = r#"
import json, os, socket
channel = socket.socket(fileno=int(os.environ["MCLUSTER_CHANNEL_FD"]))
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
slot = int(os.environ["MCLUSTER_WORKER_ID"])
def send(value):
    channel.sendall((json.dumps(value, separators=(",", ":")) + "\n").encode())
send({"hello": slot})
for line in channel.makefile("rb"):
    message = json.loads(line)
    if isinstance(message, dict) and "got" in message.get("echo", {}):
        continue
    send({"got": message})
"#;

#[test]
fn an_embedder_s_on_message_replies_to_a_python_worker() {
    let dir = TempDir::new().unwrap();
    let script = dir.path().join("worker.py");
    fs::write(&script, PYTHON_WORKER).unwrap();
    let embedder = fixture("fixture-embedded-master");
    let master = MasterBuilder::embedded(embedder, &[python3(), script.as_path()]).start();
    master.wait_ready(2);
    // The hello reached on_message, its reply reached the worker, whose answer came back.
    for slot in [0, 1] {
        master.wait_for_stdout(&format!("channel message from w{slot} (pid "));
        master.wait_for_stdout(&format!(r#": {{"got":{{"echo":{{"hello":{slot}}}}}}}"#));
    }
    // Handle::broadcast reaches both.
    let mut master = master;
    master.send(r#"broadcast {"hi":1}"#);
    master.wait_for_stdout(r#"broadcast outcome: {"outcome":"delivered","slots":[0,1]}"#);
    for slot in [0, 1] {
        let line = master.wait_for_stdout(&format!("channel message from w{slot} "));
        assert!(line.contains("generation 1"), "{line}");
    }
    master.wait_for_stdout(r#": {"got":{"hi":1}}"#);
    wait_until("both workers' answers to the broadcast", || {
        master
            .stdout_lines()
            .iter()
            .filter(|line| line.ends_with(r#": {"got":{"hi":1}}"#))
            .count()
            == 2
    });
    master.send("quit");
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
}

/// A master of one worker (`--ready notify`) with its control socket at `control`.
fn one_worker(control: &Path, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Master {
    let options = [
        "-l",
        "127.0.0.1:0",
        "-n",
        "1",
        "--ready",
        "notify",
        "--control",
    ];
    let mut options = options.to_vec();
    options.push(control.to_str().unwrap());
    Master::start(&options, program, args)
}

/// The `VmHWM` of `pid`, in bytes.
fn peak(pid: i32) -> u64 {
    proc_status(pid, "VmHWM:") * 1024
}

#[test]
fn a_worker_flooding_its_channel_costs_the_master_neither_memory_nor_supervision() {
    let dir = TempDir::new().unwrap();
    let control = dir.path().join("control.sock");
    let master = one_worker(
        &control,
        fixture("fixture-channel"),
        &["flood", "100000", "200"],
    );
    master.wait_ready(1);
    let mut slowest = Duration::ZERO;
    let mut answers = 0;
    while !master
        .stdout_lines()
        .iter()
        .any(|line| line.ends_with("flood sent 100000"))
    {
        let asked = Instant::now();
        let reply = request(&control, &json!({"command": "status"}));
        assert_eq!(reply["ok"], true, "{reply}");
        slowest = slowest.max(asked.elapsed());
        answers += 1;
        assert!(
            answers < 100_000,
            "the flood never ended\n{}",
            master.dump()
        );
    }
    let peak = peak(master.pid());
    eprintln!(
        "channel flood of 100,000 messages: master VmHWM {} KiB, {answers} status answers, \
         the slowest in {slowest:?}",
        peak / 1024
    );
    assert!(
        slowest < STATUS_DURING_FLOOD_MAX,
        "status took {slowest:?} during the flood"
    );
    assert!(
        peak < FLOOD_PEAK_MAX,
        "the master's peak RSS is {} MiB",
        peak / 1024 / 1024
    );
    drop(master);
}

/// Once the master says go, sends one line of 100 MB, then a message.
const LONG_LINE_WORKER: &str = r#"
import os, socket
channel = socket.socket(fileno=int(os.environ["MCLUSTER_CHANNEL_FD"]))
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
channel.makefile("rb").readline()
chunk = b'"' + b"x" * (1024 * 1024)
for _ in range(100):
    channel.sendall(chunk)
channel.sendall(b'"\n{"after":"the long line"}\n')
import time
while True:
    time.sleep(3600)
"#;

#[test]
fn a_line_of_100_mb_is_dropped_and_counted_and_the_next_message_arrives() {
    let dir = TempDir::new().unwrap();
    let script = dir.path().join("worker.py");
    fs::write(&script, LONG_LINE_WORKER).unwrap();
    let control = dir.path().join("control.sock");
    let master = one_worker(&control, python3(), &[script.to_str().unwrap()]);
    master.wait_ready(1);
    let events = Follower::start(&control);
    let (code, out) = client(&control, &["send", "--all", r#""go""#]);
    assert_eq!(code, 0, "{out}");
    events.wait_message(0, &json!({"after": "the long line"}));
    master.wait_for_stderr(
        "sent lines on its channel that are not messages, dropped: 1 longer than 1048576 bytes, 0 \
         not JSON",
    );
    let peak = peak(master.pid());
    assert!(
        peak < FLOOD_PEAK_MAX,
        "the master's peak RSS is {} MiB",
        peak / 1024 / 1024
    );
    drop(events);
    drop(master);
}

#[test]
fn sends_to_a_worker_that_never_reads_fail_once_its_channel_is_full_never_wait() {
    let dir = TempDir::new().unwrap();
    let control = dir.path().join("control.sock");
    let master = one_worker(&control, fixture("fixture-channel"), &["deaf"]);
    master.wait_ready(1);
    let pad = "x".repeat(4096);
    let started = Instant::now();
    let replies: Vec<Value> = (0..200)
        .map(|i| {
            request(
                &control,
                &json!({"command": "send", "slot": 0, "message": {"i": i, "pad": pad}}),
            )
        })
        .collect();
    let took = started.elapsed();
    let delivered = replies
        .iter()
        .take_while(|reply| reply["ok"] == true)
        .count();
    eprintln!("200 sends of 4 KB to a worker that never reads: {delivered} queued, in {took:?}");
    assert!(took < DEAF_SENDS_MAX, "200 sends took {took:?}");
    assert!(delivered > 0, "{:?}", replies.first());
    assert!(delivered < 200, "every send was queued");
    // Once full, full: the worker never reads.
    for reply in &replies[delivered..] {
        assert_eq!(reply["ok"], false, "{reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains("its channel is full"), "{error}");
    }
    // The command line says so too, with status 1.
    let (code, out) = client(&control, &["send", "--slot", "0", "1"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("its channel is full"), "{out}");
    let reply = request(&control, &json!({"command": "status"}));
    assert_eq!(reply["ok"], true, "{reply}");
    drop(master);
}
