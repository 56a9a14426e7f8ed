//! The `null` driver (Docker's `none` network).
//!
//! Contract: networks and endpoints exist only as records; joining gives the sandbox
//! no device, so it keeps only its loopback. No addresses, one network at most.

use super::Driver;
use crate::error::Result;
use crate::model::{Endpoint, Network};
use tapnet_sandbox::netns::Netns;

/// The `null` driver (see the module doc).
#[derive(Debug, Default)]
pub struct NullDriver;

impl Driver for NullDriver {
    fn name(&self) -> &str {
        "null"
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
