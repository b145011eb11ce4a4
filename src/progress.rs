//! Progress of long work (copy-based snapshots and restores, formatting large devices):
//! one log line at a steady interval with the bytes done and the total, so an operator
//! watching the log of a slow call sees it move. Work whose bytes cannot be counted (an
//! mkfs process, one zeroing ioctl) logs a [`heartbeat`] with the total and the time spent.

use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How often progress is logged.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Logs one operation's progress at most once per interval. Lines carry the span of the
/// RPC doing the work (its volume and snapshot IDs).
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    total: Option<u64>,
    interval: Duration,
    started: Instant,
    last: Instant,
}

impl Progress {
    /// Starts tracking `what` (e.g. "copy snapshot"), which will handle about `total` bytes
    /// when that is known.
    #[must_use]
    pub fn new(what: &'static str, total: Option<u64>) -> Progress {
        Progress::with_interval(what, total, INTERVAL)
    }

    /// Like [`Progress::new`] with another interval.
    #[must_use]
    pub fn with_interval(what: &'static str, total: Option<u64>, interval: Duration) -> Progress {
        let now = Instant::now();
        Progress { what, total, interval, started: now, last: now }
    }

    /// Reports `done` bytes so far; logs when an interval has passed since the last line.
    pub fn update(&mut self, done: u64) {
        self.update_at(done, Instant::now());
    }

    /// [`Progress::update`] at a given time; true when it logged.
    pub fn update_at(&mut self, done: u64, now: Instant) -> bool {
        if now.saturating_duration_since(self.last) < self.interval {
            return false;
        }
        self.last = now;
        let elapsed_s = now.saturating_duration_since(self.started).as_secs();
        match self.total {
            Some(total) if total > 0 => {
                let percent = (done.saturating_mul(100) / total).min(100);
                tracing::info!(op = self.what, bytes_done = done, bytes_total = total, percent, elapsed_s, "progress");
            }
            _ => tracing::info!(op = self.what, bytes_done = done, elapsed_s, "progress"),
        }
        true
    }
}

/// Runs `work` on this thread and, from a helper thread in the same span, logs every
/// [`INTERVAL`] that it is still running, with `total` bytes when known.
pub fn heartbeat<T>(what: &'static str, total: Option<u64>, work: impl FnOnce() -> T) -> T {
    heartbeat_every(what, total, INTERVAL, work)
}

/// [`heartbeat`] with another interval.
pub fn heartbeat_every<T>(what: &'static str, total: Option<u64>, interval: Duration, work: impl FnOnce() -> T) -> T {
    // The helper logs to the same subscriber and inside the same span as the caller.
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let span = tracing::Span::current();
    let (done, finished) = channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                let _span = span.enter();
                let started = Instant::now();
                // Ends when `done` is dropped: after the work, or while a panic unwinds.
                while let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(interval) {
                    let elapsed_s = started.elapsed().as_secs();
                    if let Some(bytes_total) = total {
                        tracing::info!(op = what, bytes_total, elapsed_s, "still running");
                    } else {
                        tracing::info!(op = what, elapsed_s, "still running");
                    }
                }
            });
        });
        let result = work();
        drop(done);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn logs_once_per_interval() {
        let mut p = Progress::with_interval("copy", Some(100), Duration::from_secs(5));
        let t0 = p.started;
        assert!(!p.update_at(10, t0 + Duration::from_secs(1)), "too early");
        assert!(p.update_at(50, t0 + Duration::from_secs(5)));
        assert!(!p.update_at(60, t0 + Duration::from_secs(9)), "interval counts from the last line");
        assert!(p.update_at(90, t0 + Duration::from_secs(10)));
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_carry_bytes_done_and_total() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || {
            let mut p = Progress::with_interval("copy snapshot", Some(4 << 20), Duration::ZERO);
            p.update(1 << 20);
            let mut unknown = Progress::with_interval("format", None, Duration::ZERO);
            unknown.update(7);
        });
        let text =
            String::from_utf8_lossy(&buffer.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned();
        assert!(text.contains("op=\"copy snapshot\" bytes_done=1048576 bytes_total=4194304 percent=25"), "{text}");
        assert!(text.contains("op=\"format\" bytes_done=7 elapsed_s=0"), "{text}");
    }

    #[test]
    fn heartbeats_run_while_the_work_does_and_stop_with_it() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let answer = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("rpc", volume.id = "vol-7");
            let _span = span.enter();
            heartbeat_every("mkfs", Some(1 << 30), Duration::from_millis(20), || {
                std::thread::sleep(Duration::from_millis(110));
                42
            })
        });
        assert_eq!(answer, 42);
        let text =
            String::from_utf8_lossy(&buffer.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned();
        let beats = text.lines().filter(|l| l.contains("still running")).count();
        assert!((2..=6).contains(&beats), "{beats} heartbeats:\n{text}");
        assert!(text.contains("volume.id=\"vol-7\"") && text.contains("op=\"mkfs\" bytes_total=1073741824"), "{text}");
        std::thread::sleep(Duration::from_millis(60));
        let after =
            String::from_utf8_lossy(&buffer.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned();
        assert_eq!(after.lines().count(), text.lines().count(), "no heartbeat after the work ended");
    }
}
