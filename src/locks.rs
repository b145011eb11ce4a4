//! Per-object operation guards: a second operation on a busy volume or snapshot is told
//! to come back later (ABORTED) instead of queueing behind a global mutex.
//!
//! Most keys are held by one operation at a time. A copy from a source (a clone, a
//! restore) holds the source's [`reading`] key shared instead: copies of one source run
//! together, and so do the source's own node operations, but deleting the source, which
//! takes that key exclusively, waits until no copy reads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The key a copy holds shared on what it reads, and a deletion holds exclusively.
#[must_use]
pub fn reading(id: &str) -> String {
    format!("reading:{id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Exclusive,
    /// By this many operations.
    Shared(usize),
}

/// The keys with an operation in flight.
#[derive(Debug, Default, Clone)]
pub struct Locks {
    held: Arc<Mutex<HashMap<String, Hold>>>,
}

/// Holds its keys until dropped.
#[derive(Debug)]
pub struct Guard {
    held: Arc<Mutex<HashMap<String, Hold>>>,
    exclusive: Vec<String>,
    shared: Vec<String>,
}

impl Locks {
    /// Takes every key exclusively, or none: `None` when any of them is held.
    pub fn try_lock<I, S>(&self, keys: I) -> Option<Guard>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.try_lock_sharing(keys, std::iter::empty::<String>())
    }

    /// Takes `exclusive` keys exclusively and `shared` ones shared, or none: `None` when
    /// an exclusive key is held at all, or a shared one exclusively.
    pub fn try_lock_sharing<I, J, S, T>(&self, exclusive: I, shared: J) -> Option<Guard>
    where
        I: IntoIterator<Item = S>,
        J: IntoIterator<Item = T>,
        S: Into<String>,
        T: Into<String>,
    {
        let exclusive: Vec<String> = exclusive.into_iter().map(Into::into).collect();
        let shared: Vec<String> = shared.into_iter().map(Into::into).collect();
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let busy = exclusive.iter().any(|k| held.contains_key(k))
            || shared.iter().any(|k| held.get(k) == Some(&Hold::Exclusive));
        if busy {
            return None;
        }
        for key in &exclusive {
            held.insert(key.clone(), Hold::Exclusive);
        }
        for key in &shared {
            let hold = held.entry(key.clone()).or_insert(Hold::Shared(0));
            if let Hold::Shared(n) = hold {
                *n += 1;
            }
        }
        Some(Guard { held: Arc::clone(&self.held), exclusive, shared })
    }

    /// How many keys are held now (for metrics and tests).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in &self.exclusive {
            held.remove(key);
        }
        for key in &self.shared {
            match held.get_mut(key) {
                Some(Hold::Shared(n)) if *n > 1 => *n -= 1,
                _ => {
                    held.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_key_is_refused_until_released() {
        let locks = Locks::default();
        let first = locks.try_lock(["vol:a"]).expect("free");
        assert!(locks.try_lock(["vol:a"]).is_none());
        assert!(locks.try_lock(["vol:b", "vol:a"]).is_none(), "all or nothing");
        assert!(locks.try_lock(["vol:b"]).is_some(), "other keys are free");
        drop(first);
        assert!(locks.try_lock(["vol:a"]).is_some());
        assert_eq!(locks.in_flight(), 0);
    }

    #[test]
    fn copies_share_a_source_and_its_deletion_waits_for_all_of_them() {
        let locks = Locks::default();
        let copy = |name: &str| locks.try_lock_sharing([name.to_string()], [reading("vol:src")]);
        let one = copy("volume-name:one").expect("free");
        let two = copy("volume-name:two").expect("copies share their source");
        let delete = || locks.try_lock(["vol:src".to_string(), reading("vol:src")]);
        assert!(locks.try_lock(["vol:src"]).is_some(), "the source's node operations go on");
        assert!(delete().is_none());
        drop(one);
        assert!(delete().is_none(), "one copy still reads it");
        drop(two);
        let deleting = delete().expect("no copy reads it");
        assert!(copy("volume-name:three").is_none(), "no copy starts from a source being deleted");
        drop(deleting);
        assert_eq!(locks.in_flight(), 0);
    }
}
