//! tapnet-types: the data tapnet's components exchange, in one place.
//!
//! * [`model`]: the CNM records the engine stores (`Network`, `Endpoint`, `Sandbox`,
//!   `Ipv6Config`), the driver option names and their parsing, MAC helpers.
//! * [`ports`]: published ports — the stored bindings (`PortBinding`, `Published`),
//!   Docker's `PortBindings` request shape and its parsing, Docker's
//!   `NetworkSettings.Ports` answer shape.
//! * [`api`]: the bodies of the HTTP API (`docs/api.md`): Docker-shaped requests
//!   (network create, connect, disconnect, sandbox create) and answers (network and
//!   sandbox objects, stats and FDB rows, prune and version answers, the
//!   `{"message": ...}` error body).
//! * [`plugin`]: Docker's plugin protocol (`Plugin.Activate`, `NetworkDriver.*`,
//!   `IpamDriver.*`), shared by tapnet's plugin server and its remote-driver client.
//! * [`error`]: the one error of this crate: a value that does not parse or is out
//!   of range.
//!
//! Contracts:
//! * This crate is data and pure functions only: no I/O, no clock, no randomness, no
//!   dependency on the engine, the datapath or the OS crates, so the CLI, the engine,
//!   and future plugin and CNI front ends share the exact same shapes.
//! * Serde attributes are part of the contract. The records in [`model`] and
//!   [`ports`] are what the engine's database holds: their field names and
//!   representations do not change, and every field of a stored record carries
//!   `#[serde(default)]` so old records stay readable as fields are added. The
//!   bodies in [`api`] serialize byte-for-byte as Docker's (and tapnetd's) JSON; their
//!   deserialization is lenient (missing fields take their defaults, unknown fields
//!   are ignored) so a client can read answers of older or newer daemons.
//! * Parsing errors are [`Error::Invalid`] with a message written for the user that
//!   names the bad value and says what to give instead; the engine answers them as
//!   400.
#![forbid(unsafe_code)]

pub mod api;
pub mod error;
pub mod model;
pub mod plugin;
pub mod ports;

pub use error::{Error, Result};
pub use model::{Endpoint, Ipv6Config, Network, Sandbox};
pub use ports::{BoundPort, PortBinding, PortBindingBody, PortProto, PortResource, Published};
