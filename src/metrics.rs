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
//! It runs on the master's HTTP stack (`crate::http`): a connection is a task on the one I/O
//! thread, at most [`MAX_SCRAPERS`] at once, and must send its request head within 5 s; a
//! scrape awaits the supervision loop's answer without holding that thread. The roll durations
//! are counted by a task on the same loop that follows the lifecycle events: no thread of its
//! own.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};

use crate::config::Error;
use crate::handle::Handle;
use crate::http::{Handler, IoLoop, Limits, Request, Response, Server, text};
use crate::status::{FOLLOWER_QUEUE, Record, Status};

/// How many connections are served at once (more get a 503 at once).
pub(crate) const MAX_SCRAPERS: usize = 64;

/// How long a scrape waits for the supervision loop's answer.
const STATUS_DEADLINE: Duration = Duration::from_secs(5);

/// The metrics server: dropping it stops it.
pub(crate) struct MetricsServer {
    address: SocketAddr,
    _server: Server,
}

impl MetricsServer {
    /// Binds `addr` and serves scrapes through `handle`.
    pub(crate) fn start(addr: SocketAddr, handle: Handle) -> Result<Self, Error> {
        let context = || format!("cannot serve metrics on {addr}");
        let socket = TcpListener::bind(addr).map_err(|e| Error::io(context(), e))?;
        let address = socket.local_addr().map_err(|e| Error::io(context(), e))?;
        let rolls = Arc::new(Mutex::new(Histogram::default()));
        // A task on the loop follows the roll ends; it ends when the master stops.
        let io_loop = IoLoop::handle().map_err(|e| Error::io(context(), e))?;
        io_loop.spawn(count_rolls(handle.clone(), Arc::clone(&rolls)));
        let handler: Handler = Arc::new(move |request, _| {
            Box::pin(scrape(request, handle.clone(), Arc::clone(&rolls)))
        });
        let limits = Limits {
            short: MAX_SCRAPERS,
            streams: 0,
        };
        let server =
            Server::start(vec![socket], limits, &handler).map_err(|e| Error::io(context(), e))?;
        Ok(Self {
            address,
            _server: server,
        })
    }

    /// The address bound (with the port chosen for port 0).
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }
}

/// Counts every roll's duration in `rolls`, from the lifecycle events, until the master stops.
/// A follower that fell [`FOLLOWER_QUEUE`] records behind (the loop busy with one long turn of
/// the driver, as when thousands of workers spawn at once) is dropped by the master: it follows
/// again, and only a roll that ended meanwhile goes uncounted.
async fn count_rolls(handle: Handle, rolls: Arc<Mutex<Histogram>>) {
    loop {
        let (mut records, overflowed) = handle.follow(FOLLOWER_QUEUE);
        while let Some(record) = records.recv().await {
            if let Record::RollEnded { duration_ms, .. } = record
                && let Ok(mut rolls) = rolls.lock()
            {
                rolls.observe(Duration::from_millis(duration_ms));
            }
        }
        if !overflowed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
    }
}

async fn scrape(request: Request, handle: Handle, rolls: Arc<Mutex<Histogram>>) -> Response {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    if request.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "the metrics are at /metrics\n");
    }
    let Some(answer) = handle.ask_status() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the master is stopping\n");
    };
    let status = match tokio::time::timeout(STATUS_DEADLINE, answer.answer()).await {
        Ok(Some(status)) => status,
        Ok(None) => {
            return text(StatusCode::SERVICE_UNAVAILABLE, "the master is stopping\n");
        }
        Err(_) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the master did not answer in time\n",
            );
        }
    };
    let rolls = rolls.lock().map(|rolls| rolls.clone()).unwrap_or_default();
    let mut response = text(StatusCode::OK, render(&status, &rolls));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The upper bounds of the roll duration histogram's buckets, in seconds.
const ROLL_BUCKETS: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The durations of the rolls that ended since the master started.
#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    /// Per bound of [`ROLL_BUCKETS`], how many rolls took at most that long.
    buckets: [u64; ROLL_BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Histogram {
    /// Counts one roll.
    pub(crate) fn observe(&mut self, duration: Duration) {
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
pub(crate) fn render(status: &Status, rolls: &Histogram) -> String {
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
