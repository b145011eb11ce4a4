//! A counting global allocator: the system allocator with two relaxed atomic counters,
//! the allocations made and the bytes they asked for. The berth binary installs it
//! (`#[global_allocator]` in main.rs) and leaves it on: two uncontended atomic additions
//! per allocation. `/metrics` reports the counts (`berth_heap_*`), and `berth bench`
//! reads them around each workload to give allocations per call.
//!
//! A process without it installed (unit tests, other binaries) counts nothing, and the
//! metrics are left out.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting. Install it with
/// `#[global_allocator] static HEAP: Counting = Counting;`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counting;

fn count(bytes: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

// SAFETY: every method passes its call to `System` unchanged, so the allocator keeps
// `System`'s guarantees; the counting touches only two static atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller meets `GlobalAlloc::alloc`'s contract, which is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    /// A reallocation counts as an allocation of its new size: it may move the block.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` came from `System` with `layout`; the caller meets `realloc`'s
        // contract for `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations (and reallocations) made so far, and the bytes they asked for; `None` in a
/// process that does not count (the allocator is not installed).
#[must_use]
pub fn counts() -> Option<(u64, u64)> {
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    (allocations > 0).then(|| (allocations, BYTES.load(Ordering::Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_it_passes_to_the_system_allocator() {
        let (before, bytes_before) = (ALLOCATIONS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
        let layout = Layout::from_size_align(48, 8).expect("layout");
        // SAFETY: a non-zero layout; the block is grown with the layout it was made with and
        // freed with the layout of its new size.
        unsafe {
            let p = Counting.alloc(layout);
            assert!(!p.is_null());
            let q = Counting.realloc(p, layout, 96);
            assert!(!q.is_null());
            Counting.dealloc(q, Layout::from_size_align(96, 8).expect("layout"));
        }
        // Other tests may count meanwhile only if they use `Counting`, which none does.
        assert_eq!(ALLOCATIONS.load(Ordering::Relaxed) - before, 2);
        assert_eq!(BYTES.load(Ordering::Relaxed) - bytes_before, 48 + 96);
    }
}
