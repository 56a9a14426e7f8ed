//! The `host` driver (Docker's `host` network).
//!
//! Contract: an endpoint on the `host` network shares the daemon host's network
//! namespace: the driver creates no device and IPAM gives no address; the endpoint is
//! a record only. One network at most.

use super::Driver;
use crate::error::Result;
use crate::model::{Endpoint, Network};
use tapnet_sandbox::netns::Netns;

/// The `host` driver (see the module doc).
#[derive(Debug, Default)]
pub struct HostDriver;

impl Driver for HostDriver {
    fn name(&self) -> &str {
        "host"
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
