//! Drivers whose endpoints are records only: `null` (Docker's `none` network) and
//! `host` (Docker's `host` network).
//!
//! Contract: networks and endpoints exist only as records; joining describes no device
//! (an empty [`JoinDescription`]: the sandbox layer does nothing) and IPAM gives no
//! address. On `null` the sandbox keeps only its loopback; on `host` the endpoint
//! stands for sharing the daemon host's network namespace. One network each at most
//! ([`Capabilities::single_instance`]).

use super::{Capabilities, Driver, JoinDescription, JoinRequest, NetworkRequest};
use crate::error::Result;

/// A driver that keeps records and touches no device (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct RecordOnlyDriver {
    name: &'static str,
}

/// The `null` driver.
pub const NULL_DRIVER: RecordOnlyDriver = RecordOnlyDriver { name: "null" };
/// The `host` driver.
pub const HOST_DRIVER: RecordOnlyDriver = RecordOnlyDriver { name: "host" };

impl Driver for RecordOnlyDriver {
    fn name(&self) -> &str {
        self.name
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            needs_addresses: false,
            single_instance: true,
            ..Capabilities::default()
        }
    }
    fn create_network(&self, _req: &NetworkRequest<'_>) -> Result<()> {
        Ok(())
    }
    fn delete_network(&self, _network_id: &str) -> Result<()> {
        Ok(())
    }
    fn join(&self, _req: &JoinRequest<'_>) -> Result<JoinDescription> {
        Ok(JoinDescription::default())
    }
    fn leave(&self, _network_id: &str, _endpoint_id: &str) -> Result<()> {
        Ok(())
    }
}
