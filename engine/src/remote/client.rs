//! The plugin HTTP client (moby `pkg/plugins/client.go`).
//!
//! Contract: [`Client::call`] sends `POST /<Method>` with a JSON body and the plugin
//! content type over the plugin's unix socket or TCP address, one connection per
//! call (hyper's `http1` connection), and decodes the answer:
//! * a connection that cannot be made (socket missing, refused) is retried with
//!   dockerd's exponential backoff (1 s, 2 s, 4 s, … capped at the deadline) until the
//!   next wait would pass [`Timing::retry_deadline`] after the first attempt
//!   ([`PluginError::Unreachable`]); a call that was sent is never retried (it may
//!   have had effects);
//! * each exchange (connect to last byte) has [`Timing::call_timeout`]
//!   ([`PluginError::Timeout`]), so a slow plugin gives a clear error, never a hang;
//! * a non-200 answer, or a 200 answer whose `Err` is not empty, is
//!   [`PluginError::Refused`] carrying the plugin's `Err` (or its raw body);
//! * an answer that is not JSON of the expected shape is [`PluginError::BadAnswer`]
//!   naming the field (serde path).
//!
//! Calls are synchronous (drivers and IPAM are called from blocking threads); the
//! I/O runs on a small runtime of this module's own, so a call never needs (or
//! blocks) the caller's runtime.

use super::discovery::Addr;
use super::PluginError;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tapnet_types::plugin::{ActivateResponse, Empty, CONTENT_TYPE};

/// The largest answer read from a plugin.
const MAX_ANSWER: usize = 4 << 20;

/// Retry and timeout settings of plugin calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long discovery and connection attempts are retried (dockerd: 30 s).
    pub retry_deadline: Duration,
    /// How long one exchange may take.
    pub call_timeout: Duration,
}

impl Default for Timing {
    /// dockerd's 30 s retry deadline; 30 s per call.
    fn default() -> Timing {
        Timing {
            retry_deadline: Duration::from_secs(30),
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// dockerd's backoff before retry number `retries + 1`: 1 s doubled per retry,
/// capped at `cap`.
pub fn backoff(retries: u32, cap: Duration) -> Duration {
    let b = Duration::from_secs(1)
        .saturating_mul(1u32.checked_shl(retries.min(20)).unwrap_or(u32::MAX));
    b.min(cap)
}

/// Whether to give up rather than wait `next` more (dockerd's `abort`: the wait
/// would end at or past the deadline).
pub fn give_up(started: Instant, next: Duration, deadline: Duration) -> bool {
    started.elapsed() + next >= deadline
}

/// The runtime the plugin I/O runs on (built once, never dropped).
fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tapnet-plugins")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the plugin client runtime: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// A client of one plugin.
#[derive(Debug, Clone)]
pub struct Client {
    plugin: String,
    addr: Addr,
    timing: Timing,
}

/// What one attempt gave.
enum Attempt {
    /// The connection could not be made: retry.
    NoConnection(String),
    /// The exchange happened (or failed after the request went out).
    Done(Result<(StatusCode, Bytes), PluginError>),
}

impl Client {
    /// A client of plugin `plugin` at `addr`.
    pub fn new(plugin: &str, addr: Addr, timing: Timing) -> Client {
        Client {
            plugin: plugin.to_string(),
            addr,
            timing,
        }
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The plugin's address.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// `POST /Plugin.Activate`: what the plugin implements.
    pub fn activate(&self) -> Result<ActivateResponse, PluginError> {
        self.call("Plugin.Activate", &Empty {})
    }

    /// `POST /<method>` with `req`; the decoded answer (see the module doc).
    pub fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        req: &Q,
    ) -> Result<R, PluginError> {
        let body = serde_json::to_vec(req).map_err(|e| PluginError::BadAnswer {
            plugin: self.plugin.clone(),
            method: method.to_string(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let (status, raw) = self.exchange(method, Bytes::from(body))?;
        decode(&self.plugin, method, status, &raw)
    }

    /// Send with retries; the status and body of the answer.
    fn exchange(&self, method: &str, body: Bytes) -> Result<(StatusCode, Bytes), PluginError> {
        let started = Instant::now();
        let mut retries = 0u32;
        loop {
            let attempt = self.attempt(method, body.clone());
            match attempt {
                Attempt::Done(r) => return r,
                Attempt::NoConnection(message) => {
                    let wait = backoff(retries, self.timing.retry_deadline);
                    if give_up(started, wait, self.timing.retry_deadline) {
                        return Err(PluginError::Unreachable {
                            plugin: self.plugin.clone(),
                            addr: self.addr.to_string(),
                            message: format!(
                                "{message} (gave up after {} attempts in {:.1} s)",
                                retries + 1,
                                started.elapsed().as_secs_f64()
                            ),
                        });
                    }
                    retries += 1;
                    tracing::warn!(plugin = %self.plugin, addr = %self.addr, error = %message, "unable to connect to plugin; retrying in {wait:?}");
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// One connection and exchange on the plugin runtime, bounded by the call timeout.
    fn attempt(&self, method: &str, body: Bytes) -> Attempt {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(message) => return Attempt::NoConnection(message),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (addr, plugin, method_s, timeout) = (
            self.addr.clone(),
            self.plugin.clone(),
            method.to_string(),
            self.timing.call_timeout,
        );
        rt.spawn(async move {
            let r = tokio::time::timeout(timeout, exchange_once(&addr, &plugin, &method_s, body))
                .await
                .unwrap_or_else(|_| {
                    Attempt::Done(Err(PluginError::Timeout {
                        plugin: plugin.clone(),
                        method: method_s.clone(),
                        timeout,
                    }))
                });
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or_else(|_| {
            Attempt::Done(Err(PluginError::Unreachable {
                plugin: self.plugin.clone(),
                addr: self.addr.to_string(),
                message: "the plugin client task ended without an answer".into(),
            }))
        })
    }
}

/// Connect, send, read the whole answer.
async fn exchange_once(addr: &Addr, plugin: &str, method: &str, body: Bytes) -> Attempt {
    match addr {
        Addr::Unix(path) => match tokio::net::UnixStream::connect(path).await {
            Ok(s) => Attempt::Done(send(s, plugin, method, body).await),
            Err(e) => Attempt::NoConnection(format!("connect {}: {e}", path.display())),
        },
        Addr::Tcp(host) => match tokio::net::TcpStream::connect(host.as_str()).await {
            Ok(s) => Attempt::Done(send(s, plugin, method, body).await),
            Err(e) => Attempt::NoConnection(format!("connect {host}: {e}")),
        },
    }
}

async fn send<S>(
    stream: S,
    plugin: &str,
    method: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), PluginError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let fail = |message: String| PluginError::BadAnswer {
        plugin: plugin.to_string(),
        method: method.to_string(),
        message,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(format!("HTTP handshake: {e}")))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::post(format!("/{method}"))
        .header(hyper::header::HOST, "plugin")
        .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
        .header(hyper::header::ACCEPT, CONTENT_TYPE)
        .body(Full::new(body))
        .map_err(|e| fail(format!("bad request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| fail(format!("no HTTP answer: {e}")))?;
    let status = resp.status();
    let raw = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| fail(format!("reading the answer: {e}")))?
        .to_bytes();
    drop(sender);
    conn.abort();
    Ok((status, raw))
}

/// Decode an answer (see the module doc).
pub fn decode<R: DeserializeOwned>(
    plugin: &str,
    method: &str,
    status: StatusCode,
    raw: &[u8],
) -> Result<R, PluginError> {
    let value: Option<serde_json::Value> = serde_json::from_slice(raw).ok();
    let err = value
        .as_ref()
        .and_then(|v| v.get("Err"))
        .and_then(|e| e.as_str())
        .filter(|e| !e.is_empty());
    if status != StatusCode::OK || err.is_some() {
        let message = match err {
            Some(e) => e.to_string(),
            None => {
                let text = String::from_utf8_lossy(raw);
                let text = text.trim();
                if text.is_empty() {
                    format!("HTTP {status}")
                } else {
                    text.chars().take(300).collect()
                }
            }
        };
        return Err(PluginError::Refused {
            plugin: plugin.to_string(),
            method: method.to_string(),
            status: status.as_u16(),
            message,
        });
    }
    let bad = |message: String| PluginError::BadAnswer {
        plugin: plugin.to_string(),
        method: method.to_string(),
        message,
    };
    if value.is_none() {
        let text: String = String::from_utf8_lossy(raw).chars().take(100).collect();
        return Err(bad(format!("not JSON: {text:?}")));
    }
    let de = &mut serde_json::Deserializer::from_slice(raw);
    serde_path_to_error::deserialize(de)
        .map_err(|e| bad(format!("unexpected answer at {}: {}", e.path(), e.inner())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tapnet_types::plugin::{JoinResponse, RequestPoolResponse, CONTENT_TYPE_V1};

    #[test]
    fn dockerd_backoff() {
        let cap = Duration::from_secs(30);
        let waits: Vec<u64> = (0..7).map(|r| backoff(r, cap).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(100, cap), cap);
        assert_eq!(backoff(3, Duration::from_secs(5)), Duration::from_secs(5));
        let now = Instant::now();
        assert!(give_up(now, Duration::from_secs(3), Duration::from_secs(2)));
        assert!(!give_up(
            now,
            Duration::from_secs(1),
            Duration::from_secs(30)
        ));
    }

    #[test]
    fn error_mapping() {
        // {"Err"} with a non-200 status.
        let e = decode::<Empty>(
            "p",
            "NetworkDriver.Join",
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"Err":"no bridge"}"#,
        )
        .unwrap_err();
        assert_eq!(e.status(), 500);
        let msg = e.to_string();
        assert!(
            msg.contains("plugin \"p\"")
                && msg.contains("NetworkDriver.Join")
                && msg.contains("no bridge"),
            "{msg}"
        );
        // {"Err"} with 200 is still an error (libnetwork checks Err on every answer).
        let e = decode::<Empty>("p", "m", StatusCode::OK, br#"{"Err":"nope"}"#).unwrap_err();
        assert!(
            matches!(e, PluginError::Refused { ref message, status: 200, .. } if message == "nope")
        );
        // A non-JSON error body is passed on as text.
        let e =
            decode::<Empty>("p", "m", StatusCode::NOT_FOUND, b"404 page not found\n").unwrap_err();
        assert!(e.to_string().contains("404 page not found"));
        // Not JSON with 200.
        let e = decode::<Empty>("p", "m", StatusCode::OK, b"<html>").unwrap_err();
        assert!(matches!(e, PluginError::BadAnswer { .. }));
        assert!(e.to_string().contains("not JSON"), "{e}");
        assert_eq!(e.status(), 502);
        // Wrong shape: names the field.
        let e = decode::<JoinResponse>(
            "p",
            "NetworkDriver.Join",
            StatusCode::OK,
            br#"{"InterfaceName":{"SrcName":5}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("InterfaceName.SrcName"), "{e}");
        // Empty Err and extra fields are fine.
        let ok: RequestPoolResponse = decode(
            "p",
            "m",
            StatusCode::OK,
            br#"{"Err":"","PoolID":"x","Pool":"10.0.0.0/24","Extra":1}"#,
        )
        .unwrap();
        assert_eq!(ok.pool_id, "x");
    }

    #[test]
    fn unreachable_plugin_is_retried_until_the_deadline() {
        let dir = std::env::temp_dir().join(format!("tapnet-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = Client::new(
            "gone",
            Addr::Unix(dir.join("gone.sock")),
            Timing {
                retry_deadline: Duration::from_millis(1500),
                call_timeout: Duration::from_secs(1),
            },
        );
        let started = Instant::now();
        let e = c.activate().unwrap_err();
        // One retry after 1 s; the next (2 s) would pass the deadline.
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(e.status(), 503);
        assert!(e.to_string().contains("gave up after 2 attempts"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tcp_plugin_gets_dockers_request() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&req).contains("{}") {
                let k = s.read(&mut buf).unwrap();
                assert!(k > 0, "request ended early");
                req.extend_from_slice(&buf[..k]);
            }
            let body = br#"{"Implements":["NetworkDriver","IpamDriver"]}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_V1}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body).unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        let c = Client::new("t", Addr::Tcp(addr.to_string()), Timing::default());
        let a = c.activate().unwrap();
        assert_eq!(a.implements, ["NetworkDriver", "IpamDriver"]);
        let req = server.join().unwrap().to_lowercase();
        assert!(req.starts_with("post /plugin.activate http/1.1"), "{req}");
        assert!(
            req.contains(&format!("content-type: {CONTENT_TYPE}")),
            "{req}"
        );
    }

    #[test]
    fn slow_plugin_times_out() {
        let dir = std::env::temp_dir().join(format!("tapnet-client-slow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("slow.sock");
        // Accepts and never answers.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let c = Client::new(
            "slow",
            Addr::Unix(path),
            Timing {
                retry_deadline: Duration::from_secs(5),
                call_timeout: Duration::from_millis(300),
            },
        );
        let e = c.activate().unwrap_err();
        assert!(matches!(e, PluginError::Timeout { .. }), "{e}");
        assert_eq!(e.status(), 504);
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
