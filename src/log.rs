//! Logging: tracing to stderr as text or JSON, with a level that a reload
//! can change. Nothing here ever formats a password, key or secret: the
//! types that hold them print only counts.
//!
//! A thread may hold its lines for a while ([`hold`]) and write them with
//! one `write(2)` ([`write_held`], [`release`]): a UDP driver thread holds
//! them for its whole life and writes them at the end of each round of
//! events, so that a burst of allocations costs one write rather than one a
//! line. Every other thread writes each line at once.

use std::cell::RefCell;
use std::io::Write;
use std::sync::OnceLock;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogFormat;

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The most a thread holds: Linux's PIPE_BUF, so that each write of held
/// lines lands whole on a pipe even while other threads write theirs.
pub const HELD_MAX: usize = 4096;

/// The lines a thread holds, and whether it holds them now.
struct Held {
    on: bool,
    lines: Vec<u8>,
}

impl Held {
    /// Write the held lines with one `write(2)` (more only if the kernel
    /// takes part of them). On an error (EAGAIN on a full non-blocking
    /// pipe, EPIPE) the rest is dropped, not retried: the thread never
    /// waits for its log, and loses at most what it held.
    fn write_out(&mut self) {
        if !self.lines.is_empty() {
            let _ = std::io::stderr().lock().write_all(&self.lines);
            self.lines.clear();
        }
    }

    /// Hold `line`; write what is held first if `line` would take it past
    /// [`HELD_MAX`], and a line that alone is that long at once.
    fn push(&mut self, line: &[u8]) {
        if self.lines.len() + line.len() > HELD_MAX {
            self.write_out();
        }
        if line.len() >= HELD_MAX {
            let _ = std::io::stderr().lock().write_all(line);
        } else {
            self.lines.extend_from_slice(line);
        }
    }
}

impl Drop for Held {
    /// A thread that ends (also by unwinding) writes what it held.
    fn drop(&mut self) {
        self.write_out();
    }
}

thread_local! {
    static HELD: RefCell<Held> = const {
        RefCell::new(Held {
            on: false,
            lines: Vec::new(),
        })
    };
}

/// From now on this thread holds its log lines until [`release`] (or until
/// they pass [`HELD_MAX`] bytes, or the thread ends or panics). The first
/// call on a thread reserves the buffer; later ones allocate nothing.
pub fn hold() {
    let _ = HELD.try_with(|h| {
        if let Ok(mut h) = h.try_borrow_mut() {
            if h.lines.capacity() == 0 {
                h.lines.reserve_exact(HELD_MAX);
            }
            h.on = true;
        }
    });
}

/// Write the lines this thread held, with one `write(2)`, and write each
/// line at once from now on. Nothing to write: no system call.
pub fn release() {
    let _ = HELD.try_with(|h| {
        if let Ok(mut h) = h.try_borrow_mut() {
            h.on = false;
            h.write_out();
        }
    });
}

/// Write the lines this thread held so far, with one `write(2)`, and go on
/// holding. Nothing to write: no system call.
pub fn write_held() {
    let _ = HELD.try_with(|h| {
        if let Ok(mut h) = h.try_borrow_mut() {
            h.write_out();
        }
    });
}

/// The fmt layer's writer: stderr, through this thread's held lines while
/// it holds them. The layer formats a whole line, then writes it with one
/// `write_all`.
struct Stderr;

/// One line's way out (see [`Stderr`]).
struct LineOut;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = LineOut;

    fn make_writer(&'a self) -> LineOut {
        LineOut
    }
}

impl LineOut {
    /// Whether this thread held `line`.
    fn held(line: &[u8]) -> bool {
        HELD.try_with(|h| match h.try_borrow_mut() {
            Ok(mut h) if h.on => {
                h.push(line);
                true
            }
            _ => false,
        })
        .unwrap_or(false)
    }
}

impl Write for LineOut {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if Self::held(line) {
            return Ok(line.len());
        }
        std::io::stderr().write(line)
    }

    fn write_all(&mut self, line: &[u8]) -> std::io::Result<()> {
        if Self::held(line) {
            return Ok(());
        }
        std::io::stderr().write_all(line)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Start logging at `level` (`RUST_LOG` overrides it) in `format`.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let ok = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(Stderr)
                    .with_ansi(ansi),
            )
            .try_init()
            .is_ok(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(Stderr))
            .try_init()
            .is_ok(),
    };
    if ok {
        let _ = FILTER.set(handle);
        // A panicking thread writes what it held before the panic's report,
        // and every line after it at once: the lines before an abort (a
        // UDP driver's panic ends the process) are not lost.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            release();
            report(info);
        }));
    }
}

/// Change the level of a running server (on reload). `RUST_LOG`, when set,
/// keeps precedence.
pub fn set_level(level: &str) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    if let (Some(h), Ok(f)) = (FILTER.get(), EnvFilter::try_new(level)) {
        let _ = h.reload(f);
    }
}
