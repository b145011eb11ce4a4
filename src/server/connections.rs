//! The CSI socket's connections: at most [`MAX_CONNECTIONS`] at once, the idle one that
//! waited longest closed when a new client needs the room, a pause instead of a spinning
//! accept loop when the process is out of descriptors, and every client's bytes passed
//! through [`crate::authority::Rewrite`] so gRPC clients other than Go's are served.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

use crate::metrics::Registry;

/// Client connections the CSI socket serves at once. Sidecars hold one each; beyond this a
/// new client takes the place of the connection that has been idle longest, or is closed
/// at accept when every connection has a call in flight.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection counts as idle once it has had no call in flight for this long (so the
/// reply of its last call has been written).
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// What berth knows of one connection, shared between its reader and the calls it carries.
#[derive(Default)]
struct ConnState {
    /// Calls of this connection in flight.
    calls: AtomicUsize,
    /// Since when no call has been in flight (`None` while one is).
    idle_since: Mutex<Option<Instant>>,
    /// Set to close the connection: its reader reports end of stream.
    evict: AtomicBool,
    /// Wakes the reader so it sees `evict`.
    waker: Mutex<Option<Waker>>,
    /// The connection's place among the [`MAX_CONNECTIONS`]; an evicted connection hands
    /// it to the client that takes its place.
    place: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl ConnState {
    fn new(place: tokio::sync::OwnedSemaphorePermit) -> ConnState {
        ConnState {
            idle_since: Mutex::new(Some(Instant::now())),
            place: Mutex::new(Some(place)),
            ..ConnState::default()
        }
    }

    /// How long the connection has been idle, if it is.
    fn idle_for(&self) -> Option<Duration> {
        let since = *self.idle_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        since.map(|at| at.elapsed())
    }

    /// Tells the connection to close and takes its place.
    fn close(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.evict.store(true, Ordering::SeqCst);
        let place = self.place.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(waker) = self.waker.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            waker.wake();
        }
        place
    }
}

/// A call in flight on a connection; the connection is idle again once all are dropped.
struct CallGuard(Arc<ConnState>);

impl CallGuard {
    fn enter(state: &Arc<ConnState>) -> CallGuard {
        let mut idle = state.idle_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.calls.fetch_add(1, Ordering::SeqCst);
        *idle = None;
        CallGuard(Arc::clone(state))
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut idle = self.0.idle_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.0.calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            *idle = Some(Instant::now());
        }
    }
}

/// The connection a request came on, as tonic hands it to the services (`ConnectInfo`).
#[derive(Clone)]
pub struct Connection(Arc<ConnState>);

/// A tower layer's service that counts each call against its connection while it runs,
/// so an idle connection can be told from one with calls in flight.
#[derive(Clone)]
pub struct TrackCalls<S>(pub S);

impl<S, B> tower::Service<http::Request<B>> for TrackCalls<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = req.extensions().get::<Connection>().map(|c| CallGuard::enter(&c.0));
        let call = self.0.call(req);
        Box::pin(async move {
            let result = call.await;
            drop(guard);
            result
        })
    }
}

/// The socket's accepted connections (see the module documentation).
pub struct Incoming {
    listener: UnixListener,
    /// Counts connections open, refused and evicted.
    registry: Arc<Registry>,
    permits: Arc<tokio::sync::Semaphore>,
    /// Every connection accepted, to find the idle one to close when the socket is full.
    open: Vec<Weak<ConnState>>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Logged that accepting failed, and not accepted since: one line per episode.
    exhausted: bool,
}

impl Incoming {
    pub fn new(listener: UnixListener, registry: Arc<Registry>) -> Incoming {
        Incoming {
            listener,
            registry,
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            open: Vec::new(),
            backoff: None,
            exhausted: false,
        }
    }

    /// Closes the connection that has been idle longest (at least [`IDLE_AFTER`]) and
    /// returns its place; `None` when every connection has a call in flight or just had one.
    fn evict_idlest(&mut self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let idlest = self
            .open
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| !c.evict.load(Ordering::SeqCst))
            .filter_map(|c| c.idle_for().filter(|d| *d >= IDLE_AFTER).map(|d| (d, c)))
            .max_by_key(|(d, _)| *d);
        let (idle, conn) = idlest?;
        let place = conn.close();
        let n = self.registry.evicted.fetch_add(1, Ordering::SeqCst);
        if n.is_power_of_two() || n == 0 {
            tracing::warn!(
                max = MAX_CONNECTIONS,
                idle_seconds = idle.as_secs(),
                "the socket serves its maximum of connections: closing the one idle longest for a new client"
            );
        }
        place
    }

    fn admit(&mut self, stream: UnixStream) -> Option<Counted> {
        // Closed connections leave dead entries: drop them, so the list stays as long as
        // the connections open (the kubelet opens one per call).
        self.open.retain(|c| c.strong_count() > 0);
        let place = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(place) => place,
            Err(_) => {
                if let Some(place) = self.evict_idlest() {
                    place
                } else {
                    if self.registry.refused.fetch_add(1, Ordering::SeqCst).is_power_of_two() {
                        tracing::warn!(
                            max = MAX_CONNECTIONS,
                            "closing new connections: the socket serves its maximum and every one has a call in flight"
                        );
                    }
                    return None;
                }
            }
        };
        let state = Arc::new(ConnState::new(place));
        self.open.push(Arc::downgrade(&state));
        Some(Counted::new(stream, state, Arc::clone(&self.registry)))
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Counted>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use std::future::Future;
        let this = self.get_mut();
        loop {
            if let Some(sleep) = this.backoff.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.backoff = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, _))) => {
                    this.exhausted = false;
                    if let Some(conn) = this.admit(stream) {
                        return Poll::Ready(Some(Ok(conn)));
                    }
                }
                Poll::Ready(Err(e)) => {
                    let exhausted =
                        matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
                    if exhausted {
                        if !std::mem::replace(&mut this.exhausted, true) {
                            tracing::warn!(error = %e, "cannot accept connections now; retrying every 100 ms");
                        }
                        this.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                    }
                    // Other errors (a client gone before accept) concern one connection.
                }
            }
        }
    }
}

/// An accepted connection, counted until it closes.
pub struct Counted {
    stream: UnixStream,
    registry: Arc<Registry>,
    state: Arc<ConnState>,
    rewrite: crate::authority::Rewrite,
    /// Rewritten bytes not yet read by the HTTP/2 server, from `ready_at` on.
    ready: Vec<u8>,
    ready_at: usize,
}

impl Counted {
    fn new(stream: UnixStream, state: Arc<ConnState>, registry: Arc<Registry>) -> Counted {
        registry.connections.fetch_add(1, Ordering::SeqCst);
        Counted { stream, registry, state, rewrite: crate::authority::Rewrite::new(), ready: Vec::new(), ready_at: 0 }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // The place is free once the connection is gone (calls may still hold its state).
        drop(self.state.place.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        self.registry.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.state.evict.load(Ordering::SeqCst) {
            // End of stream: the HTTP/2 server closes the (idle) connection.
            return Poll::Ready(Ok(()));
        }
        *this.state.waker.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cx.waker().clone());
        loop {
            if this.ready_at < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_at);
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                return Poll::Ready(Ok(()));
            }
            this.ready.clear();
            this.ready_at = 0;
            if this.rewrite.passes_through() {
                return Pin::new(&mut this.stream).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    this.rewrite
                        .feed(read.filled(), &mut this.ready)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if let Some(authority) = this.rewrite.take_replaced() {
                        tracing::debug!(
                            authority,
                            "client sent an :authority HTTP/2 does not allow (a socket path); serving it as localhost"
                        );
                    }
                }
                other => return other,
            }
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = Connection;

    fn connect_info(&self) -> Connection {
        Connection(Arc::clone(&self.state))
    }
}
