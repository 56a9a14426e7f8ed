//! A small HTTP/1.1 + JSON client for `tapnetd`'s unix socket.
//!
//! One connection per request (hyper's low-level `http1::handshake` over a
//! `tokio::net::UnixStream`). Bodies are the typed ones of [`tapnet_types::api`]:
//! requests are serialized from them, answers read into them (`get_as`,
//! `post_as`; an answer of another shape is a [`ClientError::Protocol`]); `get`
//! keeps the answer as raw JSON for commands that print it as it came. Answers
//! outside 2xx become [`ClientError::Daemon`] carrying the daemon's `message`
//! ([`ErrorBody`]), printed like docker does: `Error response from daemon: <message>`.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use tapnet_types::api::ErrorBody;
use tokio::net::UnixStream;

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be connected to.
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The cause.
        cause: io::Error,
    },
    /// The daemon answered with a status outside 2xx.
    Daemon {
        /// The HTTP status (kept for callers that branch on it; tests do).
        #[cfg_attr(not(test), allow(dead_code))]
        status: StatusCode,
        /// The daemon's `message` (or the raw body, or the status reason).
        message: String,
    },
    /// The exchange itself failed (connection dropped, unreadable answer).
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { socket, cause } => write!(
                f,
                "Cannot connect to the tapnet daemon at unix://{}: {cause}. Is tapnetd running?",
                socket.display()
            ),
            ClientError::Daemon { message, .. } => {
                write!(f, "Error response from daemon: {message}")
            }
            ClientError::Protocol(what) => {
                write!(f, "error talking to the tapnet daemon: {what}")
            }
        }
    }
}

impl std::error::Error for ClientError {}

/// A client for one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for `host`: `unix:///PATH` (or a bare absolute path).
    pub fn from_host(host: &str) -> anyhow::Result<Client> {
        let path = if let Some(p) = host.strip_prefix("unix://") {
            p
        } else if host.starts_with('/') {
            host
        } else {
            anyhow::bail!(
                "invalid host '{host}': only unix sockets are supported, e.g. unix:///run/tapnet/tapnet.sock"
            );
        };
        if path.is_empty() {
            anyhow::bail!("invalid host '{host}': empty socket path");
        }
        Ok(Client {
            socket: PathBuf::from(path),
        })
    }

    /// The socket path this client connects to.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, the answer as it came (inspect prints what the daemon said).
    pub async fn get(&self, path: &str) -> Result<(StatusCode, Value), ClientError> {
        let (status, raw) = self.request(Method::GET, path, None).await?;
        Ok((status, parse_body(&raw)))
    }

    /// `GET path`, the answer read as `T` (a body of [`tapnet_types::api`]).
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (_, raw) = self.request(Method::GET, path, None).await?;
        decode(&Method::GET, path, &raw)
    }

    /// `POST path` with a JSON body.
    pub async fn post<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(StatusCode, Value), ClientError> {
        let (status, raw) = self
            .request(Method::POST, path, Some(encode(path, body)?))
            .await?;
        Ok((status, parse_body(&raw)))
    }

    /// `POST path` with a JSON body, the answer read as `T`.
    pub async fn post_as<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let (_, raw) = self
            .request(Method::POST, path, Some(encode(path, body)?))
            .await?;
        decode(&Method::POST, path, &raw)
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<(StatusCode, Value), ClientError> {
        let (status, raw) = self.request(Method::DELETE, path, None).await?;
        Ok((status, parse_body(&raw)))
    }

    /// A new HTTP/1 connection to the daemon's socket: the sender and the connection
    /// future the caller must drive.
    async fn connect(
        &self,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
            hyper::client::conn::http1::Connection<TokioIo<UnixStream>, Full<Bytes>>,
        ),
        ClientError,
    > {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|cause| ClientError::Connect {
                    socket: self.socket.clone(),
                    cause,
                })?;
        hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// One exchange: the status and raw body of a 2xx answer, else
    /// [`ClientError::Daemon`] with the daemon's message.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (mut sender, conn) = self.connect().await?;
        // Drive the connection; it ends once `sender` is dropped. Its errors also
        // surface through `send_request`, so the result is not needed here.
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });

        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "tapnet");
        let bytes = match body {
            Some(b) => {
                req = req.header(CONTENT_TYPE, "application/json");
                b
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| ClientError::Protocol(format!("bad request {path}: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = resp.status();
        let raw = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(format!("reading the answer: {e}")))?
            .to_bytes();
        drop(sender);
        let _ = conn.await;

        if status.is_success() {
            Ok((status, raw))
        } else {
            Err(ClientError::Daemon {
                status,
                message: error_message(status, &raw),
            })
        }
    }
}

impl Client {
    /// `GET path` and hand each line of the (streamed) answer to `on_line` as it
    /// arrives, until the daemon ends the answer or `on_line` fails. A non-2xx answer
    /// is a [`ClientError::Daemon`] as for the other requests.
    pub async fn get_lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        let mut body = self.get_stream(path).await?;
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ClientError::Protocol(format!("reading the answer: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                on_line(&line[..nl])?;
            }
        }
        Ok(())
    }

    /// `GET path` and the answer's body as it streams in (the connection is driven in
    /// the background until the body is dropped). A non-2xx answer is a
    /// [`ClientError::Daemon`] as for the other requests.
    pub async fn get_stream(&self, path: &str) -> anyhow::Result<hyper::body::Incoming> {
        let (mut sender, conn) = self.connect().await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(HOST, "tapnet")
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Protocol(format!("bad request {path}: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = resp.status();
        let body = resp.into_body();
        if !status.is_success() {
            let raw = body
                .collect()
                .await
                .map_err(|e| ClientError::Protocol(format!("reading the answer: {e}")))?
                .to_bytes();
            return Err(ClientError::Daemon {
                status,
                message: error_message(status, &raw),
            }
            .into());
        }
        Ok(body)
    }
}

/// A request body as JSON.
fn encode<B: Serialize + ?Sized>(path: &str, body: &B) -> Result<Bytes, ClientError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ClientError::Protocol(format!("bad request body for {path}: {e}")))
}

/// A 2xx answer read as `T`; an answer of another shape is a protocol error.
fn decode<T: DeserializeOwned>(method: &Method, path: &str, raw: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(raw)
        .map_err(|e| ClientError::Protocol(format!("unexpected answer to {method} {path}: {e}")))
}

/// JSON if the body is JSON, the text as a JSON string otherwise, `Null` if empty.
fn parse_body(raw: &[u8]) -> Value {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(raw)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).trim().to_string()))
}

/// The daemon's `message` ([`ErrorBody`]), else the body text, else the status reason.
fn error_message(status: StatusCode, raw: &[u8]) -> String {
    if let Ok(ErrorBody { message }) = serde_json::from_slice::<ErrorBody>(raw) {
        if !message.is_empty() {
            return message;
        }
    }
    match parse_body(raw) {
        Value::String(s) if !s.is_empty() => s,
        Value::Null => status
            .canonical_reason()
            .map_or_else(|| status.to_string(), str::to_string),
        other => other.to_string(),
    }
}

/// Percent-encode one path segment (a user-given name or id).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A request the fake daemon received.
    #[derive(Debug, Clone)]
    pub struct Seen {
        pub method: String,
        pub path: String,
        pub body: Value,
    }

    /// A fake daemon on a unix socket in a fresh temp dir: answers the i-th request
    /// with the i-th canned `(status, body)` and records what it was asked.
    pub struct FakeDaemon {
        pub client: Client,
        pub seen: Arc<Mutex<Vec<Seen>>>,
        dir: PathBuf,
    }

    impl Drop for FakeDaemon {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    pub fn temp_dir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tapnet-cli-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Must be called inside a tokio runtime.
    pub fn fake_daemon(answers: Vec<(u16, &str)>) -> FakeDaemon {
        let dir = temp_dir();
        let sock = dir.join("d.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let answers: Vec<(u16, String)> = answers
            .into_iter()
            .map(|(s, b)| (s, b.to_string()))
            .collect();
        tokio::spawn(async move {
            for (status, body) in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                let req = read_request(&mut s).await;
                seen2.lock().unwrap().push(req);
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            }
        });
        FakeDaemon {
            client: Client::from_host(&format!("unix://{}", sock.display())).unwrap(),
            seen,
            dir,
        }
    }

    async fn read_request(s: &mut UnixStream) -> Seen {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed early");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
        let mut first = head.lines().next().unwrap().split(' ');
        Seen {
            method: first.next().unwrap().to_string(),
            path: first.next().unwrap().to_string(),
            body: parse_body(&buf[head_end..head_end + len]),
        }
    }

    pub fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn host_parsing() {
        assert_eq!(
            Client::from_host("unix:///run/x.sock").unwrap().socket(),
            Path::new("/run/x.sock")
        );
        assert_eq!(
            Client::from_host("/run/y.sock").unwrap().socket(),
            Path::new("/run/y.sock")
        );
        assert!(Client::from_host("tcp://1.2.3.4:2375").is_err());
        assert!(Client::from_host("unix://").is_err());
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(seg("net-1_a.b~"), "net-1_a.b~");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_eq!(seg("?#"), "%3F%23");
    }

    #[test]
    fn success_returns_status_and_json() {
        rt().block_on(async {
            let d = fake_daemon(vec![(201, r#"{"Id":"abc","Warning":""}"#), (204, "")]);
            let body = serde_json::json!({"Name": "n"});
            let (st, v) = d.client.post("/networks/create", &body).await.unwrap();
            assert_eq!(st, StatusCode::CREATED);
            assert_eq!(v["Id"], "abc");
            let (st, v) = d.client.delete("/networks/n").await.unwrap();
            assert_eq!(st, StatusCode::NO_CONTENT);
            assert_eq!(v, Value::Null);
            let seen = d.seen.lock().unwrap().clone();
            assert_eq!(seen[0].method, "POST");
            assert_eq!(seen[0].path, "/networks/create");
            assert_eq!(seen[0].body, body);
            assert_eq!(
                (seen[1].method.as_str(), seen[1].path.as_str()),
                ("DELETE", "/networks/n")
            );
        });
    }

    #[test]
    fn daemon_errors_carry_the_message() {
        rt().block_on(async {
            let d = fake_daemon(vec![
                (404, r#"{"message":"network nope not found"}"#),
                (500, "boom"),
                (409, ""),
            ]);
            let e = d.client.get("/networks/nope").await.unwrap_err();
            assert!(
                matches!(e, ClientError::Daemon { status, .. } if status == StatusCode::NOT_FOUND)
            );
            assert_eq!(
                e.to_string(),
                "Error response from daemon: network nope not found"
            );
            let e = d.client.get("/x").await.unwrap_err();
            assert_eq!(e.to_string(), "Error response from daemon: boom");
            let e = d.client.get("/x").await.unwrap_err();
            assert_eq!(e.to_string(), "Error response from daemon: Conflict");
        });
    }

    #[test]
    fn unreachable_daemon_is_explained() {
        rt().block_on(async {
            let dir = temp_dir();
            let sock = dir.join("none.sock");
            let c = Client::from_host(&format!("unix://{}", sock.display())).unwrap();
            let e = c.get("/_ping").await.unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, ClientError::Connect { .. }));
            assert!(
                msg.starts_with(&format!(
                    "Cannot connect to the tapnet daemon at unix://{}: ",
                    sock.display()
                )),
                "{msg}"
            );
            assert!(msg.ends_with(". Is tapnetd running?"), "{msg}");
            let _ = std::fs::remove_dir_all(dir);
        });
    }
}
