//! A tokio/hyper 1 server for workers that loses no request when it is stopped (features `hyper`
//! and `axum`).
//!
//! `axum::serve(…).with_graceful_shutdown(…)` and hyper-util's graceful shutdown lose requests at
//! every roll: on the stop signal they close the connections they have accepted but whose first
//! request they have not read yet (the client sent it; the server resets it), and an HTTP/1
//! connection that is idle between two keep-alive requests is closed just as its next request
//! arrives. Long-lived responses go wrong the other way: an SSE stream keeps the old worker alive
//! until SIGKILL. `serve` (for an axum `Router`, feature `axum`) and [`Server::serve_hyper`] (for
//! any hyper 1 service) do what a worker under mcluster should:
//!
//! 1. Take the inherited listeners ([`crate::worker::listeners`]); run outside mcluster, bind the
//!    fallback address instead (`127.0.0.1:3000`, [`Server::fallback`]), so `cargo run` works.
//! 2. Say `READY=1` once they accept.
//! 3. On SIGTERM or SIGINT (mcluster sends SIGTERM; Ctrl-C of a standalone run is SIGINT):
//!    cancel [`shutdown_token()`], stop accepting and close the listeners (connections still
//!    queued go to the other workers, which share the socket), then, connection by connection:
//!    - a request in flight finishes, and its connection closes after it;
//!    - a connection accepted but without a request yet gets [`Server::first_request_timeout`]
//!      (1 s) for its first request, which is served with `Connection: close`;
//!    - a keep-alive connection idle between requests gets [`Server::keep_alive_grace`]
//!      (100 ms) for one more request, served with `Connection: close`, and is closed cleanly
//!      (the client gets end-of-file, no reset) if none comes;
//!    - an upgraded connection (a WebSocket) lives until its handler lets go of it: handlers
//!      end on [`shutdown_token()`].
//! 4. Return once every connection is closed (or after [`Server::drain_timeout`], if set), so
//!    `main` returns and the worker exits 0.
//!
//! A second SIGTERM or SIGINT exits at once (status 1).
//!
//! **A panic is a clean replacement.** A handler that panics answers its request with
//! `500 Internal Server Error` and `Connection: close`. Any panic in the process (a handler, a
//! spawned task) is reported in the worker's `STATUS=` (`panicked at src/main.rs:12:5: boom`,
//! which mcluster's log shows), followed by `STOPPING=1` — the master starts a replacement at
//! once — and the worker drains as above.
//!
//! # Long-lived responses
//!
//! SSE streams, WebSocket handlers and background tasks select on [`shutdown_token()`] so that
//! they end within milliseconds of the stop signal, with a proper end: a last SSE event, a
//! WebSocket close frame 1001 ("going away"). Browsers' `EventSource` and WebSocket clients
//! reconnect by themselves, to the next generation. `examples/axum-app` has both.
//!
//! # Examples
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> std::io::Result<()> {
//!     let app = Router::new().route("/", get(|| async { "hello\n" }));
//!     mcluster::serve::serve(app).await
//! }
//! ```

use std::any::Any;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::service::Service;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};
pub use tokio_util::sync::CancellationToken;

use crate::worker::{self, Socket};

/// The address bound when the process inherited no listener (mcluster's default `--listen`).
const DEFAULT_FALLBACK: &str = "127.0.0.1:3000";

type BoxError = Box<dyn StdError + Send + Sync>;

/// Cancelled on the stop signal or a panic; one per process.
static SHUTDOWN: LazyLock<CancellationToken> = LazyLock::new(CancellationToken::new);

/// Whether this worker already said `STOPPING=1`.
static STOPPING_SENT: AtomicBool = AtomicBool::new(false);

/// The token cancelled when the worker starts to drain: on SIGTERM or SIGINT, or after a panic.
///
/// Long-lived work selects on it (`token.cancelled().await`) and ends promptly with a proper
/// end: a final SSE event, a WebSocket close frame 1001, a background loop's last flush. Every
/// call returns a clone of the same token.
///
/// # Examples
///
/// ```no_run
/// tokio::spawn(async {
///     let token = mcluster::serve::shutdown_token();
///     loop {
///         tokio::select! {
///             () = token.cancelled() => break,
///             () = tokio::time::sleep(std::time::Duration::from_secs(1)) => { /* tick */ }
///         }
///     }
/// });
/// ```
#[must_use]
pub fn shutdown_token() -> CancellationToken {
    SHUTDOWN.clone()
}

/// Starts the drain as the stop signal would, but as the worker's own decision: says
/// `STOPPING=1` (mcluster starts a replacement at once) and cancels [`shutdown_token()`].
///
/// A panic does this by itself.
///
/// # Examples
///
/// ```no_run
/// // Out of memory for caches: let a fresh worker take over.
/// mcluster::serve::stop_by_itself();
/// ```
pub fn stop_by_itself() {
    if !SHUTDOWN.is_cancelled() && !STOPPING_SENT.swap(true, Ordering::SeqCst) {
        let _ = worker::stopping();
    }
    SHUTDOWN.cancel();
}

/// Serves an axum `Router` on the inherited listeners with the default [`Server`] settings.
///
/// See the [module documentation](self) for what happens on the stop signal and on a panic.
///
/// # Errors
///
/// The inherited listeners cannot be taken ([`worker::listeners`]), the fallback address cannot
/// be bound, or `READY=1` cannot be sent.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
/// mcluster::serve::serve(app).await
/// # }
/// ```
#[cfg(feature = "axum")]
pub async fn serve(router: axum::Router) -> io::Result<()> {
    Server::new().serve(router).await
}

/// Middleware for `mcluster dev`'s live reload: adds its script to every `text/html` response
/// (before the last `</body>`, or at the end), so that pages reload themselves when a save's
/// new build serves and show a failed build's errors. Outside `mcluster dev` (no
/// `MCLUSTER_LIVERELOAD`), responses pass untouched.
///
/// # Examples
///
/// ```no_run
/// let app = axum::Router::new()
///     .route("/", axum::routing::get(|| async { axum::response::Html("<p>hi</p>") }))
///     .layer(axum::middleware::from_fn(mcluster::serve::livereload));
/// ```
#[cfg(feature = "axum")]
pub async fn livereload(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    let Some(tag) = worker::livereload_tag() else {
        return response;
    };
    let html = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/html"));
    if !html {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // A page is small; a huge one passes through with the script appended to what was read.
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        let mut failed = Response::new(axum::body::Body::from("page too large to serve"));
        *failed.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return failed;
    };
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(with_script(&bytes, &tag)))
}

/// `page` with `tag` before its last `</body>` (any case), or at its end.
#[cfg(feature = "axum")]
fn with_script(page: &[u8], tag: &str) -> Vec<u8> {
    let lower = page.to_ascii_lowercase();
    let at = lower
        .windows(7)
        .rposition(|window| window == b"</body>")
        .unwrap_or(page.len());
    let mut out = Vec::with_capacity(page.len() + tag.len());
    out.extend_from_slice(&page[..at]);
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(&page[at..]);
    out
}

/// The server's settings; `Server::serve` (feature `axum`) or [`Server::serve_hyper`] runs it.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// mcluster::serve::Server::new()
///     .fallback("127.0.0.1:8080")
///     .first_request_timeout(Duration::from_millis(500))
///     .drain_timeout(Duration::from_secs(20))
///     .serve(app)
///     .await
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Server {
    fallback: String,
    first_request_timeout: Duration,
    keep_alive_grace: Duration,
    drain_timeout: Option<Duration>,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// The defaults: fallback `127.0.0.1:3000`, first request timeout 1 s, keep-alive grace
    /// 100 ms, no drain timeout.
    pub fn new() -> Self {
        Self {
            fallback: DEFAULT_FALLBACK.to_owned(),
            first_request_timeout: Duration::from_secs(1),
            keep_alive_grace: Duration::from_millis(100),
            drain_timeout: None,
        }
    }

    /// The address (`HOST:PORT`) to bind when the process inherited no listener (run outside
    /// mcluster). Under mcluster it is never used.
    pub fn fallback(mut self, addr: impl Into<String>) -> Self {
        self.fallback = addr.into();
        self
    }

    /// How long a connection accepted before the stop signal, whose first request has not
    /// arrived yet, may take to send it (default 1 s). The client connected before the worker
    /// stopped accepting, so its request is this worker's to serve; only a client that connects
    /// and sends nothing (a browser's speculative connection) makes the drain wait this long.
    pub fn first_request_timeout(mut self, timeout: Duration) -> Self {
        self.first_request_timeout = timeout;
        self
    }

    /// How long a keep-alive connection, idle between requests at the stop signal, may take to
    /// send one more request (default 100 ms), answered with `Connection: close`. A busy client
    /// sends it within this time instead of finding its connection closed; an idle one gets a
    /// clean close.
    pub fn keep_alive_grace(mut self, grace: Duration) -> Self {
        self.keep_alive_grace = grace;
        self
    }

    /// The longest the drain may take (default: none; mcluster's `--kill-timeout` ends it). When
    /// it runs out, the remaining connections are dropped and serving returns.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = Some(timeout);
        self
    }

    /// Serves an axum `Router` until the stop signal, then drains and returns.
    ///
    /// # Errors
    ///
    /// As [`serve`].
    #[cfg(feature = "axum")]
    pub async fn serve(self, router: axum::Router) -> io::Result<()> {
        self.serve_hyper(hyper_util::service::TowerToHyperService::new(router))
            .await
    }

    /// Serves a hyper 1 service (HTTP/1.1 with upgrades, and HTTP/2 with prior knowledge) until
    /// the stop signal, then drains and returns.
    ///
    /// # Errors
    ///
    /// The inherited listeners cannot be taken ([`worker::listeners`]), the fallback address
    /// cannot be bound, or `READY=1` cannot be sent.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::convert::Infallible;
    ///
    /// use hyper::{Request, Response, body::Incoming, service::service_fn};
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let service = service_fn(|_: Request<Incoming>| async {
    ///     Ok::<_, Infallible>(Response::new(String::from("hello\n")))
    /// });
    /// mcluster::serve::Server::new().serve_hyper(service).await
    /// # }
    /// ```
    pub async fn serve_hyper<S, B>(self, service: S) -> io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        install_panic_hook();
        let listeners = take_listeners(&self.fallback)?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            for n in 0.. {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
                if n > 0 {
                    eprintln!("mcluster::serve: second stop signal; exiting now");
                    std::process::exit(1);
                }
                SHUTDOWN.cancel();
            }
        });
        worker::ready()?;

        let (live, _) = watch::channel(0usize);
        let shared = Arc::new(Shared {
            service,
            builder: auto::Builder::new(TokioExecutor::new()),
            settings: self.clone(),
            live,
        });
        let accepting: Vec<_> = listeners
            .into_iter()
            .map(|listener| tokio::spawn(accept_loop(listener, Arc::clone(&shared))))
            .collect();
        for task in accepting {
            let _ = task.await;
        }

        let mut live = shared.live.subscribe();
        let drained = live.wait_for(|count| *count == 0);
        match self.drain_timeout {
            Some(timeout) => {
                if tokio::time::timeout(timeout, drained).await.is_err() {
                    eprintln!(
                        "mcluster::serve: drain timeout {timeout:?}; dropping {} connections",
                        *shared.live.borrow()
                    );
                }
            }
            None => {
                let _ = drained.await;
            }
        }
        Ok(())
    }
}

/// What every connection task shares.
struct Shared<S> {
    service: S,
    builder: auto::Builder<TokioExecutor>,
    settings: Server,
    /// The number of open connections, upgraded ones included.
    live: watch::Sender<usize>,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// The inherited listeners, or the fallback address bound, ready for tokio.
fn take_listeners(fallback: &str) -> io::Result<Vec<Listener>> {
    let inherited = worker::listeners()?;
    if inherited.is_empty() {
        let tcp = std::net::TcpListener::bind(fallback).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("bind fallback address {fallback}: {err}"),
            )
        })?;
        tcp.set_nonblocking(true)?;
        eprintln!(
            "mcluster::serve: no inherited listener; listening on http://{}",
            tcp.local_addr()?
        );
        return Ok(vec![Listener::Tcp(TcpListener::from_std(tcp)?)]);
    }
    inherited
        .into_iter()
        .map(|listener| {
            // tokio needs non-blocking sockets; the mode is shared with the other workers, which
            // run the same program.
            listener.socket().set_nonblocking(true)?;
            Ok(match listener.into_socket() {
                Socket::Tcp(tcp) => Listener::Tcp(TcpListener::from_std(tcp)?),
                Socket::Unix(unix) => Listener::Unix(UnixListener::from_std(unix)?),
            })
        })
        .collect()
}

/// Accepts until the shutdown token is cancelled, then drops (closes) the listener.
async fn accept_loop<S, B>(listener: Listener, shared: Arc<Shared<S>>)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    loop {
        let accepted = tokio::select! {
            biased;
            () = SHUTDOWN.cancelled() => return,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok(stream) => {
                let io = Conn::new(stream, &shared.live);
                tokio::spawn(connection(io, Arc::clone(&shared)));
            }
            Err(err) if is_per_connection(&err) => {}
            Err(err) => {
                // Out of fds or memory: wait a little instead of spinning.
                eprintln!("mcluster::serve: accept: {err}");
                tokio::select! {
                    () = SHUTDOWN.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

async fn accept(listener: &Listener) -> io::Result<Stream> {
    match listener {
        Listener::Tcp(tcp) => {
            let (stream, _) = tcp.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok(Stream::Tcp(stream))
        }
        Listener::Unix(unix) => Ok(Stream::Unix(unix.accept().await?.0)),
    }
}

/// Errors of one connection that the listener itself survives.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Serves one connection; on shutdown, drains it as the module documentation says.
async fn connection<S, B>(io: Conn, shared: Arc<Shared<S>>)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let requests = Arc::new(Requests::default());
    let service = Tracked {
        inner: shared.service.clone(),
        requests: Arc::clone(&requests),
    };
    let mut conn = pin!(
        shared
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
    );
    tokio::select! {
        _ = conn.as_mut() => return,
        () = SHUTDOWN.cancelled() => {}
    }

    // hyper's own graceful shutdown closes a connection at once unless a request is in flight,
    // which loses the request the client has already sent. Wait for it first (briefly).
    let started = requests.started.load(Ordering::SeqCst);
    let grace = if started == 0 {
        shared.settings.first_request_timeout
    } else {
        shared.settings.keep_alive_grace
    };
    let mut deadline = pin!(tokio::time::sleep(grace));
    while requests.in_flight.load(Ordering::SeqCst) == 0
        && requests.started.load(Ordering::SeqCst) == started
    {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = requests.changed.notified() => {}
            () = &mut deadline => break,
        }
    }
    // With a request in flight, this only turns keep-alive off: hyper closes the connection
    // after the response. Otherwise it closes the idle connection.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A connection's requests, counted by its service.
#[derive(Default)]
struct Requests {
    started: AtomicU64,
    /// Requests whose response body has not been fully sent (or dropped) yet.
    in_flight: AtomicUsize,
    /// Woken when a request starts.
    changed: Notify,
}

/// Counts a request as in flight until dropped (with its response body).
struct InFlight(Arc<Requests>);

impl InFlight {
    fn start(requests: &Arc<Requests>) -> Self {
        requests.in_flight.fetch_add(1, Ordering::SeqCst);
        requests.started.fetch_add(1, Ordering::SeqCst);
        requests.changed.notify_one();
        Self(Arc::clone(requests))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The application's service, counting requests, catching panics, and closing connections
/// after their response once the drain has begun.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    requests: Arc<Requests>,
}

type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody<B>>, E>> + Send>>;

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<B, S::Error>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.requests);
        let http1 = request.version() < Version::HTTP_2;
        let future = panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)))
            .map(|future| CatchUnwind(Box::pin(future)));
        Box::pin(async move {
            let outcome = match future {
                Ok(future) => future.await,
                Err(panic) => Err(panic),
            };
            let (mut parts, kind) = if let Ok(response) = outcome {
                let (parts, body) = response?.into_parts();
                (parts, Kind::App { body })
            } else {
                // The panic hook has reported it and started the drain.
                stop_by_itself();
                let (mut parts, ()) = Response::new(()).into_parts();
                parts.status = StatusCode::INTERNAL_SERVER_ERROR;
                parts.headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                let text = Bytes::from_static(b"Internal Server Error\n");
                (parts, Kind::Message { text: Some(text) })
            };
            if http1 && SHUTDOWN.is_cancelled() && parts.status != StatusCode::SWITCHING_PROTOCOLS {
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            let body = TrackedBody {
                kind,
                in_flight: Some(in_flight),
            };
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// A future whose panic becomes an `Err`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it ends.
    struct TrackedBody<B> {
        #[pin]
        kind: Kind<B>,
        in_flight: Option<InFlight>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        App { #[pin] body: B },
        Message { text: Option<Bytes> },
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match this.kind.project() {
            KindProj::App { body } => match body.poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame.map(|f| f.map_err(Into::into)),
            },
            KindProj::Message { text } => text.take().map(|text| Ok(Frame::data(text))),
        };
        if frame.is_none() {
            this.in_flight.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::App { body } => body.is_end_stream(),
            Kind::Message { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::App { body } => body.size_hint(),
            Kind::Message { text } => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}

/// An accepted connection.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// An accepted connection, counted in [`Shared::live`] until dropped — also after an upgrade
/// (a WebSocket handler owns it then), so the drain waits for upgraded connections too.
struct Conn {
    stream: Stream,
    live: watch::Sender<usize>,
}

impl Conn {
    fn new(stream: Stream, live: &watch::Sender<usize>) -> Self {
        live.send_modify(|count| *count += 1);
        Self {
            stream,
            live: live.clone(),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.live.send_modify(|count| *count -= 1);
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reports any panic in the worker's `STATUS=` and starts the drain (once per process; the
/// previous hook still runs first, so the message is printed as usual).
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            previous(info);
            let _ = worker::status(&panic_status(info));
            stop_by_itself();
        }));
    });
}

/// `panicked at FILE:LINE:COL: MESSAGE`, as the default hook says it.
fn panic_status(info: &panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    match info.location() {
        Some(at) => format!("panicked at {at}: {message}"),
        None => format!("panicked: {message}"),
    }
}

#[cfg(all(test, feature = "axum"))]
mod tests {
    #[test]
    fn the_livereload_script_goes_before_the_last_body_end() {
        let tag = "<script src=\"x\"></script>";
        assert_eq!(
            super::with_script(b"<p>a</p></BODY></html>", tag),
            b"<p>a</p><script src=\"x\"></script></BODY></html>"
        );
        assert_eq!(
            super::with_script(b"<p>a</p>", tag),
            b"<p>a</p><script src=\"x\"></script>"
        );
    }
}
