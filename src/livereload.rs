//! The dev master's live-reload channel: pages that include its script reload themselves when a
//! switch is complete, swap stylesheets in place, and show a failed build's errors in an
//! overlay.
//!
//! A small HTTP server on a loopback port of its own (default `127.0.0.1:35729`, LiveReload's
//! port), one thread per connection:
//!
//! - `GET /livereload.js`: the script. It opens an `EventSource` on `/events` of the origin it was
//!   loaded from, and reconnects after a master restart (then it reloads the page, whose server
//!   is new too: every master has an instance id of its own, sent first on every stream).
//! - `GET /events`: a `text/event-stream` of `hello` (the instance id, and when pages were last
//!   told to reload: a page that loaded before that and connects only now reloads), `reload`, `css` (reload
//!   the stylesheets: every `<link rel="stylesheet">` gets a new cache-busting query),
//!   `error-overlay` (a failed build's diagnostics, JSON-encoded text, ANSI colours removed) and
//!   `clear`.
//! - `GET /livereload` with `Upgrade: websocket`: the LiveReload protocol (version 7), for the
//!   LiveReload browser extensions and `livereload.js`: `hello` both ways, then `reload`
//!   commands.
//!
//! [`BuildingPage`] answers HTTP on the app's own listeners while no generation serves, with a
//! page that includes the script: a tab opened during the first build turns into the app by
//! itself.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::http::{
    Body, Broadcaster, Connection, Handler, Limits, Request, Response, Server, Site, respond, text,
};

/// LiveReload's port, which the browser extensions and `livereload.js` clients look for.
pub(crate) const DEFAULT_PORT: u16 = 35729;

/// Connections of the live-reload channel: pages' streams, and requests (the script) beside
/// them, which the streams never take the places of.
const LIMITS: Limits = Limits {
    short: 32,
    streams: 32,
};

/// Connections of the building page (no streams).
const BUILDING_LIMITS: Limits = Limits {
    short: 64,
    streams: 0,
};

/// The script pages include.
const SCRIPT: &str = include_str!("livereload.js");

/// What the server says first on a LiveReload protocol connection.
const WEBSOCKET_HELLO: &str = "{\"command\":\"hello\",\"protocols\":[\"http://livereload.com/protocols/official-7\"],\"serverName\":\"mcluster\"}";

/// Origins of the LiveReload browser extensions, which may open the WebSocket (it carries
/// reload commands only, never diagnostics): a web page cannot have them.
const EXTENSION_SCHEMES: [&str; 3] = [
    "chrome-extension://",
    "moz-extension://",
    "safari-web-extension://",
];

/// A message for every connected page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// Reload the page: a switch is complete.
    Reload,
    /// Reload the stylesheets only.
    Css,
    /// A build failed: show its diagnostics until a build succeeds.
    Failed(String),
    /// A build succeeded: the diagnostics go, the page stays.
    Clear,
}

/// What every page is told first, and what the building page shows.
#[derive(Debug, Default)]
struct Shown {
    /// A failed build's diagnostics, until a build succeeds ([`Message::Clear`]): a page
    /// that reloads meanwhile (a roll of the old binary, an asset) shows them again.
    error: Option<String>,
}

struct Shared {
    /// Identifies this master to pages that reconnect.
    instance: String,
    shown: Mutex<Shown>,
    /// When pages were last told to reload (milliseconds since the epoch): a page that started
    /// loading before and connects only now (it missed the event) reloads when it hears this.
    reloaded_at: AtomicU64,
    /// `EventSource`s: server-sent events, ready to write.
    events: Arc<Broadcaster<Bytes>>,
    /// LiveReload protocol clients: the commands' text.
    websockets: Arc<Broadcaster<String>>,
    /// The names this server answers for, the pages that may read it.
    site: Site,
}

/// The running live-reload server; stops when dropped.
pub(crate) struct LiveReload {
    shared: Arc<Shared>,
    address: SocketAddr,
    server: Option<Server>,
}

impl LiveReload {
    /// Binds `address` and starts serving the pages of the app listening on `app`.
    pub(crate) fn start(address: SocketAddr, app: &[SocketAddr]) -> io::Result<Self> {
        let listener = TcpListener::bind(address)?;
        let address = listener.local_addr()?;
        let instance = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos())
        );
        let shared = Arc::new(Shared {
            instance,
            shown: Mutex::new(Shown::default()),
            reloaded_at: AtomicU64::new(0),
            events: Broadcaster::new(),
            websockets: Broadcaster::new(),
            site: Site::new(&[address], app),
        });
        let serving = Arc::clone(&shared);
        let handler: Handler = Arc::new(move |request, connection| {
            let response = answer(&serving, request, connection);
            Box::pin(std::future::ready(response))
        });
        let server = Server::start(vec![listener], LIMITS, &handler)?;
        Ok(Self {
            shared,
            address,
            server: Some(server),
        })
    }

    /// Where it listens.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// The script's URL.
    pub(crate) fn script_url(&self) -> String {
        format!("http://{}/livereload.js", self.address)
    }

    /// The `<script>` tag a page includes.
    pub(crate) fn script_tag(&self) -> String {
        format!("<script src=\"{}\"></script>", self.script_url())
    }

    /// Tells every connected page. Returns at once: a page that does not keep up is dropped
    /// (it reconnects, and hears the error first then).
    pub(crate) fn send(&self, message: &Message) {
        if *message == Message::Reload {
            self.shared
                .reloaded_at
                .store(epoch_millis(), Ordering::SeqCst);
        }
        let event = match message {
            Message::Failed(text) => {
                let text = strip_ansi(text);
                let event = event("error-overlay", &json_string(&text));
                if let Ok(mut current) = self.shared.shown.lock() {
                    current.error = Some(text);
                }
                event
            }
            Message::Clear => {
                if let Ok(mut current) = self.shared.shown.lock() {
                    current.error = None;
                }
                event("clear", "")
            }
            Message::Css => event("css", ""),
            Message::Reload => event("reload", ""),
        };
        self.shared.events.send(&event);
        let path = match message {
            Message::Css => "style.css",
            Message::Reload => "index.html",
            // The protocol has no overlay: such a client never showed the diagnostics, and
            // shows what serves still; a reload would show the same (it waits for the next).
            Message::Failed(_) | Message::Clear => return,
        };
        self.shared.websockets.send(&format!(
            "{{\"command\":\"reload\",\"path\":\"{path}\",\"liveCSS\":true}}"
        ));
    }

    /// A function that renders the page the app's listeners answer with while no generation
    /// serves, for the server that answers there.
    pub(crate) fn page_source(&self) -> impl Fn() -> String + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        let tag = self.script_tag();
        move || building_page(&shared, &tag)
    }
}

impl Drop for LiveReload {
    fn drop(&mut self) {
        drop(self.server.take());
        self.shared.events.close_all();
        self.shared.websockets.close_all();
    }
}

fn building_page(shared: &Shared, script_tag: &str) -> String {
    let error = shared
        .shown
        .lock()
        .ok()
        .and_then(|shown| shown.error.clone());
    let body = match error {
        Some(error) => format!(
            "<h1>the build failed</h1><pre>{}</pre><p>Save a fix: this page follows.</p>",
            html_escape(&error)
        ),
        None => "<h1>building…</h1><p>mcluster is building the app; this page turns into \
                 it when the first workers are up.</p>"
            .to_owned(),
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mcluster dev</title>\
         <style>body{{font:15px/1.5 system-ui,sans-serif;margin:3em}}pre{{background:#111;\
         color:#eee;padding:1em;overflow:auto}}</style></head><body data-mcluster-building>{body}{script_tag}</body></html>"
    )
}

/// One server-sent event.
fn event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The refusal of a request whose `Host` is not one of this server's names.
fn wrong_host() -> Response {
    text(
        StatusCode::MISDIRECTED_REQUEST,
        "mcluster answers here for localhost and its own address only\n",
    )
}

fn answer(shared: &Arc<Shared>, request: Request, connection: Arc<Connection>) -> Response {
    if !shared.site.host_allowed(&request) {
        return wrong_host();
    }
    let path = request.uri().path().to_owned();
    let origin = match shared.site.check_origin(&request) {
        Ok(origin) => origin.map(ToOwned::to_owned),
        Err(origin)
            if path == "/livereload"
                && EXTENSION_SCHEMES
                    .iter()
                    .any(|scheme| origin.starts_with(scheme)) =>
        {
            None
        }
        Err(origin) => {
            return text(
                StatusCode::FORBIDDEN,
                format!("mcluster's live reload is for the app's own pages, not {origin}\n"),
            );
        }
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let mut response = match path.as_str() {
        "/livereload.js" => respond(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
        "/events" => events(shared, &connection),
        "/livereload" => websocket(shared, request, connection),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if let Some(origin) = origin.and_then(|origin| HeaderValue::from_str(&origin).ok()) {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

fn too_many_pages() -> Response {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many pages follow this master\n",
    )
}

/// `GET /events`: `hello` (and the error shown, if any), then every message.
fn events(shared: &Arc<Shared>, connection: &Arc<Connection>) -> Response {
    if !connection.become_stream() {
        return too_many_pages();
    }
    // Subscribed before the first events are written: a message sent meanwhile is not lost.
    let (subscription, messages) = shared.events.subscribe(Arc::clone(connection));
    let hello = format!(
        "{{\"instance\":{},\"reloaded_at\":{}}}",
        json_string(&shared.instance),
        shared.reloaded_at.load(Ordering::SeqCst)
    );
    let mut first = event("hello", &hello).to_vec();
    let error = shared
        .shown
        .lock()
        .ok()
        .and_then(|shown| shown.error.clone());
    if let Some(error) = error {
        first.extend_from_slice(&event("error-overlay", &json_string(&error)));
    }
    let mut response = hyper::Response::new(Body::stream(
        Some(Bytes::from(first)),
        messages,
        b":\n\n",
        (subscription, Arc::clone(connection)),
    ));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /livereload` with `Upgrade: websocket`: the LiveReload protocol (version 7).
fn websocket(shared: &Arc<Shared>, request: Request, connection: Arc<Connection>) -> Response {
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    let Some(key) = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| upgrade)
    else {
        return text(StatusCode::BAD_REQUEST, "a WebSocket upgrade, please\n");
    };
    if !connection.become_stream() {
        return too_many_pages();
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let (subscription, messages) = shared.websockets.subscribe(Arc::clone(&connection));
    let upgraded = hyper::upgrade::on(request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgraded.await {
            let config = WebSocketConfig::default()
                .max_message_size(Some(64 * 1024))
                .max_frame_size(Some(64 * 1024));
            let socket = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            follow(socket, messages, &connection).await;
        }
        drop(subscription);
    });
    let mut response = hyper::Response::new(Body::Full(None));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// A LiveReload protocol client: `hello`, then the commands, until either side closes.
async fn follow<S>(
    socket: WebSocketStream<S>,
    mut messages: mpsc::Receiver<String>,
    connection: &Connection,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Message as Frame;
    let (mut sink, mut incoming) = socket.split();
    let mut next = Some(WEBSOCKET_HELLO.to_owned());
    loop {
        if let Some(command) = next.take() {
            let sent = tokio::select! {
                sent = sink.send(Frame::text(command)) => sent.is_ok(),
                () = connection.closed() => false,
            };
            if !sent {
                return;
            }
        }
        tokio::select! {
            () = connection.closed() => return,
            message = messages.recv() => match message {
                Some(command) => next = Some(command),
                None => return,
            },
            frame = incoming.next() => match frame {
                // The client's `hello` and `info` need no answer; pings are answered by the
                // stream itself.
                Some(Ok(Frame::Text(_) | Frame::Binary(_) | Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_))) => {}
                Some(Ok(Frame::Close(_)) | Err(_)) | None => return,
            },
        }
    }
}

/// Text without ANSI escape sequences (cargo's colours).
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, up to the final byte (@ to ~).
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn epoch_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Answers HTTP on the app's own listeners while no generation serves (the first build, a
/// failed first build), with [`LiveReload::page_source`]'s page. It must be stopped before the
/// first workers start: it is then the only one accepting, so a readable listener never blocks
/// its `accept`.
pub(crate) struct BuildingPage {
    stopped: Arc<AtomicBool>,
    server: Option<Server>,
    /// Duplicates of the listeners, made blocking again when it ends (the flag belongs to the
    /// socket, which the workers share).
    listeners: Vec<TcpListener>,
}

impl BuildingPage {
    /// Starts answering on `listeners` (duplicates of the app's TCP listeners).
    pub(crate) fn start(
        listeners: Vec<TcpListener>,
        page: impl Fn() -> String + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let app: Vec<SocketAddr> = listeners
            .iter()
            .filter_map(|listener| listener.local_addr().ok())
            .collect();
        let duplicates = listeners
            .iter()
            .map(TcpListener::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        let site = Site::new(&app, &app);
        let stopped = Arc::new(AtomicBool::new(false));
        let answering = Arc::clone(&stopped);
        let handler: Handler = Arc::new(move |request, _| {
            let response = answer_building(&site, &answering, &page, &request);
            Box::pin(std::future::ready(response))
        });
        let building = Self {
            stopped,
            server: None,
            listeners: duplicates,
        };
        // Dropped on an error: the listeners are blocking again.
        let mut building = building;
        building.server = Some(Server::start(listeners, BUILDING_LIMITS, &handler)?);
        Ok(building)
    }
}

impl Drop for BuildingPage {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.take() {
            drop(server.stop());
        }
        for listener in &self.listeners {
            let _ = listener.set_nonblocking(false);
        }
    }
}

/// Answers one request, once it has come: a browser opens connections ahead of its requests,
/// and an answer written before the request would be read as the answer to a later one. A
/// request that comes after the first workers started is sent to them: a redirect to the same
/// path on the same host, on a new connection.
fn answer_building(
    site: &Site,
    stopped: &AtomicBool,
    page: &(impl Fn() -> String + Send + Sync),
    request: &Request,
) -> Response {
    if !site.host_allowed(request) {
        return wrong_host();
    }
    if stopped.load(Ordering::SeqCst) {
        // The host was checked; the path stays a path of this host whatever it looks like
        // (`//elsewhere/…` in a bare `Location` would be another host).
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or("localhost");
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", hyper::http::uri::PathAndQuery::as_str);
        let mut response = text(StatusCode::TEMPORARY_REDIRECT, "");
        if let Ok(location) = HeaderValue::from_str(&format!("http://{host}{path}")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return response;
    }
    let mut response = respond(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/html; charset=utf-8",
        page(),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    #[test]
    fn ansi_colours_are_removed_and_the_rest_kept() {
        let cargo = "\u{1b}[0m\u{1b}[1m\u{1b}[38;5;9merror[E0308]\u{1b}[0m: mismatched types\n --> src/main.rs:3:5";
        assert_eq!(
            strip_ansi(cargo),
            "error[E0308]: mismatched types\n --> src/main.rs:3:5"
        );
    }

    fn app() -> Vec<SocketAddr> {
        vec!["127.0.0.1:3000".parse().unwrap()]
    }

    #[test]
    fn pages_hear_reloads_errors_and_clears_and_new_pages_see_the_error_first() {
        let live = LiveReload::start("127.0.0.1:0".parse().unwrap(), &app()).unwrap();
        let script = get(live.address(), "/livereload.js", "");
        assert!(script.starts_with("HTTP/1.1 200 OK") && script.contains("EventSource"));
        let mut page = TcpStream::connect(live.address()).unwrap();
        page.write_all(
            b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://localhost:3000\r\n\r\n",
        )
        .unwrap();
        page.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(page);
        let hello = read_until(&mut reader, "event: hello");
        assert!(hello.contains("text/event-stream"), "{hello}");
        assert!(
            hello.contains("access-control-allow-origin: http://localhost:3000"),
            "{hello}"
        );
        live.send(&Message::Failed(
            "\u{1b}[1merror\u{1b}[0m: <oops>".to_owned(),
        ));
        read_until(&mut reader, "event: error-overlay");
        let mut data = String::new();
        reader.read_line(&mut data).unwrap();
        assert_eq!(data, "data: \"error: <oops>\"\n");
        let page = live.page_source();
        assert!(page().contains("error: &lt;oops&gt;"));
        // A reload (a roll of the old binary, an asset) keeps the error: the build still fails.
        live.send(&Message::Reload);
        read_until(&mut reader, "event: reload");
        assert!(page().contains("error: &lt;oops&gt;"));
        let first = |live: &LiveReload| {
            let mut other = TcpStream::connect(live.address()).unwrap();
            other
                .write_all(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            other
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut reader = BufReader::new(other);
            read_until(&mut reader, "event: hello");
            // Subscribed (it heard hello): what it was told before the next message.
            live.send(&Message::Css);
            read_until(&mut reader, "event: css")
        };
        assert!(first(&live).contains("event: error-overlay"));
        // A build succeeded: the overlay goes; a page that connects then is told nothing of it.
        live.send(&Message::Clear);
        read_until(&mut reader, "event: clear");
        assert!(page().contains("building…"));
        let after = first(&live);
        assert!(!after.contains("error-overlay"), "{after}");
    }

    #[test]
    fn the_websocket_speaks_the_livereload_protocol_and_hears_reloads() {
        use tokio_tungstenite::tungstenite::{Message as Frame, client};
        let live = LiveReload::start("127.0.0.1:0".parse().unwrap(), &app()).unwrap();
        let socket = TcpStream::connect(live.address()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let url = format!("ws://{}/livereload", live.address());
        let (mut websocket, response) = client::client(url.as_str(), socket).unwrap();
        assert_eq!(response.status(), 101);
        let hello = websocket.read().unwrap();
        assert!(hello.to_text().unwrap().contains("official-7"), "{hello}");
        websocket
            .send(Frame::text(
                "{\"command\":\"hello\",\"protocols\":[\"http://livereload.com/protocols/official-7\"]}",
            ))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while live.shared.websockets.len() == 0 {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        // The protocol has no overlay: nothing is sent of a failed build, nor of its clearing.
        live.send(&Message::Failed("error".to_owned()));
        live.send(&Message::Clear);
        live.send(&Message::Css);
        let reload = websocket.read().unwrap();
        assert!(reload.to_text().unwrap().contains("style.css"), "{reload}");
        // Closed by the client: it leaves the broadcast list at once.
        websocket.close(None).unwrap();
        while live.shared.websockets.len() != 0 {
            assert!(
                Instant::now() < deadline,
                "the closed client is still listed"
            );
            let _ = websocket.read();
        }
    }

    #[test]
    fn foreign_origins_and_hosts_are_refused() {
        let live = LiveReload::start("127.0.0.1:0".parse().unwrap(), &app()).unwrap();
        for (path, headers) in [
            ("/events", "Origin: http://evil.example\r\n"),
            ("/events", "Origin: http://127.0.0.1:3001\r\n"),
            ("/events", "Origin: null\r\n"),
            ("/livereload.js", "Origin: http://evil.example\r\n"),
        ] {
            let response = get(live.address(), path, headers);
            assert!(
                response.starts_with("HTTP/1.1 403"),
                "{path} {headers}: {response}"
            );
            assert!(
                !response
                    .to_ascii_lowercase()
                    .contains("access-control-allow-origin"),
                "{response}"
            );
        }
        let rebound = get_with_host(live.address(), "/livereload.js", "evil.example:35729");
        assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
    }

    #[test]
    fn the_building_page_answers_its_own_host_and_redirects_to_its_own_path_only() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let building = BuildingPage::start(vec![listener.try_clone().unwrap()], || {
            "<h1>building…</h1>".to_owned()
        })
        .unwrap();
        let page = get_with_host(address, "/", &address.to_string());
        assert!(
            page.starts_with("HTTP/1.1 503") && page.contains("building…"),
            "{page}"
        );
        let rebound = get_with_host(address, "/", "evil.example");
        assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
        assert!(!rebound.contains("building"), "{rebound}");
        // A connection accepted while building whose request comes after the workers started.
        let open = |count: usize| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while building
                .server
                .as_ref()
                .is_some_and(|server| server.connections() != count)
            {
                assert!(Instant::now() < deadline, "never {count} connections open");
                std::thread::yield_now();
            }
        };
        open(0);
        let mut late = TcpStream::connect(address).unwrap();
        open(1);
        drop(building);
        late.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        late.write_all(b"GET //evil.example/x?y HTTP/1.1\r\nHost: localhost:8080\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        late.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 307"), "{response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("\r\nlocation: http://localhost:8080//evil.example/x?y\r\n"),
            "{response}"
        );
        // Blocking again, for the workers.
        let flags = nix::fcntl::fcntl(&listener, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert!(
            !nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK)
        );
    }

    fn get(address: SocketAddr, path: &str, headers: &str) -> String {
        request(
            address,
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n"),
        )
    }

    fn get_with_host(address: SocketAddr, path: &str, host: &str) -> String {
        request(
            address,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        )
    }

    fn request(address: SocketAddr, request: &str) -> String {
        let mut socket = TcpStream::connect(address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        socket.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        socket.read_to_string(&mut response).unwrap();
        response
    }

    /// Reads lines until one starts with `needle`; returns what came before it.
    fn read_until(reader: &mut BufReader<TcpStream>, needle: &str) -> String {
        let mut before = String::new();
        loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "closed before {needle:?}"
            );
            if line.starts_with(needle) {
                return before;
            }
            before.push_str(&line);
        }
    }
}
