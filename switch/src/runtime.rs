//! Datapath runtime. SKELETON: signatures are the contract; bodies to be written.

use crate::core::{DropReason, FdbEntry, PortId, SwitchConfig, SwitchCounters};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A port's frame I/O. Frames carry a [`crate::VNET_HDR_LEN`]-byte virtio-net
/// header in front of the Ethernet frame. The fd must be non-blocking; it is
/// registered with the worker's `mio::Poll` for readability.
pub trait FrameIo: AsRawFd + Send {
    /// Read one frame (vnet header + Ethernet frame) into `buf`; `WouldBlock` when empty.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one frame (vnet header + Ethernet frame).
    fn send(&mut self, frame: &[u8]) -> io::Result<usize>;
}

/// Per-port counters, updated by the worker, read by the control plane.
#[derive(Debug, Default)]
pub struct PortStats {
    /// Frames received from the port.
    pub rx_packets: AtomicU64,
    /// Bytes received (Ethernet frame bytes, vnet header excluded).
    pub rx_bytes: AtomicU64,
    /// Frames sent to the port.
    pub tx_packets: AtomicU64,
    /// Bytes sent.
    pub tx_bytes: AtomicU64,
    /// Drops charged to this port, indexed by `DropReason as usize`.
    pub drops: [AtomicU64; DropReason::COUNT],
}

/// A plain-value copy of [`PortStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStatsSnapshot {
    /// Frames received from the port.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent to the port.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// (reason, count) for every reason.
    pub drops: Vec<(DropReason, u64)>,
}

impl PortStats {
    /// Copy the counters out.
    pub fn snapshot(&self) -> PortStatsSnapshot {
        todo!("switch helper")
    }
}

/// Errors of the datapath runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An OS call failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The worker owning the network has stopped.
    #[error("datapath worker is gone")]
    WorkerGone,
    /// No such port on this network.
    #[error("no port {0} on this network")]
    NoSuchPort(PortId),
}

/// The datapath: N worker threads, each with its own `mio::Poll`.
pub struct Datapath {
    _private: (),
}

impl Datapath {
    /// Start `workers` worker threads (0 = one per core).
    pub fn start(workers: usize) -> Result<Datapath, Error> {
        let _ = workers;
        todo!("switch helper")
    }
    /// Create a switch for a network on one of the workers (picked round-robin).
    pub fn add_network(&self, config: SwitchConfig) -> Result<NetworkHandle, Error> {
        let _ = config;
        todo!("switch helper")
    }
    /// Stop all workers and join them. Ports' `FrameIo`s are dropped.
    pub fn shutdown(self) {
        todo!("switch helper")
    }
}

/// Control-plane handle to one network's switch. Dropping it does not remove the
/// network; call [`NetworkHandle::remove`].
pub struct NetworkHandle {
    _private: (),
}

impl NetworkHandle {
    /// Attach a port; returns its id and its live counters.
    pub fn add_port(&self, io: Box<dyn FrameIo>) -> Result<(PortId, Arc<PortStats>), Error> {
        let _ = io;
        todo!("switch helper")
    }
    /// Detach a port, forgetting its FDB entries; hands the `FrameIo` back to the caller.
    pub fn remove_port(&self, port: PortId) -> Result<Box<dyn FrameIo>, Error> {
        let _ = port;
        todo!("switch helper")
    }
    /// Snapshot of this network's FDB.
    pub fn fdb(&self) -> Result<Vec<FdbEntry>, Error> {
        todo!("switch helper")
    }
    /// Switch-level counters.
    pub fn counters(&self) -> Result<SwitchCounters, Error> {
        todo!("switch helper")
    }
    /// Remove the network from its worker (all ports must have been removed; any left are dropped).
    pub fn remove(self) -> Result<(), Error> {
        todo!("switch helper")
    }
}
