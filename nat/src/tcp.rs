//! The gateway's TCP stack: a smoltcp [`Interface`] in any-IP mode over in-memory packet
//! queues. No I/O and no clock: the caller pushes IP packets in, polls with the current
//! time, and drains the IP packets smoltcp wants to send.
//!
//! Contract:
//!
//! * The interface uses `Medium::Ip` (the core strips and adds Ethernet headers and owns
//!   neighbour resolution), owns the gateway's addresses, accepts any destination
//!   (`set_any_ip(true)` plus default routes via the gateway), and has
//!   `max_transmission_unit` = the network's MTU, so the MSS it advertises fits the MTU;
//!   with [`Config::tap_offloads`] it is [`OFFLOAD_MTU`] instead (the runtime clamps the
//!   MSS the stack advertises to the network's MTU and raises the sandbox's, so segments
//!   toward the sandbox are up to 64 KiB and leave as GSO super-frames).
//! * Sockets are created per flow: [`Stack::listen`] for egress (a socket listening on the
//!   SYN's destination, created just before the SYN is pushed) and [`Stack::connect`] for
//!   published ports (a connection *from* the client's address into the sandbox).
//! * Buffers are bounded ([`SOCKET_BUF`] per direction per flow): when a buffer is full
//!   smoltcp's window closes, which is the backpressure toward the sandbox.

use crate::Config;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};
use std::collections::VecDeque;
use std::net::SocketAddr;

/// Bytes of buffer per direction per TCP flow.
pub const SOCKET_BUF: usize = 256 * 1024;

/// The stack's interface MTU with tap offloads: segments up to 64 KiB (sent to the
/// sandbox as GSO super-frames; the MSS the sandbox sees is clamped to the real MTU).
pub const OFFLOAD_MTU: usize = 65535;

/// Room in front of every packet the stack sends, for the virtio-net and Ethernet
/// headers: the runtime builds the switch datagram in place, without copying the packet.
pub const TX_HEADROOM: usize = tapnet_switch::VNET_HDR_LEN + crate::vnet::ETH_HDR_LEN;

/// A `Device` over two packet queues.
pub struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
    offloads: bool,
}

/// Receive token: one queued packet.
pub struct RxTok(Vec<u8>);
/// Transmit token: appends to the transmit queue.
pub struct TxTok<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; TX_HEADROOM + len];
        let r = f(&mut buf[TX_HEADROOM..]);
        self.0.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(RxTok, TxTok<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxTok(p), TxTok(&mut self.tx)))
    }

    fn transmit(&mut self, _t: Instant) -> Option<TxTok<'_>> {
        Some(TxTok(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        // The core has verified (or, with tap offloads, deliberately not verified) what
        // reaches the stack: no second verification. With tap offloads the TCP checksum
        // of sent segments is left to the tap (`vnet::offload_hdr`).
        c.checksum.ipv4 = Checksum::Tx;
        c.checksum.tcp = if self.offloads {
            Checksum::None
        } else {
            Checksum::Tx
        };
        c
    }
}

/// The smoltcp stack of one gateway.
pub struct Stack {
    iface: Interface,
    dev: QueueDevice,
    sockets: SocketSet<'static>,
}

impl Stack {
    /// A stack owning the gateway addresses of `cfg`.
    pub fn new(cfg: &Config, now: Instant) -> Stack {
        let mut dev = QueueDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu: if cfg.tap_offloads {
                OFFLOAD_MTU
            } else {
                usize::from(cfg.mtu.max(1280))
            },
            offloads: cfg.tap_offloads,
        };
        let mut ic = IfaceConfig::new(HardwareAddress::Ip);
        ic.random_seed = rand::random();
        let mut iface = Interface::new(ic, &mut dev, now);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(cfg.ipv4), cfg.ipv4_prefix));
            if let Some((v6, p)) = cfg.ipv6 {
                let _ = a.push(IpCidr::new(IpAddress::Ipv6(v6), p));
            }
        });
        let _ = iface.routes_mut().add_default_ipv4_route(cfg.ipv4);
        if let Some((v6, _)) = cfg.ipv6 {
            let _ = iface.routes_mut().add_default_ipv6_route(v6);
        }
        iface.set_any_ip(true);
        Stack {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
        }
    }

    /// Queue one IP packet for the stack.
    pub fn push(&mut self, ip_packet: Vec<u8>) {
        self.dev.rx.push_back(ip_packet);
    }

    /// Process queued packets and timers. True if some socket may have changed.
    pub fn poll(&mut self, now: Instant) -> bool {
        matches!(
            self.iface.poll(now, &mut self.dev, &mut self.sockets),
            smoltcp::iface::PollResult::SocketStateChanged
        )
    }

    /// Take the IP packets the stack wants to send, each after [`TX_HEADROOM`] bytes.
    pub fn take_tx(&mut self) -> VecDeque<Vec<u8>> {
        std::mem::take(&mut self.dev.tx)
    }

    /// How long until the stack needs polling again.
    pub fn poll_delay(&mut self, now: Instant) -> Option<SmolDuration> {
        self.iface.poll_delay(now, &self.sockets)
    }

    fn new_socket() -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; SOCKET_BUF]),
            tcp::SocketBuffer::new(vec![0u8; SOCKET_BUF]),
        );
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s
    }

    /// A socket listening on `local` (the destination of an egress SYN, or gw:53).
    pub fn listen(&mut self, local: SocketAddr) -> Option<SocketHandle> {
        let mut s = Self::new_socket();
        s.listen(IpListenEndpoint {
            addr: Some(IpAddress::from(local.ip())),
            port: local.port(),
        })
        .ok()?;
        Some(self.sockets.add(s))
    }

    /// A socket connecting from `local` (a published-port client's address) to `remote`
    /// (the sandbox).
    pub fn connect(&mut self, local: SocketAddr, remote: SocketAddr) -> Option<SocketHandle> {
        let mut s = Self::new_socket();
        s.connect(
            self.iface.context(),
            IpEndpoint::new(IpAddress::from(remote.ip()), remote.port()),
            IpEndpoint::new(IpAddress::from(local.ip()), local.port()),
        )
        .ok()?;
        Some(self.sockets.add(s))
    }

    /// The socket behind `h`.
    pub fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket<'static>>(h)
    }

    /// Remove a socket.
    pub fn remove(&mut self, h: SocketHandle) {
        let _ = self.sockets.remove(h);
    }
}
