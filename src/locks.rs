//! Per-object operation guards: a second operation on a busy volume or snapshot is told
//! to come back later (ABORTED) instead of queueing behind a global mutex.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The set of keys with an operation in flight.
#[derive(Debug, Default, Clone)]
pub struct Locks {
    held: Arc<Mutex<HashSet<String>>>,
}

/// Holds a key until dropped.
#[derive(Debug)]
pub struct Guard {
    held: Arc<Mutex<HashSet<String>>>,
    keys: Vec<String>,
}

impl Locks {
    /// Takes every key or none: `None` when any of them is busy.
    pub fn try_lock<I, S>(&self, keys: I) -> Option<Guard>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if keys.iter().any(|k| held.contains(k)) {
            return None;
        }
        for key in &keys {
            held.insert(key.clone());
        }
        Some(Guard { held: Arc::clone(&self.held), keys })
    }

    /// How many keys are held now (for metrics and tests).
    pub fn in_flight(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            held.remove(key);
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
}
