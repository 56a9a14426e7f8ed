//! The engine's error types.
//!
//! Contract: every fallible engine operation returns [`Error`]; each variant names
//! what was being done and keeps the cause. [`Error::status`] is the *one* place
//! where errors are mapped to HTTP status codes (the API layer uses nothing else).
//! Messages are written for the user: what is wrong and, where useful, what to do.
//!
//! This module sits at the bottom of the engine's module graph: it uses only leaf
//! types (the [`IpamError`] of the leaf module [`crate::ipam`], the other crates'
//! errors) and defines [`StoreError`] itself, so that `model`, `ports` and `store`
//! can all return [`Error`] without an import circle.

use crate::ipam::IpamError;

/// Errors of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or asks for something impossible (HTTP 400).
    #[error("{0}")]
    InvalidRequest(String),
    /// A name, id or prefix matches more than one object (HTTP 400).
    #[error("{kind} {what} is ambiguous ({count} matches found based on ID prefix)")]
    Ambiguous {
        /// "network" or "sandbox".
        kind: &'static str,
        /// What the caller asked for.
        what: String,
        /// How many objects matched.
        count: usize,
    },
    /// The object does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (HTTP 409): duplicate name,
    /// address in use, network in use, already connected.
    #[error("{0}")]
    Conflict(String),
    /// The operation is not allowed on this object (HTTP 403): removing a
    /// pre-defined network, a second `host`/`null` network.
    #[error("{0}")]
    Forbidden(String),
    /// An address-management request failed.
    #[error("{op}: {source}")]
    Ipam {
        /// The operation, e.g. "allocate address on network net1".
        op: String,
        /// The cause.
        #[source]
        source: IpamError,
    },
    /// An OS call (namespace, tap device) failed (HTTP 500).
    #[error("{op}: {source}")]
    Os {
        /// The operation, e.g. "create tap eth0 in sandbox sb1".
        op: String,
        /// The cause.
        #[source]
        source: tapnet_sandbox::Error,
    },
    /// The datapath refused or could not be reached (HTTP 500).
    #[error("{op}: {source}")]
    Datapath {
        /// The operation, e.g. "attach eth0 of sb1 to network net1".
        op: String,
        /// The cause.
        #[source]
        source: tapnet_switch::runtime::Error,
    },
    /// The network's gateway refused or could not be reached (HTTP 409 for a host
    /// port in use, 400 for a request the network cannot take, else 500).
    #[error("{op}: {source}")]
    Gateway {
        /// The operation, e.g. "publish 80/tcp of sb1".
        op: String,
        /// The cause.
        #[source]
        source: tapnet_nat::Error,
    },
    /// A driver broke its contract, e.g. chose a MAC for an endpoint that had one,
    /// or described routes without an interface (HTTP 500).
    #[error("{0}")]
    Driver(String),
    /// The persistent store failed (HTTP 500; 503 when the store cannot be reached,
    /// [`StoreError::Unavailable`]; 507 when its disk is full,
    /// [`StoreError::is_no_space`]); the mutation was not recorded.
    #[error("{op}: store: {source}")]
    Store {
        /// The operation, e.g. "connect sb1 to network net1".
        op: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// A remote driver or IPAM plugin failed (HTTP status by
    /// [`crate::remote::PluginError::status`]: 404 not found, 503 unreachable, 504
    /// too slow, 500 refused, 502 nonsense).
    #[error("{op}: {source}")]
    Plugin {
        /// The operation, e.g. "join sb1".
        op: String,
        /// The cause (names the plugin and the method).
        #[source]
        source: crate::remote::PluginError,
    },
    /// A blocking task panicked or was cancelled (HTTP 500).
    #[error("{op}: background task failed: {message}")]
    Task {
        /// The operation.
        op: String,
        /// What the runtime said.
        message: String,
    },
}

/// Result alias for the engine.
pub type Result<T> = std::result::Result<T, Error>;

/// A value the shared types refused (a driver option, a port binding) is a bad
/// request (HTTP 400), with the same message.
impl From<tapnet_types::Error> for Error {
    fn from(e: tapnet_types::Error) -> Error {
        match e {
            tapnet_types::Error::Invalid(message) => Error::InvalidRequest(message),
        }
    }
}

/// Errors of the persistent store (`store::Db`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused an operation (I/O error, lock held, corruption).
    #[error("database {path}: {source}")]
    Db {
        /// The database file (or `memory`).
        path: String,
        /// The cause.
        #[source]
        source: Box<redb::Error>,
    },
    /// A record could not be encoded.
    #[error("encode {what}: {source}")]
    Encode {
        /// Which record.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The database was written by a newer tapnet.
    #[error("database {path} has schema version {found}; this tapnetd understands up to {supported}: upgrade tapnetd or move the data root away")]
    Schema {
        /// The database file.
        path: String,
        /// The version found.
        found: u64,
        /// The newest version this build reads (`store::SCHEMA_VERSION`).
        supported: u64,
    },
    /// The store cannot be reached or refused the transaction (a distributed store
    /// that is down; an injected failure of the in-memory store).
    #[error("{store} is unavailable: {message}")]
    Unavailable {
        /// Which store.
        store: String,
        /// What happened.
        message: String,
    },
    /// A compare-and-swap condition failed: nothing was written.
    #[error("store {store}: key {key} changed concurrently (expected revision {expected:?}, found {found:?})")]
    Conflict {
        /// Which store.
        store: String,
        /// The key whose condition failed.
        key: String,
        /// The revision the caller expected (`None`: absent).
        expected: Option<u64>,
        /// The revision found (`None`: absent).
        found: Option<u64>,
    },
}

impl Error {
    /// The HTTP status code this error maps to (the single mapping point).
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidRequest(_) | Error::Ambiguous { .. } => 400,
            Error::NotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::Forbidden(_) => 403,
            Error::Ipam { source, .. } => match source {
                IpamError::InvalidSubnet(_)
                | IpamError::InvalidRange(_)
                | IpamError::NotInSubnet { .. }
                | IpamError::Reserved { .. } => 400,
                IpamError::InUse { .. } | IpamError::Overlap { .. } => 409,
                IpamError::PoolsExhausted | IpamError::Exhausted { .. } => 503,
                IpamError::UnknownPool(_) => 500,
                IpamError::UnknownDriver(_) => 404,
                IpamError::Plugin(e) => e.status(),
            },
            Error::Gateway { source, .. } => match source {
                tapnet_nat::Error::PortInUse { .. } => 409,
                tapnet_nat::Error::Internal | tapnet_nat::Error::NotOnNetwork(_) => 400,
                _ => 500,
            },
            Error::Store {
                source: StoreError::Unavailable { .. },
                ..
            } => 503,
            // The data root's file system is full (WebDAV's Insufficient Storage).
            Error::Store { source, .. } if source.is_no_space() => 507,
            Error::Plugin { source, .. } => source.status(),
            Error::Os { .. }
            | Error::Driver(_)
            | Error::Datapath { .. }
            | Error::Store { .. }
            | Error::Task { .. } => 500,
        }
    }

    /// Wrap a sandbox error with the operation it belongs to.
    pub fn os(op: impl Into<String>, source: tapnet_sandbox::Error) -> Error {
        Error::Os {
            op: op.into(),
            source,
        }
    }

    /// Wrap a datapath error with the operation it belongs to.
    pub fn datapath(op: impl Into<String>, source: tapnet_switch::runtime::Error) -> Error {
        Error::Datapath {
            op: op.into(),
            source,
        }
    }

    /// Wrap a gateway error with the operation it belongs to.
    pub fn gateway(op: impl Into<String>, source: tapnet_nat::Error) -> Error {
        Error::Gateway {
            op: op.into(),
            source,
        }
    }

    /// Wrap a store error with the operation it belongs to.
    pub fn store(op: impl Into<String>, source: StoreError) -> Error {
        Error::Store {
            op: op.into(),
            source,
        }
    }

    /// Wrap an IPAM error with the operation it belongs to.
    pub fn ipam(op: impl Into<String>, source: IpamError) -> Error {
        Error::Ipam {
            op: op.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_store_is_503_naming_the_store() {
        let e = Error::store(
            "create network n1",
            StoreError::Unavailable {
                store: "etcd://10.0.0.1:2379".into(),
                message: "no answer within 2s".into(),
            },
        );
        assert_eq!(e.status(), 503);
        assert!(e.to_string().contains("etcd://10.0.0.1:2379"), "{e}");
        let conflict = Error::store(
            "connect",
            StoreError::Conflict {
                store: "memory".into(),
                key: "k".into(),
                expected: None,
                found: Some(1),
            },
        );
        assert_eq!(conflict.status(), 500);
    }
}
