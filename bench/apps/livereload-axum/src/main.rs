//! The live-reload benchmark's app (`python3 bench/run.py --livereload-only`): an axum app that
//! serves `/` as an HTML page with the text the benchmark edits in `<p id="text">`. One source,
//! two ways of reloading the browser, chosen by a cargo feature:
//!
//! - `mcluster`: the `mcluster::serve::livereload` middleware puts the script of `mcluster
//!   dev`'s live-reload channel into the page; run by `mcluster dev --features mcluster`.
//! - `tower`: `tower_livereload::LiveReloadLayer` (its defaults), run by `systemfd --no-pid -s
//!   http::127.0.0.1:PORT -- cargo watch -x 'run --features tower'`.
//!
//! Either way the app takes its socket with `listenfd` (or binds `127.0.0.1:$PORT`, 3000 by
//! default) and serves with plain `axum::serve`. Under mcluster it finishes its requests on
//! SIGTERM (axum's graceful shutdown: old workers drain while the new ones take over); the
//! tower variant serves as tower-livereload's own example does, without a graceful shutdown,
//! since its event stream is a request that never finishes and would hold a drain forever.

use axum::{Router, response::Html, routing::get};

/// The text in the page; the benchmark rewrites this line (`livereload vN`).
const TEXT: &str = "livereload v0";

async fn index() -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>livereload-axum</title></head>\n\
         <body><p id=\"text\">{TEXT}</p></body></html>\n"
    ))
}

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
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = Router::new().route("/", get(index));
    #[cfg(feature = "mcluster")]
    let app = app.layer(axum::middleware::from_fn(mcluster::serve::livereload));
    #[cfg(feature = "tower")]
    let app = app.layer(tower_livereload::LiveReloadLayer::new());
    #[cfg(feature = "mcluster")]
    return axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await;
    #[cfg(not(feature = "mcluster"))]
    axum::serve(listener, app).await
}

#[cfg(feature = "mcluster")]
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
