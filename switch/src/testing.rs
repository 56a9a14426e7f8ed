//! Helpers for tests of the switch and the crates above it (frames, MACs, waiting).
//!
//! Contract: nothing here is used by the datapath; it exists so that the integration
//! tests of `tapnet-switch`, `tapnet-vxlan` and others build their frames and wait for
//! asynchronous effects one way. Everything panics on failure (it is test code).

use crate::VNET_HDR_LEN;
use std::time::{Duration, Instant};

/// The broadcast MAC.
pub const BCAST: [u8; 6] = [0xff; 6];

/// A locally administered unicast MAC ending in `n`.
pub fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

/// A zero virtio-net header (no GSO, no checksum offload) and a minimum-size IPv4
/// Ethernet frame from `src` to `dst` whose payload is `tag` repeated.
pub fn frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(VNET_HDR_LEN + 14 + 46, tag);
    f
}

/// Poll `cond` every 2 ms until it holds; panic naming `what` after 5 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
