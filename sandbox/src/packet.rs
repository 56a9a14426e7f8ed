//! AF_PACKET uplink sockets: a userspace switch port on a host interface.
//!
//! Contract: [`PacketSocket::open`] opens a `SOCK_RAW` packet socket on the named
//! interface of the calling thread's namespace (`ETH_P_ALL`, bound to its ifindex),
//! non-blocking, with
//!
//! * `PACKET_VNET_HDR`: every frame read or written carries a 10-byte virtio-net header
//!   in front of the Ethernet frame (the layout of a tap with `IFF_VNET_HDR`, see
//!   [`tapnet_wire::vnet`]), so GSO super-frames and partial checksums cross unchanged:
//!   the kernel segments (or hands to the device's TSO) what is written, and reads may
//!   return GRO'd/GSO frames up to 64 KiB;
//! * `TPACKET_V2` rx and tx **ring buffers** (`PACKET_RX_RING`/`PACKET_TX_RING`, one
//!   `mmap`): a read copies the next `TP_STATUS_USER` frame out of the rx ring and hands
//!   the slot back; a write copies into the next free tx slot and marks it
//!   `TP_STATUS_SEND_REQUEST`; [`PacketSocket::flush`] (a zero-length `sendto`) makes
//!   the kernel send every requested slot. V2 rather than V3: V3's rx blocks are
//!   retired by a timer (latency for a lone frame) and its tx ring is V2's anyway; V2
//!   keeps one frame per slot, which maps 1:1 onto the switch's batches;
//! * promiscuous membership (`PACKET_ADD_MEMBERSHIP` `PACKET_MR_PROMISC`), so frames for
//!   every MAC behind the switch arrive; dropped with the socket;
//! * `PACKET_IGNORE_OUTGOING`, so what this (or any) socket sends on the interface is not
//!   read back (and `PACKET_OUTGOING` frames are skipped should the kernel lack it);
//! * a classic BPF filter ([`mac_filter`], replaced by [`PacketSocket::set_macs`]) that
//!   keeps, in the kernel, only frames to a group address (broadcast, multicast) or to
//!   one of the given MACs, so other hosts' unicast on a promiscuous parent never costs
//!   a ring slot or a copy. Until the first `set_macs` only group frames pass.
//!
//! Reads drop and count ([`PacketStats`]) frames the port cannot forward: truncated
//! (longer than a ring slot), VLAN-tagged (the uplink is untagged), with a vnet header
//! the kernel could not fill. A write that the kernel rejects (`TP_STATUS_WRONG_FORMAT`)
//! is counted as `tx_malformed` and its slot freed. A full tx ring is `WouldBlock`.
//!
//! Dropping the socket unmaps the rings and closes the fd (membership ends with it).

use crate::{Error, Result};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use tapnet_wire::vnet::VNET_HDR_LEN;

/// Bytes of one ring slot: a 64 KiB GSO frame, its vnet header and the tpacket header
/// with its `sockaddr_ll` fit (128 KiB: a power of two, so a slot is one block).
pub const SLOT_SIZE: usize = 128 << 10;
/// Slots of the rx ring (16 MiB).
pub const RX_SLOTS: usize = 128;
/// Slots of the tx ring (8 MiB).
pub const TX_SLOTS: usize = 64;

/// Offset of a V2 frame's data in a tx slot: the tpacket2 header, aligned (the kernel
/// reads `tp_hdrlen - sizeof(sockaddr_ll)` past the slot start).
const TX_DATA_OFFSET: usize = libc::TPACKET2_HDRLEN - std::mem::size_of::<libc::sockaddr_ll>();

/// The longest frame (vnet header + Ethernet) a write takes.
pub const MAX_TX_FRAME: usize = SLOT_SIZE - TX_DATA_OFFSET;

// A 64 KiB GSO frame with its Ethernet and vnet headers fits one tx slot; slots are
// whole pages and the data offset keeps the tpacket alignment.
const _: () = {
    assert!(MAX_TX_FRAME >= VNET_HDR_LEN + 14 + 65_535);
    assert!(TX_DATA_OFFSET.is_multiple_of(libc::TPACKET_ALIGNMENT));
    assert!(SLOT_SIZE.is_multiple_of(4096));
};

/// Most MACs [`mac_filter`] takes (5 instructions each within the kernel's 4096); with
/// more, the filter keeps every frame (the caller filters).
pub const MAX_FILTER_MACS: usize = 800;

/// What a filter returns for a frame it keeps: all of it.
const BPF_ACCEPT: u32 = u32::MAX;

fn bpf(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: u16::try_from(code).unwrap_or(0),
        jt,
        jf,
        k,
    }
}

/// The classic BPF program that keeps frames whose destination MAC is a group address
/// or one of `macs` (any frame when there are more than [`MAX_FILTER_MACS`]). Per MAC:
/// `ld [2]; jeq low32; ldh [0]; jeq high16; ret accept` — every jump is local, so the
/// program has no 255-instruction reach limit.
pub fn mac_filter(macs: &[[u8; 6]]) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_B, BPF_H, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    if macs.len() > MAX_FILTER_MACS {
        return vec![bpf(BPF_RET | BPF_K, 0, 0, BPF_ACCEPT)];
    }
    let mut p = vec![
        bpf(BPF_LD | BPF_B | BPF_ABS, 0, 0, 0),
        bpf(BPF_JMP | BPF_JSET | BPF_K, 0, 1, 1),
        bpf(BPF_RET | BPF_K, 0, 0, BPF_ACCEPT),
    ];
    for m in macs {
        let low = u32::from_be_bytes([m[2], m[3], m[4], m[5]]);
        let high = u32::from(u16::from_be_bytes([m[0], m[1]]));
        p.extend([
            bpf(BPF_LD | BPF_W | BPF_ABS, 0, 0, 2),
            bpf(BPF_JMP | BPF_JEQ | BPF_K, 0, 3, low),
            bpf(BPF_LD | BPF_H | BPF_ABS, 0, 0, 0),
            bpf(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, high),
            bpf(BPF_RET | BPF_K, 0, 0, BPF_ACCEPT),
        ]);
    }
    p.push(bpf(BPF_RET | BPF_K, 0, 0, 0));
    p
}

/// Counters of a [`PacketSocket`] (single writer: the thread using the socket).
#[derive(Debug, Default)]
pub struct PacketStats {
    /// Frames read and returned.
    pub rx_frames: AtomicU64,
    /// Frames written into the tx ring.
    pub tx_frames: AtomicU64,
    /// Frames dropped: longer than a ring slot.
    pub rx_truncated: AtomicU64,
    /// Frames dropped: VLAN-tagged.
    pub rx_vlan: AtomicU64,
    /// Frames dropped: malformed (no room for the vnet header, offsets out of the slot).
    pub rx_malformed: AtomicU64,
    /// Frames skipped: our own outgoing ones (kernels without `PACKET_IGNORE_OUTGOING`).
    pub rx_outgoing: AtomicU64,
    /// Frames the kernel refused to send (`TP_STATUS_WRONG_FORMAT`).
    pub tx_malformed: AtomicU64,
    /// Writes refused: the tx ring was full.
    pub tx_ring_full: AtomicU64,
    /// Writes refused: longer than a ring slot.
    pub tx_too_long: AtomicU64,
}

/// A snapshot of [`PacketStats`] plus the kernel's ring drop count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacketStatsSnapshot {
    /// By name, in a fixed order.
    pub counters: Vec<(&'static str, u64)>,
}

/// A packet socket with mapped rx and tx rings (see the module doc).
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    name: String,
    ifindex: u32,
    map: *mut u8,
    map_len: usize,
    rx_head: usize,
    tx_head: usize,
    /// Slots marked `SEND_REQUEST` since the last flush.
    tx_pending: usize,
    /// Kernel ring drops (`PACKET_STATISTICS` resets on read: accumulated here).
    kernel_drops: u64,
    stats: PacketStats,
}

// SAFETY: the mapping is owned by this value alone (nothing else holds `map`), so
// moving it to another thread moves the only access to it; the kernel's side of the
// ring is synchronised through the slots' status words (atomics below).
unsafe impl Send for PacketSocket {}

fn os(op: impl Into<String>) -> Error {
    Error::Os {
        op: op.into(),
        source: io::Error::last_os_error(),
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, val: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `val` points to a live `T` of `len` bytes for the duration of the call;
    // the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (val as *const T).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl PacketSocket {
    /// Open the uplink socket on interface `name` (see the module doc). The interface
    /// must exist in the calling thread's namespace.
    pub fn open(name: &str) -> Result<PacketSocket> {
        let cname = std::ffi::CString::new(name)
            .map_err(|_| Error::Invalid(format!("interface name {name:?} has a NUL byte")))?;
        // SAFETY: `cname` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(os(format!("find interface {name}")));
        }
        // Protocol 0: nothing is received until bind names ETH_P_ALL, after the rings.
        // SAFETY: plain socket(2) call; the fd is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(os("socket(AF_PACKET, SOCK_RAW)"));
        }
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let opt = |op: &str, r: io::Result<()>| {
            r.map_err(|source| Error::Os {
                op: format!("{op} on the packet socket of {name}"),
                source,
            })
        };
        let one: libc::c_int = 1;
        opt(
            "PACKET_VERSION TPACKET_V2",
            setsockopt(
                &fd,
                libc::SOL_PACKET,
                libc::PACKET_VERSION,
                &(libc::tpacket_versions::TPACKET_V2 as libc::c_int),
            ),
        )?;
        opt(
            "PACKET_VNET_HDR",
            setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &one),
        )?;
        if let Err(e) = setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one) {
            tracing::debug!(error = %e, "PACKET_IGNORE_OUTGOING refused; outgoing frames are skipped on read");
        }
        let slots = |n: usize| -> Result<libc::tpacket_req> {
            let c = |v: usize| {
                libc::c_uint::try_from(v)
                    .map_err(|_| Error::Invalid(format!("ring size {v} too large")))
            };
            Ok(libc::tpacket_req {
                tp_block_size: c(SLOT_SIZE)?,
                tp_block_nr: c(n)?,
                tp_frame_size: c(SLOT_SIZE)?,
                tp_frame_nr: c(n)?,
            })
        };
        opt(
            "PACKET_RX_RING",
            setsockopt(
                &fd,
                libc::SOL_PACKET,
                libc::PACKET_RX_RING,
                &slots(RX_SLOTS)?,
            ),
        )?;
        opt(
            "PACKET_TX_RING",
            setsockopt(
                &fd,
                libc::SOL_PACKET,
                libc::PACKET_TX_RING,
                &slots(TX_SLOTS)?,
            ),
        )?;
        let map_len = SLOT_SIZE * (RX_SLOTS + TX_SLOTS);
        // SAFETY: maps the socket's rings (rx then tx, as the kernel lays them out);
        // the result is checked against MAP_FAILED and owned by the returned value,
        // which unmaps it on drop.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(os(format!("mmap the packet rings of {name}")));
        }
        let sock = PacketSocket {
            fd,
            name: name.to_string(),
            ifindex,
            map: map.cast::<u8>(),
            map_len,
            rx_head: 0,
            tx_head: 0,
            tx_pending: 0,
            kernel_drops: 0,
            stats: PacketStats::default(),
        };
        let ifindex_c = libc::c_int::try_from(ifindex)
            .map_err(|_| Error::Invalid(format!("ifindex {ifindex} of {name}")))?;
        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex_c,
            mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        opt(
            "PACKET_ADD_MEMBERSHIP PACKET_MR_PROMISC",
            setsockopt(
                &sock.fd,
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                &mreq,
            ),
        )?;
        sock.set_macs(&[])?;
        // SAFETY: an all-zero sockaddr_ll is a valid value (then filled in below).
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex_c;
        // SAFETY: `sll` is a live sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os(format!("bind the packet socket to {name}")));
        }
        Ok(sock)
    }

    /// Keep only group-addressed frames and frames to `macs` (see [`mac_filter`]),
    /// replacing the previous filter.
    pub fn set_macs(&self, macs: &[[u8; 6]]) -> Result<()> {
        let mut prog = mac_filter(macs);
        let fprog = libc::sock_fprog {
            len: libc::c_ushort::try_from(prog.len())
                .map_err(|_| Error::Invalid(format!("BPF program of {} insns", prog.len())))?,
            filter: prog.as_mut_ptr(),
        };
        // SO_ATTACH_FILTER copies the program: `prog` only has to live through the call.
        setsockopt(&self.fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog).map_err(|source| {
            Error::Os {
                op: format!("SO_ATTACH_FILTER on the packet socket of {}", self.name),
                source,
            }
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Start of slot `i` of the rx (`tx` false) or tx ring.
    fn slot(&self, tx: bool, i: usize) -> *mut u8 {
        let base = if tx { RX_SLOTS * SLOT_SIZE } else { 0 };
        // `base + i * SLOT_SIZE` < `map_len` for `i` < the ring's slots (callers use
        // `head % slots`); wrapping_add keeps this free of `unsafe`.
        self.map.wrapping_add(base + i * SLOT_SIZE)
    }

    /// The status word of a slot.
    fn status(&self, slot: *mut u8) -> &AtomicU32 {
        // SAFETY: `slot` is the start of a slot inside the live mapping (see `slot`),
        // 16-byte aligned (SLOT_SIZE and the page-aligned base), and its first 4 bytes
        // are `tp_status`, which the kernel and we access atomically (the kernel with
        // barriers around plain stores, as the packet_mmap documentation prescribes).
        unsafe { &*slot.cast::<AtomicU32>() }
    }

    /// Read one frame (vnet header + Ethernet) into `buf`; `WouldBlock` when the ring
    /// has none. Frames that cannot be forwarded are dropped and counted (see the
    /// module doc); a `buf` too short for a frame drops it as truncated.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let slot = self.slot(false, self.rx_head);
            let status = self.status(slot).load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // SAFETY: the slot is ours (TP_STATUS_USER) until we store TP_STATUS_KERNEL;
            // its header is a tpacket2_hdr at the slot start (aligned, in the mapping).
            let hdr = unsafe { std::ptr::read(slot.cast::<libc::tpacket2_hdr>()) };
            let got = self.take_rx(slot, &hdr, status, buf);
            self.status(slot)
                .store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.rx_head = (self.rx_head + 1) % RX_SLOTS;
            if let Some(n) = got {
                self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
                return Ok(n);
            }
        }
    }

    /// Copy the frame of an rx slot into `buf`, or count why not.
    fn take_rx(
        &self,
        slot: *mut u8,
        hdr: &libc::tpacket2_hdr,
        status: u32,
        buf: &mut [u8],
    ) -> Option<usize> {
        let count = |c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
            None
        };
        // The sockaddr_ll follows the aligned header: skip our own outgoing frames.
        let sll_at = TX_DATA_OFFSET;
        // SAFETY: the sockaddr_ll lies inside the slot (offset 32, 20 bytes); read
        // unaligned-safe by value.
        let sll = unsafe { std::ptr::read_unaligned(slot.add(sll_at).cast::<libc::sockaddr_ll>()) };
        if sll.sll_pkttype == libc::PACKET_OUTGOING {
            return count(&self.stats.rx_outgoing);
        }
        if status & libc::TP_STATUS_VLAN_VALID != 0 && hdr.tp_vlan_tci != 0 {
            return count(&self.stats.rx_vlan);
        }
        let (mac, snap, len) = (
            usize::from(hdr.tp_mac),
            hdr.tp_snaplen as usize,
            hdr.tp_len as usize,
        );
        if snap < len {
            return count(&self.stats.rx_truncated);
        }
        let Some(start) = mac.checked_sub(VNET_HDR_LEN) else {
            return count(&self.stats.rx_malformed);
        };
        let total = VNET_HDR_LEN + snap;
        if start < sll_at + std::mem::size_of::<libc::sockaddr_ll>()
            || mac + snap > SLOT_SIZE
            || snap < 14
        {
            return count(&self.stats.rx_malformed);
        }
        let Some(dst) = buf.get_mut(..total) else {
            return count(&self.stats.rx_truncated);
        };
        // SAFETY: `start..start + total` lies inside the slot (checked above), which is
        // ours until its status is handed back; `dst` is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(slot.add(start), dst.as_mut_ptr(), total) };
        Some(total)
    }

    /// Queue one frame (vnet header + Ethernet) in the tx ring; sent at the next
    /// [`PacketSocket::flush`] (or when the ring is full). `WouldBlock` when the ring is
    /// full even after a flush.
    pub fn queue(&mut self, frame: &[u8]) -> io::Result<usize> {
        if frame.len() > MAX_TX_FRAME || frame.len() < VNET_HDR_LEN {
            self.stats.tx_too_long.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame of {} bytes does not fit a tx slot", frame.len()),
            ));
        }
        let mut slot = self.slot(true, self.tx_head);
        let mut st = self.reclaim(slot);
        if st != libc::TP_STATUS_AVAILABLE {
            self.flush()?;
            slot = self.slot(true, self.tx_head);
            st = self.reclaim(slot);
            if st != libc::TP_STATUS_AVAILABLE {
                self.stats.tx_ring_full.fetch_add(1, Ordering::Relaxed);
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        // SAFETY: the slot is AVAILABLE, so the kernel does not touch it until we store
        // SEND_REQUEST; `TX_DATA_OFFSET + frame.len()` ≤ SLOT_SIZE (checked above); the
        // header fields written are inside the slot's tpacket2_hdr.
        unsafe {
            std::ptr::copy_nonoverlapping(frame.as_ptr(), slot.add(TX_DATA_OFFSET), frame.len());
            let h = slot.cast::<libc::tpacket2_hdr>();
            std::ptr::addr_of_mut!((*h).tp_len).write(len);
            std::ptr::addr_of_mut!((*h).tp_snaplen).write(len);
        }
        self.status(slot)
            .store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.tx_head = (self.tx_head + 1) % TX_SLOTS;
        self.tx_pending += 1;
        self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
        Ok(frame.len())
    }

    /// A tx slot's status, with a `WRONG_FORMAT` one counted and freed.
    fn reclaim(&self, slot: *mut u8) -> u32 {
        let st = self.status(slot).load(Ordering::Acquire);
        if st & libc::TP_STATUS_WRONG_FORMAT != 0 {
            self.stats.tx_malformed.fetch_add(1, Ordering::Relaxed);
            self.status(slot)
                .store(libc::TP_STATUS_AVAILABLE, Ordering::Release);
            return libc::TP_STATUS_AVAILABLE;
        }
        st
    }

    /// Have the kernel send every queued frame (a zero-length `sendto`, not waiting).
    /// A frame the kernel refuses stops the send there: it is counted, its slot freed
    /// and the rest sent.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.tx_pending == 0 {
            return Ok(());
        }
        for _ in 0..=TX_SLOTS {
            // SAFETY: a zero-length send on our fd with no address: the kernel walks the
            // tx ring.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc >= 0 {
                self.tx_pending = 0;
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(()),
                _ => {}
            }
            // A refused frame is left WRONG_FORMAT: free it and go on with the others.
            let mut freed = false;
            for i in 0..TX_SLOTS {
                let slot = self.slot(true, i);
                if self.status(slot).load(Ordering::Acquire) & libc::TP_STATUS_WRONG_FORMAT != 0 {
                    self.reclaim(slot);
                    freed = true;
                }
            }
            if !freed {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Counters, with the kernel's ring drops (`PACKET_STATISTICS`) accumulated.
    pub fn stats(&mut self) -> PacketStatsSnapshot {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` is a live tpacket_stats and `len` its size; the kernel writes at
        // most `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast::<libc::c_void>(),
                &mut len,
            )
        };
        if rc == 0 {
            self.kernel_drops += u64::from(st.tp_drops);
        }
        let s = &self.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PacketStatsSnapshot {
            counters: vec![
                ("rx_frames", g(&s.rx_frames)),
                ("tx_frames", g(&s.tx_frames)),
                ("rx_ring_drops", self.kernel_drops),
                ("rx_truncated", g(&s.rx_truncated)),
                ("rx_vlan", g(&s.rx_vlan)),
                ("rx_malformed", g(&s.rx_malformed)),
                ("rx_outgoing", g(&s.rx_outgoing)),
                ("tx_malformed", g(&s.tx_malformed)),
                ("tx_ring_full", g(&s.tx_ring_full)),
                ("tx_too_long", g(&s.tx_too_long)),
            ],
        }
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: `map`/`map_len` are the mapping made in `open`, unmapped only here;
        // no reference into it outlives `self`.
        unsafe {
            libc::munmap(self.map.cast::<libc::c_void>(), self.map_len);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mac_filter_shape() {
        let a = [0x02, 0x42, 0xc0, 0xa8, 0x32, 0x02];
        let p = mac_filter(&[a]);
        assert_eq!(p.len(), 3 + 5 + 1);
        assert_eq!(p[4].k, 0xc0a8_3202);
        assert_eq!(p[6].k, 0x0242);
        assert_eq!(p.last().unwrap().k, 0);
        assert_eq!(mac_filter(&[]).len(), 4);
        assert_eq!(mac_filter(&vec![a; MAX_FILTER_MACS + 1]).len(), 1);
        assert!(mac_filter(&vec![a; MAX_FILTER_MACS]).len() <= 4096);
    }

    #[test]
    fn a_missing_interface_is_named() {
        let e = PacketSocket::open("nosuchif0").unwrap_err().to_string();
        assert!(e.contains("nosuchif0"), "{e}");
        let e = PacketSocket::open("a\0b").unwrap_err().to_string();
        assert!(e.contains("NUL"), "{e}");
    }
}
