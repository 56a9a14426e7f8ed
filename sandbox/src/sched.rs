//! Scheduling of tapnet's own threads.
//!
//! Contract:
//! * [`set_thread_nice`] sets the nice value of the *calling thread* only (Linux keeps
//!   one per thread; `setpriority(PRIO_PROCESS, gettid())`), so a datapath worker can
//!   run at a weight of its own while the daemon's API threads keep theirs. A value
//!   outside −20..=19 is refused (`InvalidInput`); lowering it below the current value
//!   without `CAP_SYS_NICE` (or `RLIMIT_NICE`) fails with the kernel's `EACCES`/`EPERM`.
//! * [`thread_nice`] reads the calling thread's nice value back.
//! * **Automatic nice** ([`AutoNice`], pure: samples and time in, the nice to set out).
//!   A datapath worker that is busy with batches (it ran a quarter of the time, 50 µs or
//!   more each time it ran: not one packet per wake-up) and whose waits for a core are
//!   short (it competes
//!   only with threads that soon block, typically the containers whose traffic it
//!   carries) steps back to `base + 10` so that those threads run first; as soon as its
//!   waits grow long (CPU-bound work shares its scheduling group: at `base + 10` it would
//!   be starved; two windows in a row) or it goes idle (or down to one packet per
//!   wake-up), it returns to `base`. Waits are measured per
//!   scheduling from the kernel's `schedstat` of the thread ([`SchedStat`]), over
//!   windows of [`AutoNiceParams::window_ms`]; thresholds scale with the scheduler's
//!   base slice ([`AutoNiceParams::for_cpus`]); long waits count only when they add up
//!   to a tenth of the window (a worker woken once from idle may wait long once). After
//!   a return for long waits it holds `base` for a while (5 s), doubled on each return
//!   that comes within the current hold of stepping back, so a borderline machine
//!   cannot make it flap. [`auto_nice_tick`] is the worker's side:
//!   it reads `/proc/thread-self/schedstat`, asks the controller and sets the nice;
//!   [`can_restore_nice`] says whether the thread may go back down (it must, or it
//!   would stay at `base + 10`): real root with `CAP_SYS_NICE`, or an `RLIMIT_NICE`
//!   that allows `base`. [`auto_nice_counts`] counts the steps process-wide.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// What the kernel keeps of a thread's scheduling (`/proc/…/schedstat`): nanoseconds
/// on a CPU, nanoseconds waiting runnable for one, and times scheduled in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStat {
    /// Time run (ns).
    pub ran_ns: u64,
    /// Time waited runnable (ns).
    pub waited_ns: u64,
    /// Times scheduled in.
    pub schedules: u64,
}

impl SchedStat {
    /// Parse `schedstat`'s three numbers.
    pub fn parse(text: &str) -> Option<SchedStat> {
        let mut it = text.split_whitespace().map(|w| w.parse::<u64>().ok());
        let s = SchedStat {
            ran_ns: it.next()??,
            waited_ns: it.next()??,
            schedules: it.next()??,
        };
        Some(s)
    }

    /// The calling thread's.
    pub fn this_thread() -> io::Result<SchedStat> {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
        SchedStat::parse(&text).ok_or_else(|| io::Error::other("unreadable schedstat"))
    }

    fn since(self, earlier: SchedStat) -> SchedStat {
        SchedStat {
            ran_ns: self.ran_ns.saturating_sub(earlier.ran_ns),
            waited_ns: self.waited_ns.saturating_sub(earlier.waited_ns),
            schedules: self.schedules.saturating_sub(earlier.schedules),
        }
    }
}

/// The thresholds of [`AutoNice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoNiceParams {
    /// Length of one measuring window.
    pub window_ms: u64,
    /// Step back when the wait per scheduling stays below this (µs)…
    pub yield_below_us: u64,
    /// …for this many windows in a row, busy in each.
    pub yield_windows: u32,
    /// Busy: ran at least this share of the window (per mille).
    pub busy_permille: u64,
    /// Batches: ran at least this long per scheduling on average (µs). A worker that
    /// wakes for one packet at a time (request/response) has nothing to gain from
    /// letting others run first, only latency to lose; at half of this, stepped back,
    /// the window counts as idle.
    pub min_run_us: u64,
    /// Return to `base` when, stepped back, the wait per scheduling exceeds this (µs) and
    /// the waits add up to a tenth of the window or more…
    pub back_above_us: u64,
    /// …for this many windows in a row (one window of long waits happens to a worker
    /// that is not starved, when a bulk sender it competes with runs a whole slice).
    pub back_windows: u32,
    /// Stepped back and idle (not busy, or runs under half of `min_run_us`) this many
    /// windows in a row: return to `base`.
    pub idle_windows: u32,
    /// First hold after a return for long waits (ms); doubles up to `hold_max_ms`.
    pub hold_ms: u64,
    /// Longest hold (ms).
    pub hold_max_ms: u64,
}

impl AutoNiceParams {
    /// Thresholds for a machine with `cpus` CPUs: the scheduler's base slice is
    /// 0.75 ms × (1 + log2(min(cpus, 8))) (EEVDF and CFS alike); a thread that loses the
    /// core to CPU-bound work waits a good part of a slice each time, one that competes
    /// only with threads that block waits a small part (docs/benchmarks.md, rounds 8 and
    /// 10: 21–105 µs against 256–2,543 µs on 2 CPUs, slice 1.5 ms). Step back below a
    /// tenth of the slice, return above a third.
    pub fn for_cpus(cpus: usize) -> AutoNiceParams {
        let factor = 1 + u64::from(cpus.clamp(1, 8).ilog2());
        let slice_us = 750 * factor;
        AutoNiceParams {
            window_ms: 100,
            yield_below_us: slice_us / 10,
            yield_windows: 3,
            busy_permille: 250,
            min_run_us: 50,
            back_above_us: slice_us / 3,
            back_windows: 2,
            idle_windows: 3,
            hold_ms: 5_000,
            hold_max_ms: 80_000,
        }
    }

    /// [`AutoNiceParams::for_cpus`] with overrides from the environment
    /// (`TAPNET_AUTO_NICE_YIELD_BELOW_US`, `TAPNET_AUTO_NICE_BACK_ABOVE_US`,
    /// `TAPNET_AUTO_NICE_HOLD_MS`, `TAPNET_AUTO_NICE_BUSY_PERMILLE`,
    /// `TAPNET_AUTO_NICE_MIN_RUN_US`): tuning and tests.
    pub fn from_env(cpus: usize) -> AutoNiceParams {
        let mut p = AutoNiceParams::for_cpus(cpus);
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        if let Some(v) = var("TAPNET_AUTO_NICE_YIELD_BELOW_US") {
            p.yield_below_us = v;
        }
        if let Some(v) = var("TAPNET_AUTO_NICE_BACK_ABOVE_US") {
            p.back_above_us = v;
        }
        if let Some(v) = var("TAPNET_AUTO_NICE_MIN_RUN_US") {
            p.min_run_us = v;
        }
        if let Some(v) = var("TAPNET_AUTO_NICE_BUSY_PERMILLE") {
            p.busy_permille = v.min(1000);
        }
        if let Some(v) = var("TAPNET_AUTO_NICE_HOLD_MS") {
            p.hold_ms = v;
            p.hold_max_ms = p.hold_max_ms.max(v);
        }
        p
    }
}

/// How far above `base` a worker steps back.
pub const AUTO_NICE_STEP: i32 = 10;

/// The automatic-nice controller of one thread (see the module contract). Pure: the
/// caller samples [`SchedStat`] and passes the time.
#[derive(Debug)]
pub struct AutoNice {
    params: AutoNiceParams,
    base: i32,
    stepped: bool,
    last: Option<(u64, SchedStat)>,
    calm: u32,
    starved: u32,
    idle: u32,
    hold_until: u64,
    hold: u64,
    stepped_at: u64,
}

/// What [`AutoNice::observe`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NiceStep {
    /// Step back to this nice value (`base + 10`).
    Yield(i32),
    /// Return to `base` (this value): the waits grew long.
    BackLongWaits(i32),
    /// Return to `base`: the thread went idle, or down to short runs (no batches).
    BackIdle(i32),
}

impl AutoNice {
    /// A controller for a thread at `base`.
    pub fn new(base: i32, params: AutoNiceParams) -> AutoNice {
        AutoNice {
            params,
            base,
            stepped: false,
            last: None,
            calm: 0,
            starved: 0,
            idle: 0,
            hold_until: 0,
            hold: params.hold_ms,
            stepped_at: 0,
        }
    }

    /// The nice value the controller wants now.
    pub fn nice(&self) -> i32 {
        if self.stepped {
            self.stepped_nice()
        } else {
            self.base
        }
    }

    fn stepped_nice(&self) -> i32 {
        (self.base + AUTO_NICE_STEP).min(*NICE_RANGE.end())
    }

    /// Whether a window has passed since the last sample taken (cheap: call every turn).
    pub fn due(&self, now_ms: u64) -> bool {
        self.last
            .is_none_or(|(t, _)| now_ms.saturating_sub(t) >= self.params.window_ms)
    }

    /// Feed the thread's counters at `now_ms`; a change of nice to make, if any.
    pub fn observe(&mut self, now_ms: u64, stat: SchedStat) -> Option<NiceStep> {
        let (t0, s0) = self.last.replace((now_ms, stat))?;
        let span_ns = now_ms.saturating_sub(t0).saturating_mul(1_000_000);
        if span_ns == 0 {
            return None;
        }
        let d = stat.since(s0);
        let busy =
            d.ran_ns.saturating_mul(1000) >= span_ns.saturating_mul(self.params.busy_permille);
        let wait_us = d.waited_ns / d.schedules.max(1) / 1000;
        let run_us = d.ran_ns / d.schedules.max(1) / 1000;
        // Starved: long waits per scheduling that add up to a tenth of the window at
        // least (one long wait of a worker woken once from idle is not starvation).
        let starved =
            wait_us > self.params.back_above_us && d.waited_ns.saturating_mul(10) >= span_ns;
        if self.stepped {
            self.starved = if starved { self.starved + 1 } else { 0 };
            if self.starved >= self.params.back_windows {
                self.stepped = false;
                self.starved = 0;
                self.calm = 0;
                // A return within the current hold of stepping back: the machine is
                // borderline; hold longer each time. A long step back resets the hold.
                if now_ms.saturating_sub(self.stepped_at) < self.hold {
                    self.hold = (self.hold.saturating_mul(2)).min(self.params.hold_max_ms);
                } else {
                    self.hold = self.params.hold_ms;
                }
                self.hold_until = now_ms.saturating_add(self.hold);
                return Some(NiceStep::BackLongWaits(self.base));
            }
            let light = run_us < self.params.min_run_us / 2;
            self.idle = if busy && !light { 0 } else { self.idle + 1 };
            if self.idle >= self.params.idle_windows {
                self.stepped = false;
                self.idle = 0;
                self.calm = 0;
                return Some(NiceStep::BackIdle(self.base));
            }
            return None;
        }
        if busy
            && d.schedules > 0
            && wait_us < self.params.yield_below_us
            && run_us >= self.params.min_run_us
        {
            self.calm += 1;
        } else {
            self.calm = 0;
        }
        if self.calm >= self.params.yield_windows && now_ms >= self.hold_until {
            self.stepped = true;
            self.calm = 0;
            self.idle = 0;
            self.stepped_at = now_ms;
            return Some(NiceStep::Yield(self.stepped_nice()));
        }
        None
    }
}

static YIELDS: AtomicU64 = AtomicU64::new(0);
static BACKS_LONG: AtomicU64 = AtomicU64::new(0);
static BACKS_IDLE: AtomicU64 = AtomicU64::new(0);

/// Steps of every [`auto_nice_tick`] of the process: (stepped back, returned for long
/// waits, returned idle).
pub fn auto_nice_counts() -> (u64, u64, u64) {
    (
        YIELDS.load(Ordering::Relaxed),
        BACKS_LONG.load(Ordering::Relaxed),
        BACKS_IDLE.load(Ordering::Relaxed),
    )
}

/// Whether the calling thread may set its nice back to `base` after raising it: its
/// `RLIMIT_NICE` allows `base` (the lowest nice it allows is 20 − the limit), or it has
/// `CAP_SYS_NICE` in the initial user namespace (a user namespace's root does not).
pub fn can_restore_nice(base: i32) -> bool {
    let lim = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE)
        .map(|(soft, _)| soft)
        .unwrap_or(0);
    let lowest = 20_i64 - i64::try_from(lim).unwrap_or(i64::MAX).min(40);
    if i64::from(base) >= lowest {
        return true;
    }
    let initial_userns = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| {
            let w: Vec<&str> = m.split_whitespace().collect();
            w == ["0", "0", "4294967295"]
        })
        .unwrap_or(false);
    let cap_sys_nice = std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 23) != 0);
    initial_userns && cap_sys_nice
}

/// The worker's side of [`AutoNice`] for the calling thread at `base`: call it with the
/// time every turn; every window it reads the thread's `schedstat` and sets the nice the
/// controller asks for. If setting fails the controller stops (logged), leaving the
/// thread where the kernel left it.
pub fn auto_nice_tick(base: i32, params: AutoNiceParams) -> impl FnMut(u64) + Send {
    let mut ctl = AutoNice::new(base, params);
    let mut failed = false;
    move |now_ms| {
        if failed || !ctl.due(now_ms) {
            return;
        }
        let Ok(stat) = SchedStat::this_thread() else {
            return;
        };
        let Some(step) = ctl.observe(now_ms, stat) else {
            return;
        };
        let (nice, counter) = match step {
            NiceStep::Yield(n) => (n, &YIELDS),
            NiceStep::BackLongWaits(n) => (n, &BACKS_LONG),
            NiceStep::BackIdle(n) => (n, &BACKS_IDLE),
        };
        match set_thread_nice(nice) {
            Ok(()) => {
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?step, "datapath worker: automatic nice");
            }
            Err(e) => {
                failed = true;
                tracing::warn!(error = %e, nice, "datapath worker: automatic nice stopped");
            }
        }
    }
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

    /// Counters after `windows` windows of 100 ms from `start`, each with `ran` ms run,
    /// `sched` schedulings and `wait_us` µs of wait per scheduling.
    fn feed(
        c: &mut AutoNice,
        t: &mut u64,
        s: &mut SchedStat,
        windows: u32,
        ran: u64,
        sched: u64,
        wait_us: u64,
    ) -> Vec<NiceStep> {
        let mut out = Vec::new();
        for _ in 0..windows {
            *t += 100;
            s.ran_ns += ran * 1_000_000;
            s.schedules += sched;
            s.waited_ns += sched * wait_us * 1000;
            assert!(c.due(*t));
            out.extend(c.observe(*t, *s));
        }
        out
    }

    #[test]
    fn the_slice_sets_the_thresholds() {
        let p = AutoNiceParams::for_cpus(2);
        assert_eq!((p.yield_below_us, p.back_above_us), (150, 500));
        let p = AutoNiceParams::for_cpus(64);
        assert_eq!((p.yield_below_us, p.back_above_us), (300, 1000));
        assert_eq!(AutoNiceParams::for_cpus(0), AutoNiceParams::for_cpus(1));
    }

    #[test]
    fn a_busy_worker_with_short_waits_steps_back_and_returns_when_starved() {
        let p = AutoNiceParams::for_cpus(2);
        let mut c = AutoNice::new(0, p);
        let (mut t, mut s) = (0, SchedStat::default());
        assert_eq!(
            c.observe(t, s),
            None,
            "the first sample only starts a window"
        );
        // Busy (67 % of the window), 60 µs per scheduling: the containers' case.
        assert_eq!(feed(&mut c, &mut t, &mut s, 2, 67, 1000, 60), vec![]);
        assert_eq!(
            feed(&mut c, &mut t, &mut s, 1, 67, 1000, 60),
            vec![NiceStep::Yield(10)]
        );
        assert_eq!(c.nice(), 10);
        // Stepped back, waits stay short: nothing changes.
        assert_eq!(feed(&mut c, &mut t, &mut s, 20, 69, 1000, 25), vec![]);
        // CPU-bound work arrives: 1.2 ms per scheduling. Back after two windows, held.
        assert_eq!(
            feed(&mut c, &mut t, &mut s, 2, 11, 50, 1240),
            vec![NiceStep::BackLongWaits(0)]
        );
        assert_eq!(c.nice(), 0);
        // At base with the hogs: 260 µs, above the step-back threshold: stays.
        assert_eq!(feed(&mut c, &mut t, &mut s, 100, 40, 500, 260), vec![]);
    }

    #[test]
    fn an_idle_or_lightly_loaded_worker_keeps_its_nice() {
        let mut c = AutoNice::new(-5, AutoNiceParams::for_cpus(2));
        let (mut t, mut s) = (0, SchedStat::default());
        c.observe(t, s);
        // Request/response: short waits but 10 % of a core.
        assert_eq!(feed(&mut c, &mut t, &mut s, 50, 10, 2000, 20), vec![]);
        // Nothing at all.
        assert_eq!(feed(&mut c, &mut t, &mut s, 50, 0, 0, 0), vec![]);
        assert_eq!(c.nice(), -5);
    }

    #[test]
    fn a_stepped_back_worker_that_goes_idle_returns_to_base() {
        let p = AutoNiceParams::for_cpus(2);
        let mut c = AutoNice::new(0, p);
        let (mut t, mut s) = (0, SchedStat::default());
        c.observe(t, s);
        assert_eq!(
            feed(&mut c, &mut t, &mut s, 3, 70, 1000, 50),
            vec![NiceStep::Yield(10)]
        );
        assert_eq!(
            feed(&mut c, &mut t, &mut s, p.idle_windows - 1, 1, 10, 5),
            vec![]
        );
        assert_eq!(
            feed(&mut c, &mut t, &mut s, 1, 1, 10, 5),
            vec![NiceStep::BackIdle(0)]
        );
        // No hold after an idle return: busy again, it steps back after 3 windows.
        assert_eq!(
            feed(&mut c, &mut t, &mut s, 3, 70, 1000, 50),
            vec![NiceStep::Yield(10)]
        );
    }

    #[test]
    fn a_borderline_machine_cannot_make_it_flap() {
        let p = AutoNiceParams::for_cpus(2);
        let mut c = AutoNice::new(0, p);
        let (mut t, mut s) = (0, SchedStat::default());
        c.observe(t, s);
        // Short waits at base, long ones when stepped back: every return doubles the hold.
        let mut yields = Vec::new();
        for _ in 0..600 {
            let wait = if c.nice() == 0 { 100 } else { 900 };
            let steps = feed(&mut c, &mut t, &mut s, 1, 60, 1000, wait);
            if steps.contains(&NiceStep::Yield(10)) {
                yields.push(t);
            }
        }
        // 60 s: a step back at 0.3 s, then each two windows long and followed by a hold
        // of 10, 20, then 40 s: three steps back in a minute, two windows starved each.
        assert_eq!(yields, vec![300, 10_500, 30_700], "{yields:?}");
    }

    #[test]
    fn the_top_of_the_range_is_not_passed() {
        let mut c = AutoNice::new(15, AutoNiceParams::for_cpus(2));
        let (mut t, mut s) = (0, SchedStat::default());
        c.observe(t, s);
        assert_eq!(
            feed(&mut c, &mut t, &mut s, 3, 70, 1000, 50),
            vec![NiceStep::Yield(19)]
        );
    }

    #[test]
    fn schedstat_parses_and_the_thread_s_own_is_readable() {
        assert_eq!(
            SchedStat::parse("12345 678 9\n"),
            Some(SchedStat {
                ran_ns: 12345,
                waited_ns: 678,
                schedules: 9
            })
        );
        assert_eq!(SchedStat::parse("1 2"), None);
        assert_eq!(SchedStat::parse("a b c"), None);
        let s = SchedStat::this_thread().expect("schedstat");
        assert!(s.schedules > 0, "{s:?}");
    }

    #[test]
    fn restoring_is_allowed_at_or_above_the_current_nice_limit() {
        // Whatever this process may do, a base of 19 is at or above the lowest nice any
        // RLIMIT_NICE allows (20 - 0 = 20 is refused only for 19 + 1).
        let lim = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE)
            .expect("getrlimit")
            .0;
        if lim >= 1 {
            assert!(can_restore_nice(19));
        }
    }

    #[test]
    fn one_long_wait_after_idle_is_not_starvation() {
        let mut c = AutoNice::new(0, AutoNiceParams::for_cpus(2));
        let (mut t, mut s) = (0, SchedStat::default());
        c.observe(t, s);
        assert_eq!(
            feed(&mut c, &mut t, &mut s, 3, 70, 1000, 50),
            vec![NiceStep::Yield(10)]
        );
        // The stream ends: one wake-up that waited 1.6 ms, nothing else.
        assert_eq!(feed(&mut c, &mut t, &mut s, 1, 0, 1, 1600), vec![]);
        assert_eq!(c.nice(), 10);
        // One window of long waits (a bulk sender ran a whole slice): not yet.
        assert_eq!(feed(&mut c, &mut t, &mut s, 1, 50, 50, 1200), vec![]);
        assert_eq!(feed(&mut c, &mut t, &mut s, 1, 60, 1000, 60), vec![]);
        // Starved for real: 50 waits of 1.2 ms in each of two windows.
        assert_eq!(
            feed(&mut c, &mut t, &mut s, 2, 10, 50, 1200),
            vec![NiceStep::BackLongWaits(0)]
        );
    }

    #[test]
    fn request_response_keeps_its_nice_even_when_busy() {
        let p = AutoNiceParams::for_cpus(2);
        let mut c = AutoNice::new(0, p);
        let (mut t, mut s) = (0, SchedStat::default());
        c.observe(t, s);
        // Ping-pong: 46 % busy, 3 µs waits, but 18 µs per run (one packet per wake-up).
        assert_eq!(feed(&mut c, &mut t, &mut s, 50, 46, 2500, 3), vec![]);
        assert_eq!(c.nice(), 0);
        // A bulk stream steps it back (190 µs per run); when it turns into ping-pong
        // (17 µs per run, still busy) it returns after the idle windows.
        assert_eq!(
            feed(&mut c, &mut t, &mut s, 3, 60, 300, 40),
            vec![NiceStep::Yield(10)]
        );
        assert_eq!(
            feed(&mut c, &mut t, &mut s, p.idle_windows - 1, 46, 2700, 3),
            vec![]
        );
        assert_eq!(
            feed(&mut c, &mut t, &mut s, 1, 46, 2700, 3),
            vec![NiceStep::BackIdle(0)]
        );
    }
}
