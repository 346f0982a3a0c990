//! `strace` attached to a running process (Debian's strace package, which
//! tests/run.sh installs): every thread traced before the caller goes on,
//! the output in a file, and killed by its PID on drop (the tracee goes
//! on, detached).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::KillOnDrop;

/// The ceiling of the wait for strace to take every thread.
const ATTACH: Duration = Duration::from_secs(10);

pub struct Strace {
    child: KillOnDrop,
    out: PathBuf,
}

impl Strace {
    /// `strace ARGS -o OUT -p PID`, returned once every thread of `pid`
    /// is traced (within 10 s, or it panics).
    pub fn attach(pid: u32, args: &[&str], out: &Path) -> Strace {
        let child = Command::new("strace")
            .args(args)
            .arg("-o")
            .arg(out)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace (Debian package strace)");
        let strace = Strace {
            child: KillOnDrop(child),
            out: out.to_path_buf(),
        };
        let traced = |task: &std::fs::DirEntry| {
            std::fs::read_to_string(task.path().join("status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("TracerPid:"))
                    .is_some_and(|t| t.trim() != "0")
            })
        };
        let deadline = Instant::now() + ATTACH;
        loop {
            let all = std::fs::read_dir(format!("/proc/{pid}/task"))
                .is_ok_and(|mut tasks| tasks.all(|t| t.is_ok_and(|t| traced(&t))));
            if all {
                return strace;
            }
            assert!(
                Instant::now() < deadline,
                "strace did not attach to every thread of {pid}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Detach (SIGINT: strace writes a `-c` summary then) and return what
    /// it wrote.
    pub fn finish(mut self) -> String {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.0.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.child.0.wait();
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}
