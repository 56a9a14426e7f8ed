//! Scheduling of tapnet's own threads.
//!
//! Contract:
//! * [`set_thread_nice`] sets the nice value of the *calling thread* only (Linux keeps
//!   one per thread; `setpriority(PRIO_PROCESS, gettid())`), so a datapath worker can
//!   run at a weight of its own while the daemon's API threads keep theirs. A value
//!   outside −20..=19 is refused (`InvalidInput`); lowering it below the current value
//!   without `CAP_SYS_NICE` (or `RLIMIT_NICE`) fails with the kernel's `EACCES`/`EPERM`.
//! * [`thread_nice`] reads the calling thread's nice value back.

use std::io;

/// Valid nice values.
pub const NICE_RANGE: std::ops::RangeInclusive<i32> = -20..=19;

/// Set the calling thread's nice value to `nice`.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    if !NICE_RANGE.contains(&nice) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("nice {nice} is outside -20..=19"),
        ));
    }
    let who = this_thread()?;
    // SAFETY: plain system call on integers; no memory is passed.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's nice value.
pub fn thread_nice() -> io::Result<i32> {
    let who = this_thread()?;
    // getpriority may return -1 legitimately: errno tells an error from nice -1.
    nix::errno::Errno::clear();
    // SAFETY: plain system call on integers; no memory is passed.
    let r = unsafe { libc::getpriority(libc::PRIO_PROCESS, who) };
    if r == -1 && nix::errno::Errno::last_raw() != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// The calling thread's id, as `setpriority`/`getpriority` take it with `PRIO_PROCESS`.
fn this_thread() -> io::Result<libc::id_t> {
    let tid = nix::unistd::gettid().as_raw();
    libc::id_t::try_from(tid).map_err(|_| io::Error::other("negative thread id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_s_nice_is_its_own() {
        let main_before = thread_nice().expect("read nice");
        let got = std::thread::spawn(|| {
            set_thread_nice(7).expect("raise nice");
            thread_nice().expect("read nice")
        })
        .join()
        .expect("thread");
        assert_eq!(got, 7);
        assert_eq!(
            thread_nice().expect("read nice"),
            main_before,
            "main thread untouched"
        );
    }

    #[test]
    fn out_of_range_is_refused() {
        for bad in [-21, 20, 100] {
            let e = set_thread_nice(bad).expect_err("out of range");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}: {e}");
        }
    }
}
