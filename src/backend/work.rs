//! A handle on long work (a copy through an NFS client): the engine asks it to stop, and
//! the backend reports how far it got. The backend checks [`Work::stopped`] between units
//! of work it can abandon safely (a chunk of a file, an entry of a directory) and answers
//! [`super::Error::Stopped`]; what it leaves behind is a partial copy its own cleanup
//! recognises, never a half-written object in place.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Why work was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// What it reads or writes is being deleted: the work is undone.
    Delete,
    /// berth is shutting down: the work is left as a crash would leave it (its intent
    /// recorded), and the next start takes it up again.
    Shutdown,
}

/// Progress and the stop request of one piece of long work.
#[derive(Debug, Default)]
pub struct Work {
    /// 0: go on; otherwise the first [`Stop`] asked, as 1 + its index.
    stop: AtomicU8,
    files: AtomicU64,
    bytes: AtomicU64,
    /// The caller holds the source still (see [`Work::held_still`]).
    held: bool,
}

impl Work {
    /// Work that runs until it ends (nobody asks it to stop).
    #[must_use]
    pub fn new() -> Work {
        Work::default()
    }

    /// Work on a source the caller already holds still: a group snapshot froze every
    /// member's filesystem itself, so the backend takes the source as it is and must not
    /// freeze it again (a second FIFREEZE fails with EBUSY).
    #[must_use]
    pub fn held_still() -> Work {
        Work { held: true, ..Work::default() }
    }

    /// Whether the caller holds the source still ([`Work::held_still`]).
    #[must_use]
    pub fn is_held_still(&self) -> bool {
        self.held
    }

    /// Asks the work to stop; the first reason asked is the one that counts.
    pub fn stop(&self, why: Stop) {
        let code = match why {
            Stop::Delete => 1,
            Stop::Shutdown => 2,
        };
        let _ = self.stop.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether, and why, the work was asked to stop.
    #[must_use]
    pub fn stopped(&self) -> Option<Stop> {
        match self.stop.load(Ordering::SeqCst) {
            0 => None,
            1 => Some(Stop::Delete),
            _ => Some(Stop::Shutdown),
        }
    }

    /// Counts one more file (or other non-directory entry) done.
    pub fn add_file(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` more data bytes done.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Files done so far.
    #[must_use]
    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    /// Data bytes done so far.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stop_reason_counts() {
        let w = Work::new();
        assert_eq!(w.stopped(), None);
        w.stop(Stop::Shutdown);
        w.stop(Stop::Delete);
        assert_eq!(w.stopped(), Some(Stop::Shutdown));
        w.add_file();
        w.add_bytes(7);
        assert_eq!((w.files(), w.bytes()), (1, 7));
    }
}
