//! `mcluster::serve` (feature `axum`) in `examples/axum-app`: no request lost across rolls under
//! load (what plain `axum::serve` loses is counted beside it), SSE and WebSocket clients ended
//! promptly and properly by a roll and by Ctrl-C, a panic turned into a 500 and a replacement.
//!
//! The integration binary is built without the feature, so the example app is built here, once
//! per test run, into a target directory of its own (a debug build of axum and tokio: a minute
//! or two the first time, nothing after).

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;

use crate::support::process::is_alive;
use crate::support::{Master, Worker};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Rolls per run of the load test.
const ROLLS: u64 = 10;

/// How soon after its stop signal a worker with SSE and WebSocket clients must have exited.
const PROMPT_EXIT: Duration = Duration::from_millis(500);

/// `examples/axum-app`, built once per test run. The build takes a lock: another test process
/// (nextest runs one per test) may be building it into the same directory.
fn app() -> &'static Path {
    static APP: OnceLock<PathBuf> = OnceLock::new();
    APP.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target/axum-tests");
        fs::create_dir_all(&target).unwrap();
        let lock = fs::File::create(target.join("build.lock")).unwrap();
        let _lock =
            Flock::lock(lock, FlockArg::LockExclusive).unwrap_or_else(|(_, e)| panic!("lock: {e}"));
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--manifest-path"])
            .arg(root.join("examples/axum-app/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("run cargo");
        assert!(status.success(), "examples/axum-app does not build");
        target.join("debug/axum-app")
    })
}

/// `mcluster start -n SIZE --ready notify -- axum-app ARGS…`, once its workers are ready.
#[track_caller]
fn start(size: usize, args: &[&str]) -> (Master, u16) {
    start_with(size, &[], args)
}

/// As [`start`], with more options for the master.
#[track_caller]
fn start_with(size: usize, more: &[&str], args: &[&str]) -> (Master, u16) {
    let size_arg = size.to_string();
    let mut options = vec!["-l", "127.0.0.1:0", "-n", &size_arg, "--ready", "notify"];
    options.extend_from_slice(more);
    let master = Master::builder(&options, app(), args)
        .env("RUST_BACKTRACE", "0")
        .start();
    master.wait_ready(size);
    let port = master.port();
    (master, port)
}

/// Sends HUP and waits for the roll to `generation`; returns the new workers.
#[track_caller]
fn roll(master: &Master, size: usize, generation: u64) -> Vec<Worker> {
    let mark = master.stderr_mark();
    master.signal(Signal::SIGHUP);
    master.wait_for_stderr_after(
        mark,
        &format!("mcluster: rolled {size} workers to generation {generation} in "),
    );
    master.generation(generation)
}

fn connect(port: u16) -> io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// An HTTP/1.1 response head.
struct Head {
    status: u16,
    /// `Connection: close`.
    close: bool,
    content_length: Option<usize>,
}

fn read_head(reader: &mut impl BufRead) -> io::Result<Head> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the response",
        ));
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut head = Head {
        status,
        close: false,
        content_length: None,
    };
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the response head",
            ));
        }
        let Some((name, value)) = line.trim_end().split_once(':') else {
            return Ok(head);
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            "content-length" => head.content_length = value.parse().ok(),
            _ => {}
        }
    }
}

/// A whole response with a `Content-Length` body.
struct Reply {
    status: u16,
    close: bool,
    body: String,
}

fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let head = read_head(reader)?;
    let length = head
        .content_length
        .ok_or_else(|| io::Error::other("no content-length"))?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Reply {
        status: head.status,
        close: head.close,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET path` on a fresh connection, `Connection: close`.
fn get(port: u16, path: &str) -> io::Result<Reply> {
    let mut stream = connect(port)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    read_reply(&mut BufReader::new(stream))
}

/// Whether a request failed because the server closed the connection before any byte of the
/// answer: what an HTTP client retries on a reused connection.
fn closed_unanswered(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    ) || error.to_string() == "connection closed before the response"
}

/// The pid in `… (pid 123, generation 1)`.
fn pid_in(text: &str) -> Option<i32> {
    let (_, rest) = text.split_once("(pid ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Client loops of `GET /`: some on a fresh connection each, some on keep-alive connections
/// (a new one only after `Connection: close`). Every error and every answer but a 200 from the
/// app is a failure: no retries.
struct HttpLoad {
    stop: AtomicBool,
    answered: AtomicU64,
    failures: Mutex<Vec<String>>,
    pids: Mutex<Vec<i32>>,
}

impl HttpLoad {
    fn start(port: u16, fresh: usize, keep_alive: usize) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let load = Arc::new(Self {
            stop: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
            pids: Mutex::new(Vec::new()),
        });
        let mut threads = Vec::new();
        for _ in 0..fresh {
            let load = Arc::clone(&load);
            threads.push(thread::spawn(move || load.fresh_loop(port)));
        }
        for _ in 0..keep_alive {
            let load = Arc::clone(&load);
            threads.push(thread::spawn(move || load.keep_alive_loop(port)));
        }
        (load, threads)
    }

    fn fresh_loop(&self, port: u16) {
        while !self.stop.load(Ordering::SeqCst) {
            self.count(get(port, "/"), "fresh");
        }
    }

    /// Requests on one connection while the server keeps it, as HTTP clients do: a request on
    /// a connection that served before and that the server closed before any byte of the
    /// answer (an idle connection closed at its worker's stop) is sent again, once, on a new
    /// connection (RFC 9110 9.2.2: `GET` is idempotent; hyper's and browsers' clients retry
    /// it so).
    fn keep_alive_loop(&self, port: u16) {
        let mut conn: Option<BufReader<TcpStream>> = None;
        while !self.stop.load(Ordering::SeqCst) {
            let reused = conn.is_some();
            let mut reply = Self::kept_alive_get(&mut conn, port);
            if reused && reply.as_ref().is_err_and(closed_unanswered) {
                conn = None;
                reply = Self::kept_alive_get(&mut conn, port);
            }
            if reply.as_ref().map_or(true, |reply| reply.close) {
                conn = None;
            }
            self.count(reply, "keep-alive");
        }
    }

    /// `GET /` on the kept connection, or on a new one.
    fn kept_alive_get(conn: &mut Option<BufReader<TcpStream>>, port: u16) -> io::Result<Reply> {
        let reader = match conn {
            Some(reader) => reader,
            None => conn.insert(BufReader::new(connect(port)?)),
        };
        reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .and_then(|()| read_reply(reader))
    }

    fn count(&self, reply: io::Result<Reply>, kind: &str) {
        match reply {
            Ok(reply) if reply.status == 200 && reply.body.starts_with("Hello from") => {
                self.answered.fetch_add(1, Ordering::SeqCst);
                if let Some(pid) = pid_in(&reply.body) {
                    let mut pids = self.pids.lock().unwrap();
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
            }
            Ok(reply) => self.fail(format!("{kind}: {} {:?}", reply.status, reply.body)),
            Err(e) => self.fail(format!("{kind}: {e}")),
        }
    }

    fn fail(&self, failure: String) {
        self.failures.lock().unwrap().push(failure);
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    /// Stops the loops and waits for them; returns every failure.
    fn finish(&self, threads: Vec<JoinHandle<()>>) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in threads {
            thread.join().unwrap();
        }
        self.failures.lock().unwrap().clone()
    }
}

/// Stops the load when the test ends, even by a panic.
struct StopOnDrop(Arc<HttpLoad>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// 8 fresh-connection loops and 2 keep-alive clients on a cluster of 2 `axum-app ARGS…`,
/// through [`ROLLS`] rolls; returns the answers and the failures.
fn rolls_under_load(options: &[&str], args: &[&str]) -> (u64, Vec<String>) {
    let (master, port) = start_with(2, options, args);
    let (load, threads) = HttpLoad::start(port, 8, 2);
    let _stop = StopOnDrop(Arc::clone(&load));
    master.wait_until("the load to be answered", || load.answered() >= 50);
    let mut slow_in_old = 0;
    for generation in 2..=ROLLS + 1 {
        let before = load.answered();
        let old = master.generation(generation - 1);
        // A slow request sent before the HUP is in flight in an old worker when it gets the
        // stop signal (the replacement has to start and say READY=1 first): it is answered.
        // (Waiting for the accept in /proc/net/tcp would read a table of 100,000 TIME_WAIT
        // connections on every poll.)
        let mut slow = connect(port).unwrap();
        slow.write_all(b"GET /slow?ms=300 HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        roll(&master, 2, generation);
        match read_reply(&mut BufReader::new(slow)) {
            Ok(reply) if reply.status == 200 && reply.body.starts_with("Slept 300 ms") => {
                if old.iter().any(|w| pid_in(&reply.body) == Some(w.pid)) {
                    slow_in_old += 1;
                }
            }
            Ok(reply) => load.fail(format!("slow: {} {:?}", reply.status, reply.body)),
            Err(e) => load.fail(format!("slow: {e}")),
        }
        for worker in old {
            master.wait_dead(worker.pid);
        }
        // Every generation serves some of the load before the next roll.
        master.wait_until("the new generation to answer", || {
            load.answered() >= before + 50
        });
    }
    assert!(
        slow_in_old > 0,
        "no slow request was in flight in an old worker at its stop signal"
    );
    let failures = load.finish(threads);
    (load.answered(), failures)
}

/// Guarantee 1 for apps that do nothing special: plain `axum::serve` with its documented
/// graceful shutdown loses nothing either, as each generation has sockets of its own (steering)
/// and an old worker stops only once drained. With `--no-steering`, its losses are counted.
#[test]
fn rolls_under_load_lose_no_request_with_serve_and_with_plain_axum_serve() {
    let (answered, failures) = rolls_under_load(&[], &[]);
    let (plain_answered, plain_failures) = rolls_under_load(&[], &["--plain"]);
    let (shared_answered, shared_failures) = rolls_under_load(&["--no-steering"], &["--plain"]);
    // The comparison the README and the benchmark quote; visible with `--nocapture`.
    eprintln!(
        "axum-app, {ROLLS} rolls of 2 workers under load: mcluster::serve {} failed of {}, \
         plain axum::serve {} failed of {}, plain axum::serve with --no-steering {} failed of {} \
         (first: {:?})",
        failures.len(),
        answered + failures.len() as u64,
        plain_failures.len(),
        plain_answered + plain_failures.len() as u64,
        shared_failures.len(),
        shared_answered + shared_failures.len() as u64,
        shared_failures.iter().take(3).collect::<Vec<_>>(),
    );
    for (what, answered, failures) in [
        ("mcluster::serve", answered, failures),
        ("plain axum::serve", plain_answered, plain_failures),
    ] {
        assert!(
            failures.is_empty(),
            "{} of {} requests failed with {what}: {:?}",
            failures.len(),
            answered + failures.len() as u64,
            &failures[..failures.len().min(20)]
        );
    }
}

/// What a long-lived client saw, and when.
enum Seen {
    /// An SSE event (name, data).
    Event(String, String),
    /// A WebSocket message: opcode, payload.
    Frame(u8, Vec<u8>),
    /// The end of the connection (or an error).
    End(String),
}

/// Reads an SSE stream (chunked) on a thread; each event and the end go to the receiver.
fn sse_client(port: u16) -> Receiver<(Instant, Seen)> {
    let (tx, rx) = mpsc::channel();
    let mut stream = connect(port).unwrap();
    stream
        .write_all(b"GET /sse HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let end = match read_head(&mut reader) {
            Ok(head) if head.status == 200 => read_events(&mut reader, &|event| {
                let _ = tx.send((Instant::now(), event));
            }),
            Ok(head) => format!("status {}", head.status),
            Err(e) => e.to_string(),
        };
        let _ = tx.send((Instant::now(), Seen::End(end)));
    });
    rx
}

/// Reads chunks of an SSE body, sending each complete event; returns how the stream ended.
fn read_events(reader: &mut impl BufRead, send: &dyn Fn(Seen)) -> String {
    let mut text = String::new();
    loop {
        let mut size = String::new();
        match reader.read_line(&mut size) {
            Ok(0) => return "end of file before the last chunk".into(),
            Ok(_) => {}
            Err(e) => return e.to_string(),
        }
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return format!("bad chunk size {size:?}");
        };
        let mut chunk = vec![0; size + 2];
        if let Err(e) = reader.read_exact(&mut chunk) {
            return e.to_string();
        }
        if size == 0 {
            return "end of stream".into();
        }
        text.push_str(&String::from_utf8_lossy(&chunk[..size]));
        while let Some((event, rest)) = text.split_once("\n\n") {
            let mut name = String::from("message");
            let mut data = String::new();
            for line in event.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    value.trim().clone_into(&mut name);
                } else if let Some(value) = line.strip_prefix("data:") {
                    value.trim().clone_into(&mut data);
                }
            }
            send(Seen::Event(name, data));
            text = rest.to_owned();
        }
    }
}

/// A WebSocket client on a thread: sends `hello`, then reports every frame it gets; answers a
/// close frame with one of its own, as the protocol asks.
fn ws_client(port: u16) -> Receiver<(Instant, Seen)> {
    let (tx, rx) = mpsc::channel();
    let mut stream = connect(port).unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let end = match read_head(&mut reader) {
            Ok(head) if head.status == 101 => {
                let mut writer = reader.get_ref().try_clone().unwrap();
                match write_frame(&mut writer, 0x1, b"hello") {
                    Ok(()) => loop {
                        match read_frame(&mut reader) {
                            Ok((opcode, payload)) => {
                                if opcode == 0x8 {
                                    let _ = write_frame(&mut writer, 0x8, &payload);
                                }
                                let _ = tx.send((Instant::now(), Seen::Frame(opcode, payload)));
                            }
                            Err(e) => break e.to_string(),
                        }
                    },
                    Err(e) => e.to_string(),
                }
            }
            Ok(head) => format!("status {}", head.status),
            Err(e) => e.to_string(),
        };
        let _ = tx.send((Instant::now(), Seen::End(end)));
    });
    rx
}

/// A masked frame (clients must mask), payload under 126 bytes.
fn write_frame(stream: &mut TcpStream, opcode: u8, payload: &[u8]) -> io::Result<()> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | opcode, 0x80 | u8::try_from(payload.len()).unwrap()];
    frame.extend(mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame)
}

/// An unmasked frame from the server: opcode and payload.
fn read_frame(reader: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head)?;
    let length = match head[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            reader.read_exact(&mut n)?;
            usize::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0u8; 8];
            reader.read_exact(&mut n)?;
            usize::try_from(u64::from_be_bytes(n)).unwrap()
        }
        n => usize::from(n),
    };
    let mut payload = vec![0; length];
    reader.read_exact(&mut payload)?;
    Ok((head[0] & 0x0f, payload))
}

/// The next thing a client saw (failing the test after the deadline).
#[track_caller]
fn next(client: &Receiver<(Instant, Seen)>, master: &Master) -> (Instant, Seen) {
    client
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("a client saw nothing for 30 s\n{}", master.dump()))
}

/// Waits for the `hello` event; returns its data.
#[track_caller]
fn sse_hello(client: &Receiver<(Instant, Seen)>, master: &Master) -> String {
    match next(client, master).1 {
        Seen::Event(name, data) if name == "hello" => data,
        Seen::Event(name, data) => panic!("first event {name}: {data}"),
        Seen::Frame(..) => unreachable!(),
        Seen::End(end) => panic!("SSE stream ended at once: {end}"),
    }
}

/// Skips ticks until the `bye` event, then expects the end of the stream.
#[track_caller]
fn sse_bye(client: &Receiver<(Instant, Seen)>, master: &Master) -> Instant {
    let bye_at = loop {
        match next(client, master) {
            (_, Seen::Event(name, _)) if name == "tick" => {}
            (at, Seen::Event(name, data)) => {
                assert_eq!((name.as_str(), data.as_str()), ("bye", "going away"));
                break at;
            }
            (_, Seen::Frame(..)) => unreachable!(),
            (_, Seen::End(end)) => panic!("SSE stream ended without its last event: {end}"),
        }
    };
    match next(client, master).1 {
        Seen::End(end) => assert_eq!(end, "end of stream"),
        Seen::Event(name, data) => panic!("an event after bye: {name}: {data}"),
        Seen::Frame(..) => unreachable!(),
    }
    bye_at
}

/// Waits for the echo of `hello`.
#[track_caller]
fn ws_echo(client: &Receiver<(Instant, Seen)>, master: &Master) {
    match next(client, master).1 {
        Seen::Frame(opcode, payload) => {
            assert_eq!((opcode, payload.as_slice()), (1, &b"hello"[..]));
        }
        Seen::Event(..) => unreachable!(),
        Seen::End(end) => panic!("WebSocket ended before the echo: {end}"),
    }
}

/// Expects a close frame with code 1001.
#[track_caller]
fn ws_going_away(client: &Receiver<(Instant, Seen)>, master: &Master) {
    match next(client, master).1 {
        Seen::Frame(0x8, payload) => {
            assert!(payload.len() >= 2, "close frame without a code");
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
            assert_eq!(&payload[2..], b"going away");
        }
        Seen::Frame(opcode, payload) => panic!("frame {opcode}: {payload:?} instead of close"),
        Seen::Event(..) => unreachable!(),
        Seen::End(end) => panic!("WebSocket ended without a close frame: {end}"),
    }
}

/// Watches `pid` on a thread; the receiver gets the moment it was first seen gone.
fn exit_watch(pid: i32) -> Receiver<Instant> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let start = Instant::now();
        while is_alive(pid) && start.elapsed() < Duration::from_mins(1) {
            thread::sleep(Duration::from_millis(2));
        }
        let _ = tx.send(Instant::now());
    });
    rx
}

#[test]
fn sse_and_websocket_clients_end_properly_and_promptly_at_a_roll_and_at_ctrl_c() {
    let (mut master, port) = start(1, &[]);
    let old = master.generation(1)[0];

    let sse = sse_client(port);
    assert!(sse_hello(&sse, &master).contains(&format!("(pid {}, ", old.pid)));
    let ws = ws_client(port);
    ws_echo(&ws, &master);
    // A keep-alive connection, idle at the stop signal.
    let mut idle = BufReader::new(connect(port).unwrap());
    idle.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    assert!(!read_reply(&mut idle).unwrap().close);

    let exited = exit_watch(old.pid);
    let mark = master.stderr_mark();
    master.signal(Signal::SIGHUP);
    let (ready_mark, _) = master.wait_for_stderr_after(mark, "mcluster: w0 ready (pid ");
    let ready_at = master.stderr_timed()[ready_mark - 1].0;
    // The stream's last event is the old worker's answer to its stop signal, which comes once
    // it is drained: the SSE stream and the WebSocket, which already delivered data, do not
    // hold that up (far less than the 30 s drain deadline).
    let bye_at = sse_bye(&sse, &master);
    ws_going_away(&ws, &master);
    assert!(
        bye_at.saturating_duration_since(ready_at) < Duration::from_secs(10),
        "the old worker got its stop signal {:?} after its replacement was ready\n{}",
        bye_at.saturating_duration_since(ready_at),
        master.dump()
    );
    let exited_at = exited.recv_timeout(Duration::from_mins(1)).unwrap();
    assert!(
        exited_at.saturating_duration_since(bye_at) < PROMPT_EXIT,
        "the old worker exited {:?} after its stop signal\n{}",
        exited_at.saturating_duration_since(bye_at),
        master.dump()
    );
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).map_err(|e| e.kind()),
        Ok(0),
        "the idle keep-alive connection is closed cleanly (end of file, no reset)"
    );

    // The clients reconnect, to the new generation.
    let new = master.generation(2)[0];
    let sse = sse_client(port);
    assert!(sse_hello(&sse, &master).contains(&format!("(pid {}, generation 2)", new.pid)));
    let ws = ws_client(port);
    ws_echo(&ws, &master);

    let exited = exit_watch(new.pid);
    let stopped_at = Instant::now();
    master.signal(Signal::SIGINT);
    let _ = sse_bye(&sse, &master);
    ws_going_away(&ws, &master);
    let exited_at = exited.recv_timeout(Duration::from_mins(1)).unwrap();
    assert!(
        exited_at.duration_since(stopped_at) < PROMPT_EXIT,
        "the worker exited {:?} after Ctrl-C\n{}",
        exited_at.duration_since(stopped_at),
        master.dump()
    );
    assert_eq!(master.wait_exit_code(), 0, "{}", master.dump());
}

/// How long a roll may take at most when its old worker holds only idle keep-alive connections
/// (and a 2 s request): well before [`KILL_TIMEOUT`], which would end a worker that held them.
const ROLL_DEADLINE: Duration = Duration::from_secs(10);

/// The master's `--kill-timeout` in the keep-alive test.
const KILL_TIMEOUT: &str = "30s";

/// `GET PATH` on a kept-alive connection (`reader`); the reply must keep the connection open.
#[track_caller]
fn get_kept_alive(reader: &mut BufReader<TcpStream>, path: &str) -> Reply {
    reader
        .get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .unwrap();
    let reply = read_reply(reader).unwrap();
    assert!(!reply.close, "{:?}", reply.body);
    reply
}

/// A browser's idle kept-alive connection to an old worker does not hold up the switch: the
/// draining worker answers what arrives on it for a moment (with `Connection: close`), then
/// closes it, so the roll — whose end waits until no old worker holds a connection — ends long
/// before the kill timeout, and a request after it gets the new generation. A request in
/// progress at the stop gets its whole response.
#[test]
fn a_kept_alive_connection_does_not_hold_up_the_switch_and_a_request_in_progress_is_answered() {
    let (master, port) = start_with(1, &["--kill-timeout", KILL_TIMEOUT], &[]);
    let old = master.generation(1)[0];
    let generation_1 = format!("(pid {}, generation 1)", old.pid);

    // A browser's connection: one page answered, then idle and kept alive.
    let mut kept = BufReader::new(connect(port).unwrap());
    assert!(get_kept_alive(&mut kept, "/").body.contains(&generation_1));
    // A kept-alive connection whose second request is in progress at the stop signal (2 s, and
    // the replacement is ready long before that).
    let mut busy = BufReader::new(connect(port).unwrap());
    assert!(get_kept_alive(&mut busy, "/").body.contains(&generation_1));
    busy.get_mut()
        .write_all(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    // Its `bye` says when the old worker's drain began.
    let sse = sse_client(port);
    assert!(sse_hello(&sse, &master).contains(&generation_1));

    let mark = master.stderr_mark();
    let hup_at = Instant::now();
    master.signal(Signal::SIGHUP);
    let _ = sse_bye(&sse, &master);
    // A request on the idle connection once the drain began: answered with `Connection: close`
    // (the switch is not complete yet), or the connection is closed first.
    let second = kept
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .and_then(|()| read_reply(&mut kept));
    if let Ok(reply) = &second {
        assert!(reply.close, "{} {:?}", reply.status, reply.body);
    }

    // The request in progress at the stop signal gets its whole response, and the connection
    // closes after it.
    let slow = read_reply(&mut busy).unwrap();
    assert_eq!(slow.status, 200, "{:?}", slow.body);
    assert!(
        slow.body.starts_with("Slept 2000 ms in ") && slow.body.contains(&generation_1),
        "{:?}",
        slow.body
    );
    assert!(
        slow.close,
        "the response in progress at the drain says Connection: close"
    );
    let mut rest = Vec::new();
    assert_eq!(busy.read_to_end(&mut rest).map_err(|e| e.kind()), Ok(0));

    // The roll ends once the old worker holds no connection: not at the kill timeout.
    let (rolled, _) =
        master.wait_for_stderr_after(mark, "mcluster: rolled 1 worker to generation 2 in ");
    let rolled_at = master.stderr_timed()[rolled - 1].0;
    assert!(
        rolled_at.duration_since(hup_at) < ROLL_DEADLINE,
        "the roll ended {:?} after the HUP (kill timeout {KILL_TIMEOUT})\n{}",
        rolled_at.duration_since(hup_at),
        master.dump()
    );
    let new = master.generation(2)[0];
    let fresh = get(port, "/").unwrap();
    assert!(
        fresh
            .body
            .contains(&format!("(pid {}, generation 2)", new.pid)),
        "{:?}",
        fresh.body
    );
}

#[test]
fn a_panicking_handler_answers_500_and_its_worker_is_replaced_without_other_failures() {
    let (master, port) = start(2, &[]);
    let (load, threads) = HttpLoad::start(port, 4, 2);
    let _stop = StopOnDrop(Arc::clone(&load));
    master.wait_until("the load to be answered", || load.answered() >= 20);

    let mark = master.stderr_mark();
    let reply = get(port, "/panic").unwrap();
    assert_eq!(reply.status, 500, "{:?}", reply.body);
    assert!(reply.close, "a 500 after a panic closes its connection");

    let (_, status) = master.wait_for_stderr_after(mark, "status: panicked at src/main.rs:");
    assert!(status.contains("boom (asked for by /panic)"), "{status}");
    let (_, stopping) = master.wait_for_stderr_after(mark, "is stopping by itself (STOPPING=1)");
    let panicked = pid_in(&stopping).unwrap();
    let (_, ready) = master.wait_for_stderr_after(mark, " ready (pid ");
    let replacement = pid_in(&ready).unwrap();
    assert_ne!(replacement, panicked);
    master.wait_dead(panicked);
    master.wait_until("the replacement to answer", || {
        load.pids.lock().unwrap().contains(&replacement)
    });

    let failures = load.finish(threads);
    assert!(
        failures.is_empty(),
        "{} of the other requests failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(20)],
        master.dump()
    );
}
