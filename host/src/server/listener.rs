//! Accepting client connections, with a bound on every wait a client can impose: at most
//! `max_connections` open at once (more wait in the kernel's backlog), a request head that must
//! arrive whole within `header_read_timeout` of its first byte (a slow client is disconnected),
//! and at most `keep_alive_timeout` with no request in flight. On the stop signal it stops
//! accepting, asks every connection to finish its request and close, and waits for them.
//!
//! `axum::serve` has none of these limits, so connections are served here with hyper's HTTP/1
//! connection, and watched by their own task.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::Service;

/// The limits every connection is held to (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// The most connections open at once.
    pub max_connections: usize,
    /// How long a started request head may take to arrive whole.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub keep_alive_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` resolves, then lets every connection finish its
/// request and close, for at most `drain` (after which the rest are dropped).
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stopping_tx, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait a
                    // little rather than spin, and go on.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let stopping = stopping.clone();
        connections.spawn(async move {
            serve_one(stream, peer, router, limits, stopping).await;
            tracing::trace!(%peer, "connection closed");
            drop(permit);
        });
        // Reap finished connection tasks as we go, so the set stays small.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, all_closed).await.is_err() {
        tracing::warn!(limit = ?drain, "requests still running after the shutdown timeout; stopping anyway");
        connections.abort_all();
    }
}

/// Serves one connection until it closes, the client breaks a limit, or the host stops.
async fn serve_one(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            // Handlers read the peer address (`runtime.ip_address`) from here.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let mut router = router.clone();
            let in_flight = InFlight::enter(activity.clone());
            async move {
                let response = router.call(request).await;
                drop(in_flight);
                response
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header limit is ours (from the head's first byte, not from when the connection went
    // idle); hyper's own would also close idle keep-alive connections at that time.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        let check_at = activity.next_check(limits);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            changed = stopping.changed(), if !draining => {
                // The host is stopping (or gone): finish the request in flight, then close.
                let _ = changed;
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = activity.changed.notified() => {}
            () = tokio::time::sleep_until(check_at) => {
                if let Some(why) = activity.expired(limits) {
                    tracing::debug!(reason = why, "closing a client connection");
                    return;
                }
            }
        }
    }
}

/// What a connection is doing, as its limits need to know; `changed` wakes the connection's
/// watch when a request head starts, so its new deadline applies at once.
struct Activity {
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

struct State {
    /// Requests whose handler has not answered yet.
    in_flight: usize,
    /// Since when no request has been in flight.
    idle_since: Instant,
    /// When the first byte of the next request head arrived, while none is in flight.
    head_started: Option<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: Instant::now(),
                head_started: None,
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes arrived from the client.
    fn read(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// When to look at the limits next.
    fn next_check(&self, limits: ConnectionLimits) -> Instant {
        let s = self.lock();
        match (s.in_flight, s.head_started) {
            // A request runs (bounded by `request_timeout`): look again now and then.
            (1.., _) => Instant::now() + limits.header_read_timeout.min(limits.keep_alive_timeout),
            (0, Some(started)) => started + limits.header_read_timeout,
            (0, None) => s.idle_since + limits.keep_alive_timeout,
        }
    }

    /// Which limit the connection has broken, if any.
    fn expired(&self, limits: ConnectionLimits) -> Option<&'static str> {
        let s = self.lock();
        let now = Instant::now();
        match (s.in_flight, s.head_started) {
            (1.., _) => None,
            (0, Some(started)) => {
                (now >= started + limits.header_read_timeout).then_some("header_read_timeout")
            }
            (0, None) => {
                (now >= s.idle_since + limits.keep_alive_timeout).then_some("keep_alive_timeout")
            }
        }
    }
}

/// Counts one request as in flight until dropped (also when the connection dies under it).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: Arc<Activity>) -> InFlight {
        {
            let mut s = activity.lock();
            s.in_flight += 1;
            s.head_started = None;
        }
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
    }
}

/// The client's socket, telling [`Activity`] when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
