//! tapnet-switch: the userspace L2 learning switch.
//!
//! * [`core`] is the pure forwarding decision: frame headers + ingress port + FDB + port
//!   table (roles and policies: anti-spoofing, ICC) + `now` in, an [`core::Action`] out.
//!   No I/O, no clock.
//! * [`runtime`] is the datapath: worker threads with `mio`, ports that are
//!   [`runtime::FrameIo`] (tap devices, the gateway's socket and, later, VXLAN ports),
//!   moved in batches ([`runtime::FrameIo::recv_batch`], [`runtime::FrameIo::send_batch`])
//!   and reachable from the control plane ([`runtime::NetworkHandle::control_port`]),
//!   counters the control plane reads.
//! * [`testing`] holds the frame and wait helpers the integration tests share.
//!
//! The wire formats (virtio-net header, checksums, [`core::MacAddr`]) live in
//! [`tapnet_wire`].
//!
//! Every frame that crosses a port carries a virtio-net header of
//! [`VNET_HDR_LEN`] bytes in front of the Ethernet frame (the tap's
//! `IFF_VNET_HDR` layout); the switch passes it through untouched.
#![forbid(unsafe_code)]

pub mod core;
pub mod runtime;
pub mod testing;

/// Length of the virtio-net header that prefixes every frame on a port
/// (`struct virtio_net_hdr`, as set by `TUNSETVNETHDRSZ` default); see [`tapnet_wire::vnet`].
pub use tapnet_wire::vnet::VNET_HDR_LEN;
