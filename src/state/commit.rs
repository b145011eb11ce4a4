//! How a change becomes durable: it is journaled, in one write with the changes that
//! arrived meanwhile (group commit), then applied to the tables; and the checkpoints
//! that write every record into a new `records` file and empty the journal, when it is
//! full, half full (in the background), or at shutdown. A full state disk draws on a
//! reserve file kept for one checkpoint.

use std::collections::{HashMap, VecDeque};
use std::io;

use super::{Change, Store, checkpoint, journal, unique_u64};

/// Changes waiting for the journal, and the outcome of those written.
#[derive(Debug, Default)]
pub(super) struct Queue {
    waiting: VecDeque<Pending>,
    /// A caller is writing a batch; the others wait for it.
    writing: bool,
    next_ticket: u64,
    done: HashMap<u64, Result<(), (io::ErrorKind, String)>>,
}

#[derive(Debug)]
struct Pending {
    ticket: u64,
    payload: Vec<u8>,
    change: Change,
}

/// The writer's role while it writes a batch. Dropping it, however the write ends, gives
/// each change of the batch its result and lets the next writer go, so not even a panic
/// leaves later changes waiting for a writer that is gone.
struct Leading<'a> {
    store: &'a Store,
    tickets: Vec<u64>,
    result: Result<(), (io::ErrorKind, String)>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut queue = self.store.queue();
        queue.writing = false;
        for ticket in self.tickets.drain(..) {
            queue.done.insert(ticket, self.result.clone());
        }
        self.store.written.notify_all();
    }
}

impl Queue {
    /// The waiting changes, oldest first, as many as an empty journal holds.
    fn batch(&mut self) -> Vec<Pending> {
        let mut size = 0;
        let mut take = 0;
        for pending in &self.waiting {
            size += journal::frame_size(pending.payload.len());
            if take > 0 && size > journal::SIZE {
                break;
            }
            take += 1;
        }
        self.waiting.drain(..take).collect()
    }
}

/// Whether `e` says the disk (or the quota) is full.
fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Room kept on the state filesystem for a checkpoint when it fills up.
mod reserve {
    use std::fs;
    use std::path::Path;

    const NAME: &str = "reserve";
    /// Enough for a checkpoint of about 10,000 records.
    const SIZE: i64 = 4 << 20;

    /// Frees the reserve; whether there was one.
    pub fn release(root: &Path) -> bool {
        fs::remove_file(root.join(NAME)).is_ok()
    }

    /// Makes the reserve (real blocks, not a hole) if it is missing and the room is there.
    pub fn ensure(root: &Path) {
        let path = root.join(NAME);
        if path.exists() {
            return;
        }
        let made = fs::File::create(&path).and_then(|f| {
            nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, SIZE).map_err(std::io::Error::from)
        });
        if made.is_err() {
            let _ = fs::remove_file(&path);
        }
    }
}

impl Store {
    /// Makes `change` durable in the journal, then visible. Changes that arrive while a
    /// write is under way wait and go together in the next one (group commit), so
    /// concurrent callers share the cost of a durable write instead of queueing for it.
    pub(super) fn commit(&self, change: Change) -> io::Result<()> {
        let payload = serde_json::to_vec(&change).map_err(io::Error::other)?;
        let mut queue = self.queue();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push_back(Pending { ticket, payload, change });
        loop {
            if let Some(result) = queue.done.remove(&ticket) {
                return result.map_err(|(kind, message)| io::Error::new(kind, message));
            }
            if queue.writing {
                queue = self.written.wait(queue).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            queue.writing = true;
            let batch = queue.batch();
            drop(queue);
            let mut lead = Leading {
                store: self,
                tickets: batch.iter().map(|p| p.ticket).collect(),
                result: Err((io::ErrorKind::Other, "the journal write did not finish".into())),
            };
            lead.result = self.write_batch(batch).map_err(|e| (e.kind(), e.to_string()));
            drop(lead);
            queue = self.queue();
        }
    }

    /// Journals a batch of changes in one write (checkpointing first when they do not fit
    /// or a write failed), then applies them in order.
    fn write_batch(&self, batch: Vec<Pending>) -> io::Result<()> {
        let mut journal = self.journal();
        let size = batch.iter().map(|p| journal::frame_size(p.payload.len())).sum();
        if journal.broken || !journal.fits(size) {
            self.checkpoint_locked(&mut journal)?;
        }
        let payloads: Vec<&[u8]> = batch.iter().map(|p| p.payload.as_slice()).collect();
        if let Err(e) = journal.append(&payloads) {
            // The frames may be on disk all the same (an error after the data landed).
            // The callers hear that their changes failed, so a checkpoint of the maps,
            // which lack them, retires those frames before anyone is told. If it fails
            // too, the journal stays broken and takes no change until one succeeds.
            let _ = self.checkpoint_locked(&mut journal);
            return Err(e);
        }
        let mut maps = self.maps();
        for p in batch {
            maps.apply(p.change);
        }
        Ok(())
    }

    /// Writes every record into a new checkpoint and empties the journal.
    pub fn checkpoint(&self) -> io::Result<()> {
        let mut journal = self.journal();
        self.checkpoint_locked(&mut journal)
    }

    fn checkpoint_locked(&self, journal: &mut journal::Journal) -> io::Result<()> {
        let epoch = unique_u64(journal.epoch());
        // Written under the map lock, synced without it: readers wait for the write only.
        // The journal lock, held throughout, keeps changes out of the maps meanwhile.
        let resize = !journal.current();
        // The size the file has now: a resize makes it larger, never smaller.
        let journal_size = journal.usage().1;
        let write = || {
            let maps = self.maps();
            checkpoint::write_tmp(&self.root, epoch, journal_size, &maps)
        };
        let written = match write() {
            // A full state disk: the reserve gives the room for this checkpoint, so changes,
            // deletes above all, go on and can free space.
            Err(e) if is_full(&e) && reserve::release(&self.root) => {
                tracing::error!(path = %self.root.display(), "the state filesystem is full: used berth's reserve for a checkpoint; free space there");
                write()
            }
            other => other,
        };
        let tmp = match written {
            Ok(tmp) => tmp,
            Err(e) => {
                // Nothing on disk changed but a temp file (a full disk, most often): the old
                // checkpoint and the journal still hold everything, and changes may go on
                // in the journal while it has room. The temp file goes, to give back space.
                checkpoint::remove_tmp(&self.root);
                return Err(e);
            }
        };
        let done = checkpoint::install(&self.root, tmp).and_then(|()| journal.restart(epoch, resize));
        if done.is_ok() {
            reserve::ensure(&self.root);
        }
        if done.is_err() {
            // The checkpoint on disk may be either one: append nothing until one is whole.
            journal.broken = true;
        }
        done
    }

    /// Whether the journal is half full (or a write failed), so a background checkpoint
    /// should empty it before a change has to. Never waits for a change in progress.
    pub fn checkpoint_due(&self) -> bool {
        let journal = match self.journal.try_lock() {
            Ok(journal) => journal,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        let (used, size) = journal.usage();
        journal.broken || used * 2 >= size
    }

    /// Checkpoints if anything was journaled since the last checkpoint (at shutdown, so
    /// the next start reads one file). Returns whether it wrote.
    pub fn checkpoint_if_changed(&self) -> io::Result<bool> {
        let mut journal = self.journal();
        if journal.usage().0 == 0 && !journal.broken {
            return Ok(false);
        }
        self.checkpoint_locked(&mut journal)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::testutil::{epoch_on_disk, volume};
    use super::*;

    #[test]
    fn a_full_journal_is_checkpointed_by_the_change_that_does_not_fit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        let frames = journal::SIZE as usize / journal::BLOCK;
        let mut due_seen = false;
        for i in 0..frames + 10 {
            store.put_volume(&volume(&format!("vol:p:{i}"), &format!("n{i}"))).expect("put");
            due_seen |= store.checkpoint_due();
        }
        assert!(due_seen, "a background checkpoint was due at half full");
        assert_eq!(store.journal().usage().0, 10 * journal::BLOCK as u64, "the change that did not fit went first");
        drop(store);
        let (store, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.volume_count(), frames + 10);
    }

    #[test]
    fn concurrent_changes_share_writes_and_all_survive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        let store = std::sync::Arc::new(store);
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..40 {
                        let id = format!("vol:p:{t}-{i}");
                        store.put_volume(&volume(&id, &id)).expect("put");
                        if i % 2 == 0 {
                            store.remove_volume(&id).expect("remove");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(store.volume_count(), 16 * 20);
        assert!(store.queue().waiting.is_empty() && store.queue().done.is_empty(), "nothing left behind");
        drop(store);
        let (store, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.volume_count(), 16 * 20);
        assert!(store.volume("vol:p:3-1").is_some() && store.volume("vol:p:3-2").is_none());
    }

    #[test]
    fn a_failed_write_makes_the_next_change_checkpoint_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        store.put_volume(&volume("vol:p:1", "a")).expect("put");
        let epoch = epoch_on_disk(dir.path());
        store.journal().broken = true;
        assert!(store.checkpoint_due());
        store.put_volume(&volume("vol:p:2", "b")).expect("put");
        assert_ne!(epoch_on_disk(dir.path()), epoch);
        drop(store);
        let (store, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.volume_count(), 2);
    }

    #[test]
    fn a_checkpoint_that_cannot_be_written_leaves_the_journal_taking_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path()).expect("open");
        assert!(dir.path().join("state/reserve").exists(), "room kept for a checkpoint on a full disk");
        store.put_volume(&volume("vol:p:1", "a")).expect("put");
        // The temp file cannot be made: nothing on disk changes.
        fs::create_dir(dir.path().join("state/.records.tmp")).expect("block the temp file");
        assert!(store.checkpoint().is_err());
        assert!(!store.journal().broken, "the old checkpoint and the journal still hold everything");
        store.put_volume(&volume("vol:p:2", "b")).expect("changes go on in the journal");
        store.remove_volume("vol:p:1").expect("and deletes");
        drop(store);
        let (store, _) = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.volumes_where(|_| true).len(), 1);
        assert!(store.volume("vol:p:2").is_some());
    }
}
