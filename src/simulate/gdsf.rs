//! GreedyDual-Size-Frequency (Cherkasova, 1998): a cost-aware replacement policy. Each entry has
//! the priority `H = L + F × C / S` — `F` its requests since it entered the cache, `C` what it
//! cost to make (here its real list price: model, size, quality), `S` its size (bytes; 1 when
//! the budget counts entries) — and when the cache is over its budget the entry of lowest `H`
//! goes first. `L`, the inflation, starts at 0 and becomes the `H` of each evicted entry, so
//! entries that were popular long ago age out: a new entry starts at today's `L`.
//!
//! The cheap, big and rarely asked go first; the expensive, small and often asked stay.

use std::collections::{BTreeSet, HashMap};

/// The priority queue of the entries a cache holds, by id.
#[derive(Debug, Default)]
pub(crate) struct Gdsf {
    inflation: f64,
    /// (H as ordered bits, id): H is never negative, so its bits order like the numbers.
    queue: BTreeSet<(u64, u32)>,
    priority: HashMap<u32, u64>,
}

impl Gdsf {
    /// Sets (or resets, after a request) an entry's priority from its frequency, cost and size.
    pub(crate) fn touch(&mut self, id: u32, frequency: f64, cost: f64, size: f64) {
        let h = self.inflation + frequency * cost.max(0.0) / size.max(f64::MIN_POSITIVE);
        let bits = h.max(0.0).to_bits();
        if let Some(old) = self.priority.insert(id, bits) {
            self.queue.remove(&(old, id));
        }
        self.queue.insert((bits, id));
    }

    /// Takes out the entry of lowest priority, which becomes the inflation.
    pub(crate) fn evict(&mut self) -> Option<u32> {
        let (bits, id) = self.queue.pop_first()?;
        self.priority.remove(&id);
        self.inflation = f64::from_bits(bits);
        Some(id)
    }

    /// The inflation `L` now.
    #[cfg(test)]
    pub(crate) fn inflation(&self) -> f64 {
        self.inflation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheap_big_entry_goes_before_the_expensive_small_one_and_l_inflates() {
        let mut gdsf = Gdsf::default();
        // 1: $0.01, 3 MB; 2: $0.40, 1 MB; 3: $0.04, 1 MB asked twice.
        gdsf.touch(1, 1.0, 0.01, 3e6);
        gdsf.touch(2, 1.0, 0.40, 1e6);
        gdsf.touch(3, 1.0, 0.04, 1e6);
        gdsf.touch(3, 2.0, 0.04, 1e6);
        assert_eq!(gdsf.evict(), Some(1));
        let l = 0.01 / 3e6;
        assert!((gdsf.inflation() - l).abs() < 1e-18);
        // A newcomer starts at L: just above what was evicted.
        gdsf.touch(4, 1.0, 0.01, 3e6);
        assert_eq!(gdsf.evict(), Some(4), "H = L + 0.01/3e6 is the lowest");
        assert_eq!(gdsf.evict(), Some(3), "2 × 0.04 < 0.40");
        assert_eq!(gdsf.evict(), Some(2));
        assert_eq!(gdsf.evict(), None);
    }
}
