//! tapnet as a Docker network and IPAM plugin: dockerd runs containers on tapnet
//! networks (`docker network create -d tapnet`, `--ipam-driver tapnet`).
//!
//! Contract:
//! * [`serve`] answers Docker's plugin protocol ([`tapnet_types::plugin`]) on a unix
//!   socket (default `/run/docker/plugins/tapnet.sock`, where dockerd discovers it):
//!   `POST /Plugin.Activate` → `{"Implements":["NetworkDriver","IpamDriver"]}`, every
//!   `NetworkDriver.*` and `IpamDriver.*` call. Every answer has the plugin content
//!   type; a failure is `{"Err": "..."}` with the status of tapnet's error (400 for a
//!   body that does not parse, naming what is wrong). A refused call changes nothing.
//! * Everything goes through the [`Controller`], as the HTTP API's calls do
//!   ([`network`]): a Docker network is a tapnet `bridge` network with dockerd's
//!   `NetworkID` as its id, its pools as given in `CreateNetwork` (by dockerd's IPAM or
//!   tapnet's plugin IPAM, [`ipam`]) and its `-o` options as driver options (the
//!   bridge driver's checks apply); its name is asked from dockerd's API once dockerd
//!   has it ([`dockerd`]). A container's namespace (`SandboxKey`) is adopted as a
//!   hand-off sandbox ([`crate::model::Sandbox::handoff`]); `Join` connects it with
//!   dockerd's `EndpointID` and returns the tap the bridge driver made in tapnetd's
//!   namespace, for dockerd to move in and configure. Published ports
//!   (`ProgramExternalConnectivity`) are bound at the network's gateway.
//! * [`watch`]: a task that removes hand-off sandboxes and endpoints whose namespace
//!   or device vanished without a `Leave` (logged).
//! * Idempotence where dockerd retries or replays: `CreateNetwork` of a network that
//!   exists with the same pools, `DeleteNetwork`/`Leave`/`DeleteEndpoint`/
//!   `RevokeExternalConnectivity` of something already gone answer success.

pub mod dockerd;
pub mod ipam;
pub mod network;
pub mod watch;

use crate::error::Error;
use crate::Controller;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use tapnet_types::plugin::{self, ActivateResponse, ErrorResponse};

/// The plugin's default socket (dockerd looks for `<name>.sock` there).
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/tapnet.sock";

/// The plugin's state: the controller, the pending endpoints, the plugin IPAM.
pub struct Plugin {
    ctl: Controller,
    docker: Option<dockerd::DockerApi>,
    ipam: ipam::PluginIpam,
    net: network::State,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").finish_non_exhaustive()
    }
}

impl Plugin {
    /// A plugin driving `ctl`; `docker` is dockerd's API (for network names; `None`:
    /// names stay `docker-<id>`), `ipam_file` where the plugin IPAM keeps its pools.
    pub fn new(
        ctl: Controller,
        docker: Option<dockerd::DockerApi>,
        ipam_file: std::path::PathBuf,
    ) -> Result<Arc<Plugin>, Error> {
        Ok(Arc::new(Plugin {
            ctl,
            docker,
            ipam: ipam::PluginIpam::load(ipam_file)?,
            net: network::State::default(),
        }))
    }

    /// The controller.
    pub fn controller(&self) -> &Controller {
        &self.ctl
    }
}

/// An error answer: the status and `{"Err": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// HTTP status.
    pub status: StatusCode,
    /// The `Err` text.
    pub message: String,
}

impl PluginError {
    /// A 400 (the request is wrong).
    pub fn bad(message: impl Into<String>) -> PluginError {
        PluginError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> PluginError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        PluginError {
            status,
            message: e.to_string(),
        }
    }
}

/// Result of a plugin call.
pub type PluginResult<T> = std::result::Result<T, PluginError>;

fn reply(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, plugin::CONTENT_TYPE)], body).into_response()
}

/// Shape an answer: the body with the plugin content type, or `{"Err"}`.
fn answer<T: Serialize>(method: &str, r: PluginResult<T>) -> Response {
    match r.and_then(|v| {
        serde_json::to_vec(&v).map_err(|e| PluginError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("encode the answer: {e}"),
        })
    }) {
        Ok(body) => reply(StatusCode::OK, body),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(method, error = %e.message, "plugin call failed");
            } else {
                tracing::info!(method, error = %e.message, "plugin call refused");
            }
            let body = serde_json::to_vec(&ErrorResponse { err: e.message })
                .unwrap_or_else(|_| b"{\"Err\":\"error\"}".to_vec());
            reply(e.status, body)
        }
    }
}

/// Parse a request body (an empty body reads as `{}`); the error names the method and
/// the field at fault.
pub fn parse<T: DeserializeOwned>(method: &str, body: &[u8]) -> PluginResult<T> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match path.as_str() {
            "." | "" => PluginError::bad(format!("{method}: the body is not valid: {inner}")),
            p => PluginError::bad(format!("{method}: field {p} is not valid: {inner}")),
        }
    })
}

async fn call(State(p): State<Arc<Plugin>>, Path(method): Path<String>, body: Bytes) -> Response {
    tracing::debug!(method = %method, body = %String::from_utf8_lossy(&body), "plugin call");
    let b = &body[..];
    let m = method.as_str();
    match m {
        "Plugin.Activate" => answer(
            m,
            Ok(ActivateResponse {
                implements: vec![plugin::NETWORK_DRIVER.into(), plugin::IPAM_DRIVER.into()],
            }),
        ),
        "NetworkDriver.GetCapabilities" => answer(m, Ok(network::capabilities())),
        "NetworkDriver.CreateNetwork" => answer(m, network::create_network(&p, b).await),
        "NetworkDriver.DeleteNetwork" => answer(m, network::delete_network(&p, b).await),
        "NetworkDriver.CreateEndpoint" => answer(m, network::create_endpoint(&p, b).await),
        "NetworkDriver.EndpointOperInfo" => answer(m, network::endpoint_info(&p, b).await),
        "NetworkDriver.DeleteEndpoint" => answer(m, network::delete_endpoint(&p, b).await),
        "NetworkDriver.Join" => answer(m, network::join(&p, b).await),
        "NetworkDriver.Leave" => answer(m, network::leave(&p, b).await),
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => {
            answer(m, network::discover(m, b))
        }
        "NetworkDriver.ProgramExternalConnectivity" => {
            answer(m, network::program_external(&p, b).await)
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            answer(m, network::revoke_external(&p, b).await)
        }
        "NetworkDriver.AllocateNetwork" | "NetworkDriver.FreeNetwork" => answer::<()>(
            m,
            Err(PluginError {
                status: StatusCode::NOT_IMPLEMENTED,
                message: format!(
                    "{m} is for swarm (global-scope) networks; tapnet's Docker plugin serves local networks only"
                ),
            }),
        ),
        "IpamDriver.GetCapabilities" => answer(m, Ok(ipam::capabilities())),
        "IpamDriver.GetDefaultAddressSpaces" => answer(m, Ok(ipam::address_spaces())),
        "IpamDriver.RequestPool" => answer(m, ipam::request_pool(&p, b).await),
        "IpamDriver.ReleasePool" => answer(m, ipam::release_pool(&p, b).await),
        "IpamDriver.RequestAddress" => answer(m, ipam::request_address(&p, b).await),
        "IpamDriver.ReleaseAddress" => answer(m, ipam::release_address(&p, b).await),
        other => answer::<()>(
            other,
            Err(PluginError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "tapnet's Docker plugin does not serve {other}: it implements Plugin.Activate, NetworkDriver.* and IpamDriver.*"
                ),
            }),
        ),
    }
}

/// The plugin's routes: `POST /<Method>` for every method.
pub fn router(plugin: Arc<Plugin>) -> Router {
    Router::new()
        .route("/{method}", post(call))
        .fallback(|| async {
            answer::<()>(
                "?",
                Err(PluginError {
                    status: StatusCode::NOT_FOUND,
                    message:
                        "tapnet's Docker plugin answers POST /<Method> (e.g. /Plugin.Activate)"
                            .into(),
                }),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(crate::api::BODY_LIMIT))
        .with_state(plugin)
}

/// Serve the plugin protocol on the unix socket `path` until `shutdown`, then remove
/// the socket. A client that stalls mid-request is cut off after `timeouts`.
pub async fn serve(
    path: &std::path::Path,
    plugin: Arc<Plugin>,
    timeouts: crate::api::HttpTimeouts,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(socket = %path.display(), "Docker plugin listening");
    let r = crate::api::serve_unix(path, router(plugin), timeouts, shutdown).await;
    if let Err(e) = std::fs::remove_file(path) {
        tracing::debug!(error = %e, "removing the plugin socket");
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tapnet_types::plugin::CreateNetworkRequest;

    #[test]
    fn bad_bodies_name_what_is_wrong() {
        let e =
            parse::<CreateNetworkRequest>("NetworkDriver.CreateNetwork", b"garbage").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains("NetworkDriver.CreateNetwork"),
            "{}",
            e.message
        );
        let e =
            parse::<CreateNetworkRequest>("NetworkDriver.CreateNetwork", br#"{"NetworkID": 7}"#)
                .unwrap_err();
        assert!(e.message.contains("NetworkID"), "{}", e.message);
        // An empty body is an empty object.
        let ok: CreateNetworkRequest = parse("x", b"").unwrap();
        assert!(ok.network_id.is_empty());
    }
}
