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
//! * Buffers are bounded per flow ([`SOCKET_BUF`] from the sandbox, [`TO_SANDBOX_BUF`]
//!   toward it): when the buffer from the sandbox is full smoltcp's window closes, which
//!   is the backpressure toward the sandbox; when the one toward it is full the runtime
//!   stops reading the host socket.

use crate::Config;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;

/// Bytes of buffer per TCP flow for data from the sandbox (the window it is offered).
/// With 256 KiB an upload at ~10 Gbit/s kept hitting the closed window: four super-frames
/// in flight, an ACK per loop turn, a host-socket write per super-frame. 1 MiB moved
/// 10–20 % more at ~25 % less CPU per Gbit (docs/benchmarks.md, "Round 6"); like every
/// buffer of [`crate::mem`]'s size it is its own mapping, whose pages cost memory only
/// once data has passed through them.
pub const SOCKET_BUF: usize = 1024 * 1024;

/// The unit of the window the stack offers a sandbox: smoltcp scales it by
/// 2^(bits of [`SOCKET_BUF`] − 16) and rounds the free space *down* to that unit, so the
/// window's right edge moves back by up to a unit minus one byte whenever a segment that
/// is not a whole number of units arrives into a nearly full buffer. A sender already
/// past the new edge loses the tail of a segment (Linux retransmitted ~20 segments per
/// 5 s of upload at 1 MiB). The MSS announced to sandboxes is therefore a multiple of
/// this unit ([`crate::vnet::clamp_syn_mss`]): full segments never straddle a unit.
pub const WINDOW_UNIT: usize =
    1 << ((usize::BITS - SOCKET_BUF.leading_zeros()) as usize).saturating_sub(16);

/// Bytes of buffer per TCP flow for data toward the sandbox: the most the stack keeps in
/// flight to it. With 64 KiB GSO super-frames, 256 KiB was four frames in flight, and
/// every round trip through the switch thread and the sandbox's ACK stalled the flow
/// (docs/benchmarks.md, "NAT ingress": 1 MiB moved ~20% more per second at ~15% less
/// CPU per Gbit). Like every buffer of [`crate::mem`]'s size it is its own mapping: pages
/// cost memory only once data has passed through them.
pub const TO_SANDBOX_BUF: usize = 1024 * 1024;

/// The stack's interface MTU with tap offloads: segments up to 64 KiB (sent to the
/// sandbox as GSO super-frames; the MSS the sandbox sees is clamped to the real MTU).
pub const OFFLOAD_MTU: usize = 65535;

/// Room in front of every packet the stack sends, for the virtio-net and Ethernet
/// headers: the runtime builds the switch datagram in place, without copying the packet.
pub const TX_HEADROOM: usize = tapnet_switch::VNET_HDR_LEN + crate::vnet::ETH_HDR_LEN;

/// Most packet buffers kept for reuse ([`Stack::recycle`]).
pub const POOL_MAX: usize = 64;

/// Buffers shorter than this are neither pooled nor taken from the pool (a big pooled
/// buffer cut down to an ACK would need zeroing again to grow back).
pub const POOL_MIN_LEN: usize = 16 * 1024;

/// A packet buffer of `len` bytes, reused from `pool` when possible. Its contents are
/// whatever the buffer held before (initialised, not zeroed): callers overwrite them.
fn pooled(pool: &mut Vec<Vec<u8>>, len: usize) -> Vec<u8> {
    if len < POOL_MIN_LEN {
        return vec![0u8; len];
    }
    let mut buf = pool.pop().unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0);
    } else {
        buf.truncate(len);
    }
    buf
}

/// A `Device` over two packet queues.
pub struct QueueDevice {
    /// Packets for the stack: a buffer and where the IP packet lies in it.
    rx: VecDeque<(Vec<u8>, Range<usize>)>,
    tx: VecDeque<Vec<u8>>,
    /// Spare packet buffers (consumed receive buffers, sent transmit buffers).
    pool: Vec<Vec<u8>>,
    /// Receive buffers consumed while a transmit token held `pool`.
    spent: Vec<Vec<u8>>,
    mtu: usize,
    offloads: bool,
}

/// Receive token: one queued packet; its buffer goes back to the pool.
pub struct RxTok<'a> {
    buf: Vec<u8>,
    at: Range<usize>,
    pool: &'a mut Vec<Vec<u8>>,
}
/// Transmit token: appends to the transmit queue, in a buffer from the pool.
pub struct TxTok<'a> {
    tx: &'a mut VecDeque<Vec<u8>>,
    pool: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxTok<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.buf.get(self.at.clone()).unwrap_or_default());
        if self.pool.len() < POOL_MAX && self.buf.len() >= POOL_MIN_LEN {
            self.pool.push(self.buf);
        }
        r
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // smoltcp writes every byte of the packet (headers, option padding, payload, a
        // zero checksum when not computed), so a reused buffer needs no zeroing.
        let mut buf = pooled(self.pool, TX_HEADROOM + len);
        let r = f(&mut buf[TX_HEADROOM..]);
        self.tx.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = RxTok<'a>;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(RxTok<'_>, TxTok<'_>)> {
        let (buf, at) = self.rx.pop_front()?;
        // Both tokens live at once: the receive side returns its buffer to `spent`
        // (moved to `pool` by the stack), the transmit side takes from `pool`.
        Some((
            RxTok {
                buf,
                at,
                pool: &mut self.spent,
            },
            TxTok {
                tx: &mut self.tx,
                pool: &mut self.pool,
            },
        ))
    }

    fn transmit(&mut self, _t: Instant) -> Option<TxTok<'_>> {
        Some(TxTok {
            tx: &mut self.tx,
            pool: &mut self.pool,
        })
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

/// Receive token over a packet the caller lends ([`Stack::ingest`]).
struct LentRx<'a>(&'a [u8]);

impl phy::RxToken for LentRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

/// The stack's device with one lent packet to receive; what the stack sends meanwhile
/// goes to the usual transmit queue.
struct LentDevice<'a, 'p> {
    pkt: Option<&'p [u8]>,
    q: &'a mut QueueDevice,
}

impl Device for LentDevice<'_, '_> {
    type RxToken<'b>
        = LentRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxTok<'b>
    where
        Self: 'b;

    fn receive(&mut self, t: Instant) -> Option<(LentRx<'_>, TxTok<'_>)> {
        let pkt = self.pkt.take()?;
        Some((LentRx(pkt), self.q.transmit(t)?))
    }

    fn transmit(&mut self, t: Instant) -> Option<TxTok<'_>> {
        self.q.transmit(t)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.q.capabilities()
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
            pool: Vec::new(),
            spent: Vec::new(),
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
        let len = ip_packet.len();
        self.dev.rx.push_back((ip_packet, 0..len));
    }

    /// Queue the IP packet at `at` in `buf` for the stack (no copy; the buffer is
    /// recycled once the stack has consumed the packet).
    pub fn push_in(&mut self, buf: Vec<u8>, at: Range<usize>) {
        self.dev.rx.push_back((buf, at));
    }

    /// Process the IP packet `ip` now, where it lies (no copy of the packet: smoltcp copies
    /// a segment's payload into its flow's buffer). Packets queued before it are processed
    /// first, so the stack sees them in order; what it sends waits in the transmit queue
    /// ([`Stack::take_tx`]) and timers wait for [`Stack::poll`].
    pub fn ingest(&mut self, ip: &[u8], now: Instant) {
        use smoltcp::iface::PollIngressSingleResult;
        while !self.dev.rx.is_empty() {
            if let PollIngressSingleResult::None =
                self.iface
                    .poll_ingress_single(now, &mut self.dev, &mut self.sockets)
            {
                break;
            }
        }
        let mut dev = LentDevice {
            pkt: Some(ip),
            q: &mut self.dev,
        };
        self.iface
            .poll_ingress_single(now, &mut dev, &mut self.sockets);
    }

    /// A packet buffer of `len` bytes from the pool (contents unspecified).
    pub fn buffer(&mut self, len: usize) -> Vec<u8> {
        self.reclaim();
        pooled(&mut self.dev.pool, len)
    }

    /// Give a packet buffer back for reuse (dropped when the pool is full).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.dev.pool.len() < POOL_MAX && buf.len() >= POOL_MIN_LEN {
            self.dev.pool.push(buf);
        }
    }

    /// Move the pool's buffers beyond the first `keep` into `into` (for the in-process
    /// link, whose switch end fills them with frames toward the gateway).
    pub fn take_surplus(&mut self, keep: usize, into: &mut Vec<Vec<u8>>) {
        self.reclaim();
        if self.dev.pool.len() > keep {
            into.extend(self.dev.pool.drain(keep..));
        }
    }

    fn reclaim(&mut self) {
        while let Some(b) = self.dev.spent.pop() {
            if self.dev.pool.len() >= POOL_MAX {
                self.dev.spent.clear();
                break;
            }
            self.dev.pool.push(b);
        }
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
        self.reclaim();
        std::mem::take(&mut self.dev.tx)
    }

    /// How long until the stack needs polling again.
    pub fn poll_delay(&mut self, now: Instant) -> Option<SmolDuration> {
        self.iface.poll_delay(now, &self.sockets)
    }

    fn new_socket() -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; SOCKET_BUF]),
            tcp::SocketBuffer::new(vec![0u8; TO_SANDBOX_BUF]),
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
