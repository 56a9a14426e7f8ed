//! API tests against a controller with a fake driver (no privileges needed).
#![allow(clippy::unwrap_used)]

use super::*;
use crate::driver::{
    Driver, DriverRegistry, InterfaceDescription, InterfaceSource, JoinDescription, JoinRequest,
    NetworkRequest,
};
use crate::ipam::DefaultIpam;
use crate::sandbox_layer::{DryRun, SandboxLayer};
use axum::body::Body;
use axum::http::Method;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tower::ServiceExt;

#[derive(Default)]
struct FakeDriver {
    fail_join: AtomicBool,
    networks: AtomicUsize,
    joined: AtomicUsize,
}

impl Driver for FakeDriver {
    fn name(&self) -> &str {
        "bridge"
    }
    fn validate_options(&self, options: &BTreeMap<String, String>) -> crate::Result<()> {
        if let Some(v) = options.get(crate::model::MTU_OPTION) {
            crate::model::parse_mtu(v)?;
        }
        Ok(())
    }
    fn create_network(&self, _req: &NetworkRequest<'_>) -> crate::Result<()> {
        self.networks.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn delete_network(&self, _network_id: &str) -> crate::Result<()> {
        self.networks.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
    fn join(&self, _: &JoinRequest<'_>) -> crate::Result<JoinDescription> {
        if self.fail_join.load(Ordering::SeqCst) {
            return Err(Error::Os {
                op: "create tap eth0 in sandbox".into(),
                source: tapnet_sandbox::Error::Invalid("injected failure".into()),
            });
        }
        let n = self.joined.fetch_add(1, Ordering::SeqCst);
        // An interface already named ethN (the test sandbox layer touches nothing).
        Ok(JoinDescription {
            interface: Some(InterfaceDescription {
                source: InterfaceSource::InSandbox {
                    name: format!("eth{n}"),
                },
                dst_prefix: String::new(),
                mac: None,
                mtu: None,
                txqueuelen: None,
                addresses: Vec::new(),
            }),
            ..JoinDescription::default()
        })
    }
    fn leave(&self, _: &str, _: &str) -> crate::Result<()> {
        self.joined.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Harness {
    router: Router,
    driver: Arc<FakeDriver>,
}

fn harness() -> Harness {
    let driver = Arc::new(FakeDriver::default());
    let mut reg = DriverRegistry::with_sandbox_layer(SandboxLayer::new(DryRun));
    reg.register(driver.clone());
    let ctl = Controller::new(
        reg,
        Box::new(DefaultIpam::new()),
        &std::env::temp_dir().join(format!("tapnet-api-test-{}", crate::model::new_id())),
    );
    Harness {
        router: router(Arc::new(ctl)),
        driver,
    }
}

impl Harness {
    async fn call(&self, method: Method, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let (status, bytes, _) = self.raw(method, uri, body.as_bytes().to_vec()).await;
        let v = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
            })
        };
        (status, v)
    }

    async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec(), headers)
    }

    async fn get(&self, uri: &str) -> (StatusCode, serde_json::Value) {
        self.call(Method::GET, uri, "").await
    }
    async fn post(&self, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
        self.call(Method::POST, uri, body).await
    }
    async fn delete(&self, uri: &str) -> (StatusCode, serde_json::Value) {
        self.call(Method::DELETE, uri, "").await
    }

    async fn net1(&self) -> String {
        let (s, v) = self
            .post(
                "/networks/create",
                r#"{"Name":"net1","IPAM":{"Config":[{"Subnet":"10.10.0.0/24","Gateway":"10.10.0.1"}]}}"#,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["Id"].as_str().unwrap().to_string()
    }

    /// A sandbox adopting our own namespace (works unprivileged).
    async fn sandbox(&self, name: &str) -> String {
        let body = format!(r#"{{"Name":"{name}","NetnsPath":"/proc/self/ns/net"}}"#);
        let (s, v) = self.post("/sandboxes", &body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["Id"].as_str().unwrap().to_string()
    }
}

fn message(v: &serde_json::Value) -> &str {
    v["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {v}"))
}

fn keys(v: &serde_json::Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[tokio::test]
async fn ping_and_version_with_prefix() {
    let h = harness();
    for uri in ["/_ping", "/v1.41/_ping", "/v1.24/_ping"] {
        let (s, body, headers) = h.raw(Method::GET, uri, vec![]).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert_eq!(body, b"OK");
        assert_eq!(headers["api-version"], "1.47");
        assert_eq!(headers["ostype"], "linux");
        assert_eq!(headers["docker-experimental"], "false");
        assert_eq!(headers["pragma"], "no-cache");
        assert!(headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-cache"));
        assert!(headers.contains_key("builder-version"));
    }
    let (s, v) = h.get("/v1.41/version").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ApiVersion"], "1.47");
    assert_eq!(v["MinAPIVersion"], "1.24");
    assert_eq!(v["Os"], "linux");
    let (s, v) = h.get("/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(message(&v).contains("page not found"));
    let (s, _) = h.get("/vx.y/_ping").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// The typed `/version` and prune answers are byte for byte the JSON the handlers
/// built with `json!` before the bodies moved to `tapnet-types`.
#[test]
fn typed_answers_are_the_old_bytes() {
    let version = env!("CARGO_PKG_VERSION");
    let old = serde_json::json!({
        "Platform": {"Name": "tapnet"},
        "Components": [{"Name": "tapnetd", "Version": version, "Details": {"ApiVersion": API_VERSION}}],
        "Version": version,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
        "Arch": docker_arch(),
    });
    assert_eq!(
        serde_json::to_string(&version_body()).unwrap(),
        serde_json::to_string(&old).unwrap()
    );
    let deleted = vec!["a".to_string(), "b".to_string()];
    let old = serde_json::json!({ "NetworksDeleted": deleted });
    assert_eq!(
        serde_json::to_string(&NetworkPruneResponse {
            networks_deleted: deleted
        })
        .unwrap(),
        serde_json::to_string(&old).unwrap()
    );
}

#[test]
fn version_prefix_parsing() {
    assert_eq!(strip_version("/v1.41/networks"), Some("/networks"));
    assert_eq!(strip_version("/v1.41"), Some("/"));
    assert_eq!(strip_version("/v1/networks"), None);
    assert_eq!(strip_version("/version"), None);
    assert_eq!(strip_version("/v1.x/networks"), None);
    assert_eq!(strip_version("/networks"), None);
}

#[tokio::test]
async fn network_shape_matches_docs() {
    let h = harness();
    let id = h.net1().await;
    assert!(crate::model::is_full_id(&id));
    let sb = h.sandbox("sb1").await;
    let (s, _) = h
        .post(
            &format!("/networks/{}/connect", &id[..8]),
            r#"{"Container":"sb1"}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h.get("/v1.41/networks/net1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        keys(&v),
        [
            "Attachable",
            "ConfigFrom",
            "ConfigOnly",
            "Containers",
            "Created",
            "Driver",
            "EnableIPv4",
            "EnableIPv6",
            "IPAM",
            "Id",
            "Ingress",
            "Internal",
            "Labels",
            "Name",
            "Options",
            "Scope"
        ]
    );
    assert_eq!(keys(&v["IPAM"]), ["Config", "Driver", "Options"]);
    assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "10.10.0.0/24");
    assert_eq!(v["IPAM"]["Config"][0]["Gateway"], "10.10.0.1");
    assert_eq!(v["Scope"], "local");
    assert_eq!(v["Driver"], "bridge");
    let c = &v["Containers"][&sb];
    assert_eq!(
        keys(c),
        [
            "EndpointID",
            "IPv4Address",
            "IPv6Address",
            "MacAddress",
            "Name"
        ]
    );
    assert_eq!(c["Name"], "sb1");
    assert_eq!(c["IPv4Address"], "10.10.0.2/24");
    assert_eq!(c["MacAddress"], "02:42:0a:0a:00:02");
    let created = v["Created"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");

    let (s, v) = h.get("/sandboxes/sb1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        keys(&v),
        [
            "Created",
            "Endpoints",
            "HostsPath",
            "Id",
            "Name",
            "NetnsPath",
            "Owned",
            "Ports",
            "ResolvConfPath"
        ]
    );
    assert_eq!(v["Owned"], false);
    assert_eq!(v["NetnsPath"], "/proc/self/ns/net");
    let e = &v["Endpoints"]["net1"];
    assert_eq!(
        keys(e),
        [
            "EndpointID",
            "Gateway",
            "IPv4Address",
            "Interface",
            "MacAddress",
            "NetworkID"
        ]
    );
    assert_eq!(e["NetworkID"], id.as_str());
    assert_eq!(e["Interface"], "eth0");
    assert_eq!(e["Gateway"], "10.10.0.1");

    let (s, v) = h.get("/networks").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (s, v) = h.get("/networks/net1/stats").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        keys(&v),
        [
            "FdbEntries",
            "FdbLimitHits",
            "FdbPortLimitHits",
            "Network",
            "Ports"
        ]
    );
    let (s, v) = h.get("/networks/net1/fdb").await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.as_array().unwrap().is_empty());
}

#[tokio::test]
async fn default_pool_and_defaults() {
    let h = harness();
    let (s, v) = h.post("/networks/create", r#"{"Name":"a"}"#).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["Warning"], "");
    let (_, v) = h.get("/networks/a").await;
    assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "172.17.0.0/16");
    assert_eq!(v["IPAM"]["Config"][0]["Gateway"], "172.17.0.1");
    assert_eq!(v["IPAM"]["Driver"], "default");
    // Docker CLI style body with nulls and extra fields.
    let (s, v) = h
        .post(
            "/networks/create",
            r#"{"Name":"b","CheckDuplicate":true,"Driver":"bridge","Scope":"","EnableIPv6":false,
                "IPAM":{"Driver":"default","Options":{},"Config":[]},"Internal":false,
                "Attachable":false,"Ingress":false,"ConfigOnly":false,"ConfigFrom":null,
                "Options":{},"Labels":null}"#,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, v) = h.get("/networks/b").await;
    assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "172.18.0.0/16");
}

#[tokio::test]
async fn create_validation_status_codes() {
    let h = harness();
    let cases: &[(&str, StatusCode, &str)] = &[
        ("{", StatusCode::BAD_REQUEST, "invalid JSON"),
        (r#"{"Name": 5}"#, StatusCode::BAD_REQUEST, "invalid JSON"),
        (
            r#"{"Name":"x","Labels":{"a":1}}"#,
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (r#"{}"#, StatusCode::BAD_REQUEST, "name is required"),
        (
            r#"{"Name":"bad name"}"#,
            StatusCode::BAD_REQUEST,
            "invalid network name",
        ),
        (
            r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.0.0.0/33"}]}}"#,
            StatusCode::BAD_REQUEST,
            "invalid subnet",
        ),
        (
            r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"banana"}]}}"#,
            StatusCode::BAD_REQUEST,
            "invalid subnet",
        ),
        (
            r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.0.0.7/24"}]}}"#,
            StatusCode::BAD_REQUEST,
            "host bits",
        ),
        (
            r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.0.0.0/24","Gateway":"10.0.1.1"}]}}"#,
            StatusCode::BAD_REQUEST,
            "not in subnet",
        ),
        (
            r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.0.0.0/24","Gateway":"nope"}]}}"#,
            StatusCode::BAD_REQUEST,
            "invalid gateway",
        ),
        (
            r#"{"Name":"x","Driver":"weird"}"#,
            StatusCode::NOT_FOUND,
            "plugin \"weird\" not found",
        ),
        (
            r#"{"Name":"x","IPAM":{"Driver":"other"}}"#,
            StatusCode::NOT_FOUND,
            "plugin \"other\" not found",
        ),
        (
            r#"{"Name":"x","Options":{"com.docker.network.driver.mtu":"big"}}"#,
            StatusCode::BAD_REQUEST,
            "mtu",
        ),
    ];
    for (body, status, text) in cases {
        let (s, v) = h.post("/networks/create", body).await;
        assert_eq!(s, *status, "{body}: {v}");
        assert!(message(&v).contains(text), "{body}: {v}");
    }
    // A failed request changed nothing.
    let (_, v) = h.get("/networks").await;
    assert_eq!(v, serde_json::json!([]));
    assert_eq!(h.driver.networks.load(Ordering::SeqCst), 0);

    h.net1().await;
    let (s, v) = h.post("/networks/create", r#"{"Name":"net1"}"#).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(message(&v).contains("already exists"));
    let (s, v) = h
        .post(
            "/networks/create",
            r#"{"Name":"net2","IPAM":{"Config":[{"Subnet":"10.10.0.128/25"}]}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(message(&v).contains("overlaps"));
}

#[tokio::test]
async fn body_limit_is_413_json() {
    let h = harness();
    let big = format!(
        r#"{{"Name":"x","Labels":{{"a":"{}"}}}}"#,
        "y".repeat(BODY_LIMIT + 10)
    );
    let (s, bytes, _) = h
        .raw(Method::POST, "/networks/create", big.into_bytes())
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(message(&v).contains("too large"));
}

#[tokio::test]
async fn lookups_404_and_ambiguity() {
    let h = harness();
    for uri in [
        "/networks/nope",
        "/sandboxes/nope",
        "/networks/nope/stats",
        "/networks/nope/fdb",
    ] {
        let (s, v) = h.get(uri).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
        assert!(message(&v).contains("nope not found"), "{v}");
    }
    let (s, _) = h.delete("/networks/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.delete("/sandboxes/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Make two networks whose ids share a prefix: with 16 networks two must share
    // their first hex digit.
    let mut ids = Vec::new();
    for i in 0..17 {
        let (s, v) = h
            .post("/networks/create", &format!(r#"{{"Name":"n{i}"}}"#))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        ids.push(v["Id"].as_str().unwrap().to_string());
    }
    let first = ids
        .iter()
        .map(|i| &i[..1])
        .find(|p| ids.iter().filter(|i| i.starts_with(*p)).count() > 1)
        .unwrap();
    let (s, v) = h.get(&format!("/networks/{first}")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(message(&v).contains("ambiguous"), "{v}");
    let (s, v) = h.get(&format!("/networks/{}", &ids[3][..20])).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["Name"], "n3");
}

#[tokio::test]
async fn connect_errors_and_rollback() {
    let h = harness();
    h.net1().await;
    h.sandbox("sb1").await;
    h.sandbox("sb2").await;
    let (s, v) = h
        .post(
            "/sandboxes",
            r#"{"Name":"sb1","NetnsPath":"/proc/self/ns/net"}"#,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = h
        .post("/sandboxes", r#"{"Name":"x","NetnsPath":"relative"}"#)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let cases: &[(&str, &str, StatusCode, &str)] = &[
        (
            "nonet",
            r#"{"Container":"sb1"}"#,
            StatusCode::NOT_FOUND,
            "network nonet not found",
        ),
        (
            "net1",
            r#"{"Container":"nosb"}"#,
            StatusCode::NOT_FOUND,
            "sandbox nosb not found",
        ),
        ("net1", r#"{}"#, StatusCode::BAD_REQUEST, "Container"),
        (
            "net1",
            r#"{"Container":7}"#,
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (
            "net1",
            r#"{"Container":"sb1","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.9.0.5"}}}"#,
            StatusCode::BAD_REQUEST,
            "not in subnet",
        ),
        (
            "net1",
            r#"{"Container":"sb1","EndpointConfig":{"IPAMConfig":{"IPv4Address":"zzz"}}}"#,
            StatusCode::BAD_REQUEST,
            "invalid IPv4Address",
        ),
        (
            "net1",
            r#"{"Container":"sb1","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.10.0.1"}}}"#,
            StatusCode::CONFLICT,
            "in use",
        ),
    ];
    for (net, body, status, text) in cases {
        let (s, v) = h.post(&format!("/networks/{net}/connect"), body).await;
        assert_eq!(s, *status, "{body}: {v}");
        assert!(message(&v).contains(text), "{body}: {v}");
    }

    // A failing join releases the address.
    h.driver.fail_join.store(true, Ordering::SeqCst);
    let static5 =
        r#"{"Container":"sb1","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.10.0.5"}}}"#;
    let (s, v) = h.post("/networks/net1/connect", static5).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert!(message(&v).contains("injected failure"));
    h.driver.fail_join.store(false, Ordering::SeqCst);
    let (_, v) = h.get("/networks/net1").await;
    assert_eq!(v["Containers"], serde_json::json!({}));

    let (s, v) = h.post("/networks/net1/connect", static5).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .post("/networks/net1/connect", r#"{"Container":"sb1"}"#)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(message(&v).contains("already connected"), "{v}");
    let sb2_static5 = static5.replace("sb1", "sb2");
    let (s, v) = h.post("/networks/net1/connect", &sb2_static5).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = h
        .post("/networks/net1/connect", r#"{"Container":"sb2"}"#)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = h.get("/sandboxes/sb2").await;
    assert_eq!(v["Endpoints"]["net1"]["IPv4Address"], "10.10.0.2/24");

    let (s, v) = h.delete("/networks/net1").await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        message(&v),
        "network net1 has active endpoints (sb1, sb2); disconnect them first"
    );

    let (s, v) = h
        .post("/networks/net1/disconnect", r#"{"Container":"sb1"}"#)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .post("/networks/net1/disconnect", r#"{"Container":"sb1"}"#)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(message(&v).contains("not connected"));
    // The address is free again.
    let (s, _) = h.post("/networks/net1/connect", static5).await;
    assert_eq!(s, StatusCode::OK);

    // Removing a sandbox disconnects it everywhere.
    let (s, _) = h.delete("/sandboxes/sb1").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h.delete("/sandboxes/sb2").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(h.driver.joined.load(Ordering::SeqCst), 0);
    let (s, _) = h.delete("/networks/net1").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(h.driver.networks.load(Ordering::SeqCst), 0);
    let (_, v) = h.get("/sandboxes").await;
    assert_eq!(v, serde_json::json!([]));
}

#[tokio::test]
async fn prune_removes_unused_networks() {
    let h = harness();
    h.net1().await;
    h.sandbox("sb1").await;
    let (s, _) = h
        .post("/networks/net1/connect", r#"{"Container":"sb1"}"#)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h.post("/networks/create", r#"{"Name":"idle"}"#).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = h.post("/networks/prune", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["NetworksDeleted"], serde_json::json!(["idle"]));
}

#[tokio::test]
async fn head_ping_and_method_not_allowed() {
    let h = harness();
    let (s, body, headers) = h.raw(Method::HEAD, "/_ping", vec![]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(headers["api-version"], "1.47");
    assert_eq!(headers["docker-experimental"], "false");
    let (s, v) = h.call(Method::PUT, "/networks", "").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(message(&v).contains("method not allowed"));
}

#[tokio::test]
async fn address_exhaustion_is_503_and_says_so() {
    let h = harness();
    let (s, _) = h
        .post(
            "/networks/create",
            r#"{"Name":"tiny","IPAM":{"Config":[{"Subnet":"10.0.0.0/30"}]}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    h.sandbox("a").await;
    h.sandbox("b").await;
    let (s, v) = h
        .post("/networks/tiny/connect", r#"{"Container":"a"}"#)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .post("/networks/tiny/connect", r#"{"Container":"b"}"#)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(message(&v).contains("no free address in"), "{v}");
}

#[test]
fn error_status_mapping() {
    use crate::ipam::IpamError;
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let net: IpNet = "10.0.0.0/24".parse().unwrap();
    let cases = [
        (Error::InvalidRequest("x".into()), 400),
        (Error::NotFound("x".into()), 404),
        (Error::Conflict("x".into()), 409),
        (Error::Forbidden("x".into()), 403),
        (
            Error::ipam(
                "op",
                IpamError::NotInSubnet {
                    addr: ip,
                    subnet: net,
                },
            ),
            400,
        ),
        (Error::ipam("op", IpamError::InUse { addr: ip }), 409),
        (
            Error::ipam(
                "op",
                IpamError::Overlap {
                    subnet: net,
                    other: net,
                },
            ),
            409,
        ),
        (Error::ipam("op", IpamError::Exhausted { subnet: net }), 503),
        (Error::ipam("op", IpamError::PoolsExhausted), 503),
        (
            Error::os("op", tapnet_sandbox::Error::Invalid("x".into())),
            500,
        ),
        (
            Error::store(
                "op",
                crate::store::StoreError::Unavailable {
                    store: "etcd://127.0.0.1:2379".into(),
                    message: "connection refused".into(),
                },
            ),
            503,
        ),
    ];
    for (e, status) in cases {
        assert_eq!(e.status(), status, "{e}");
        assert_eq!(ApiError::from(e).status.as_u16(), status);
    }
    let e = Error::ipam("connect sb1 to network n", IpamError::InUse { addr: ip });
    assert_eq!(
        e.to_string(),
        "connect sb1 to network n: address 10.0.0.1 is already in use"
    );
}

/// GET /networks and GET /sandboxes, to compare before/after a rejected request.
async fn state(h: &Harness) -> (serde_json::Value, serde_json::Value) {
    (h.get("/networks").await.1, h.get("/sandboxes").await.1)
}

fn filters_uri(base: &str, json: &str) -> String {
    let enc: String = json
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{base}?filters={enc}")
}

fn names(v: &serde_json::Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

async fn create(h: &Harness, body: &str) -> String {
    let (s, v) = h.post("/networks/create", body).await;
    assert_eq!(s, StatusCode::CREATED, "{body}: {v}");
    v["Id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn list_filters_docker_forms() {
    let h = harness();
    let id1 = create(
        &h,
        r#"{"Name":"front-end","Labels":{"team":"web","tier":"1"}}"#,
    )
    .await;
    create(&h, r#"{"Name":"back-end","Labels":{"team":"db"}}"#).await;
    create(&h, r#"{"Name":"bridge"}"#).await;
    h.sandbox("sb").await;
    let (s, _) = h
        .post("/networks/back-end/connect", r#"{"Container":"sb"}"#)
        .await;
    assert_eq!(s, StatusCode::OK);
    let cases: &[(&str, &[&str])] = &[
        (r#"{"name":{"end":true}}"#, &["back-end", "front-end"]),
        (r#"{"name":["front"]}"#, &["front-end"]),
        (
            r#"{"name":{"front":true,"back":true}}"#,
            &["back-end", "front-end"],
        ),
        (r#"{"label":{"team":true}}"#, &["back-end", "front-end"]),
        (r#"{"label":{"team=web":true}}"#, &["front-end"]),
        (r#"{"label":{"team=web":true,"tier=2":true}}"#, &[]),
        (
            r#"{"label":{"team":true},"name":{"back":true}}"#,
            &["back-end"],
        ),
        (
            r#"{"driver":{"bridge":true}}"#,
            &["back-end", "bridge", "front-end"],
        ),
        (r#"{"driver":{"null":true}}"#, &[]),
        (
            r#"{"scope":{"local":true}}"#,
            &["back-end", "bridge", "front-end"],
        ),
        (r#"{"type":{"builtin":true}}"#, &["bridge"]),
        (r#"{"type":{"custom":true}}"#, &["back-end", "front-end"]),
        (r#"{"dangling":{"true":true}}"#, &["front-end"]),
        (r#"{"dangling":["false"]}"#, &["back-end", "bridge"]),
        ("{}", &["back-end", "bridge", "front-end"]),
    ];
    for (f, want) in cases {
        let (s, v) = h.get(&filters_uri("/v1.47/networks", f)).await;
        assert_eq!(s, StatusCode::OK, "{f}: {v}");
        assert_eq!(names(&v), *want, "{f}");
    }
    let (_, v) = h
        .get(&filters_uri(
            "/networks",
            &format!(r#"{{"id":{{"{}":true}}}}"#, &id1[..10]),
        ))
        .await;
    assert_eq!(names(&v), ["front-end"]);
    let before = state(&h).await;
    let bad: &[(&str, &str)] = &[
        (r#"{"bogus":{"x":true}}"#, "invalid filter 'bogus'"),
        (r#"{"type":{"weird":true}}"#, "'type'='weird'"),
        (r#"{"name":"x"}"#, "invalid filters"),
        ("{not json", "invalid filters"),
    ];
    for (f, text) in bad {
        let (s, v) = h.get(&filters_uri("/networks", f)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{f}: {v}");
        assert!(message(&v).contains(text), "{f}: {v}");
    }
    assert_eq!(state(&h).await, before);
}

#[tokio::test]
async fn prune_filters_until_and_labels() {
    let h = harness();
    create(&h, r#"{"Name":"keep","Labels":{"keep":"yes"}}"#).await;
    create(&h, r#"{"Name":"tmp1","Labels":{"env":"test"}}"#).await;
    create(&h, r#"{"Name":"tmp2","Labels":{"env":"prod"}}"#).await;
    create(&h, r#"{"Name":"bridge"}"#).await;
    create(&h, r#"{"Name":"used"}"#).await;
    h.sandbox("sb").await;
    let (s, _) = h
        .post("/networks/used/connect", r#"{"Container":"sb"}"#)
        .await;
    assert_eq!(s, StatusCode::OK);

    // Rejected filters change nothing.
    let before = state(&h).await;
    for (f, text) in [
        (r#"{"name":{"x":true}}"#, "invalid filter 'name'"),
        (r#"{"until":{"someday":true}}"#, "until=someday"),
        (r#"{"until":{"1h":true,"2h":true}}"#, "more than one until"),
        ("[", "invalid filters"),
    ] {
        let (s, v) = h.post(&filters_uri("/networks/prune", f), "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{f}: {v}");
        assert!(message(&v).contains(text), "{f}: {v}");
    }
    assert_eq!(state(&h).await, before);

    // Everything here was created just now: until=1h (an hour ago) keeps all.
    let (s, v) = h
        .post(
            &filters_uri("/networks/prune", r#"{"until":{"1h":true}}"#),
            "",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["NetworksDeleted"], serde_json::json!([]));
    let (_, v) = h
        .post(
            &filters_uri("/networks/prune", r#"{"label":{"env=test":true}}"#),
            "",
        )
        .await;
    assert_eq!(v["NetworksDeleted"], serde_json::json!(["tmp1"]));
    let (_, v) = h
        .post(
            &filters_uri("/networks/prune", r#"{"label!":["keep"]}"#),
            "",
        )
        .await;
    assert_eq!(v["NetworksDeleted"], serde_json::json!(["tmp2"]));
    // A future until (Unix seconds) takes the rest; builtin and used networks stay.
    let (_, v) = h
        .post(
            &filters_uri("/networks/prune", r#"{"until":{"4102444800":true}}"#),
            "",
        )
        .await;
    assert_eq!(v["NetworksDeleted"], serde_json::json!(["keep"]));
    let (_, v) = h.get("/networks").await;
    assert_eq!(names(&v), ["bridge", "used"]);
}

#[tokio::test]
async fn version_negotiation_limits() {
    let h = harness();
    for ok in ["/v1.24/_ping", "/v1.41/networks", "/v1.47/version"] {
        let (s, v) = h.get(ok).await;
        assert_eq!(s, StatusCode::OK, "{ok}: {v}");
    }
    let (s, v) = h.get("/v1.99/networks").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        message(&v),
        "client version 1.99 is too new. Maximum supported API version is 1.47"
    );
    let (s, v) = h.get("/v1.48/_ping").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = h.get("/v1.23/networks").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        message(&v)
            .starts_with("client version 1.23 is too old. Minimum supported API version is 1.24"),
        "{v}"
    );
    let (s, v) = h.get("/v2.0/networks").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(message(&v).contains("too new"), "{v}");
    // A refused version does not reach the handler: nothing is created.
    let (s, _) = h.post("/v1.99/networks/create", r#"{"Name":"x"}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, v) = h.get("/networks").await;
    assert_eq!(v, serde_json::json!([]));
    let (_, _, headers) = h.raw(Method::GET, "/v1.99/_ping", vec![]).await;
    assert_eq!(headers["api-version"], "1.47");
}

#[tokio::test]
async fn unsupported_docker_endpoints_say_what_is_served() {
    let h = harness();
    for uri in [
        "/v1.47/containers/json",
        "/containers/abc/json",
        "/images/json",
    ] {
        let (s, v) = h.get(uri).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
        assert!(
            message(&v).contains("serves only Docker's network endpoints"),
            "{v}"
        );
    }
}

#[tokio::test]
async fn oversized_bodies_change_nothing() {
    let h = harness();
    h.net1().await;
    h.sandbox("sb1").await;
    let before = state(&h).await;
    let pad = "y".repeat(BODY_LIMIT + 1);
    for (uri, body) in [
        (
            "/networks/create",
            format!(r#"{{"Name":"big","Labels":{{"a":"{pad}"}}}}"#),
        ),
        (
            "/networks/net1/connect",
            format!(r#"{{"Container":"sb1","EndpointConfig":{{"Aliases":["{pad}"]}}}}"#),
        ),
        ("/sandboxes", format!(r#"{{"Name":"{pad}"}}"#)),
    ] {
        let (s, bytes, _) = h.raw(Method::POST, uri, body.into_bytes()).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(message(&v).contains("1048576 bytes"), "{v}");
    }
    assert_eq!(state(&h).await, before);
}

#[tokio::test]
async fn connect_mac_and_aliases() {
    let h = harness();
    let nid = h.net1().await;
    let sb1 = h.sandbox("sb1").await;
    h.sandbox("sb2").await;
    let before = state(&h).await;
    let bad: &[(&str, StatusCode, &str)] = &[
        (
            r#"{"MacAddress":"01:00:5e:00:00:01"}"#,
            StatusCode::BAD_REQUEST,
            "multicast",
        ),
        (
            r#"{"MacAddress":"ff:ff:ff:ff:ff:ff"}"#,
            StatusCode::BAD_REQUEST,
            "multicast",
        ),
        (
            r#"{"MacAddress":"00:00:00:00:00:00"}"#,
            StatusCode::BAD_REQUEST,
            "all-zero",
        ),
        (
            r#"{"MacAddress":"02:42:zz:00:00:01"}"#,
            StatusCode::BAD_REQUEST,
            "invalid MacAddress",
        ),
        (
            r#"{"MacAddress":"02:42"}"#,
            StatusCode::BAD_REQUEST,
            "invalid MacAddress",
        ),
        (r#"{"MacAddress":7}"#, StatusCode::BAD_REQUEST, "MacAddress"),
        (r#"{"Aliases":"web"}"#, StatusCode::BAD_REQUEST, "Aliases"),
        (
            r#"{"Aliases":["a b"]}"#,
            StatusCode::BAD_REQUEST,
            "invalid alias",
        ),
        (
            r#"{"Aliases":[""]}"#,
            StatusCode::BAD_REQUEST,
            "invalid alias",
        ),
    ];
    for (cfg, status, text) in bad {
        let body = format!(r#"{{"Container":"sb1","EndpointConfig":{cfg}}}"#);
        let (s, v) = h.post("/networks/net1/connect", &body).await;
        assert_eq!(s, *status, "{body}: {v}");
        assert!(message(&v).contains(text), "{body}: {v}");
    }
    assert_eq!(state(&h).await, before);

    // The docker CLI's body: null IPAMConfig, empty MacAddress, extra fields.
    let (s, v) = h
        .post(
            "/v1.47/networks/net1/connect",
            r#"{"Container":"sb2","EndpointConfig":{"IPAMConfig":null,"Links":null,
                "Aliases":["db"],"MacAddress":"","DriverOpts":{},"GwPriority":0,
                "NetworkID":"","EndpointID":"","Gateway":"","IPAddress":"","DNSNames":null}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .post(
            "/networks/net1/connect",
            r#"{"Container":"sb1","EndpointConfig":{"Aliases":["web","www","web"],
                "MacAddress":"02:AA:bb:cc:dd:01"}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = h.get(&format!("/networks/{nid}")).await;
    let c = &v["Containers"][&sb1];
    assert_eq!(c["MacAddress"], "02:aa:bb:cc:dd:01");
    assert_eq!(c["Aliases"], serde_json::json!(["web", "www"]));
    let (_, v) = h.get("/sandboxes/sb1").await;
    assert_eq!(v["Endpoints"]["net1"]["MacAddress"], "02:aa:bb:cc:dd:01");
    assert_eq!(
        v["Endpoints"]["net1"]["Aliases"],
        serde_json::json!(["web", "www"])
    );
    let (_, v) = h.get("/sandboxes/sb2").await;
    assert_eq!(v["Endpoints"]["net1"]["Aliases"], serde_json::json!(["db"]));
    assert_eq!(v["Endpoints"]["net1"]["MacAddress"], "02:42:0a:0a:00:02");

    // The same MAC twice on one network is a conflict, and changes nothing.
    h.sandbox("sb3").await;
    let before = state(&h).await;
    let (s, v) = h
        .post(
            "/networks/net1/connect",
            r#"{"Container":"sb3","EndpointConfig":{"MacAddress":"02:aa:bb:cc:dd:01"}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(message(&v).contains("02:aa:bb:cc:dd:01"), "{v}");
    assert_eq!(state(&h).await, before);
    // Its address was not consumed: sb3 gets the next free one.
    let (s, _) = h
        .post("/networks/net1/connect", r#"{"Container":"sb3"}"#)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = h.get("/sandboxes/sb3").await;
    assert_eq!(v["Endpoints"]["net1"]["IPv4Address"], "10.10.0.4/24");
}

#[tokio::test]
async fn inspect_accepts_verbose_and_scope() {
    let h = harness();
    h.net1().await;
    let (s, v) = h.get("/v1.47/networks/net1?verbose=true&scope=local").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["Name"], "net1");
}

#[tokio::test]
async fn ipam_fields_round_trip() {
    let h = harness();
    let (s, v) = h
        .post(
            "/networks/create",
            r#"{"Name":"d","EnableIPv6":true,"IPAM":{"Driver":"default","Config":[
                {"Subnet":"10.5.0.0/24","IPRange":"10.5.0.64/26","Gateway":"10.5.0.254",
                 "AuxiliaryAddresses":{"host1":"10.5.0.64"}},
                {"Subnet":"fd00:5::/64","AuxiliaryAddresses":{"r6":"fd00:5::2"}}]}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, v) = h.get("/networks/d").await;
    let c = &v["IPAM"]["Config"];
    assert_eq!(
        c,
        &serde_json::json!([
            {"Subnet": "10.5.0.0/24", "Gateway": "10.5.0.254", "IPRange": "10.5.0.64/26",
             "AuxiliaryAddresses": {"host1": "10.5.0.64"}},
            {"Subnet": "fd00:5::/64", "Gateway": "fd00:5::1",
             "AuxiliaryAddresses": {"r6": "fd00:5::2"}}
        ])
    );
    assert_eq!(v["EnableIPv6"], true);
    let sb = h.sandbox("sb1").await;
    let (s, v) = h
        .post(
            "/networks/d/connect",
            r#"{"Container":"sb1","EndpointConfig":{"IPAMConfig":{"IPv6Address":"fd00:5::42"}}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = h.get("/networks/d").await;
    let c = &v["Containers"][&sb];
    assert_eq!(c["IPv4Address"], "10.5.0.65/24", "range, aux skipped: {v}");
    assert_eq!(c["IPv6Address"], "fd00:5::42/64");
    let (_, v) = h.get("/sandboxes/sb1").await;
    assert_eq!(v["Endpoints"]["d"]["IPv6Gateway"], "fd00:5::1");
    // Bad connect addresses name the field.
    let (s, v) = h
        .post(
            "/networks/d/connect",
            r#"{"Container":"sb1","EndpointConfig":{"IPAMConfig":{"IPv6Address":"nope"}}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(message(&v).contains("IPv6Address"), "{v}");
    // Two IPv4 configs, a v4 aux in a v6 config.
    for (body, text) in [
        (
            r#"{"Name":"e","IPAM":{"Config":[{"Subnet":"10.6.0.0/24"},{"Subnet":"10.7.0.0/24"}]}}"#,
            "only one IPv4 subnet",
        ),
        (
            r#"{"Name":"e","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"10.6.0.0/24"},{"Subnet":"fd00:6::/64","AuxiliaryAddresses":{"a":"10.6.0.9"}}]}}"#,
            "IPAM.Config[1].AuxiliaryAddresses",
        ),
        (
            r#"{"Name":"e","IPAM":{"Config":[{"Gateway":"10.6.0.1"}]}}"#,
            "needs a Subnet",
        ),
    ] {
        let (s, v) = h.post("/networks/create", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(message(&v).contains(text), "{body}: {v}");
    }
}

#[tokio::test]
async fn connect_mac_aliases_and_ipv6_in_one_request() {
    let h = harness();
    let (s, v) = h
        .post(
            "/networks/create",
            r#"{"Name":"d6","EnableIPv6":true,"IPAM":{"Config":[
                {"Subnet":"10.8.0.0/24"},{"Subnet":"fd00:8::/64"}]}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let sb = h.sandbox("sb1").await;
    let (s, v) = h
        .post(
            "/networks/d6/connect",
            r#"{"Container":"sb1","EndpointConfig":{"IPAMConfig":{"IPv6Address":"fd00:8::9"},
                "MacAddress":"02:aa:bb:00:00:09","Aliases":["web","web","api"]}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = h.get("/networks/d6").await;
    let c = &v["Containers"][&sb];
    assert_eq!(c["MacAddress"], "02:aa:bb:00:00:09", "{v}");
    assert_eq!(c["IPv4Address"], "10.8.0.2/24");
    assert_eq!(c["IPv6Address"], "fd00:8::9/64");
    assert_eq!(c["Aliases"], serde_json::json!(["web", "api"]));
    let (_, v) = h.get("/sandboxes/sb1").await;
    let e = &v["Endpoints"]["d6"];
    assert_eq!(e["MacAddress"], "02:aa:bb:00:00:09");
    assert_eq!(e["IPv6Gateway"], "fd00:8::1");
    assert_eq!(e["Aliases"], serde_json::json!(["web", "api"]));
    // The same MAC again on this network: 409.
    h.sandbox("sb2").await;
    let (s, v) = h
        .post(
            "/networks/d6/connect",
            r#"{"Container":"sb2","EndpointConfig":{"MacAddress":"02:aa:bb:00:00:09"}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
}

#[tokio::test]
async fn connect_endpoint_driver_opts() {
    let h = harness();
    let nid = h.net1().await;
    let sb1 = h.sandbox("sb1").await;
    let before = state(&h).await;
    let ifname = IFNAME_OPTION;
    let bad: &[(String, StatusCode, &str)] = &[
        (
            r#"{"DriverOpts":{"com.example.x":"1"}}"#.to_string(),
            StatusCode::BAD_REQUEST,
            "endpoint driver option \"com.example.x\" is not supported",
        ),
        (
            format!(r#"{{"DriverOpts":{{"{ifname}":"0123456789abcdef"}}}}"#),
            StatusCode::BAD_REQUEST,
            "interface name",
        ),
        (
            format!(r#"{{"DriverOpts":{{"{ifname}":"a/b"}}}}"#),
            StatusCode::BAD_REQUEST,
            "interface name",
        ),
        (
            format!(r#"{{"DriverOpts":{{"{ifname}":"a b"}}}}"#),
            StatusCode::BAD_REQUEST,
            "interface name",
        ),
        (
            format!(r#"{{"DriverOpts":{{"{ifname}":".."}}}}"#),
            StatusCode::BAD_REQUEST,
            "interface name",
        ),
        (
            format!(r#"{{"DriverOpts":{{"{ifname}":""}}}}"#),
            StatusCode::BAD_REQUEST,
            "interface name",
        ),
        // The sandbox (our own namespace here) has a device named lo.
        (
            format!(r#"{{"DriverOpts":{{"{ifname}":"lo"}}}}"#),
            StatusCode::CONFLICT,
            "already has an interface named lo (a device in its namespace)",
        ),
        (
            r#"{"Links":["c1:db"]}"#.to_string(),
            StatusCode::BAD_REQUEST,
            "EndpointConfig.Links (c1:db) is not supported",
        ),
        (
            r#"{"GwPriority":5}"#.to_string(),
            StatusCode::BAD_REQUEST,
            "EndpointConfig.GwPriority (5) is not supported",
        ),
    ];
    for (cfg, status, want) in bad {
        let body = format!(r#"{{"Container":"sb1","EndpointConfig":{cfg}}}"#);
        let (s, v) = h.post(&format!("/networks/{nid}/connect"), &body).await;
        assert_eq!(s, *status, "{cfg}: {v}");
        assert!(message(&v).contains(want), "{cfg}: {v}");
    }
    assert_eq!(
        state(&h).await,
        before,
        "a refused connect changed something"
    );
    // Output-only fields (as dockerd) and empty Links/GwPriority 0 are ignored.
    let body = format!(
        r#"{{"Container":"sb1","EndpointConfig":{{"DriverOpts":{{"{ifname}":"web0"}},"Links":[],"GwPriority":0,"NetworkID":"x","EndpointID":"y","Gateway":"1.2.3.4","IPAddress":"9.9.9.9"}}}}"#
    );
    let (s, v) = h.post(&format!("/networks/{nid}/connect"), &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = h.get("/sandboxes/sb1").await;
    assert_eq!(v["Endpoints"]["net1"]["Interface"], "web0");
    assert_eq!(v["Endpoints"]["net1"]["DriverOpts"][ifname], "web0");
    assert_ne!(v["Endpoints"]["net1"]["IPv4Address"], "9.9.9.9/24");
    let (_, v) = h.get("/networks/net1").await;
    assert_eq!(v["Containers"][&sb1]["DriverOpts"][ifname], "web0");
    // The sandbox's own endpoint on another network already has the name.
    h.post(
        "/networks/create",
        r#"{"Name":"net2","IPAM":{"Config":[{"Subnet":"10.11.0.0/24"}]}}"#,
    )
    .await;
    let body =
        format!(r#"{{"Container":"sb1","EndpointConfig":{{"DriverOpts":{{"{ifname}":"web0"}}}}}}"#);
    let (s, v) = h.post("/networks/net2/connect", &body).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(message(&v).contains("its endpoint on network net1"), "{v}");
}

#[tokio::test]
async fn create_refuses_swarm_options_by_name() {
    let h = harness();
    h.net1().await;
    let before = state(&h).await;
    let bad: &[(&str, StatusCode, &str)] = &[
        (
            r#"{"Name":"x","Scope":"swarm"}"#,
            StatusCode::BAD_REQUEST,
            "Scope \"swarm\" is not supported",
        ),
        (
            r#"{"Name":"x","Scope":"global"}"#,
            StatusCode::BAD_REQUEST,
            "Scope \"global\" is not supported for driver bridge",
        ),
        (
            r#"{"Name":"x","Scope":"nowhere"}"#,
            StatusCode::BAD_REQUEST,
            "invalid Scope \"nowhere\"",
        ),
        (
            r#"{"Name":"x","Ingress":true}"#,
            StatusCode::BAD_REQUEST,
            "Ingress is not supported",
        ),
        (
            r#"{"Name":"x","EnableIPv4":false}"#,
            StatusCode::BAD_REQUEST,
            "EnableIPv4=false is not supported",
        ),
        (
            r#"{"Name":"x","ConfigFrom":{"Network":"net1"}}"#,
            StatusCode::NOT_FOUND,
            "network net1 is not a configuration network",
        ),
        (
            r#"{"Name":"x","ConfigOnly":true,"Attachable":true}"#,
            StatusCode::FORBIDDEN,
            "Network operator fields",
        ),
    ];
    for (body, status, want) in bad {
        let (s, v) = h.post("/networks/create", body).await;
        assert_eq!(s, *status, "{body}: {v}");
        assert!(message(&v).contains(want), "{body}: {v}");
    }
    assert_eq!(
        state(&h).await,
        before,
        "a refused create changed something"
    );
    // Accepted: the driver's own scope, Ingress false, EnableIPv4 true.
    let (s, v) = h
        .post(
            "/networks/create",
            r#"{"Name":"ok","Scope":"local","Ingress":false,"EnableIPv4":true}"#,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A configuration network and one from it, as inspect shows them.
    let (s, v) = h
        .post(
            "/networks/create",
            r#"{"Name":"cfg","ConfigOnly":true,"Options":{"com.docker.network.driver.mtu":"1400"},"IPAM":{"Config":[{"Subnet":"10.20.0.0/24"}]}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = h
        .post(
            "/networks/create",
            r#"{"Name":"web","Driver":"bridge","ConfigFrom":{"Network":"cfg"},"IPAM":{"Driver":"default","Config":[],"Options":{}},"Options":{},"Labels":{}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, cfg) = h.get("/networks/cfg").await;
    assert_eq!(
        (&cfg["ConfigOnly"], &cfg["Driver"], &cfg["Scope"]),
        (
            &serde_json::json!(true),
            &serde_json::json!("null"),
            &serde_json::json!("local")
        )
    );
    assert_eq!(cfg["IPAM"]["Config"][0]["Gateway"], "");
    let (_, web) = h.get("/networks/web").await;
    assert_eq!(web["ConfigFrom"]["Network"], "cfg");
    assert_eq!(web["IPAM"]["Config"][0]["Subnet"], "10.20.0.0/24");
    assert_eq!(web["Options"]["com.docker.network.driver.mtu"], "1400");
}

#[test]
fn meminfo_and_os_release_parsing() {
    let m = "MemFree:  10 kB\nMemTotal:       24736532 kB\n";
    assert_eq!(parse_meminfo_total(m), 24_736_532 * 1024);
    assert_eq!(parse_meminfo_total("MemTotal: 5\n"), 5);
    // Absent, malformed, overflowing or odd units: 0, never a panic.
    for bad in [
        "",
        "MemTotal:\n",
        "MemTotal: x kB\n",
        "MemTotal: 99999999999999999999 kB\n",
        "MemTotal: 18446744073709551615 kB\n",
        "MemTotal: 1 MB\n",
    ] {
        assert_eq!(parse_meminfo_total(bad), 0, "{bad:?}");
    }
    assert_eq!(
        parse_os_release("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
        "Debian GNU/Linux 12 (bookworm)"
    );
    assert_eq!(parse_os_release("PRETTY_NAME='Alpine'\n"), "Alpine");
    assert_eq!(parse_os_release("PRETTY_NAME=\"\"\n"), "Linux");
    assert_eq!(parse_os_release(""), "Linux");
}

#[test]
fn info_lists_remote_drivers_in_use_and_counts() {
    let mut store = Store::default();
    for (id, driver) in [("n1", "bridge"), ("n2", "weave"), ("n3", "weave")] {
        store.networks.insert(
            id.into(),
            Network {
                id: id.into(),
                name: id.into(),
                driver: driver.into(),
                ..Network::default()
            },
        );
    }
    let daemon = DaemonInfo {
        data_root: "/var/lib/tapnet".into(),
        exec_root: "/run/tapnet".into(),
        cluster_store: Some("etcd://10.0.0.1:2379".into()),
        cluster_advertise: Some("10.0.0.2".into()),
        workers: 3,
        tap_io: "auto".into(),
        tap_io_path: "uring".into(),
        tap_queues: 2,
        worker_nice: 7,
        worker_nice_auto: "off".into(),
        tap_udp_merge: false,
        gateway: "queue".into(),
    };
    let i = info_body(&store, &daemon);
    assert_eq!(
        (
            i.tapnet_datapath_workers,
            i.tapnet_tap_io.as_str(),
            i.tapnet_tap_io_path.as_str(),
            i.tapnet_tap_queues,
            i.tapnet_worker_nice,
            i.tapnet_worker_nice_auto.as_str(),
            i.tapnet_tap_udp_merge.as_str(),
            i.tapnet_gateway.as_str()
        ),
        (3, "auto", "uring", 2, 7, "off", "off", "queue")
    );
    assert_eq!(
        i.plugins.network,
        ["bridge", "host", "macvlan", "null", "overlay", "weave"]
    );
    assert_eq!((i.tapnet_networks, i.containers, i.images), (3, 0, 0));
    assert_eq!(i.docker_root_dir, "/var/lib/tapnet");
    assert_eq!(i.tapnet_cluster_store, "etcd://10.0.0.1:2379");
    assert_eq!(i.tapnet_cluster_advertise, "10.0.0.2");
    assert_eq!(i.swarm.local_node_state, "inactive");
    let v = serde_json::to_value(&i).unwrap();
    for k in [
        "ID",
        "NCPU",
        "OSType",
        "MemTotal",
        "DockerRootDir",
        "SystemTime",
    ] {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
    let t = v["SystemTime"].as_str().unwrap();
    assert!(
        t.len() == "2026-01-01T00:00:00.000000000Z".len() && t.ends_with('Z'),
        "{t}"
    );
}

#[test]
fn events_of_a_change_and_their_filters() {
    use crate::controller::ModelChange;
    use crate::model::Endpoint;
    let net = |id: &str, eps: &[(&str, &str)]| Network {
        id: id.into(),
        name: format!("name-{id}"),
        driver: "bridge".into(),
        endpoints: eps
            .iter()
            .map(|(e, sb)| {
                (
                    e.to_string(),
                    Endpoint {
                        id: e.to_string(),
                        network_id: id.into(),
                        sandbox_id: sb.to_string(),
                        ..Endpoint::default()
                    },
                )
            })
            .collect(),
        ..Network::default()
    };
    let mut before = Store::default();
    before
        .networks
        .insert("a".into(), net("a", &[("e1", "s1")]));
    before.networks.insert("b".into(), net("b", &[]));
    let mut after = Store::default();
    after.networks.insert("a".into(), net("a", &[("e2", "s2")]));
    after.networks.insert("c".into(), net("c", &[]));
    let change = ModelChange {
        before: Arc::new(before),
        after: Arc::new(after),
    };
    let now = std::time::UNIX_EPOCH + std::time::Duration::new(7, 5);
    let evs = events::events_of(&change, now);
    let got: Vec<(&str, &str, Option<&str>)> = evs
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.actor.id.as_str(),
                e.actor.attributes.get("container").map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("create", "c", None),
            ("connect", "a", Some("s2")),
            ("disconnect", "a", Some("s1")),
            ("destroy", "b", None),
        ]
    );
    assert_eq!((evs[0].time, evs[0].time_nano), (7, 7_000_000_005));
    assert_eq!(evs[0].scope, "local");
    let f = |pairs: &[(&str, &str)]| filters::Filters::from_pairs(pairs.iter().copied());
    let pass = |fl: &filters::Filters| {
        evs.iter()
            .filter(|e| events::event_matches(fl, e, &change.after))
            .count()
    };
    assert_eq!(pass(&f(&[])), 4);
    assert_eq!(pass(&f(&[("type", "network")])), 4);
    assert_eq!(pass(&f(&[("type", "container")])), 0);
    assert_eq!(pass(&f(&[("event", "connect"), ("event", "destroy")])), 2);
    assert_eq!(pass(&f(&[("network", "name-a")])), 2);
    assert_eq!(pass(&f(&[("container", "s1")])), 1);
}

#[tokio::test]
async fn events_query_is_checked_before_streaming() {
    let h = harness();
    for q in [
        "since=1",
        "until=1",
        "foo=1",
        "filters=%7B%22image%22%3A%5B%22x%22%5D%7D",
    ] {
        let (s, v) = h.get(&format!("/events?{q}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
    }
}

/// What the API contract run and its probes found (docs/testing.md, "API contract"):
/// each of these reached the kernel and came back as a 500 (or was accepted and could
/// never work); now each is a 400 that names the field, before anything is made.
#[tokio::test]
async fn contract_findings_are_refused_before_the_kernel_sees_them() {
    let h = harness();
    let nid = h.net1().await;
    h.sandbox("sb1").await;
    let before = state(&h).await;
    let ifname = IFNAME_OPTION;
    // Interface names the kernel does not take literally: EINVAL for `all` and
    // `default` (was 500), `a%d` renamed to `a0` (was recorded as `a%d`).
    for name in ["all", "default", "a%d", "%d"] {
        let body = format!(
            r#"{{"Container":"sb1","EndpointConfig":{{"DriverOpts":{{"{ifname}":"{name}"}}}}}}"#
        );
        let (s, v) = h.post(&format!("/networks/{nid}/connect"), &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {v}");
        assert!(
            message(&v).contains(&format!("invalid {ifname} \"{name}\"")),
            "{name}: {v}"
        );
    }
    // IPv6 on an MTU under 1280: the kernel refuses the address (was 500 on connect).
    let (s, v) = h
        .post(
            "/networks/create",
            r#"{"Name":"v6small","EnableIPv6":true,"Options":{"com.docker.network.driver.mtu":"1279"},
               "IPAM":{"Config":[{"Subnet":"10.20.0.0/24"},{"Subnet":"fd00:20::/64"}]}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        message(&v).contains("com.docker.network.driver.mtu 1279 is too small for IPv6"),
        "{v}"
    );
    // Published ports on a multicast or broadcast host address (was accepted, then
    // "bound" to an address that takes no connection).
    for ip in ["224.0.0.1", "255.255.255.255", "ff02::1"] {
        let body = format!(
            r#"{{"Name":"pub","PortBindings":{{"80/tcp":[{{"HostIp":"{ip}","HostPort":"8080"}}]}}}}"#
        );
        let (s, v) = h.post("/sandboxes", &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{ip}: {v}");
        assert!(
            message(&v).contains(&format!("HostIp {ip} is ")),
            "{ip}: {v}"
        );
    }
    assert_eq!(
        state(&h).await,
        before,
        "a refused request changed something"
    );

    // The boundaries are accepted: MTU 1280 with IPv6, an IPv4 link-local address on
    // a small-MTU network, an ordinary interface name.
    create(
        &h,
        r#"{"Name":"v6ok","EnableIPv6":true,"Options":{"com.docker.network.driver.mtu":"1280"},
            "IPAM":{"Config":[{"Subnet":"10.21.0.0/24"},{"Subnet":"fd00:21::/64"}]}}"#,
    )
    .await;
    create(
        &h,
        r#"{"Name":"small","Options":{"com.docker.network.driver.mtu":"576"},
            "IPAM":{"Config":[{"Subnet":"10.22.0.0/24"}]}}"#,
    )
    .await;
    let before = state(&h).await;
    let (s, v) = h
        .post(
            "/networks/small/connect",
            r#"{"Container":"sb1","EndpointConfig":{"IPAMConfig":{"LinkLocalIPs":["fe80::5"]}}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        message(&v).contains("LinkLocalIPs has the IPv6 address fe80::5"),
        "{v}"
    );
    assert_eq!(
        state(&h).await,
        before,
        "a refused connect changed something"
    );
    let (s, v) = h
        .post(
            "/networks/small/connect",
            &format!(
                r#"{{"Container":"sb1","EndpointConfig":{{"IPAMConfig":{{"LinkLocalIPs":["169.254.7.7"]}},"DriverOpts":{{"{ifname}":"all0"}}}}}}"#
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// More of what the contract probes found: an `IPRange` of only the subnet's network
/// or broadcast address made the first connect panic in IPAM (500 "task panicked");
/// an MTU above a tap's 65521 made every connect 500 (EINVAL).
#[tokio::test]
async fn contract_findings_ranges_and_mtu() {
    let h = harness();
    h.sandbox("sb1").await;
    let before = state(&h).await;
    for (subnet, range) in [
        ("10.30.0.0/24", "10.30.0.0/32"),
        ("10.31.0.0/24", "10.31.0.255/32"),
        ("10.32.0.0/30", "10.32.0.3/32"),
    ] {
        let body = format!(
            r#"{{"Name":"r","IPAM":{{"Config":[{{"Subnet":"{subnet}","IPRange":"{range}"}}]}}}}"#
        );
        let (s, v) = h.post("/networks/create", &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{range}: {v}");
        assert!(
            message(&v).contains(&format!(
                "{range} holds only the network or broadcast address"
            )),
            "{range}: {v}"
        );
    }
    let (s, v) = h
        .post(
            "/networks/create",
            r#"{"Name":"m","Options":{"com.docker.network.driver.mtu":"65522"},"IPAM":{"Config":[{"Subnet":"10.33.0.0/24"}]}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("between 68 and 65521"), "{v}");
    assert_eq!(
        state(&h).await,
        before,
        "a refused create changed something"
    );
    // A one-address range that is a host address works, and the connect gets it.
    create(
        &h,
        r#"{"Name":"one","Options":{"com.docker.network.driver.mtu":"65521"},
            "IPAM":{"Config":[{"Subnet":"10.34.0.0/24","IPRange":"10.34.0.77/32"}]}}"#,
    )
    .await;
    let (s, v) = h
        .post("/networks/one/connect", r#"{"Container":"sb1"}"#)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = h.get("/sandboxes/sb1").await;
    assert_eq!(v["Endpoints"]["one"]["IPv4Address"], "10.34.0.77/24");
}
