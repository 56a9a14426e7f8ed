//! The little of dockerd's API the plugin reads: a network's name.
//!
//! Contract: dockerd's `CreateNetwork` carries no name, and dockerd records the network
//! only after the driver's `CreateNetwork` returned, so the name is asked afterwards:
//! [`name_later`] polls `GET /networks/{id}` on dockerd's socket (`--docker-host`)
//! until the network is there (or [`NAME_WAIT`] passed) and renames the tapnet network
//! to it. Until then (and if dockerd cannot be reached) the network is called
//! `docker-<first 12 digits of the id>`. A container's sandbox likewise takes the
//! container's name ([`sandbox_name_later`], from the network's `Containers`) once
//! dockerd lists its endpoint; until then it is `docker-<sandbox key>`. One request per connection (hyper's
//! `http1::handshake` over a unix stream), each bounded by [`REQUEST_TIMEOUT`].

use crate::Controller;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::HOST;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::UnixStream;

/// How long [`name_later`] waits for dockerd to know a network.
pub const NAME_WAIT: Duration = Duration::from_secs(60);
/// Bound of one request to dockerd.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The name a plugin network has until dockerd's name is known.
pub fn placeholder_name(network_id: &str) -> String {
    let short: String = network_id.chars().take(12).collect();
    format!("docker-{short}")
}

/// dockerd's API on a unix socket.
#[derive(Debug, Clone)]
pub struct DockerApi {
    socket: PathBuf,
}

impl DockerApi {
    /// From `unix:///PATH` (or a bare absolute path).
    pub fn from_host(host: &str) -> Result<DockerApi, String> {
        let path = host.strip_prefix("unix://").unwrap_or(host);
        if !path.starts_with('/') {
            return Err(format!(
                "--docker-host {host:?}: give dockerd's unix socket, e.g. unix:///run/docker.sock"
            ));
        }
        Ok(DockerApi {
            socket: PathBuf::from(path),
        })
    }

    /// `GET path`: the status and the body.
    async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), String> {
        let exchange = async {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| format!("connect to dockerd at {}: {e}", self.socket.display()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = Request::builder()
                .method(Method::GET)
                .uri(path)
                .header(HOST, "docker")
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("dockerd did not answer GET {path} within {REQUEST_TIMEOUT:?}"))?
    }

    /// The name dockerd gives network `id`; `Ok(None)` while dockerd does not know it.
    pub async fn network_name(&self, id: &str) -> Result<Option<String>, String> {
        let (status, body) = self.get(&format!("/networks/{id}")).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!(
                "dockerd answered GET /networks/{id} with {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("dockerd's network {id}: {e}"))?;
        match v.get("Id").and_then(|i| i.as_str()) {
            Some(i) if i == id => {}
            _ => return Ok(None),
        }
        Ok(v.get("Name").and_then(|n| n.as_str()).map(str::to_string))
    }
}

impl DockerApi {
    /// The name of the container whose endpoint `endpoint_id` is on network
    /// `network_id` (`Containers` of dockerd's `GET /networks/{id}`); `Ok(None)` while
    /// dockerd does not list it.
    pub async fn container_name(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<Option<String>, String> {
        let (status, body) = self.get(&format!("/networks/{network_id}")).await?;
        if !status.is_success() {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("dockerd's network {network_id}: {e}"))?;
        let found = v
            .get("Containers")
            .and_then(|c| c.as_object())
            .and_then(|c| {
                c.values()
                    .find(|e| e.get("EndpointID").and_then(|i| i.as_str()) == Some(endpoint_id))
            })
            .and_then(|e| e.get("Name"))
            .and_then(|n| n.as_str())
            .map(str::to_string);
        Ok(found)
    }
}

/// Rename the sandbox of endpoint `endpoint_id` (on `network_id`) to its container's
/// name once dockerd lists it (see the module doc). Logs what happened; never fails.
pub async fn sandbox_name_later(
    ctl: Controller,
    docker: DockerApi,
    network_id: String,
    endpoint_id: String,
) {
    let deadline = tokio::time::Instant::now() + NAME_WAIT;
    while tokio::time::Instant::now() < deadline {
        let sid = ctl
            .snapshot()
            .await
            .networks
            .get(&network_id)
            .and_then(|n| n.endpoints.get(&endpoint_id))
            .map(|e| e.sandbox_id.clone());
        let Some(sid) = sid else {
            return;
        };
        if let Ok(Some(name)) = docker.container_name(&network_id, &endpoint_id).await {
            if let Err(e) = ctl.rename_sandbox(&sid, &name).await {
                tracing::warn!(sandbox = %sid, name = %name, error = %e, "cannot give the sandbox its container's name");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rename tapnet network `id` to dockerd's name for it once dockerd has it (see the
/// module doc). Logs what happened; never fails.
pub async fn name_later(ctl: Controller, docker: DockerApi, id: String) {
    let deadline = tokio::time::Instant::now() + NAME_WAIT;
    let mut last_error = String::new();
    while tokio::time::Instant::now() < deadline {
        match docker.network_name(&id).await {
            Ok(Some(name)) => {
                match ctl.rename_network(&id, &name).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(network = %id, name = %name, error = %e, "cannot give the network dockerd's name")
                    }
                }
                return;
            }
            Ok(None) => {}
            Err(e) => last_error = e,
        }
        // The network may be gone meanwhile (created and removed at once).
        if ctl.network(&id).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(network = %id, error = %last_error, "dockerd did not tell the network's name; it keeps {}", placeholder_name(&id));
}
