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

/// Reads the request head (the body, if any, is ignored) and answers: `/static/…` from the
/// `static/` directory (read at each request, so a stylesheet edit needs no rebuild), `/` as a
/// page for a browser (with `mcluster dev`'s live-reload script) or as one line of text for
/// anything else (`curl`).
fn answer(conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    let mut path = String::new();
    let mut browser = false;
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim_end() != "" {
        if path.is_empty() {
            // Without its query (a stylesheet reloaded in place comes with a cache-buster).
            let target = line.split_whitespace().nth(1).unwrap_or("/");
            path = target.split('?').next().unwrap_or("/").to_owned();
        } else if line.to_ascii_lowercase().starts_with("accept:") && line.contains("text/html") {
            browser = true;
        }
        line.clear();
    }
    let message = format!(
        "Hello from worker {} (pid {}, generation {})",
        worker::worker_id().map_or_else(|| "-".into(), |id| id.to_string()),
        std::process::id(),
        worker::generation().map_or_else(|| "-".into(), |g| g.to_string()),
    );
    let (status, kind, body) = if let Some(name) = path.strip_prefix("/static/") {
        static_file(name)
    } else if browser {
        let page = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>hello-app</title>\
             <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>\
             <p id=\"message\">{message}</p>{}</body></html>",
            worker::livereload_tag().unwrap_or_default()
        );
        ("200 OK", "text/html; charset=utf-8", page.into_bytes())
    } else {
        ("200 OK", "text/plain", format!("{message}\n").into_bytes())
    };
    let mut conn = reader.into_inner();
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(&body);
}

/// A file of the `static/` directory beside `Cargo.toml`.
fn static_file(name: &str) -> (&'static str, &'static str, Vec<u8>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    let safe = !name.is_empty() && name.split('/').all(|part| !part.is_empty() && part != "..");
    match std::fs::read(dir.join(name)) {
        Ok(bytes) if safe => {
            let kind = if name.ends_with(".css") {
                "text/css"
            } else {
                "application/octet-stream"
            };
            ("200 OK", kind, bytes)
        }
        _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    }
}
