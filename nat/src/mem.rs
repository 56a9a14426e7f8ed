//! Giving flow memory back to the system (glibc's allocator).
//!
//! Contract:
//!
//! * [`tune`] (once, at daemon start, before threads allocate) fixes glibc's mmap
//!   threshold at [`MMAP_THRESHOLD`]. glibc raises the threshold on its own each time an
//!   mmapped block is freed, up to 32 MiB; after that the TCP socket buffers of a flow
//!   ([`crate::tcp::SOCKET_BUF`], [`crate::tcp::TO_SANDBOX_BUF`]) come from the gateway
//!   thread's arena, where `calloc` zeroes (touches) all of them and a freed block in the middle of a heap is
//!   never given back: waves of short connections left the RSS at its high-water mark.
//!   With the threshold fixed, each such buffer is its own mapping: untouched pages cost
//!   nothing, and `free` unmaps it.
//! * [`trim`] asks glibc to return the free pages of every arena (`malloc_trim(0)`): the
//!   gateway calls it when its last flow has ended after a busy period.
//! * On other C libraries both are no-ops.

/// Allocations at least this big get their own mapping (glibc's initial default).
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Fix glibc's mmap threshold (see the module docs). True if glibc accepted it.
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let Ok(t) = libc::c_int::try_from(MMAP_THRESHOLD) else {
            return false;
        };
        // SAFETY: mallopt only changes allocator parameters; any value is accepted or
        // refused (returns 0), no memory is touched.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, t) } == 1;
        ok
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Return free heap pages to the system (glibc `malloc_trim(0)`).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only releases memory the allocator holds free; it is
        // thread-safe (takes each arena's lock).
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
