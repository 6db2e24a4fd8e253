//! The dev-switch benchmark's app (`python3 bench/run.py --dev-switch-only`): an axum app as its
//! users write it for `systemfd` + `cargo watch`, knowing nothing of mcluster. It takes its
//! socket with `listenfd` (or binds `127.0.0.1:$PORT`, 3000 by default), spends 0.3 s starting
//! up (a database pool, templates: here a sleep), then serves `/`; it never sends `READY=1`. On
//! SIGTERM or Ctrl-C it stops accepting and finishes the requests it has (axum's graceful
//! shutdown). The benchmark edits `ANSWER` and times the switch.

use std::time::Duration;

use axum::{Router, routing::get};

/// The text `/` answers; the benchmark rewrites this line (`slow-axum vN`).
const ANSWER: &str = "slow-axum v0";

/// The start-up work before the app serves.
const START_UP: Duration = Duration::from_millis(300);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = match listenfd::ListenFd::from_env().take_tcp_listener(0)? {
        Some(listener) => listener,
        None => {
            let port = std::env::var("PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(3000);
            std::net::TcpListener::bind(("127.0.0.1", port))?
        }
    };
    tokio::time::sleep(START_UP).await;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = Router::new().route(
        "/",
        get(|| async { format!("{ANSWER} pid={}\n", std::process::id()) }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
