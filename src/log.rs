//! Logging: tracing to stderr as text or JSON, with a level that a reload
//! can change. Nothing here ever formats a password, key or secret: the
//! types that hold them print only counts.
//!
//! Lines go to stderr through [`Sink`]: the thread that logs copies its
//! formatted line into a buffer of fixed size, and one writer thread sends
//! what gathered with one `write` a few milliseconds later. A thread that
//! logs never waits for stderr (a stalled journal or pipe): when the buffer
//! is full, the line is dropped and counted, and the writer says how many
//! were dropped once it catches up.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogFormat;

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

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
                    .with_writer(Sink::writer)
                    .with_ansi(ansi),
            )
            .try_init()
            .is_ok(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(Sink::writer),
            )
            .try_init()
            .is_ok(),
    };
    if ok {
        let _ = FILTER.set(handle);
        Sink::start();
    }
}

/// Write out every line logged so far, now, from this thread: before the
/// process ends or writes to stderr itself, so that nothing is lost and
/// the order holds.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.write_out();
    }
}

/// Bytes of log lines that may wait for the writer thread: about 3,000
/// lines, tens of milliseconds of the busiest logging.
const CAPACITY: usize = 512 * 1024;

/// How long the writer thread lets lines gather after the first one.
const LINGER: Duration = Duration::from_millis(3);

static SINK: OnceLock<Sink> = OnceLock::new();

/// Log lines on their way to stderr.
struct Sink {
    waiting: Mutex<Waiting>,
    /// Signalled when the first line enters an empty buffer.
    arrived: Condvar,
    /// Held while lines are written to stderr, so that batches leave in
    /// the order they were taken; holds the writer's empty buffer.
    out: Mutex<Vec<u8>>,
}

/// Lines not yet written, and how many did not fit.
struct Waiting {
    lines: Vec<u8>,
    dropped: u64,
}

/// One line's writer: [`Sink::add`] for what the layer formatted.
struct LineWriter;

impl Write for LineWriter {
    /// The fmt layer writes a formatted line in one call: it is taken
    /// whole or dropped whole.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        match SINK.get() {
            Some(sink) => sink.add(line),
            // Before the writer thread runs (init itself): straight out.
            None => std::io::stderr().write_all(line)?,
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn writer() -> LineWriter {
        LineWriter
    }

    /// Start the writer thread and make every log line go through it; a
    /// panic writes out the lines before it first.
    fn start() {
        let sink = Sink {
            waiting: Mutex::new(Waiting {
                lines: Vec::with_capacity(CAPACITY),
                dropped: 0,
            }),
            arrived: Condvar::new(),
            out: Mutex::new(Vec::with_capacity(CAPACITY)),
        };
        if SINK.set(sink).is_err() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("ferroturn-log".into())
            .spawn(|| {
                if let Some(sink) = SINK.get() {
                    sink.run();
                }
            });
        if let Err(e) = spawned {
            // Lines still gather; they leave on flush only.
            eprintln!("ferroturn: cannot start the log writer thread: {e}");
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            flush();
            previous(info);
        }));
    }

    fn lock_waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take `line` if it fits, else count it dropped; never waits for
    /// stderr, and never grows the buffer (no heap allocation). Once one
    /// line is dropped, so are the next until the writer takes the buffer:
    /// the lines lost are one run, where the drop count is written.
    fn add(&self, line: &[u8]) {
        let mut w = self.lock_waiting();
        if w.dropped > 0 || w.lines.len() + line.len() > w.lines.capacity() {
            w.dropped += 1;
            return;
        }
        let first = w.lines.is_empty();
        w.lines.extend_from_slice(line);
        drop(w);
        if first {
            self.arrived.notify_one();
        }
    }

    /// The writer thread: wait for a line, let more gather, write them.
    fn run(&self) {
        loop {
            let mut w = self.lock_waiting();
            while w.lines.is_empty() {
                w = self.arrived.wait(w).unwrap_or_else(|e| e.into_inner());
            }
            drop(w);
            std::thread::sleep(LINGER);
            self.write_out();
        }
    }

    /// Swap the waiting lines out and write them to stderr; then say how
    /// many lines did not fit, if any.
    fn write_out(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = {
            let mut w = self.lock_waiting();
            std::mem::swap(&mut w.lines, &mut *out);
            std::mem::take(&mut w.dropped)
        };
        // Nothing to do with an error here: stderr is where it would go.
        let _ = std::io::stderr().write_all(&out);
        out.clear();
        drop(out);
        if dropped > 0 {
            tracing::warn!(dropped, "log lines dropped: stderr did not keep up");
        }
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
