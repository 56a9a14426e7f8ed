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

    /// Clear persistence and close: the device disappears from its namespace.
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
