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

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// LiveReload's port, which the browser extensions and `livereload.js` clients look for.
pub(crate) const DEFAULT_PORT: u16 = 35729;

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write to a page may block before the page is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// The script pages include.
const SCRIPT: &str = include_str!("livereload.js");

/// A message for every connected page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// Reload the page: a switch is complete.
    Reload,
    /// Reload the stylesheets only.
    Css,
    /// A build failed: show its diagnostics until the next switch.
    Failed(String),
}

/// What every page is told first, and what the building page shows.
#[derive(Debug, Default)]
struct Shown {
    /// A failed build's diagnostics, until the next switch.
    error: Option<String>,
}

struct Shared {
    /// Identifies this master to pages that reconnect.
    instance: String,
    streams: Mutex<Vec<Stream>>,
    shown: Mutex<Shown>,
    connections: AtomicUsize,
    stopped: AtomicBool,
    /// When pages were last told to reload (milliseconds since the epoch): a page that started
    /// loading before and connects only now (it missed the event) reloads when it hears this.
    reloaded_at: AtomicU64,
}

/// A page's connection.
enum Stream {
    /// An `EventSource`.
    Events(TcpStream),
    /// A LiveReload protocol client.
    WebSocket(TcpStream),
}

/// The running live-reload server; stops when dropped.
pub(crate) struct LiveReload {
    shared: Arc<Shared>,
    address: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl LiveReload {
    /// Binds `address` and starts serving.
    pub(crate) fn start(address: SocketAddr) -> io::Result<Self> {
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
            streams: Mutex::new(Vec::new()),
            shown: Mutex::new(Shown::default()),
            connections: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            reloaded_at: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("livereload".to_owned())
            .spawn(move || accept_loop(&listener, &accepting))?;
        Ok(Self {
            shared,
            address,
            accept: Some(accept),
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

    /// Tells every connected page.
    pub(crate) fn send(&self, message: &Message) {
        if *message == Message::Reload {
            self.shared
                .reloaded_at
                .store(epoch_millis(), Ordering::SeqCst);
        }
        if let Ok(mut shown) = self.shared.shown.lock() {
            shown.error = match message {
                Message::Failed(text) => Some(strip_ansi(text)),
                Message::Reload => None,
                Message::Css => shown.error.take(),
            };
        }
        let event = match message {
            Message::Reload => ("reload", String::new()),
            Message::Css => ("css", String::new()),
            Message::Failed(text) => ("error-overlay", json_string(&strip_ansi(text))),
        };
        let Ok(mut streams) = self.shared.streams.lock() else {
            return;
        };
        streams.retain_mut(|stream| match stream {
            Stream::Events(socket) => write_event(socket, event.0, &event.1).is_ok(),
            Stream::WebSocket(socket) => match message {
                Message::Reload | Message::Css => {
                    let path = if *message == Message::Css {
                        "style.css"
                    } else {
                        "index.html"
                    };
                    let command =
                        format!("{{\"command\":\"reload\",\"path\":\"{path}\",\"liveCSS\":true}}");
                    write_frame(socket, command.as_bytes()).is_ok()
                }
                // The protocol has no overlay: such a client waits for the next reload.
                Message::Failed(_) => true,
            },
        });
    }

    /// A function that renders the page the app's listeners answer with while no generation
    /// serves, for the thread that answers there.
    pub(crate) fn page_source(&self) -> impl Fn() -> String + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        let tag = self.script_tag();
        move || building_page(&shared, &tag)
    }
}

fn building_page(shared: &Shared, script_tag: &str) -> String {
    {
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
}

impl Drop for LiveReload {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_millis(200));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        if let Ok(mut streams) = self.shared.streams.lock() {
            streams.clear();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for connection in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(socket) = connection else {
            continue;
        };
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let client = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("livereload-client".to_owned())
            .spawn(move || {
                let _ = serve(socket, &client);
                client.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // No thread for it: the connection went with the closure.
            shared.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A request head: its path and the headers we look at.
struct Head {
    path: String,
    websocket_key: Option<String>,
}

fn read_head(socket: &TcpStream) -> io::Result<Head> {
    socket.set_read_timeout(Some(HEAD_TIMEOUT))?;
    let mut reader = BufReader::new(socket.take(MAX_HEAD as u64));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (Some("GET"), Some(path)) = (words.next(), words.next()) else {
        return Err(io::Error::other("not a GET request"));
    };
    let path = path.split('?').next().unwrap_or_default().to_owned();
    let mut websocket_key = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("sec-websocket-key")
        {
            websocket_key = Some(value.trim().to_owned());
        }
    }
    Ok(Head {
        path,
        websocket_key,
    })
}

fn serve(mut socket: TcpStream, shared: &Shared) -> io::Result<()> {
    let head = read_head(&socket)?;
    socket.set_read_timeout(None)?;
    // The master's loop writes to every page, one after the other, on its own thread: a page
    // that stops reading holds it up to `WRITE_TIMEOUT` per broadcast, and is then dropped.
    socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
    match (head.path.as_str(), head.websocket_key) {
        ("/livereload.js", _) => respond(&mut socket, "200 OK", "text/javascript", SCRIPT),
        ("/events", _) => {
            socket.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                  Access-Control-Allow-Origin: *\r\nConnection: keep-alive\r\n\r\n",
            )?;
            let hello = format!(
                "{{\"instance\":{},\"reloaded_at\":{}}}",
                json_string(&shared.instance),
                shared.reloaded_at.load(Ordering::SeqCst)
            );
            write_event(&mut socket, "hello", &hello)?;
            let error = shared
                .shown
                .lock()
                .ok()
                .and_then(|shown| shown.error.clone());
            if let Some(error) = error {
                write_event(&mut socket, "error-overlay", &json_string(&error))?;
            }
            if let Ok(mut streams) = shared.streams.lock() {
                streams.push(Stream::Events(socket));
            }
            Ok(())
        }
        ("/livereload", Some(key)) => {
            let accept = websocket_accept(&key);
            socket.write_all(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: \
                     Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .as_bytes(),
            )?;
            let hello = "{\"command\":\"hello\",\"protocols\":[\"http://livereload.com/protocols/official-7\"],\"serverName\":\"mcluster\"}";
            write_frame(&mut socket, hello.as_bytes())?;
            if let Ok(mut streams) = shared.streams.lock() {
                streams.push(Stream::WebSocket(socket));
            }
            Ok(())
        }
        _ => respond(&mut socket, "404 Not Found", "text/plain", "not found\n"),
    }
}

fn respond(socket: &mut TcpStream, status: &str, kind: &str, body: &str) -> io::Result<()> {
    socket.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=utf-8\r\nContent-Length: {}\r\n\
             Cache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn write_event(socket: &mut TcpStream, name: &str, data: &str) -> io::Result<()> {
    socket.write_all(format!("event: {name}\ndata: {data}\n\n").as_bytes())
}

/// One unmasked text frame (a server's frames are never masked).
fn write_frame(socket: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let mut frame = vec![0x81];
    match payload.len() {
        len @ 0..=125 => frame.push(u8::try_from(len).unwrap_or(125)),
        len @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    socket.write_all(&frame)
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455: base64 of the SHA-1 of the key and the
/// protocol's GUID).
fn websocket_accept(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha.digest().bytes())
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
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
/// failed first build), with [`LiveReload::building_page`]. It must be stopped before the first
/// workers start: it is then the only one accepting, so a readable listener never blocks its
/// `accept`.
pub(crate) struct BuildingPage {
    stop: Arc<AtomicBool>,
    /// Gives the listeners back when it ends.
    thread: Option<JoinHandle<Vec<TcpListener>>>,
}

impl BuildingPage {
    /// Starts answering on `listeners` (duplicates of the app's TCP listeners).
    pub(crate) fn start(
        listeners: Vec<TcpListener>,
        page: impl Fn() -> String + Send + Sync + 'static,
    ) -> io::Result<Self> {
        // Non-blocking while it answers, so that a connection that vanished between poll and
        // accept cannot hold it; blocking again before any worker shares the socket (the flag
        // belongs to the socket, not to this duplicate of it).
        for listener in &listeners {
            listener.set_nonblocking(true)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let page: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(page);
        let thread = thread::Builder::new()
            .name("building-page".to_owned())
            .spawn(move || {
                answer_while_building(&listeners, &stopping, &page);
                listeners
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for BuildingPage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && let Ok(listeners) = thread.join()
        {
            for listener in listeners {
                let _ = listener.set_nonblocking(false);
            }
        }
    }
}

fn answer_while_building(
    listeners: &[TcpListener],
    stop: &Arc<AtomicBool>,
    page: &Arc<dyn Fn() -> String + Send + Sync>,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let busy = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|listener| PollFd::new(listener.as_fd(), PollFlags::POLLIN))
            .collect();
        if poll(&mut fds, PollTimeout::from(100u8)).is_err() {
            continue;
        }
        let readable: Vec<bool> = fds.iter().map(|fd| fd.any().unwrap_or(false)).collect();
        for (listener, _) in listeners.iter().zip(readable).filter(|(_, r)| *r) {
            while let Ok((socket, _)) = listener.accept() {
                if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let (done, stop, page) = (Arc::clone(&busy), Arc::clone(stop), Arc::clone(page));
                let spawned = thread::Builder::new()
                    .name("building-page-client".to_owned())
                    .spawn(move || {
                        answer_one(socket, &stop, page.as_ref());
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Answers one connection, once it has sent a request: a browser opens connections ahead of
/// its requests, and an answer written before the request would be read as the answer to a
/// later one. A request that comes after the first workers started is sent to them: a redirect
/// to the same path, on a new connection.
fn answer_one(socket: TcpStream, stop: &AtomicBool, page: &(dyn Fn() -> String + Send + Sync)) {
    let _ = socket.set_nonblocking(false);
    let Ok(head) = read_head(&socket) else {
        // No request in time: closed unanswered, the browser makes another connection.
        return;
    };
    let mut socket = socket;
    let response = if stop.load(Ordering::SeqCst) {
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {}\r\nContent-Length: 0\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            head.path
        )
    } else {
        let body = page();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html; \
             charset=utf-8\r\nContent-Length: {}\r\nRetry-After: 1\r\nCache-Control: \
             no-store\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = socket.write_all(response.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_accept_key_is_the_rfc_s() {
        // RFC 6455, section 1.3.
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[test]
    fn ansi_colours_are_removed_and_the_rest_kept() {
        let cargo = "\u{1b}[0m\u{1b}[1m\u{1b}[38;5;9merror[E0308]\u{1b}[0m: mismatched types\n --> src/main.rs:3:5";
        assert_eq!(
            strip_ansi(cargo),
            "error[E0308]: mismatched types\n --> src/main.rs:3:5"
        );
    }

    #[test]
    fn pages_hear_reloads_and_errors_and_new_pages_see_the_error_first() {
        let live = LiveReload::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let script = get(live.address(), "/livereload.js");
        assert!(script.starts_with("HTTP/1.1 200 OK") && script.contains("EventSource"));
        let mut page = TcpStream::connect(live.address()).unwrap();
        page.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        page.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(page);
        let hello = read_until(&mut reader, "event: hello");
        assert!(hello.contains("text/event-stream"), "{hello}");
        // Wait until the stream is registered before sending.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while live.shared.streams.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline);
            thread::yield_now();
        }
        live.send(&Message::Failed(
            "\u{1b}[1merror\u{1b}[0m: <oops>".to_owned(),
        ));
        read_until(&mut reader, "event: error-overlay");
        let mut data = String::new();
        reader.read_line(&mut data).unwrap();
        assert_eq!(data, "data: \"error: <oops>\"\n");
        let page = live.page_source();
        assert!(page().contains("error: &lt;oops&gt;"));
        live.send(&Message::Reload);
        read_until(&mut reader, "event: reload");
        assert!(page().contains("building…"));
    }

    fn get(address: SocketAddr, path: &str) -> String {
        let mut socket = TcpStream::connect(address).unwrap();
        socket
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
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
