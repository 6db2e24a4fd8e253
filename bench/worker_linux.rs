//! The Linux body of `bench-worker` (see `worker.rs`): epoll is Linux's.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::process::exit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mcluster::worker::{self, Socket, Stream};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use signal_hook::consts::SIGTERM;
use signal_hook::iterator::Signals;

/// Returns of `poll`/`epoll_wait` (or of a blocking `accept`).
static WAKEUPS: AtomicU64 = AtomicU64::new(0);
/// Wake-ups whose first `accept` found nothing: the connection went to another worker.
static EMPTY: AtomicU64 = AtomicU64::new(0);
/// Connections accepted.
static ACCEPTED: AtomicU64 = AtomicU64::new(0);
/// `accept` calls that found the queue empty: another worker took the connection first.
static EAGAIN: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy)]
enum Accept {
    Poll,
    Blocking,
    Epoll { flags: EpollFlags },
}

pub(crate) fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let accept = match args.first().map(String::as_str) {
        Some("client") => return client(&args[1..]),
        Some("poll") => Accept::Poll,
        Some("blocking") => Accept::Blocking,
        Some("epoll") => Accept::Epoll {
            flags: EpollFlags::empty(),
        },
        Some("epoll-edge") => Accept::Epoll {
            flags: EpollFlags::EPOLLET,
        },
        Some("epoll-exclusive") => Accept::Epoll {
            flags: EpollFlags::EPOLLEXCLUSIVE,
        },
        _ => fail(
            "usage: bench-worker poll|blocking|epoll|epoll-edge|epoll-exclusive | client PORT SECONDS LOOPS",
        ),
    };
    let mode = args[0].clone();
    let listeners = worker::listeners().unwrap_or_else(|e| fail(&format!("listeners: {e}")));
    let [listener] = listeners.as_slice() else {
        fail("wants exactly one listener")
    };
    let socket = listener.socket();
    socket
        .set_nonblocking(!matches!(accept, Accept::Blocking))
        .unwrap_or_else(|e| fail(&format!("set_nonblocking: {e}")));

    // The counters are printed by a thread of their own, which then ends the process: a worker
    // blocked in `accept` would not see a flag (signal-hook restarts the call).
    let mut signals = Signals::new([SIGTERM]).unwrap_or_else(|e| fail(&format!("signals: {e}")));
    thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!(
                "bench-worker: exit pid={} accept={mode} wakeups={} empty={} accepted={} eagain={}",
                std::process::id(),
                WAKEUPS.load(Ordering::Relaxed),
                EMPTY.load(Ordering::Relaxed),
                ACCEPTED.load(Ordering::Relaxed),
                EAGAIN.load(Ordering::Relaxed),
            );
            exit(0);
        }
    });

    eprintln!("bench-worker: serving pid={}", std::process::id());
    worker::ready().unwrap_or_else(|e| fail(&format!("notify: {e}")));
    match accept {
        Accept::Poll => loop {
            let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
            if wait(poll(&mut fds, PollTimeout::NONE)) {
                accept_all(socket);
            }
        },
        Accept::Blocking => loop {
            match socket.accept() {
                Ok(conn) => {
                    WAKEUPS.fetch_add(1, Ordering::Relaxed);
                    ACCEPTED.fetch_add(1, Ordering::Relaxed);
                    serve(conn);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => fail(&format!("accept: {e}")),
            }
        },
        Accept::Epoll { flags } => {
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
                .unwrap_or_else(|e| fail(&format!("epoll_create1: {e}")));
            epoll
                .add(socket, EpollEvent::new(EpollFlags::EPOLLIN | flags, 0))
                .unwrap_or_else(|e| fail(&format!("epoll_ctl: {e}")));
            let mut events = [EpollEvent::empty()];
            loop {
                if wait(epoll.wait(&mut events, EpollTimeout::NONE)) {
                    accept_all(socket);
                }
            }
        }
    }
}

/// Counts a wake-up with something ready; `false` after an interrupted wait.
fn wait<T: PartialEq + From<u8>>(result: nix::Result<T>) -> bool {
    match result {
        Err(nix::errno::Errno::EINTR) => false,
        Ok(n) if n == T::from(0) => false,
        Ok(_) => {
            WAKEUPS.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(e) => fail(&format!("wait: {e}")),
    }
}

/// Accepts and serves every waiting connection; counts the `EAGAIN` that ends it, and the
/// wake-up as empty if that was the first `accept`.
fn accept_all(socket: &Socket) {
    let mut first = true;
    loop {
        match socket.accept() {
            Ok(conn) => {
                ACCEPTED.fetch_add(1, Ordering::Relaxed);
                first = false;
                serve(conn);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                EAGAIN.fetch_add(1, Ordering::Relaxed);
                if first {
                    EMPTY.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => fail(&format!("accept: {e}")),
        }
    }
}

/// Reads one line and answers it; a broken client is dropped.
fn serve(conn: Stream) {
    let Stream::Tcp(mut conn) = conn else {
        return;
    };
    let mut buf = [0u8; 256];
    let mut len = 0;
    while !buf[..len].contains(&b'\n') && len < buf.len() {
        match conn.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
    }
    let reply = format!(
        "pid={} {}",
        std::process::id(),
        String::from_utf8_lossy(&buf[..len])
    );
    let _ = conn.write_all(reply.as_bytes());
}

fn client(args: &[String]) {
    let [port, seconds, loops] = args else {
        fail("usage: bench-worker client PORT SECONDS LOOPS")
    };
    let port: u16 = port.parse().unwrap_or_else(|_| fail("bad PORT"));
    let seconds: f64 = seconds.parse().unwrap_or_else(|_| fail("bad SECONDS"));
    let loops: usize = loops.parse().unwrap_or_else(|_| fail("bad LOOPS"));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..loops)
        .map(|_| thread::spawn(move || client_loop(port, end)))
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    for handle in threads {
        let (lat, err) = handle.join().unwrap_or_default();
        latencies.extend(lat);
        errors += err;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        // Nearest rank.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1]
    };
    println!(
        "bench-client: requests={} errors={errors} seconds={elapsed:.4} p50_us={} p99_us={} max_us={}",
        latencies.len(),
        at(0.50),
        at(0.99),
        latencies.last().copied().unwrap_or(0),
    );
    let _ = io::stdout().flush();
    let _ = io::stdin().read_to_end(&mut Vec::new());
}

/// One loop: (latency of each answered request in µs, failed requests).
fn client_loop(port: u16, end: Instant) -> (Vec<u32>, u64) {
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut errors = 0;
    let mut reply = Vec::with_capacity(64);
    while Instant::now() < end {
        let t0 = Instant::now();
        reply.clear();
        let ok = TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut conn| {
                conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                conn.write_all(b"ping\n")?;
                conn.read_to_end(&mut reply)
            })
            .is_ok_and(|_| reply.ends_with(b" ping\n"));
        if ok {
            latencies.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
        } else {
            errors += 1;
        }
    }
    (latencies, errors)
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-worker: {msg}");
    exit(2);
}
