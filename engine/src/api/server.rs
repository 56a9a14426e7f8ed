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

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::ServiceExt;

/// Default time a client has to send a request's head: 10 s (a local client sends it
/// in well under a millisecond; the margin is for a loaded host).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to send a request's body once its head arrived: 30 s for
/// at most [`crate::api::BODY_LIMIT`] bytes over a local socket.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server waits for a client (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// Request head (line and headers).
    pub header: Duration,
    /// Request body, from the end of the head.
    pub body: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            header: HEADER_READ_TIMEOUT,
            body: BODY_READ_TIMEOUT,
        }
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
            let body_timeout = timeouts.body;
            let svc = router
                .clone()
                .map_request(move |req: Request<hyper::body::Incoming>| {
                    req.map(|b| {
                        Body::new(TimedBody {
                            inner: Body::new(b),
                            deadline: Box::pin(tokio::time::sleep(body_timeout)),
                        })
                    })
                });
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    let n = CLOSED_ON_ERROR.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::debug!(error = %e, closed_on_error = n, "HTTP connection closed");
                }
            });
        }
    };
    tokio::select! {
        () = accept => Ok(()),
        () = shutdown => Ok(()),
    }
}
