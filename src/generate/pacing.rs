//! Pacing: at most `max_concurrency` generations in flight and `per_minute` started each minute
//! in this process, so a burst of misses waits its turn instead of drawing 429s. A job takes its
//! turn before it is charged, and retries inside a generation keep the turn they have.

use std::time::Duration;

use tokio::sync::{Mutex, Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Paces generations: at most `max_concurrency` at once and, when a per-minute limit is set,
/// starts spaced evenly across the minute.
#[derive(Debug)]
pub struct Pacer {
    slots: Semaphore,
    /// Spacing between starts, when a per-minute limit is set.
    spacing: Option<Duration>,
    next_start: Mutex<Instant>,
}

/// A generation's turn; the slot frees when it is dropped.
pub type Turn<'a> = SemaphorePermit<'a>;

impl Pacer {
    /// `max_concurrency` slots; `per_minute` starts a minute at most (0 = no limit).
    pub(crate) fn new(max_concurrency: usize, per_minute: u32) -> Pacer {
        let spacing = (per_minute > 0).then(|| Duration::from_secs(60) / per_minute);
        Pacer {
            slots: Semaphore::new(max_concurrency),
            spacing,
            next_start: Mutex::new(Instant::now()),
        }
    }

    /// Waits for a free slot and, under a per-minute limit, for this start's moment.
    pub(crate) async fn turn(&self) -> Turn<'_> {
        // The semaphore is never closed, so acquiring only ever waits.
        let slot = loop {
            if let Ok(slot) = self.slots.acquire().await {
                break slot;
            }
        };
        if let Some(spacing) = self.spacing {
            let start = {
                let mut next = self.next_start.lock().await;
                let start = (*next).max(Instant::now());
                *next = start + spacing;
                start
            };
            tokio::time::sleep_until(start).await;
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Runs `n` one-second "generations" through the pacer; returns the peak concurrency and
    /// the time the last one ended.
    async fn run(pacer: Arc<Pacer>, n: usize) -> (usize, Duration) {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let (pacer, running, peak) = (pacer.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    let _turn = pacer.turn().await;
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        (peak.load(Ordering::SeqCst), started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_concurrency_in_flight() {
        let (peak, took) = run(Arc::new(Pacer::new(3, 0)), 10).await;
        assert_eq!(peak, 3);
        // 10 calls of 1 s, 3 at a time: 4 rounds.
        assert_eq!(took.as_secs(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_by_the_per_minute_limit() {
        let (_, took) = run(Arc::new(Pacer::new(100, 60)), 5).await;
        // Starts at 0, 1, 2, 3, 4 s; the last ends at 5 s.
        assert_eq!(took.as_secs(), 5);
    }
}
