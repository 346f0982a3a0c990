//! The few system calls the UDP drivers are built on: an epoll set, an
//! eventfd to wake a thread, a thread's own CPU clock and its scheduling
//! policy.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An epoll set; every registration is level-triggered, for reading.
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Wait up to `timeout` (forever if `None`) for events; how many came.
    /// An interrupted wait returns 0.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout: Option<Duration>) -> usize {
        let ms = match timeout {
            None => -1,
            // Round up: waking a little late is fine, spinning is not.
            Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
        };
        let n = unsafe {
            libc::epoll_wait(
                self.raw(),
                events.as_mut_ptr(),
                events.len().min(i32::MAX as usize) as i32,
                ms,
            )
        };
        n.max(0) as usize
    }
}

/// Watch `fd` for reading in the epoll set `epfd`, under `token`.
pub fn add(epfd: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    watch(epfd, libc::EPOLL_CTL_ADD, fd, token)
}

/// Watch `fd`, already in the epoll set `epfd`, for reading under `token`
/// from now on.
pub fn modify(epfd: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    watch(epfd, libc::EPOLL_CTL_MOD, fd, token)
}

/// `epoll_ctl` `op` (add or modify) watching `fd` for reading under `token`.
fn watch(epfd: RawFd, op: libc::c_int, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stop watching `fd` in `epfd`.
pub fn remove(epfd: RawFd, fd: RawFd) {
    unsafe {
        libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut());
    }
}

/// A counter another thread bumps to wake whoever polls it.
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Make the eventfd readable.
    pub fn signal(&self) {
        let one = 1u64;
        unsafe {
            libc::write(self.raw(), &one as *const u64 as *const libc::c_void, 8);
        }
    }

    /// Reset it to not readable.
    pub fn clear(&self) {
        let mut v = 0u64;
        unsafe {
            libc::read(self.raw(), &mut v as *mut u64 as *mut libc::c_void, 8);
        }
    }
}

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Put the calling thread under SCHED_BATCH (`batch`) or back under
/// SCHED_OTHER. SCHED_BATCH has the same share of the CPU as SCHED_OTHER,
/// but its wake-ups never preempt the task that runs on the CPU it is woken
/// on; it runs when that task sleeps or its slice ends (sched(7)). No
/// privilege needed for either.
pub fn set_batch(batch: bool) -> io::Result<()> {
    let p = libc::sched_param { sched_priority: 0 };
    let policy = if batch {
        libc::SCHED_BATCH
    } else {
        libc::SCHED_OTHER
    };
    if unsafe { libc::sched_setscheduler(0, policy, &p) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A thread's cumulative scheduler statistics: time spent waiting on a run
/// queue, and the number of times it was put on a CPU
/// (`/proc/thread-self/schedstat`, fields 2 and 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Waits {
    pub delay: Duration,
    pub runs: u64,
}

/// The calling thread's `/proc/thread-self/schedstat`, kept open: time on
/// a CPU, time waiting on a run queue, and runs on a CPU (proc(5)).
pub struct RunDelay(std::fs::File);

impl RunDelay {
    /// Open the calling thread's file (later reads describe that thread,
    /// whichever thread reads).
    pub fn open() -> io::Result<RunDelay> {
        std::fs::File::open("/proc/thread-self/schedstat").map(RunDelay)
    }

    /// The wait and run counters now; one `pread`, no allocation.
    pub fn read(&self) -> io::Result<Waits> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 96];
        let n = self.0.read_at(&mut buf, 0)?;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "schedstat");
        let text = std::str::from_utf8(&buf[..n]).map_err(|_| bad())?;
        let mut f = text.split_ascii_whitespace().skip(1);
        let mut next = || f.next().and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad);
        let delay = Duration::from_nanos(next()?);
        let runs = next()?;
        Ok(Waits { delay, runs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eventfd_wakes_the_epoll_set_until_cleared() {
        let ep = Epoll::new().unwrap();
        let ev = EventFd::new().unwrap();
        add(ep.raw(), ev.raw(), 7).unwrap();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        assert_eq!(ep.wait(&mut events, Some(Duration::ZERO)), 0);
        ev.signal();
        ev.signal();
        assert_eq!(ep.wait(&mut events, Some(Duration::from_secs(1))), 1);
        assert_eq!({ events[0].u64 }, 7);
        ev.clear();
        assert_eq!(ep.wait(&mut events, Some(Duration::ZERO)), 0);
        remove(ep.raw(), ev.raw());
        ev.signal();
        assert_eq!(ep.wait(&mut events, Some(Duration::ZERO)), 0);
    }

    #[test]
    fn the_thread_clock_counts_work_not_sleep() {
        let t0 = thread_cpu();
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu() - t0;
        // Busy until the clock shows 15 ms of work, or 5 s have passed (on a
        // loaded host the thread gets a fraction of the wall time).
        let t1 = thread_cpu();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while thread_cpu() - t1 < Duration::from_millis(15)
            && start.elapsed() < Duration::from_secs(5)
        {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let worked = thread_cpu() - t1;
        assert!(slept < Duration::from_millis(10), "slept {slept:?}");
        assert!(
            worked >= Duration::from_millis(15),
            "worked {worked:?} in {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn the_policy_applies_to_the_calling_thread_only_and_can_be_undone() {
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let inside = std::thread::spawn(move || {
            set_batch(true).unwrap();
            let batch = policy();
            set_batch(false).unwrap();
            (batch, policy())
        })
        .join()
        .unwrap();
        assert_eq!(inside, (libc::SCHED_BATCH, libc::SCHED_OTHER));
        assert_eq!(policy(), before);
    }

    #[test]
    fn the_run_delay_counts_this_threads_runs_and_waits() {
        std::thread::spawn(|| {
            let rd = RunDelay::open().unwrap();
            let a = rd.read().unwrap();
            for _ in 0..50 {
                std::thread::sleep(Duration::from_micros(200));
            }
            let b = rd.read().unwrap();
            // Each sleep ends in a run on a CPU; another thread's runs
            // would not count here.
            assert!(b.runs >= a.runs + 50, "{a:?} then {b:?}");
            assert!(b.delay >= a.delay);
        })
        .join()
        .unwrap();
    }
}
