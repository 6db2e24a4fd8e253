//! `--metrics ADDR`: the master's numbers in the Prometheus text format, over HTTP.
//!
//! `GET /metrics` (any other path is a 404) answers with a snapshot taken through a
//! [`Handle`], so a scrape never holds up the supervision loop:
//!
//! | metric | type | what |
//! | --- | --- | --- |
//! | `mcluster_workers{state}` | gauge | workers by state: `starting`, `ready`, `stopping`, `backing_off` |
//! | `mcluster_size` | gauge | the configured number of workers |
//! | `mcluster_ready` | gauge | 1 when every slot has a ready worker |
//! | `mcluster_worker_restarts_total{slot}` | counter | restarts of the slot after a crash, a missed ready deadline or a silent watchdog |
//! | `mcluster_worker_resident_memory_bytes{slot,pid}` | gauge | each worker's RSS |
//! | `mcluster_rolls_started_total`, `mcluster_rolls_completed_total`, `mcluster_rolls_aborted_total` | counter | rolls |
//! | `mcluster_rolling` | gauge | 1 while a roll is under way |
//! | `mcluster_roll_duration_seconds` | histogram | rolls by how long they took, completed or aborted |
//! | `mcluster_last_roll_duration_seconds` | gauge | from the last roll's start to its end |
//! | `mcluster_last_roll_generation` | gauge | the generation the last roll rolled in, or tried to |
//! | `mcluster_serving_generation` | gauge | the generation new slots run |
//! | `mcluster_master_resident_memory_bytes` | gauge | the master's RSS |
//! | `mcluster_master_uptime_seconds` | gauge | since the master started |
//!
//! Each connection is served on a thread of its own, at most [`MAX_SCRAPERS`] at once, and must
//! send its request head within 5 s.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::Error;
use crate::control::Clients;
use crate::master::Handle;
use crate::status::{Record, Status};

/// How many scrapes are served at once.
pub const MAX_SCRAPERS: usize = 16;

/// The longest request head read, in bytes.
const MAX_HEAD: usize = 8 * 1024;

/// The metrics server: dropping it stops it.
pub(crate) struct MetricsServer {
    socket: TcpListener,
    address: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves scrapes through `handle`.
    pub(crate) fn start(addr: SocketAddr, handle: Handle) -> Result<Self, Error> {
        let context = || format!("cannot serve metrics on {addr}");
        let socket = TcpListener::bind(addr).map_err(|e| Error::io(context(), e))?;
        let address = socket.local_addr().map_err(|e| Error::io(context(), e))?;
        let accepting = socket.try_clone().map_err(|e| Error::io(context(), e))?;
        let rolls = Arc::new(Mutex::new(Histogram::default()));
        let records = handle.events();
        let counted = Arc::clone(&rolls);
        // Ends when the master stops and the subscription with it.
        thread::Builder::new()
            .name("metrics-rolls".to_owned())
            .spawn(move || {
                for record in records {
                    if let Record::RollEnded { duration_ms, .. } = record
                        && let Ok(mut rolls) = counted.lock()
                    {
                        rolls.observe(Duration::from_millis(duration_ms));
                    }
                }
            })
            .map_err(|e| Error::io(context(), e))?;
        let accept = thread::Builder::new()
            .name("metrics".to_owned())
            .spawn(move || accept_scrapes(&accepting, &handle, &rolls))
            .map_err(|e| Error::io(context(), e))?;
        Ok(Self {
            socket,
            address,
            accept: Some(accept),
        })
    }

    /// The address bound (with the port chosen for port 0).
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // A listening socket shut down for reading wakes its `accept` with an error.
        let _ =
            nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_scrapes(socket: &TcpListener, handle: &Handle, rolls: &Arc<Mutex<Histogram>>) {
    let clients = Clients::default();
    loop {
        let Some(stream) =
            crate::control::next_client(|| socket.accept().map(|(stream, _)| stream))
        else {
            return;
        };
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        let Some(slot) = clients.admit(MAX_SCRAPERS) else {
            respond(
                &stream,
                "503 Service Unavailable",
                "too many scrapes at once\n",
            );
            continue;
        };
        let handle = handle.clone();
        let rolls = Arc::clone(rolls);
        let _ = thread::Builder::new()
            .name("metrics-client".to_owned())
            .spawn(move || {
                let _slot = slot;
                serve(&stream, &handle, &rolls);
            });
    }
}

fn serve(stream: &TcpStream, handle: &Handle, rolls: &Mutex<Histogram>) {
    let Some(head) = read_head(stream) else {
        return respond(stream, "400 Bad Request", "no complete request head\n");
    };
    let request_line = head.lines().next().unwrap_or_default();
    let mut words = request_line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" {
        return respond(stream, "405 Method Not Allowed", "only GET\n");
    }
    if target.split('?').next() != Some("/metrics") {
        return respond(stream, "404 Not Found", "the metrics are at /metrics\n");
    }
    match handle.status() {
        Some(status) => {
            let rolls = rolls.lock().map(|rolls| rolls.clone()).unwrap_or_default();
            respond(stream, "200 OK", &render(&status, &rolls));
        }
        None => respond(
            stream,
            "503 Service Unavailable",
            "the master is stopping\n",
        ),
    }
}

/// The request head (up to the empty line), read within 5 s; `None` if it does not come.
fn read_head(mut stream: &TcpStream) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || head.len() > MAX_HEAD {
            return None;
        }
        stream.set_read_timeout(Some(left)).ok()?;
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return None,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    String::from_utf8(head).ok()
}

fn respond(mut stream: &TcpStream, status: &str, body: &str) {
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// The upper bounds of the roll duration histogram's buckets, in seconds.
const ROLL_BUCKETS: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The durations of the rolls that ended since the master started.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Per bound of [`ROLL_BUCKETS`], how many rolls took at most that long.
    buckets: [u64; ROLL_BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Histogram {
    /// Counts one roll.
    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        for (bound, count) in ROLL_BUCKETS.iter().zip(&mut self.buckets) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// The metrics of `status` (and of the rolls' durations) in the Prometheus text format.
// Prometheus samples are floats: counts beyond 2^53 are far beyond any master's life.
#[allow(clippy::cast_precision_loss)]
#[must_use]
pub fn render(status: &Status, rolls: &Histogram) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |value: f64| vec![(String::new(), value)];
    let by_state: Vec<(String, f64)> = ["starting", "ready", "stopping", "backing off"]
        .iter()
        .map(|state| {
            let count = status.workers.iter().filter(|w| w.state == *state).count();
            (
                format!("{{state=\"{}\"}}", state.replace(' ', "_")),
                count as f64,
            )
        })
        .collect();
    metric("mcluster_workers", "gauge", "Workers by state.", &by_state);
    metric(
        "mcluster_size",
        "gauge",
        "The configured number of workers.",
        &one(status.size as f64),
    );
    metric(
        "mcluster_ready",
        "gauge",
        "1 when every slot has a ready worker.",
        &one(f64::from(u8::from(status.ready))),
    );
    let mut restarts: Vec<(usize, u64)> = Vec::new();
    for worker in &status.workers {
        match restarts.iter_mut().find(|(slot, _)| *slot == worker.slot) {
            Some(entry) => entry.1 = entry.1.max(worker.restarts),
            None => restarts.push((worker.slot, worker.restarts)),
        }
    }
    restarts.sort_unstable();
    metric(
        "mcluster_worker_restarts_total",
        "counter",
        "Restarts of a slot after its worker crashed, missed its ready deadline or its watchdog.",
        &restarts
            .iter()
            .map(|(slot, count)| (format!("{{slot=\"{slot}\"}}"), *count as f64))
            .collect::<Vec<_>>(),
    );
    metric(
        "mcluster_worker_resident_memory_bytes",
        "gauge",
        "Resident memory of each worker process.",
        &status
            .workers
            .iter()
            .filter_map(|w| {
                Some((
                    format!("{{slot=\"{}\",pid=\"{}\"}}", w.slot, w.pid?),
                    w.rss_bytes? as f64,
                ))
            })
            .collect::<Vec<_>>(),
    );
    for (name, help, value) in [
        ("started", "Rolls started.", status.rolls.started),
        (
            "completed",
            "Rolls that moved every slot to their generation.",
            status.rolls.completed,
        ),
        (
            "aborted",
            "Rolls a failed replacement aborted.",
            status.rolls.aborted,
        ),
    ] {
        metric(
            &format!("mcluster_rolls_{name}_total"),
            "counter",
            help,
            &one(value as f64),
        );
    }
    metric(
        "mcluster_rolling",
        "gauge",
        "1 while a roll is under way.",
        &one(f64::from(u8::from(status.rolling))),
    );
    if let Some(last) = &status.last_roll {
        metric(
            "mcluster_last_roll_duration_seconds",
            "gauge",
            "From the last roll's start to its end.",
            &one(last.duration_ms as f64 / 1000.0),
        );
        metric(
            "mcluster_last_roll_generation",
            "gauge",
            "The generation the last roll rolled in, or tried to.",
            &one(last.generation as f64),
        );
    }
    let mut samples: Vec<(String, f64)> = ROLL_BUCKETS
        .iter()
        .zip(&rolls.buckets)
        .map(|(bound, count)| (format!("_bucket{{le=\"{bound}\"}}"), *count as f64))
        .collect();
    samples.extend([
        ("_bucket{le=\"+Inf\"}".to_owned(), rolls.count as f64),
        ("_sum".to_owned(), rolls.sum_seconds),
        ("_count".to_owned(), rolls.count as f64),
    ]);
    metric(
        "mcluster_roll_duration_seconds",
        "histogram",
        "How long rolls took, from their start to their end (completed or aborted).",
        &samples,
    );
    metric(
        "mcluster_serving_generation",
        "gauge",
        "The generation new slots run.",
        &one(status.serving_generation as f64),
    );
    if let Some(rss) = status.rss_bytes {
        metric(
            "mcluster_master_resident_memory_bytes",
            "gauge",
            "Resident memory of the master process.",
            &one(rss as f64),
        );
    }
    metric(
        "mcluster_master_uptime_seconds",
        "gauge",
        "Since the master started.",
        &one(status.uptime_ms as f64 / 1000.0),
    );
    out
}
