//! The example worker: a tiny HTTP/1.1 server that says which worker answered.
//!
//! Run it under mcluster — `mcluster dev --manifest-path examples/hello-app/Cargo.toml` from the
//! repository (see the README) — then `curl http://127.0.0.1:3000/`. It takes its sockets with
//! [`mcluster::worker::listeners`], says `READY=1`, and on SIGTERM stops accepting, finishes the
//! requests in flight, and exits.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use mcluster::worker;
use nix::poll::{PollFd, PollFlags, poll};

fn main() -> std::io::Result<()> {
    let listeners: Vec<TcpListener> = worker::listeners()?
        .into_iter()
        .filter_map(worker::Listener::into_tcp)
        .collect();
    if listeners.is_empty() {
        eprintln!("hello: no TCP socket passed; run me under mcluster --listen HOST:PORT");
        std::process::exit(1);
    }
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&term))?;
    for listener in &listeners {
        listener.set_nonblocking(true)?;
    }
    worker::ready()?;

    let mut in_flight: Vec<JoinHandle<()>> = Vec::new();
    while !term.load(Ordering::SeqCst) {
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .collect();
        // Wake up now and then to notice SIGTERM; EINTR is fine too.
        let _ = poll(&mut fds, 200u16);
        for listener in &listeners {
            while !term.load(Ordering::SeqCst) {
                let Ok((conn, _)) = listener.accept() else {
                    break;
                };
                in_flight.push(thread::spawn(move || answer(conn)));
            }
        }
        in_flight.retain(|handle| !handle.is_finished());
    }
    worker::stopping()?;
    for handle in in_flight {
        let _ = handle.join();
    }
    Ok(())
}

/// Reads the request head (the body, if any, is ignored) and answers `200 OK`.
fn answer(conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim_end() != "" {
        line.clear();
    }
    let body = format!(
        "Hello from worker {} (pid {}, generation {})\n",
        worker::worker_id().map_or_else(|| "-".into(), |id| id.to_string()),
        std::process::id(),
        worker::generation().map_or_else(|| "-".into(), |g| g.to_string()),
    );
    let mut conn = reader.into_inner();
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
