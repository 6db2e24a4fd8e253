//! The second example worker: an axum 0.8 app on [`mcluster::serve`], which drains without
//! losing a request when mcluster stops or replaces it.
//!
//! Run it under mcluster — `mcluster dev --manifest-path examples/axum-app/Cargo.toml` from the
//! repository — or alone with `cargo run` (it then listens on 127.0.0.1:3000). Endpoints:
//!
//! - `/` says which worker answered;
//! - `/page` is an HTML page, with `mcluster dev`'s live-reload script added by
//!   [`mcluster::serve::livereload`]: it follows every save by itself;
//! - `/slow?ms=N` answers after N milliseconds (default 200);
//! - `/sse` is a stream of server-sent events, one a second, that ends with an `event: bye` as
//!   soon as the worker is told to stop;
//! - `/ws` is a WebSocket echo that closes with 1001 ("going away") when the worker stops;
//! - `/panic` panics: that request gets a 500, and the worker is replaced.
//!
//! `axum-app --plain` serves the same app the way axum documents it, `axum::serve` with
//! `with_graceful_shutdown`: the comparison the tests and the benchmark make.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::RawQuery;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use futures_util::Stream;
use futures_util::{StreamExt, stream};
use mcluster::worker;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(hello))
        .route("/slow", get(slow))
        .route("/sse", get(sse))
        .route("/ws", get(ws))
        .route("/panic", get(panic))
        .route("/page", get(page))
        .layer(axum::middleware::from_fn(mcluster::serve::livereload));
    if std::env::args().nth(1).as_deref() == Some("--plain") {
        return plain(app).await;
    }
    mcluster::serve::serve(app).await
}

/// The same app on plain `axum::serve` with its graceful shutdown, as axum documents it.
async fn plain(app: Router) -> std::io::Result<()> {
    let listener = match worker::listeners()?.into_iter().find_map(worker::Listener::into_tcp) {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)?
        }
        None => tokio::net::TcpListener::bind("127.0.0.1:3000").await?,
    };
    let mut term = signal(SignalKind::terminate())?;
    worker::ready()?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await
}

fn whoami() -> String {
    format!(
        "worker {} (pid {}, generation {})",
        worker::worker_id().map_or_else(|| "-".into(), |id| id.to_string()),
        std::process::id(),
        worker::generation().map_or_else(|| "-".into(), |g| g.to_string()),
    )
}

async fn hello() -> String {
    format!("Hello from {}\n", whoami())
}

/// The text of [`page`]: edit it under `mcluster dev` and the open pages show it.
const PAGE_TEXT: &str = "A page served by axum";

async fn page() -> axum::response::Html<String> {
    axum::response::Html(format!(
        "<!doctype html>\n<html><head><title>axum-app</title></head>\n<body>\n\
         <p id=\"message\">{PAGE_TEXT}</p>\n<p>{}</p>\n</body></html>\n",
        whoami()
    ))
}

async fn slow(RawQuery(query): RawQuery) -> String {
    let ms = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("ms=")))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(200);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("Slept {ms} ms in {}\n", whoami())
}

/// An event a second; a last `bye` event when the worker stops, then the end of the stream
/// (the browser's `EventSource` reconnects, to the next generation).
async fn sse() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let token = mcluster::serve::shutdown_token();
    let hello = Event::default().event("hello").data(whoami());
    let ticks = stream::unfold((token, 0u64), |(token, n)| async move {
        if token.is_cancelled() {
            return None;
        }
        tokio::select! {
            () = token.cancelled() => {
                Some((Ok(Event::default().event("bye").data("going away")), (token, n)))
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                Some((Ok(Event::default().event("tick").data(n.to_string())), (token, n + 1)))
            }
        }
    });
    Sse::new(stream::iter([Ok(hello)]).chain(ticks))
}

/// Echoes text and binary messages; closes with 1001 when the worker stops.
async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    let token = mcluster::serve::shutdown_token();
    loop {
        tokio::select! {
            () = token.cancelled() => {
                let frame = CloseFrame { code: close_code::AWAY, reason: "going away".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                // Wait briefly for the client's close frame, as the protocol asks.
                let _ = tokio::time::timeout(Duration::from_millis(200), socket.recv()).await;
                return;
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    if socket.send(message).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn panic() -> &'static str {
    panic!("boom (asked for by /panic)");
}
