//! Tap devices.
//!
//! Contract:
//! * A [`Tap`] is a non-blocking fd on a persistent `IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`
//!   device living in a sandbox's namespace. Every frame read or written starts with a
//!   10-byte virtio-net header; offloads CSUM|TSO4|TSO6 (and USO4|USO6 where the kernel
//!   has them) are on, so reads may return GSO super-frames of up to 64 KiB.
//! * [`Tap::create`] does all its OS work on a thread inside the namespace (via
//!   [`Netns::run`]); the fd it returns works from any thread afterwards. It refuses a
//!   taken name before touching anything, and on any later failure it clears
//!   persistence and closes the fd, so the device vanishes (nothing half-made remains).
//!   Its configuration (MAC, MTU, addresses, routes, up) is [`iface::configure`], the
//!   same code the sandbox layer runs for every driver's interface.
//! * [`Tap::create_down`] makes the bare device (down, unconfigured) for a driver that
//!   leaves naming and configuration to the sandbox layer ([`iface::apply`]).
//! * Dropping a [`Tap`] only closes the fd: the device persists (daemon restart, then
//!   [`Tap::reopen`]). [`Tap::destroy`] removes it.
//! * Multi-queue: [`create_down_queues`] makes the bare device with `IFF_MULTI_QUEUE`
//!   and one [`Tap`] per queue (the same all-or-nothing contract as
//!   [`Tap::create_down`]; one queue asked for gives exactly [`Tap::create_down`]'s
//!   single-queue device). Each queue is an independent fd: a frame written to any
//!   queue enters the namespace; a frame the namespace sends is read from exactly one
//!   queue, which the kernel picks per flow (see [`create_down_queues`]). The vnet
//!   header size and offloads are device-wide in the kernel; every queue sets them
//!   anyway, so each fd is right on its own. [`reopen_queues`] re-attaches after a
//!   restart, whichever kind the device is. The device goes away only once
//!   persistence is cleared *and* every queue's fd is closed: [`destroy_queues`], or
//!   [`Tap::destroy`] on one queue and dropping the others.

use crate::iface::{self, Source, Spec};
use crate::netlink::Handle;
use crate::netns::Netns;
use crate::{Error, Result};
use std::fs::OpenOptions;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size of the virtio-net header tapnet uses (`struct virtio_net_hdr`, no `num_buffers`).
pub use tapnet_wire::vnet::VNET_HDR_LEN;

/// Path of the tun/tap clone device.
const TUN_DEVICE: &str = "/dev/net/tun";

pub use crate::iface::{link_names, next_free_name, validate_ifname};

/// How to create and configure a tap inside a sandbox.
#[derive(Clone, Debug, Default)]
pub struct TapConfig {
    /// Interface name inside the namespace (`eth0`, `eth1`, ...).
    pub name: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// MTU (default 1500).
    pub mtu: u32,
    /// `txqueuelen` (tapnet uses 10000 so a TCP window never overflows the ring).
    pub txqueuelen: u32,
    /// IPv4 address and prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// Default route via this gateway (only added if the namespace has no default route yet).
    pub gateway_v4: Option<Ipv4Addr>,
    /// IPv6 address and prefix length (added with `nodad`: usable at once).
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// IPv6 default route via this gateway (only added if the namespace has no IPv6
    /// default route yet).
    pub gateway_v6: Option<Ipv6Addr>,
}

/// An open tap device (daemon side). Non-blocking. Frames read/written carry a
/// 10-byte virtio-net header. Offloads CSUM|TSO4|TSO6 are on, so reads may return
/// GSO super-frames of up to 64 KiB. The device is persistent: it outlives this fd.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    ifindex: u32,
    offloads: libc::c_uint,
}

fn os_err(op: impl Into<String>, source: io::Error) -> Error {
    Error::Os {
        op: op.into(),
        source,
    }
}

/// `TUNSETIFF` with `flags` for `name` on `fd`.
fn tun_set_iff(fd: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // The name was validated shorter than IFNAMSIZ, so it stays NUL-terminated.
    // The flags are a c_short in the kernel ABI; every IFF_* tun flag fits.
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` through the pointer, which
    // points to a live, properly sized `ifreq`; `fd` is open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `TUNSETPERSIST` on or off.
fn tun_set_persist(fd: &OwnedFd, on: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value; `fd` is an open tun fd.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(on)) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Set the vnet header size and the offloads. Returns the offload flags in effect.
fn tun_setup_offloads(fd: &OwnedFd, name: &str) -> Result<libc::c_uint> {
    let hdr_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an `int` through the pointer, which points to a
    // live local; `fd` is an attached tun fd.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
    if rc < 0 {
        return Err(os_err(
            format!("TUNSETVNETHDRSZ {VNET_HDR_LEN} on {name}"),
            io::Error::last_os_error(),
        ));
    }
    let base = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    let with_uso = base | libc::TUN_F_USO4 | libc::TUN_F_USO6;
    for flags in [with_uso, base] {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; `fd` is an attached tun fd.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc == 0 {
            return Ok(flags);
        }
        let err = io::Error::last_os_error();
        // Kernels without USO refuse unknown bits with EINVAL: retry without them.
        if flags == base || err.raw_os_error() != Some(libc::EINVAL) {
            return Err(os_err(format!("TUNSETOFFLOAD on {name}"), err));
        }
    }
    Err(Error::Invalid(format!(
        "TUNSETOFFLOAD on {name}: no offloads accepted"
    )))
}

/// Open `/dev/net/tun` non-blocking and close-on-exec (std adds `O_CLOEXEC`).
fn open_tun() -> Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|e| os_err(format!("open {TUN_DEVICE}"), e))?;
    Ok(OwnedFd::from(file))
}

const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// The most queues a multi-queue tap takes (the kernel's `MAX_TAP_QUEUES`: attaching
/// one more fails with `E2BIG`).
pub const MAX_QUEUES: usize = 256;

/// `TUNGETIFF`: the flags of the device `fd` is attached to.
fn tun_get_flags(fd: &OwnedFd) -> io::Result<libc::c_int> {
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes a `struct ifreq` through the pointer, which points to a
    // live, properly sized `ifreq`; `fd` is open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNGETIFF filled in the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    // The kernel's flags are an unsigned short; keep the bits.
    Ok(libc::c_int::from(flags as u16))
}

/// Refuse a queue count outside `1..=MAX_QUEUES` before anything is touched.
fn check_queues(name: &str, queues: usize) -> Result<()> {
    if (1..=MAX_QUEUES).contains(&queues) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "tap {name}: {queues} queues asked for; a tap has 1 to {MAX_QUEUES}"
        )))
    }
}

/// Attach one more fd to the existing tap `name` with `flags` and set its vnet header
/// size and offloads. Run inside the namespace.
fn attach_queue(name: &str, flags: libc::c_int, what: &str) -> Result<(OwnedFd, libc::c_uint)> {
    let fd = open_tun().map_err(|e| match e {
        Error::Os { op, source } => os_err(format!("{op} ({what} of {name})"), source),
        other => other,
    })?;
    tun_set_iff(&fd, name, flags).map_err(|e| os_err(format!("TUNSETIFF {name} ({what})"), e))?;
    let offloads = tun_setup_offloads(&fd, name)?;
    Ok((fd, offloads))
}

/// Make the bare tap `name` in `ns` (down, unconfigured, like [`Tap::create_down`]) with
/// `queues` queues, and return one [`Tap`] per queue, element `k` being queue `k`.
///
/// * `queues == 1`: exactly [`Tap::create_down`] (a single-queue device, no
///   `IFF_MULTI_QUEUE`), so the default path is unchanged.
/// * `queues` in `2..=`[`MAX_QUEUES`]: an `IFF_MULTI_QUEUE` device; every queue's fd is
///   non-blocking with the same vnet header size and offloads (each reads GSO
///   super-frames with a vnet header). The device's real queue count is the number of
///   attached fds. The kernel picks the queue a frame from the namespace is read on by
///   its flow: a symmetric hash of addresses and ports, mapped onto the attached
///   queues; once a frame of that flow has been *written* to some queue, later frames of
///   the flow (both directions hash alike) are read from that queue (the tun driver's
///   flow table, entries expire after a few seconds idle). Closing one queue's fd
///   renumbers the rest (the kernel moves the last queue into the freed index), and the
///   flows it carried move to the remaining queues.
/// * `0` or more than [`MAX_QUEUES`]: [`Error::Invalid`], nothing created.
///
/// All or nothing: a taken name is refused before anything is touched; any later
/// failure (opening or attaching a queue, its offloads, persistence, the netlink
/// look-up) clears persistence and closes every fd, so the device vanishes.
pub fn create_down_queues(ns: &Netns, name: &str, queues: usize) -> Result<Vec<Tap>> {
    validate_ifname(name)?;
    check_queues(name, queues)?;
    if queues == 1 {
        return Tap::create_down(ns, name).map(|t| vec![t]);
    }
    let mq = TAP_FLAGS | libc::IFF_MULTI_QUEUE;
    ns.run(|| -> Result<Vec<Tap>> {
        let mut nl = Handle::new()?;
        if nl.link_index(name)?.is_some() {
            return Err(Error::Invalid(format!(
                "interface {name} already exists in {}",
                ns.path().display()
            )));
        }
        let first = open_tun()?;
        tun_set_iff(&first, name, mq | libc::IFF_TUN_EXCL).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                Error::Invalid(format!(
                    "interface {name} already exists in {}",
                    ns.path().display()
                ))
            } else {
                os_err(format!("TUNSETIFF {name} (multi-queue)"), e)
            }
        })?;
        // From here on the device exists: every failure goes through the clean-up below.
        let mut fds = vec![first];
        let made = (|| -> Result<(u32, Vec<libc::c_uint>)> {
            let mut offloads = vec![tun_setup_offloads(&fds[0], name)?];
            for k in 1..queues {
                let (fd, off) = attach_queue(name, mq, &format!("queue {k}"))?;
                fds.push(fd);
                offloads.push(off);
            }
            tun_set_persist(&fds[0], true)
                .map_err(|e| os_err(format!("TUNSETPERSIST 1 on {name}"), e))?;
            let index = nl.link_index(name)?.ok_or_else(|| {
                Error::Invalid(format!("tap {name} vanished right after creation"))
            })?;
            Ok((index, offloads))
        })();
        match made {
            Ok((ifindex, offloads)) => Ok(fds
                .into_iter()
                .zip(offloads)
                .map(|(fd, offloads)| Tap {
                    fd,
                    name: name.to_string(),
                    ifindex,
                    offloads,
                })
                .collect()),
            Err(e) => {
                if let Err(pe) = tun_set_persist(&fds[0], false) {
                    tracing::warn!(tap = name, error = %pe, "TUNSETPERSIST 0 during cleanup failed");
                }
                drop(fds);
                Err(e)
            }
        }
    })?
}

/// Re-attach to the existing persistent tap `name` in `ns` after a daemon restart,
/// whether it was made single- or multi-queue. Returns:
///
/// * a multi-queue device: exactly `queues` [`Tap`]s, element `k` being the `k`-th queue
///   attached now (added to any queues some other fd still holds; the kernel numbers
///   all attached queues together);
/// * a single-queue device: exactly one [`Tap`], whatever `queues` says (the caller
///   sees `len() == 1` and runs one worker).
///
/// `queues` outside `1..=`[`MAX_QUEUES`] is [`Error::Invalid`]. The kind is found by
/// trying `TUNSETIFF` without `IFF_MULTI_QUEUE` and, when the kernel answers `EINVAL`
/// (the flag must match the device's), with it; `TUNGETIFF` then confirms the kind.
/// On failure every fd opened here is closed and the device is left as it was
/// (persistent: never removed here). A single-queue device already attached elsewhere
/// is refused (`EBUSY`), as in [`Tap::reopen`] (which only re-attaches single-queue
/// devices: on a multi-queue one it fails with `EINVAL`).
pub fn reopen_queues(ns: &Netns, name: &str, queues: usize) -> Result<Vec<Tap>> {
    validate_ifname(name)?;
    check_queues(name, queues)?;
    ns.run(|| -> Result<Vec<Tap>> {
        let mut nl = Handle::new()?;
        let Some(ifindex) = nl.link_index(name)? else {
            return Err(Error::Invalid(format!(
                "no interface {name} in {}",
                ns.path().display()
            )));
        };
        let first = open_tun()?;
        let mut flags = TAP_FLAGS;
        if let Err(e) = tun_set_iff(&first, name, flags) {
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(os_err(
                    format!(
                        "TUNSETIFF {name} (reattach to existing tap in {})",
                        ns.path().display()
                    ),
                    e,
                ));
            }
            flags |= libc::IFF_MULTI_QUEUE;
            tun_set_iff(&first, name, flags).map_err(|e| {
                os_err(
                    format!(
                        "TUNSETIFF {name} (reattach to existing tap in {}, single- and multi-queue)",
                        ns.path().display()
                    ),
                    e,
                )
            })?;
        }
        let got = tun_get_flags(&first).map_err(|e| os_err(format!("TUNGETIFF {name}"), e))?;
        if got & libc::IFF_MULTI_QUEUE != flags & libc::IFF_MULTI_QUEUE {
            return Err(Error::Invalid(format!(
                "tap {name}: attached with flags {flags:#x} but the device reports {got:#x}"
            )));
        }
        let mut taps = vec![Tap {
            offloads: tun_setup_offloads(&first, name)?,
            fd: first,
            name: name.to_string(),
            ifindex,
        }];
        if flags & libc::IFF_MULTI_QUEUE != 0 {
            for k in 1..queues {
                let (fd, offloads) = attach_queue(name, flags, &format!("reattach queue {k}"))?;
                taps.push(Tap {
                    fd,
                    name: name.to_string(),
                    ifindex,
                    offloads,
                });
            }
        }
        Ok(taps)
    })?
}

/// Remove a tap made by [`create_down_queues`] (or re-opened by [`reopen_queues`]):
/// clear persistence through the first queue and close every queue's fd, so the device
/// disappears (provided no other fd outside `queues` is still attached). An empty
/// vector is refused.
pub fn destroy_queues(queues: Vec<Tap>) -> Result<()> {
    let mut it = queues.into_iter();
    let Some(first) = it.next() else {
        return Err(Error::Invalid("destroy_queues: no queue given".into()));
    };
    // Close the other queues first: the last close of a non-persistent device removes it.
    drop(it);
    first.destroy()
}

/// Everything after `TUNSETIFF` in [`Tap::create`]; run inside the namespace. With a
/// `spec`, the device is configured by [`iface::configure`] (the one implementation of
/// "configure an interface").
fn setup(
    fd: &OwnedFd,
    nl: &mut Handle,
    name: &str,
    spec: Option<&Spec>,
) -> Result<(u32, libc::c_uint)> {
    let offloads = tun_setup_offloads(fd, name)?;
    tun_set_persist(fd, true).map_err(|e| os_err(format!("TUNSETPERSIST 1 on {name}"), e))?;
    let link = nl
        .link(name)?
        .ok_or_else(|| Error::Invalid(format!("tap {name} vanished right after creation")))?;
    if let Some(spec) = spec {
        iface::configure(nl, &link, spec)?;
    }
    Ok((link.index, offloads))
}

impl TapConfig {
    /// The interface configuration this asks for, for [`iface::configure`]: the tap
    /// keeps its name; IPv6 stays on.
    pub fn spec(&self) -> Spec {
        let mut spec = Spec::new(Source::InSandbox {
            name: self.name.clone(),
        });
        spec.mac = Some(self.mac);
        spec.mtu = Some(self.mtu);
        spec.txqueuelen = Some(self.txqueuelen);
        spec.addresses = self
            .ipv4
            .map(|(a, l)| (IpAddr::V4(a), l))
            .into_iter()
            .chain(self.ipv6.map(|(a, l)| (IpAddr::V6(a), l)))
            .collect();
        spec.gateway_v4 = self.gateway_v4;
        spec.gateway_v6 = self.gateway_v6;
        spec
    }
}

impl Tap {
    /// Create a persistent tap named `cfg.name` inside `ns`, set MAC, MTU, txqueuelen,
    /// IPv4/IPv6 addresses, bring `lo` and the tap up, add the default routes. On any failure the
    /// tap is removed again (nothing half-made is left).
    pub fn create(ns: &Netns, cfg: &TapConfig) -> Result<Tap> {
        Tap::create_with(ns, &cfg.name, Some(&cfg.spec()))
    }

    /// Create a persistent tap named `name` inside `ns`, down and unconfigured: a
    /// sandbox layer ([`iface::apply`]) renames and configures it afterwards (the fd
    /// follows the device through a rename). On failure nothing is left.
    pub fn create_down(ns: &Netns, name: &str) -> Result<Tap> {
        Tap::create_with(ns, name, None)
    }

    fn create_with(ns: &Netns, name: &str, spec: Option<&Spec>) -> Result<Tap> {
        validate_ifname(name)?;
        ns.run(|| -> Result<Tap> {
            let mut nl = Handle::new()?;
            if nl.link_index(name)?.is_some() {
                return Err(Error::Invalid(format!(
                    "interface {name} already exists in {}",
                    ns.path().display()
                )));
            }
            let fd = open_tun()?;
            // IFF_TUN_EXCL closes the race with someone creating the name meanwhile.
            tun_set_iff(&fd, name, TAP_FLAGS | libc::IFF_TUN_EXCL).map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    Error::Invalid(format!(
                        "interface {name} already exists in {}",
                        ns.path().display()
                    ))
                } else {
                    os_err(format!("TUNSETIFF {name}"), e)
                }
            })?;
            match setup(&fd, &mut nl, name, spec) {
                Ok((ifindex, offloads)) => Ok(Tap {
                    fd,
                    name: name.to_string(),
                    ifindex,
                    offloads,
                }),
                Err(e) => {
                    if let Err(pe) = tun_set_persist(&fd, false) {
                        tracing::warn!(tap = name, error = %pe, "TUNSETPERSIST 0 during cleanup failed");
                    }
                    drop(fd);
                    Err(e)
                }
            }
        })?
    }

    /// Re-attach to an existing persistent tap named `name` in `ns` (daemon restart).
    /// Single-queue devices only (a multi-queue one answers `EINVAL`: use
    /// [`reopen_queues`], which takes either kind).
    pub fn reopen(ns: &Netns, name: &str) -> Result<Tap> {
        validate_ifname(name)?;
        ns.run(|| -> Result<Tap> {
            let mut nl = Handle::new()?;
            let Some(ifindex) = nl.link_index(name)? else {
                return Err(Error::Invalid(format!(
                    "no interface {name} in {}",
                    ns.path().display()
                )));
            };
            let fd = open_tun()?;
            tun_set_iff(&fd, name, TAP_FLAGS).map_err(|e| {
                os_err(
                    format!(
                        "TUNSETIFF {name} (reattach to existing tap in {})",
                        ns.path().display()
                    ),
                    e,
                )
            })?;
            let offloads = tun_setup_offloads(&fd, name)?;
            Ok(Tap {
                fd,
                name: name.to_string(),
                ifindex,
                offloads,
            })
        })?
    }

    /// The name the device was created or re-opened with (a sandbox layer may have
    /// renamed it since; the fd follows the device).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Interface index inside the namespace.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The `TUN_F_*` offload bits the kernel accepted: always `CSUM|TSO4|TSO6`, plus
    /// `USO4|USO6` on kernels that have UDP segmentation offload for tap (6.2+).
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// Read one frame (vnet header + Ethernet); `WouldBlock` when empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the pointer and length describe `buf`, which is valid for writes of
        // `buf.len()` bytes for the whole call; `fd` is open.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Write one frame (vnet header + Ethernet).
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: the pointer and length describe `frame`, which is valid for reads of
        // `frame.len()` bytes for the whole call; `fd` is open.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Clear persistence and close: the device disappears from its namespace. For a
    /// multi-queue device this is any one queue: persistence is device-wide, and the
    /// device disappears when the last queue's fd closes (so drop the other queues too,
    /// or use [`destroy_queues`]).
    pub fn destroy(self) -> Result<()> {
        tun_set_persist(&self.fd, false)
            .map_err(|e| os_err(format!("TUNSETPERSIST 0 on {}", self.name), e))?;
        drop(self.fd);
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
