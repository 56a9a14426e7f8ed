//! tapnet-switch: the userspace L2 learning switch.
//!
//! * [`core`] is the pure forwarding decision: frame headers + ingress port + FDB + port
//!   table (roles and policies: anti-spoofing, ICC) + `now` in, an [`core::Action`] out.
//!   No I/O, no clock.
//! * [`runtime`] is the datapath: worker threads with `mio`, ports that are
//!   [`runtime::FrameIo`] (tap devices and, later, gateway/VXLAN ports), counters
//!   the control plane reads.
//!
//! Every frame that crosses a port carries a virtio-net header of
//! [`VNET_HDR_LEN`] bytes in front of the Ethernet frame (the tap's
//! `IFF_VNET_HDR` layout); the switch passes it through untouched.
#![forbid(unsafe_code)]

pub mod core;
pub mod runtime;

/// Length of the virtio-net header that prefixes every frame on a port
/// (`struct virtio_net_hdr`, as set by `TUNSETVNETHDRSZ` default); see [`tapnet_wire::vnet`].
pub use tapnet_wire::vnet::VNET_HDR_LEN;
