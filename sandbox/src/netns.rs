//! Network namespaces.
//!
//! Contract:
//! * [`Netns::create`] makes a fresh namespace on a short-lived helper thread (only that
//!   thread ever changes namespace) and keeps it alive by bind-mounting its nsfs file at
//!   the given path; nothing is left behind if it fails.
//! * [`Netns::open`] adopts any path that refers to a network namespace and refuses
//!   anything else with "not a network namespace: PATH".
//! * [`Netns::run`] runs a closure on a fresh scoped thread that has entered the
//!   namespace; the caller's thread (e.g. a tokio worker) is never moved.
//! * [`NetnsGuard`] enters a namespace on the current thread and always returns on drop;
//!   if returning fails the process aborts rather than leave a thread stranded.
//! * [`Netns::destroy`] detaches the bind mount and removes the file; already-gone is Ok.

use crate::{Error, Result};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::{File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The current thread's network namespace file.
const THREAD_SELF_NET: &str = "/proc/thread-self/ns/net";

fn os_err(op: impl Into<String>, source: impl Into<io::Error>) -> Error {
    Error::Os {
        op: op.into(),
        source: source.into(),
    }
}

/// Check that `file` (opened from `path`) is a network namespace.
/// What a non-regular file is, for messages.
fn describe_type(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

fn check_netns(file: &File, path: &Path) -> Result<()> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd's inode; `file`
    // is a valid open fd for the duration of the call.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind == libc::CLONE_NEWNET {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "not a network namespace: {}",
            path.display()
        )))
    }
}

/// An open network namespace (an fd on its nsfs file) and the path it came from.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Create a new network namespace and keep it alive with a bind mount of its
    /// nsfs file at `path` (parent directories are created; `path` must not exist).
    pub fn create(path: &Path) -> Result<Netns> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| os_err(format!("create directory {}", parent.display()), e))?;
            }
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| os_err(format!("create netns mount point {}", path.display()), e))?;

        let made = std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| os_err("unshare(CLONE_NEWNET)", e))?;
                mount(
                    Some(THREAD_SELF_NET),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| os_err(format!("bind-mount netns at {}", path.display()), e))
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Invalid("netns creation thread panicked".into())))
        });
        let opened = made.and_then(|()| Netns::open(path));
        match opened {
            Ok(ns) => Ok(ns),
            Err(e) => {
                let _ = umount2(path, MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Adopt an existing namespace by path (`/proc/PID/ns/net`, `/run/netns/NAME`, a
    /// bind mount). Fails with a clear error if the path is not a network namespace.
    ///
    /// Never blocks on what the path names: its type is checked first (`stat`, which
    /// does not open it), and it is opened with `O_NONBLOCK`, so a FIFO, a socket or a
    /// device is refused at once instead of stalling the caller.
    pub fn open(path: &Path) -> Result<Netns> {
        let meta = std::fs::metadata(path)
            .map_err(|e| os_err(format!("open netns {}", path.display()), e))?;
        if !meta.file_type().is_file() {
            return Err(Error::Invalid(format!(
                "not a network namespace: {} is {}",
                path.display(),
                describe_type(&meta.file_type())
            )));
        }
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| os_err(format!("open netns {}", path.display()), e))?;
        check_netns(&file, path)?;
        Ok(Netns {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The path this namespace was created at or opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open nsfs file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Run `f` on a fresh thread that has entered this namespace; returns its result.
    /// The calling thread's namespace is never touched. A panic in `f` is propagated.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            let joined = s
                .spawn(|| -> Result<T> {
                    let _guard = NetnsGuard::enter(self)?;
                    Ok(f())
                })
                .join();
            match joined {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Unmount and delete the bind mount at `path` (for namespaces tapnet created).
    pub fn destroy(path: &Path) -> Result<()> {
        match umount2(path, MntFlags::MNT_DETACH) {
            // EINVAL: exists but is not a mount point; ENOENT: already gone.
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(os_err(format!("unmount netns {}", path.display()), e)),
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(os_err(format!("remove netns file {}", path.display()), e)),
        }
    }
}

/// RAII guard: while alive, the current thread is in another network namespace;
/// on drop it returns to the namespace it came from (and aborts the process if it
/// cannot, since a thread stranded in the wrong namespace is worse than a crash).
pub struct NetnsGuard {
    /// The namespace to return to.
    original: File,
    /// Namespaces are per thread: the guard must be dropped on the thread that made it.
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for NetnsGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsGuard").finish_non_exhaustive()
    }
}

impl NetnsGuard {
    /// Enter `ns` on the current thread.
    pub fn enter(ns: &Netns) -> Result<NetnsGuard> {
        let original = File::open(THREAD_SELF_NET)
            .map_err(|e| os_err(format!("open {THREAD_SELF_NET}"), e))?;
        setns(ns.file(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| os_err(format!("enter netns {}", ns.path().display()), e))?;
        Ok(NetnsGuard {
            original,
            _not_send: PhantomData,
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.original, CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "tapnet-sandbox: cannot return to the original network namespace: {e}; aborting"
            );
            std::process::abort();
        }
    }
}

/// Move the current (single-threaded, about-to-exec) process into the namespace at
/// `path`. Used by `tapnet exec` right before `exec`.
pub fn enter_for_exec(path: &Path) -> Result<()> {
    let ns = Netns::open(path)?;
    setns(ns.file(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| os_err(format!("enter netns {}", path.display()), e))
}

/// A file bind-mounted over another for the command `tapnet exec` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    /// The file shown (e.g. the sandbox's resolv.conf).
    pub source: PathBuf,
    /// Where it is shown (e.g. `/etc/resolv.conf`).
    pub target: PathBuf,
}

/// Where a bind mount over `target` has to go: the file itself, or, when `target` is
/// a symlink (`/etc/resolv.conf` → `../run/systemd/resolve/stub-resolv.conf`), the
/// file it finally points to (mounts follow symlinks; binding over the link's target
/// is what readers of the link see). A dangling link is an error naming both paths.
pub fn mount_target(target: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(target).map_err(|e| {
            os_err(
                format!(
                    "{} is a symlink whose target does not exist ({}); cannot bind over it",
                    target.display(),
                    std::fs::read_link(target)
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
                e,
            )
        }),
        Ok(_) => Ok(target.to_path_buf()),
        Err(e) => Err(os_err(format!("stat {}", target.display()), e)),
    }
}

/// Like [`enter_for_exec`], but first give the process a private mount namespace
/// (`unshare(CLONE_NEWNS)`, `/` made recursively private so nothing propagates back to
/// the host) in which each [`FileMount`] source is bind-mounted over its target, as
/// `ip netns exec` does with `/etc/netns/NAME/`; then enter the network namespace and
/// mount a sysfs of it over `/sys` (best effort). The process must be single-threaded.
pub fn enter_for_exec_with_files(path: &Path, files: &[FileMount]) -> Result<()> {
    let ns = Netns::open(path)?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| os_err("unshare(CLONE_NEWNS)", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| os_err("make / recursively private", e))?;
    for f in files {
        let target = mount_target(&f.target)?;
        mount(
            Some(&f.source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            os_err(
                format!(
                    "bind-mount {} over {}",
                    f.source.display(),
                    target.display()
                ),
                e,
            )
        })?;
    }
    setns(ns.file(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| os_err(format!("enter netns {}", path.display()), e))?;
    remount_sys();
    Ok(())
}

/// As `ip netns exec` does: replace `/sys` (in the private mount namespace) with a
/// sysfs mounted from inside the network namespace, so `/sys/class/net` lists the
/// sandbox's interfaces. Best effort: where sysfs cannot be mounted (no privilege
/// over the namespace) the old `/sys` stays.
fn remount_sys() {
    let fresh = mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    );
    if fresh.is_ok() {
        // The new sysfs is stacked over the old one; that is all readers see.
        return;
    }
    if umount2("/sys", MntFlags::MNT_DETACH).is_ok()
        && mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .is_err()
    {
        tracing::debug!("cannot mount sysfs for the sandbox; /sys is gone in this command");
    }
}

#[cfg(test)]
mod file_mount_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mount_target_follows_symlinks() {
        let dir = std::env::temp_dir().join(format!("tapnet-mt-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let real = dir.join("run/stub.conf");
        std::fs::write(&real, "x").unwrap();
        let link = dir.join("resolv.conf");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("run/stub.conf", &link).unwrap();
        assert_eq!(
            mount_target(&link).unwrap(),
            std::fs::canonicalize(&real).unwrap()
        );
        assert_eq!(mount_target(&real).unwrap(), real);
        std::fs::remove_file(&real).unwrap();
        let e = mount_target(&link).unwrap_err().to_string();
        assert!(e.contains("symlink whose target does not exist"), "{e}");
        assert!(mount_target(&dir.join("nope")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
