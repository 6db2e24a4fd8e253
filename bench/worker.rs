//! The throughput benchmark's worker and client (`bench/run.py --throughput-only`).
//!
//! `bench-worker ACCEPT` is a worker that answers one line per connection, served inline on one
//! thread (so only the way it waits for connections differs between variants). `ACCEPT` is:
//!
//! - `poll`: the listener non-blocking, `poll(2)`, then `accept` until `EAGAIN` (what
//!   `fixture-echo` does, and any event loop built on `poll`);
//! - `blocking`: the listener blocking, one `accept` after another;
//! - `epoll`: the listener non-blocking, in a level-triggered epoll set, then `accept` until
//!   `EAGAIN` (what mio/tokio do, bar the edge trigger);
//! - `epoll-edge`: the same, edge-triggered (`EPOLLET`, as mio/tokio register sockets);
//! - `epoll-exclusive`: level-triggered with `EPOLLEXCLUSIVE`.
//!
//! It counts wake-ups (returns of `poll`/`epoll_wait` with the listener ready, or of a blocking
//! `accept`), empty ones (the first `accept` after it found nothing: another worker had taken
//! the connection), connections accepted and `accept` calls that found nothing (`EAGAIN`), and
//! prints them on SIGTERM: `bench-worker: exit pid=… accept=… wakeups=… empty=… accepted=…
//! eagain=…`.
//!
//! `bench-worker client PORT SECONDS LOOPS` opens a fresh connection to `127.0.0.1:PORT`, sends
//! `ping`, reads the answer to EOF, again and again, in `LOOPS` threads for `SECONDS`; then prints
//! `bench-client: requests=… errors=… seconds=… p50_us=… p99_us=… max_us=…` and waits for its
//! stdin to close, so that its CPU time can be read from `/proc` before it exits.

#[cfg(target_os = "linux")]
#[path = "worker_linux.rs"]
mod linux;

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
    #[cfg(not(target_os = "linux"))]
    {
        eprintln!("bench-worker: the throughput benchmark runs on Linux only (epoll)");
        std::process::exit(2);
    }
}
