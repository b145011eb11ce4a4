//! Copies that run in the background: the snapshot cuts, restores and clones of pools
//! whose copies can take long ([`crate::backend::PoolInfo::background_copies`], NFS),
//! and snapshot copies to and restores from shared pools ([`super::archive`]).
//!
//! A call that needs such a copy records its intent (phase Creating), hands the copy to a
//! thread of its own with the locks the copy needs, waits at most
//! [`crate::config::Config::copy_wait_ms`] for it, and answers: done, or still in progress
//! (CreateSnapshot: `ready_to_use` false; CreateVolume: ABORTED with the progress). The
//! copy finishes the record itself (Ready, or rolled back on failure), so readiness never
//! depends on a retry; a failure is kept for the next call with the same name, which
//! answers it once.
//!
//! Deleting what a copy reads or writes stops the copy first ([`Engine::stop_copies`]):
//! the copy abandons its work between two chunks or entries and undoes what it did. At
//! shutdown every copy is stopped too, but leaves its intent and partial tree as a crash
//! would: the next start takes the copy up again (see [`super::reconcile`]).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Engine, Error, Result};
use crate::backend::{Pool, Source, Stop, Work};
use crate::locks::Guard;
use crate::state::{Phase, SnapshotRecord, VolumeRecord};

/// How long deleting a volume or snapshot waits for the copies it stops to let go: a copy
/// checks between chunks, each one NFS call of at most the client's 10 s deadline.
pub const STOP_WAIT: Duration = Duration::from_secs(20);

/// One copy in the background.
#[derive(Debug)]
pub struct Job {
    /// The volume or snapshot being made.
    pub target: String,
    /// The volume or snapshot it reads.
    pub source: String,
    pub work: Work,
    pub started: Instant,
    ended: Mutex<bool>,
    signal: Condvar,
}

impl Job {
    fn new(target: String, source: String) -> Job {
        Job {
            target,
            source,
            work: Work::new(),
            started: Instant::now(),
            ended: Mutex::new(false),
            signal: Condvar::new(),
        }
    }

    /// Waits up to `limit` for the copy to end; true when it has.
    pub fn wait(&self, limit: Duration) -> bool {
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        let (ended, _) =
            self.signal.wait_timeout_while(ended, limit, |ended| !*ended).unwrap_or_else(PoisonError::into_inner);
        *ended
    }

    fn end(&self) {
        *self.ended.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.signal.notify_all();
    }
}

/// The copies in flight, and the failures of those that ended badly, by the name key of
/// the call that started them.
#[derive(Debug, Default)]
pub struct Copies {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    failures: Mutex<HashMap<String, Error>>,
    /// Set at shutdown: a copy started later is stopped at once.
    closing: std::sync::atomic::AtomicBool,
}

impl Copies {
    /// The copy making `target`, while it runs.
    pub fn running(&self, target: &str) -> Option<Arc<Job>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner).get(target).cloned()
    }

    /// Copies in flight, and the data bytes they have copied so far (for metrics).
    pub fn in_progress(&self) -> (usize, u64) {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        (jobs.len(), jobs.values().map(|j| j.work.bytes()).sum())
    }

    /// The failure of the last copy started under `key`, once.
    pub(super) fn take_failure(&self, key: &str) -> Option<Error> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(key)
    }

    fn touching(&self, id: &str) -> Vec<Arc<Job>> {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.values().filter(|j| j.target == id || j.source == id).cloned().collect()
    }

    /// Whether a copy reads or makes `id`.
    pub fn touches(&self, id: &str) -> bool {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.values().any(|j| j.target == id || j.source == id)
    }

    /// Asks every copy to stop for shutdown, and any started from now on.
    pub fn stop_all(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        for job in self.jobs.lock().unwrap_or_else(PoisonError::into_inner).values() {
            job.work.stop(Stop::Shutdown);
        }
    }
}

/// The failure key of CreateVolume calls for `name`.
pub(super) fn volume_key(name: &str) -> String {
    format!("volume-name:{name}")
}

/// The failure key of CreateSnapshot calls for `name`.
pub(super) fn snapshot_key(name: &str) -> String {
    format!("snapshot-name:{name}")
}

impl Engine {
    /// Runs `copy` in the background, holding `guard` until it ends; its failure is kept
    /// under `key` for the next call. An engine not shared through an `Arc` (unit tests)
    /// runs the copy before returning.
    pub(super) fn start_copy(
        &self,
        target: &str,
        source: &str,
        key: String,
        guard: Guard,
        copy: impl FnOnce(&Engine, &Work) -> Result<()> + Send + 'static,
    ) -> Arc<Job> {
        let job = Arc::new(Job::new(target.to_string(), source.to_string()));
        if self.copies.closing.load(std::sync::atomic::Ordering::SeqCst) {
            job.work.stop(Stop::Shutdown);
        }
        let Some(engine) = self.me.upgrade() else {
            self.finish_copy(&job, key, copy(self, &job.work));
            drop(guard);
            job.end();
            return job;
        };
        self.copies.jobs.lock().unwrap_or_else(PoisonError::into_inner).insert(target.to_string(), Arc::clone(&job));
        let running = Arc::clone(&job);
        let span = tracing::info_span!("copy", copy.target = %target, copy.source = %source);
        std::thread::spawn(move || {
            let _span = span.enter();
            let outcome = copy(&engine, &running.work);
            engine.finish_copy(&running, key, outcome);
            engine.copies.jobs.lock().unwrap_or_else(PoisonError::into_inner).remove(&running.target);
            drop(guard);
            running.end();
        });
        job
    }

    fn finish_copy(&self, job: &Job, key: String, outcome: Result<()>) {
        let elapsed_s = job.started.elapsed().as_secs();
        match outcome {
            Ok(()) => {}
            Err(e) if job.work.stopped().is_some() => {
                tracing::info!(error = %e, elapsed_s, files = job.work.files(), bytes = job.work.bytes(), "copy stopped");
            }
            Err(e) => {
                tracing::warn!(error = %e, elapsed_s, "copy failed; the next call for its name answers the failure");
                self.copies.failures.lock().unwrap_or_else(PoisonError::into_inner).insert(key, e);
            }
        }
    }

    /// Stops every copy that reads or makes `id` (a volume or snapshot about to be
    /// deleted) and waits up to [`STOP_WAIT`] for them to undo their work; ABORTED when
    /// one has not let go by then.
    pub(super) fn stop_copies(&self, id: &str) -> Result<()> {
        let jobs = self.copies.touching(id);
        let deadline = Instant::now() + STOP_WAIT;
        for job in &jobs {
            job.work.stop(Stop::Delete);
            tracing::info!(copy.target = %job.target, copy.source = %job.source, "stopping a copy: {id} is being deleted");
        }
        for job in jobs {
            if !job.wait(deadline.saturating_duration_since(Instant::now())) {
                return Err(Error::Busy { keys: vec![job.target.clone()] });
            }
        }
        Ok(())
    }

    /// Whether copies of `pool` run in the background here (the engine is shared).
    pub(super) fn runs_copies_in_background(&self, pool: &crate::backend::Pool) -> bool {
        pool.info().background_copies && self.me.strong_count() > 0
    }

    /// How long a call waits for a background copy before answering.
    pub(super) fn copy_wait(&self) -> Duration {
        Duration::from_millis(self.config.copy_wait_ms)
    }

    /// Waits until no copy runs or `deadline` passes; the number still running.
    pub fn wait_for_copies(&self, deadline: Instant) -> usize {
        loop {
            let (running, _) = self.copies.in_progress();
            if running == 0 || Instant::now() >= deadline {
                return running;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starting copies and answering for them, per kind of object.
impl Engine {
    /// Cuts the snapshot whose intent is recorded in the background, holding the
    /// snapshot and, shared, what copies read of its source volume.
    pub(super) fn start_snapshot_copy(
        &self,
        pool: Pool,
        volume: Arc<VolumeRecord>,
        mut record: SnapshotRecord,
    ) -> Result<Arc<Job>> {
        let guard = self.lock_reading(std::slice::from_ref(&record.id), &[&volume.id])?;
        let (target, key) = (record.id.clone(), snapshot_key(&record.name));
        Ok(self.start_copy(&target, &volume.id.clone(), key, guard, move |engine, work| {
            engine.build_snapshot(pool.as_ref(), &volume, &mut record, work)?;
            tracing::info!(snapshot.id = %record.id, volume.id = %volume.id, bytes = record.size, files = work.files(), "snapshot created");
            Ok(())
        }))
    }

    /// The snapshot a background copy is cutting, once the copy ended or
    /// [`Engine::copy_wait`] passed: Ready, or still Creating (not ready to use).
    pub(super) fn await_snapshot(&self, name: &str, id: &str, job: &Job) -> Result<Arc<SnapshotRecord>> {
        job.wait(self.copy_wait());
        match self.store.snapshot(id) {
            Some(s) => Ok(s),
            // Rolled back: its failure, or, when it was stopped, ABORTED for the retry to
            // find out why.
            None => Err(self
                .copies
                .take_failure(&snapshot_key(name))
                .unwrap_or_else(|| Error::Busy { keys: vec![id.to_string()] })),
        }
    }

    /// Fills the volume whose intent is recorded from its source in the background,
    /// holding the volume and, shared, what copies read of the source.
    pub(super) fn start_volume_copy(
        &self,
        pool: Pool,
        mut record: VolumeRecord,
        sources: super::lifecycle::Sources,
        limit_bytes: u64,
    ) -> Result<Arc<Job>> {
        let source_id = match &sources {
            (Some(s), _) => s.id.clone(),
            (_, Some(v)) => v.id.clone(),
            (None, None) => String::new(),
        };
        let guard = self.lock_reading(std::slice::from_ref(&record.id), &[&source_id])?;
        let (target, key) = (record.id.clone(), volume_key(&record.name));
        Ok(self.start_copy(&target, &source_id, key, guard, move |engine, work| {
            let source = match &sources {
                (Some(s), _) => Some(Source::Snapshot(s)),
                (_, Some(v)) => Some(Source::Volume(v)),
                (None, None) => None,
            };
            engine.build_volume(pool.as_ref(), &mut record, source, limit_bytes, work)?;
            tracing::info!(volume.id = %record.id, volume.name = %record.name, bytes = work.bytes(), files = work.files(), "volume created");
            Ok(())
        }))
    }

    /// The volume a background copy fills, once the copy ended or [`Engine::copy_wait`]
    /// passed: Ready, or ABORTED saying how far the copy is.
    pub(super) fn await_volume(&self, name: &str, id: &str, job: &Job) -> Result<Arc<VolumeRecord>> {
        job.wait(self.copy_wait());
        match self.store.volume(id) {
            Some(v) if v.phase == Phase::Ready => Ok(v),
            Some(v) => Err(Error::CopyInProgress {
                volume: v.id.clone(),
                source_id: job.source.clone(),
                files: job.work.files(),
                bytes: job.work.bytes(),
                seconds: job.started.elapsed().as_secs(),
            }),
            // Rolled back: its failure, or, when it was stopped, ABORTED for the retry to
            // find out why.
            None => Err(self
                .copies
                .take_failure(&volume_key(name))
                .unwrap_or_else(|| Error::Busy { keys: vec![id.to_string()] })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_found_by_what_they_make_or_read_and_stop_for_shutdown_once_closing() {
        let copies = Copies::default();
        let job = Arc::new(Job::new("vol:p:target".into(), "snap:p:source".into()));
        copies.jobs.lock().expect("lock").insert(job.target.clone(), Arc::clone(&job));
        assert_eq!(copies.touching("vol:p:target").len(), 1);
        assert_eq!(copies.touching("snap:p:source").len(), 1);
        assert!(copies.touching("vol:p:other").is_empty());
        job.work.add_bytes(10);
        assert_eq!(copies.in_progress(), (1, 10));
        assert!(!job.wait(Duration::from_millis(10)), "still running");
        copies.stop_all();
        assert_eq!(job.work.stopped(), Some(Stop::Shutdown));
        let ender = Arc::clone(&job);
        let t = std::thread::spawn(move || ender.end());
        assert!(job.wait(Duration::from_secs(5)), "ended");
        t.join().expect("join");
    }

    #[test]
    fn a_failure_is_answered_once() {
        let copies = Copies::default();
        copies.failures.lock().expect("lock").insert(volume_key("a"), Error::Busy { keys: vec!["x".into()] });
        assert!(copies.take_failure(&snapshot_key("a")).is_none(), "volume and snapshot names are apart");
        assert!(copies.take_failure(&volume_key("a")).is_some());
        assert!(copies.take_failure(&volume_key("a")).is_none());
    }
}
