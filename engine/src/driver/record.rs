//! Drivers whose endpoints are records only: `null` (Docker's `none` network) and
//! `host` (Docker's `host` network).
//!
//! Contract: networks and endpoints exist only as records; joining creates no device and
//! IPAM gives no address. On `null` the sandbox keeps only its loopback; on `host` the
//! endpoint stands for sharing the daemon host's network namespace. One network each at
//! most.

use super::Driver;
use crate::error::Result;
use crate::model::{Endpoint, Network};
use tapnet_sandbox::netns::Netns;

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
    fn has_addresses(&self) -> bool {
        false
    }
    fn single_instance(&self) -> bool {
        true
    }
    fn create_network(&self, _network: &Network) -> Result<()> {
        Ok(())
    }
    fn delete_network(&self, _network_id: &str) -> Result<()> {
        Ok(())
    }
    fn join(&self, _: &Network, _: &Endpoint, _: &Netns, _: &str) -> Result<String> {
        Ok(String::new())
    }
    fn leave(&self, _network_id: &str, _endpoint_id: &str) -> Result<()> {
        Ok(())
    }
}
