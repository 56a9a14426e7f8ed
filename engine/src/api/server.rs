//! The HTTP/1 server behind the API and the Docker plugin sockets.
//!
//! Contract: [`serve_unix`] accepts connections on a unix socket and serves each with
//! hyper's HTTP/1 connection builder, so that a client that stalls cannot hold a
//! connection forever:
//!
//! * the request head (request line and headers) must arrive within
//!   [`HttpTimeouts::header`] ([`HEADER_READ_TIMEOUT`] by default) of the connection
//!   starting to wait for it: on a new connection, and after each answer on a kept-alive
//!   one, so an idle connection is closed too;
//! * the request body must be complete within [`HttpTimeouts::body`]
//!   ([`BODY_READ_TIMEOUT`] by default) of its head: past it, reading the body fails,
//!   the handler answers as for any unreadable body, and the connection is closed.
//!
//! A connection closed on a timeout or an error is logged at debug and counted
//! ([`closed_on_error`]). Connections are served concurrently: a stalled one never
//! delays another.
//!
//! At most [`HttpTimeouts::max_connections`] connections are open on one socket (each
//! costs a descriptor: the daemon's budget gives the API its share, see
//! `docs/security.md`). A connection past the cap sheds the connection that has been idle
//! (no request being handled) the longest, so a fresh client is always served while
//! idle or stalled clients hold the slots; when every open connection is handling a
//! request, the new one is refused (closed at once). Both are counted
//! ([`connection_counts`]) and logged once per episode (until the count falls below three
//! quarters of the cap).

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Default time a client has to send a request's head: 10 s (a local client sends it
/// in well under a millisecond; the margin is for a loaded host).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to send a request's body once its head arrived: 30 s for
/// at most [`crate::api::BODY_LIMIT`] bytes over a local socket.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Default cap on concurrent connections per socket (the daemon sizes it from its
/// descriptor limit).
pub const MAX_CONNECTIONS: usize = 1024;

/// How long the server waits for a client, and how many it holds (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// Request head (line and headers).
    pub header: Duration,
    /// Request body, from the end of the head.
    pub body: Duration,
    /// Most connections open at once on the socket (at least 1).
    pub max_connections: usize,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            header: HEADER_READ_TIMEOUT,
            body: BODY_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

static SHED: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Connection-cap counters since the daemon started, every socket together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Idle connections closed to make room for a new one.
    pub shed: u64,
    /// New connections closed at once because every open one was busy.
    pub refused: u64,
}

/// The connection-cap counters ([`ConnectionCounts`]).
pub fn connection_counts() -> ConnectionCounts {
    ConnectionCounts {
        shed: SHED.load(Ordering::Relaxed),
        refused: REFUSED.load(Ordering::Relaxed),
    }
}

/// One open connection, as the cap sees it.
struct ConnState {
    /// Requests being handled.
    busy: AtomicUsize,
    /// When it last finished a request (or opened).
    idle_since: Mutex<Instant>,
    /// Told to close (shed).
    shed: tokio::sync::Notify,
}

/// The open connections of one socket.
struct Conns {
    max: usize,
    open: Mutex<(u64, HashMap<u64, Arc<ConnState>>)>,
    logged: AtomicBool,
}

impl Conns {
    /// Make room for and register a new connection: `None` if it must be refused.
    fn admit(&self) -> Option<(u64, Arc<ConnState>)> {
        let Ok(mut g) = self.open.lock() else {
            return None;
        };
        let (next, open) = &mut *g;
        if open.len() >= self.max {
            let oldest_idle = open
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, c)| c.idle_since.lock().map(|t| *t).ok())
                .map(|(&id, _)| id);
            let first = !self.logged.swap(true, Ordering::Relaxed);
            match oldest_idle.and_then(|id| open.remove(&id)) {
                Some(victim) => {
                    victim.shed.notify_one();
                    let n = SHED.fetch_add(1, Ordering::Relaxed) + 1;
                    if first {
                        tracing::warn!(limit = self.max, shed = n, "API connection limit reached: the longest-idle connections are closed to serve new ones");
                    }
                }
                None => {
                    let n = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
                    if first {
                        tracing::warn!(limit = self.max, refused = n, "API connection limit reached with every connection busy: new connections are refused");
                    }
                    return None;
                }
            }
        }
        let id = *next;
        *next += 1;
        let c = Arc::new(ConnState {
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            shed: tokio::sync::Notify::new(),
        });
        open.insert(id, Arc::clone(&c));
        Some((id, c))
    }

    fn remove(&self, id: u64) {
        if let Ok(mut g) = self.open.lock() {
            g.1.remove(&id);
            if g.1.len() < self.max / 4 * 3 {
                self.logged.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// Deregisters a connection when its task ends.
struct Registered {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.remove(self.id);
    }
}

static CLOSED_ON_ERROR: AtomicU64 = AtomicU64::new(0);

/// Connections closed on a timeout or a protocol error since the daemon started (every
/// socket served by [`serve_unix`]).
pub fn closed_on_error() -> u64 {
    CLOSED_ON_ERROR.load(Ordering::Relaxed)
}

/// A request body that fails once its deadline passes.
struct TimedBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(r);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body not received in time",
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serve `router` on a unix socket at `path` until `shutdown` completes: removes a
/// stale socket file, creates parent directories, sets mode 0660.
pub async fn serve_unix(
    path: &std::path::Path,
    router: Router,
    timeouts: HttpTimeouts,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    tracing::info!(socket = %path.display(), ?timeouts, "API listening");
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    let conns = Arc::new(Conns {
        max: timeouts.max_connections.max(1),
        open: Mutex::new((0, HashMap::new())),
        logged: AtomicBool::new(false),
    });
    let accept = async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting an API connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some((id, state)) = conns.admit() else {
                drop(stream);
                continue;
            };
            let registered = Registered {
                conns: Arc::clone(&conns),
                id,
            };
            let body_timeout = timeouts.body;
            let (begin, end) = (Arc::clone(&state), Arc::clone(&state));
            let svc = router
                .clone()
                .map_request(move |req: Request<hyper::body::Incoming>| {
                    begin.busy.fetch_add(1, Ordering::AcqRel);
                    req.map(|b| {
                        Body::new(TimedBody {
                            inner: Body::new(b),
                            deadline: Box::pin(tokio::time::sleep(body_timeout)),
                        })
                    })
                })
                .map_response(move |resp| {
                    if let Ok(mut t) = end.idle_since.lock() {
                        *t = Instant::now();
                    }
                    end.busy.fetch_sub(1, Ordering::AcqRel);
                    resp
                });
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            tokio::spawn(async move {
                let _registered = registered;
                tokio::select! {
                    r = conn => {
                        if let Err(e) = r {
                            let n = CLOSED_ON_ERROR.fetch_add(1, Ordering::Relaxed) + 1;
                            tracing::debug!(error = %e, closed_on_error = n, "HTTP connection closed");
                        }
                    }
                    () = state.shed.notified() => {
                        tracing::debug!("HTTP connection shed (connection limit)");
                    }
                }
            });
        }
    };
    tokio::select! {
        () = accept => Ok(()),
        () = shutdown => Ok(()),
    }
}

#[cfg(test)]
mod conn_cap_tests {
    use super::*;

    fn conns(max: usize) -> Conns {
        Conns {
            max,
            open: Mutex::new((0, HashMap::new())),
            logged: AtomicBool::new(false),
        }
    }

    #[tokio::test]
    async fn the_longest_idle_connection_is_shed_and_busy_ones_never_are() {
        let c = conns(2);
        let (a, sa) = c.admit().expect("room");
        std::thread::sleep(Duration::from_millis(2));
        let (b, sb) = c.admit().expect("room");
        let shed_before = connection_counts().shed;
        // Full: `a` has been idle the longest and goes.
        let (_n, _sn) = c.admit().expect("a is shed for the new one");
        tokio::time::timeout(Duration::from_secs(5), sa.shed.notified())
            .await
            .expect("a was told to close");
        assert!(connection_counts().shed > shed_before);
        assert!(!c.open.lock().expect("lock").1.contains_key(&a));
        // Both open ones busy: the newest is refused, nobody is shed.
        sb.busy.fetch_add(1, Ordering::AcqRel);
        _sn.busy.fetch_add(1, Ordering::AcqRel);
        let refused_before = connection_counts().refused;
        assert!(c.admit().is_none());
        assert!(connection_counts().refused > refused_before);
        assert_eq!(c.open.lock().expect("lock").1.len(), 2);
        // One done: it can be shed again.
        sb.busy.fetch_sub(1, Ordering::AcqRel);
        assert!(c.admit().is_some());
        assert!(!c.open.lock().expect("lock").1.contains_key(&b));
        c.remove(b);
    }
}
