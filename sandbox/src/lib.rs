//! tapnet-sandbox: every OS call tapnet makes to plumb a network.
//!
//! * [`netns`]: create a network namespace kept alive by a bind mount, adopt one by
//!   path, enter one with an RAII guard that always returns, run a closure inside one.
//! * [`tap`]: tap devices (`IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`, offloads, persistent)
//!   created and configured inside a namespace.
//! * [`iface`]: the sandbox layer's OS half: move a device into a sandbox, rename it,
//!   set MAC/MTU/addresses/routes, and undo all of it.
//! * [`netlink`]: the small rtnetlink client (links, addresses, routes) used by `tap`
//!   and `iface`.
//! * [`packet`]: AF_PACKET sockets with rx/tx rings and vnet headers (the macvlan
//!   driver's uplink port on a host interface).
//! * [`sched`]: the nice value of one thread (`tapnetd --worker-nice`).
//! * [`uring`]: tap switch ports: batched I/O on io_uring, or one `read`/`write` per
//!   frame, chosen at run time (`tapnetd --tap-io`).
//!
//! This is the only crate with `unsafe`; every block carries a `// SAFETY:` note.

pub mod iface;
pub mod netlink;
pub mod netns;
pub mod packet;
pub mod sched;
pub mod tap;
pub mod udp_merge;
pub mod uring;

use std::io;

/// Errors of the OS plumbing. Each names the operation and keeps the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{op}: {source}")]
    Os {
        /// What was being done, e.g. "bind-mount netns at /run/tapnet/netns/abc".
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A netlink request was refused by the kernel or its reply was unusable.
    #[error("netlink {op}: {message}")]
    Netlink {
        /// The request, e.g. "add address 10.0.0.2/24 to eth0".
        op: String,
        /// The kernel's answer.
        message: String,
    },
    /// The caller asked for something invalid (bad name, ...).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
