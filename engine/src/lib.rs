//! tapnet-engine: the control plane of tapnet.
//!
//! * [`model`]: the CNM objects as data (`Network`, `Endpoint`, `Sandbox`, defined in
//!   `tapnet-types` and re-exported) and the [`model::Store`] that holds them;
//!   id/name/prefix lookup.
//! * [`ipam`]: the `Ipam` trait (libnetwork-shaped) and the default driver: pools,
//!   ranges, auxiliary addresses, IPv4 and IPv6.
//! * [`driver`]: the `Driver` trait, its registry, and the `bridge`, `null` and `host`
//!   drivers.
//! * [`sandbox_layer`]: applies what drivers describe (interface, addresses, routes)
//!   to sandboxes and undoes it; the CNM connect/disconnect/restore sequence.
//! * [`controller`]: the CNM `NetworkController`, serializing every mutation.
//! * [`ports`]: published ports (Docker's `PortBindings`; the types and parsing are
//!   `tapnet-types`'), the host-port checks.
//! * [`sandbox_files`]: a sandbox's resolv.conf and hosts, and the DNS names of a
//!   network.
//! * [`api`]: the Docker-compatible HTTP API on a unix socket (`docs/api.md`); its
//!   bodies are `tapnet_types::api`'s.
//! * [`capture`]: `GET /networks/{id}/capture` and `/sandboxes/{id}/capture`, pcap
//!   streams of a switch's frames.
//! * [`metrics`]: `GET /metrics`, Prometheus text exposition of the datapath's,
//!   gateways' and API's counters.
//! * [`docker_plugin`]: tapnet as a Docker network and IPAM plugin (dockerd's
//!   `NetworkDriver.*`/`IpamDriver.*` calls on `/run/docker/plugins/tapnet.sock`,
//!   mapped onto the controller).
//! * [`store`]: the redb database under `--data-root` (one transaction per mutation).
//! * [`error`]: the error enum and its single mapping to HTTP status codes, and the
//!   store's error.
//!
//! Module dependencies run one way (no circle): `ipam` and `error` are at the
//! bottom (`error` uses only `ipam`'s error type and other crates), `model` and
//! `ports` use `error`, `store` uses `model` and `error`; `driver`,
//! `sandbox_files`, `controller`, `api` and `docker_plugin` sit on top.
#![forbid(unsafe_code)]

pub mod api;
pub mod capture;
pub mod controller;
pub mod docker_plugin;
pub mod driver;
pub mod error;
pub mod ipam;
pub mod metrics;
pub mod model;
pub mod ports;
pub mod remote;
pub mod sandbox_files;
pub mod sandbox_layer;
pub mod store;
pub mod txn;

pub use controller::Controller;
pub use error::{Error, Result};
