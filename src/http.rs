//! The master's one HTTP stack: the metrics endpoint, the live-reload channel and the building
//! page are served by hyper on one thread, with one admission policy.
//!
//! - **One thread.** Every server runs on [`IoLoop`], a single-threaded tokio runtime on a thread
//!   of its own, started by its first user: a connection is a task, never a thread. The
//!   driver runs there too, as a task (see [`supervisor`](crate::supervisor)), with the
//!   workers' output pipes and notify sockets (see [`output`](crate::output) and
//!   [`sd_notify`](crate::sd_notify)) and the master's signals: it is the process's one loop,
//!   that any part spawns tasks on, not a server's own.
//! - **Admission.** A connection holds a place from its accept to its close, streams included:
//!   a place among [`Limits::short`] while it sends its request and is answered, moved to a place
//!   among [`Limits::streams`] when its answer is a long-lived stream (an `EventSource`, a
//!   WebSocket). Streams cannot take the short places, so a short request (the script, a scrape)
//!   is answered however many pages follow. A connection beyond the short places waits in the
//!   listen backlog (it costs no fd) until one is free; a stream beyond the stream places gets a
//!   503.
//! - **Heads.** One size limit ([`MAX_HEAD`]) and one deadline ([`HEAD_DEADLINE`]) for the whole
//!   request head, idle connections included; one request per connection.
//! - **Out of fds.** An accept that fails for want of fds (or for any reason that is not the
//!   client's) waits [`ACCEPT_BACKOFF`] before the next: a listener at the fd limit costs ten
//!   failed accepts a second, not a core.
//! - **Broadcasts.** [`Broadcaster::send`] never waits: each subscriber has a queue of
//!   [`QUEUE`] messages, and one whose queue is full (a page that does not read) is closed and
//!   dropped. A subscriber whose peer closes is removed as its connection ends.
//! - **Who may ask.** [`Site`] tells the names a server answers for (`Host`: loopback names and
//!   its configured address, never a DNS name that could be rebound) and the origins whose pages
//!   may read it (`Origin`: the app's own, on its ports).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Response as HttpResponse, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// The longest request head, in bytes (hyper's smallest read buffer).
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// How long a client may take to send its whole request head, from its connection on.
pub(crate) const HEAD_DEADLINE: Duration = Duration::from_secs(5);

/// How long an accept loop waits after an accept failed for a reason that is not the client's
/// (out of fds, out of memory).
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Messages waiting for one subscriber; one more and it is dropped.
pub(crate) const QUEUE: usize = 8;

/// How often an idle stream is written to, so that a peer gone without a word is noticed.
const HEARTBEAT: Duration = Duration::from_secs(20);

/// A request, as hyper hands it over.
pub(crate) type Request = hyper::Request<Incoming>;

/// A response.
pub(crate) type Response = HttpResponse<Body>;

/// What a server does with a request, on the loop; it must not block.
pub(crate) type Handler = Arc<
    dyn Fn(Request, Arc<Connection>) -> Pin<Box<dyn Future<Output = Response> + Send>>
        + Send
        + Sync,
>;

/// The most threads the loop's blocking pool runs at once (see [`IoLoop::handle`]).
const SLOW_THREADS: usize = 2;

/// The loop the master's I/O runs on (the driver, its servers, the workers' pipes and notify
/// sockets, the signals): one thread, a single-threaded tokio runtime, for the life of the
/// process, shared by every master the process runs. A task on it must never block.
pub(crate) struct IoLoop;

static LOOP: Mutex<Option<tokio::runtime::Handle>> = Mutex::new(None);

impl IoLoop {
    /// The loop, started on first use.
    pub(crate) fn handle() -> io::Result<tokio::runtime::Handle> {
        let mut running = LOOP
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(handle) = &*running {
            return Ok(handle.clone());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Its blocking pool runs what may take seconds and must not hold up the loop (dev
            // mode's `cargo metadata`, dep-info and binary compares: see `crate::dev`). Two
            // threads at most, started on demand and gone when idle: the work is bounded by the
            // dev core (one roots lookup at a time, one build's outcome at a time), and two let
            // a lookup and an outcome run side by side; tokio's default (512) would make the
            // master's threads grow with the work queued instead of a small constant.
            .max_blocking_threads(SLOW_THREADS)
            .thread_name("mcluster-slow")
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("mcluster-io".to_owned())
            // Runs for the life of the process: its tasks end with their servers.
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        *running = Some(handle.clone());
        Ok(handle)
    }
}

/// How many connections a server holds at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections sending a request or being answered.
    pub(crate) short: usize,
    /// Long-lived streams (`EventSource`s, `WebSocket`s).
    pub(crate) streams: usize,
}

/// One accepted connection, for its whole life: the place it holds, and a way to close it.
pub(crate) struct Connection {
    place: Mutex<Option<OwnedSemaphorePermit>>,
    /// The server's count of open connections, which this one is in until it is dropped.
    open: Arc<AtomicUsize>,
    streams: Arc<Semaphore>,
    close: Notify,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connection {
    /// Moves this connection from the short places to the stream places; `false` when every
    /// stream place is taken (the connection keeps its short place until it ends).
    pub(crate) fn become_stream(&self) -> bool {
        let Ok(stream) = Arc::clone(&self.streams).try_acquire_owned() else {
            return false;
        };
        if let Ok(mut place) = self.place.lock() {
            *place = Some(stream);
        }
        true
    }

    /// Closes the connection now, whatever it is doing (a subscriber that does not keep up).
    pub(crate) fn close(&self) {
        self.close.notify_one();
    }

    /// Resolves when [`close`](Self::close) is called.
    pub(crate) async fn closed(&self) {
        self.close.notified().await;
    }
}

/// A running server: dropping it stops its accepting (connections being answered finish).
pub(crate) struct Server {
    stop: watch::Sender<bool>,
    /// The listeners, given back by the accept loop once it stopped.
    stopped: std::sync::mpsc::Receiver<std::net::TcpListener>,
    listeners: usize,
    /// Connections accepted and not closed yet.
    #[cfg(test)]
    open: Arc<AtomicUsize>,
}

impl Server {
    /// Serves `listeners` with `handler` on the loop.
    pub(crate) fn start(
        listeners: Vec<std::net::TcpListener>,
        limits: Limits,
        handler: &Handler,
    ) -> io::Result<Self> {
        let handle = IoLoop::handle()?;
        let (stop, stopping) = watch::channel(false);
        let (give_back, stopped) = std::sync::mpsc::channel();
        let short = Arc::new(Semaphore::new(limits.short));
        let streams = Arc::new(Semaphore::new(limits.streams));
        let open = Arc::new(AtomicUsize::new(0));
        let count = listeners.len();
        let mut accepting = Vec::with_capacity(count);
        {
            let _entered = handle.enter();
            for listener in listeners {
                listener.set_nonblocking(true)?;
                accepting.push(tokio::net::TcpListener::from_std(listener)?);
            }
        }
        for listener in accepting {
            let places = Places {
                short: Arc::clone(&short),
                streams: Arc::clone(&streams),
                open: Arc::clone(&open),
            };
            let (stopping, give_back, handler) =
                (stopping.clone(), give_back.clone(), Arc::clone(handler));
            handle.spawn(async move {
                accept_loop(&listener, stopping, &places, &handler).await;
                if let Ok(listener) = listener.into_std() {
                    let _ = give_back.send(listener);
                }
            });
        }
        Ok(Self {
            stop,
            stopped,
            listeners: count,
            #[cfg(test)]
            open,
        })
    }

    /// How many connections it holds (short ones and streams).
    #[cfg(test)]
    pub(crate) fn connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Stops accepting and gives the listeners back (non-blocking still).
    pub(crate) fn stop(mut self) -> Vec<std::net::TcpListener> {
        self.stop_accepting()
    }

    fn stop_accepting(&mut self) -> Vec<std::net::TcpListener> {
        let _ = self.stop.send(true);
        let mut listeners = Vec::new();
        // On the loop itself the accept loops cannot run while we wait: they end later.
        if tokio::runtime::Handle::try_current().is_err() {
            while listeners.len() < self.listeners {
                match self.stopped.recv_timeout(Duration::from_secs(2)) {
                    Ok(listener) => listeners.push(listener),
                    Err(_) => break,
                }
            }
        }
        self.listeners = 0;
        listeners
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

/// Whether an accept failed because of one client (try the next at once) rather than because
/// of the process or the system (out of fds: wait).
pub(crate) fn client_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// A server's places, and its count of open connections.
struct Places {
    short: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    open: Arc<AtomicUsize>,
}

async fn accept_loop(
    listener: &tokio::net::TcpListener,
    mut stopping: watch::Receiver<bool>,
    places: &Places,
    handler: &Handler,
) {
    loop {
        // A place first: a connection beyond the places waits in the listen backlog (no fd of
        // ours) until one is free, instead of being refused.
        let place = tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            place = Arc::clone(&places.short).acquire_owned() => place,
        };
        let Ok(place) = place else { return };
        let accepted = tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let socket = match accepted {
            Ok((socket, _)) => socket,
            Err(error) if client_error(&error) => continue,
            Err(_) => {
                tokio::select! {
                    _ = stopping.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        places.open.fetch_add(1, Ordering::AcqRel);
        let connection = Arc::new(Connection {
            place: Mutex::new(Some(place)),
            open: Arc::clone(&places.open),
            streams: Arc::clone(&places.streams),
            close: Notify::new(),
        });
        tokio::spawn(serve(socket, connection, Arc::clone(handler)));
    }
}

async fn serve(socket: tokio::net::TcpStream, connection: Arc<Connection>, handler: Handler) {
    let _ = socket.set_nodelay(true);
    let service = {
        let connection = Arc::clone(&connection);
        hyper::service::service_fn(move |request| {
            let answer = handler(request, Arc::clone(&connection));
            async move {
                let mut response = answer.await;
                // One request per connection (an upgrade goes on as a WebSocket): hyper closes
                // after a response that says so. (Its own `keep_alive(false)` would add `close`
                // to an upgrade's `Connection` too.)
                if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_DEADLINE)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(socket), service)
        .with_upgrades();
    tokio::select! {
        _ = served => {}
        () = connection.closed() => {}
    }
}

/// A response body: all at once, or a stream of chunks until its sender is gone.
pub(crate) enum Body {
    /// A body known in full.
    Full(Option<Bytes>),
    /// Chunks as they come, with a heartbeat while none does.
    Stream {
        /// Written before anything else.
        first: Option<Bytes>,
        chunks: mpsc::Receiver<Bytes>,
        heartbeat: Pin<Box<tokio::time::Sleep>>,
        /// Written when nothing else was for [`HEARTBEAT`].
        beat: Bytes,
        /// Kept as long as the body is: the subscription that feeds it.
        _keep: Box<dyn Send + Sync>,
    },
}

impl Body {
    /// `first`, then a stream of what `chunks` receives, `beat` written while nothing else is;
    /// `keep` lives as long as the body.
    pub(crate) fn stream(
        first: Option<Bytes>,
        chunks: mpsc::Receiver<Bytes>,
        beat: &'static [u8],
        keep: impl Send + Sync + 'static,
    ) -> Self {
        Body::Stream {
            first,
            chunks,
            heartbeat: Box::pin(tokio::time::sleep(HEARTBEAT)),
            beat: Bytes::from_static(beat),
            _keep: Box::new(keep),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Body::Stream {
                first,
                chunks,
                heartbeat,
                beat,
                ..
            } => {
                if let Some(first) = first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(first))));
                }
                if let Poll::Ready(chunk) = chunks.poll_recv(cx) {
                    heartbeat
                        .as_mut()
                        .reset(tokio::time::Instant::now() + HEARTBEAT);
                    return Poll::Ready(chunk.map(|chunk| Ok(Frame::data(chunk))));
                }
                if heartbeat.as_mut().poll(cx).is_ready() {
                    heartbeat
                        .as_mut()
                        .reset(tokio::time::Instant::now() + HEARTBEAT);
                    return Poll::Ready(Some(Ok(Frame::data(beat.clone()))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Full(Some(bytes)) => http_body::SizeHint::with_exact(bytes.len() as u64),
            Body::Full(None) => http_body::SizeHint::with_exact(0),
            Body::Stream { .. } => http_body::SizeHint::default(),
        }
    }
}

/// A complete response: `status`, `content_type` and `body`, not cached.
pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response {
    let mut response = HttpResponse::new(Body::Full(Some(body.into())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    respond(status, "text/plain; charset=utf-8", body)
}

/// Who a server answers: the names in `Host`, and the pages (`Origin`) that may read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Site {
    /// Addresses that are names of this server besides the loopback ones.
    addresses: Vec<IpAddr>,
    /// The app's origins: its addresses (and the loopback names) on its ports.
    app_ports: Vec<u16>,
    app_addresses: Vec<IpAddr>,
}

impl Site {
    /// A server bound to `bound`, for the pages of an app listening on `app`.
    pub(crate) fn new(bound: &[SocketAddr], app: &[SocketAddr]) -> Self {
        let addresses = |list: &[SocketAddr]| {
            let mut ips: Vec<IpAddr> = Vec::new();
            for address in list {
                if address.ip().is_unspecified() {
                    // Every address of this machine names it.
                    ips.extend(local_addresses());
                } else {
                    ips.push(address.ip());
                }
            }
            ips
        };
        let mut app_ports: Vec<u16> = app.iter().map(SocketAddr::port).collect();
        app_ports.sort_unstable();
        app_ports.dedup();
        Self {
            addresses: addresses(bound),
            app_ports,
            app_addresses: addresses(app),
        }
    }

    /// Whether `Host` names this server: a loopback name or address, or one of its own
    /// addresses, never another name (DNS rebinding).
    pub(crate) fn host_allowed(&self, request: &Request) -> bool {
        let Some(host) = request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
        else {
            return false;
        };
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        port.is_none_or(|port| port.parse::<u16>().is_ok()) && names(name, &self.addresses)
    }

    /// Whether a page of `origin` may read this server: the app's own origin (its addresses
    /// or a loopback name, on one of its ports).
    pub(crate) fn origin_allowed(&self, origin: &str) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => 443,
            _ => return false,
        };
        let Some((name, port)) = split_host(rest) else {
            return false;
        };
        let port = match port {
            Some(port) => match port.parse::<u16>() {
                Ok(port) => port,
                Err(_) => return false,
            },
            None => default_port,
        };
        self.app_ports.contains(&port) && names(name, &self.app_addresses)
    }

    /// The `Origin` of a request, if it has one and it is not allowed: `Err` names it.
    pub(crate) fn check_origin<'r>(&self, request: &'r Request) -> Result<Option<&'r str>, String> {
        let Some(origin) = request.headers().get(header::ORIGIN) else {
            return Ok(None);
        };
        match origin.to_str() {
            Ok(origin) if self.origin_allowed(origin) => Ok(Some(origin)),
            Ok(origin) => Err(origin.to_owned()),
            Err(_) => Err("(not text)".to_owned()),
        }
    }
}

/// `name` is a loopback name or address, or one of `addresses`.
fn names(name: &str, addresses: &[IpAddr]) -> bool {
    if name.eq_ignore_ascii_case("localhost") || name.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    let literal = name
        .strip_prefix('[')
        .and_then(|name| name.strip_suffix(']'))
        .map_or_else(
            || name.parse::<std::net::Ipv4Addr>().map(IpAddr::V4),
            |v6| v6.parse::<std::net::Ipv6Addr>().map(IpAddr::V6),
        );
    literal.is_ok_and(|ip| ip.is_loopback() || addresses.contains(&ip))
}

/// `host[:port]` (`[v6]:port` for IPv6) into its name and port, if it has that shape.
fn split_host(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.is_empty() || authority.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (name, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Some((name, None)),
            rest => Some((name, Some(rest.strip_prefix(':')?))),
        };
    }
    match authority.split_once(':') {
        Some((name, port)) if !name.is_empty() => Some((name, Some(port))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

/// The addresses of this machine's interfaces (for a server bound to every address).
fn local_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .collect()
}

/// Sends each message to every subscriber without waiting for any.
pub(crate) struct Broadcaster<T> {
    subscribers: Mutex<Vec<Subscriber<T>>>,
    next: AtomicU64,
}

struct Subscriber<T> {
    id: u64,
    queue: mpsc::Sender<T>,
    connection: Arc<Connection>,
}

/// One subscriber's place in a [`Broadcaster`]; dropping it leaves.
pub(crate) struct Subscription<T> {
    id: u64,
    broadcaster: Arc<Broadcaster<T>>,
}

impl<T: Clone> Broadcaster<T> {
    /// A broadcaster with no subscriber.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            subscribers: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        })
    }

    /// Joins `connection`; what is sent from now on comes out of the receiver.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        connection: Arc<Connection>,
    ) -> (Subscription<T>, mpsc::Receiver<T>) {
        let (queue, messages) = mpsc::channel(QUEUE);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.push(Subscriber {
                id,
                queue,
                connection,
            });
        }
        (
            Subscription {
                id,
                broadcaster: Arc::clone(self),
            },
            messages,
        )
    }

    /// Queues `message` for every subscriber; one whose queue is full is closed and dropped.
    pub(crate) fn send(&self, message: &T) {
        let Ok(mut subscribers) = self.subscribers.lock() else {
            return;
        };
        subscribers.retain(
            |subscriber| match subscriber.queue.try_send(message.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.connection.close();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        );
    }

    /// How many subscribers there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.subscribers
            .lock()
            .map_or(0, |subscribers| subscribers.len())
    }

    /// Closes every subscriber's connection.
    pub(crate) fn close_all(&self) {
        if let Ok(mut subscribers) = self.subscribers.lock() {
            for subscriber in subscribers.drain(..) {
                subscriber.connection.close();
            }
        }
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        if let Ok(mut subscribers) = self.broadcaster.subscribers.lock() {
            subscribers.retain(|subscriber| subscriber.id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_loopback_names_and_own_addresses_only() {
        let site = Site::new(
            &["127.0.0.1:35729".parse().unwrap()],
            &["127.0.0.1:3000".parse().unwrap()],
        );
        for (authority, shape) in [
            ("localhost:35729", Some(("localhost", Some("35729")))),
            ("[::1]:80", Some(("[::1]", Some("80")))),
            ("[::1]", Some(("[::1]", None))),
            ("example.com", Some(("example.com", None))),
            ("evil.example/x", None),
            (":80", None),
        ] {
            assert_eq!(split_host(authority), shape, "{authority}");
        }
        assert!(names("localhost", &[]) && names("127.0.0.1", &[]) && names("[::1]", &[]));
        assert!(!names("evil.example", &[]) && !names("10.0.0.1", &[]));
        assert!(names("10.0.0.1", &["10.0.0.1".parse().unwrap()]));
        assert!(site.origin_allowed("http://localhost:3000"));
        assert!(site.origin_allowed("http://127.0.0.1:3000"));
        assert!(site.origin_allowed("http://[::1]:3000"));
        assert!(!site.origin_allowed("http://127.0.0.1:3001"));
        assert!(!site.origin_allowed("http://evil.example:3000"));
        assert!(!site.origin_allowed("null"));
        assert!(!site.origin_allowed("http://localhost"));
    }
}
