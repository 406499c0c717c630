//! Pacing: at most `max_concurrency` generations in flight and `per_minute` started each minute
//! in this process. Waiting happens before the call, so retries inside a generation keep its slot.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use super::{GenerateError, Generated, ImageGenerator};
use crate::job::{AvatarConfig, GeneratorKind};

pub struct Paced {
    inner: Arc<dyn ImageGenerator>,
    slots: Semaphore,
    /// Spacing between starts, when a per-minute limit is set.
    spacing: Option<Duration>,
    next_start: Mutex<Instant>,
}

impl fmt::Debug for Paced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paced")
            .field("inner", &self.inner)
            .field("free_slots", &self.slots.available_permits())
            .field("spacing", &self.spacing)
            .finish()
    }
}

impl Paced {
    pub fn new(inner: Arc<dyn ImageGenerator>, max_concurrency: usize, per_minute: u32) -> Paced {
        let spacing = (per_minute > 0).then(|| Duration::from_secs(60) / per_minute);
        Paced {
            inner,
            slots: Semaphore::new(max_concurrency),
            spacing,
            next_start: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this start's turn under the per-minute limit.
    async fn wait_turn(&self) {
        let Some(spacing) = self.spacing else { return };
        let start = {
            let mut next = self.next_start.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + spacing;
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[async_trait]
impl ImageGenerator for Paced {
    fn kind(&self) -> GeneratorKind {
        self.inner.kind()
    }

    async fn generate(
        &self,
        config: &AvatarConfig,
        user: &str,
    ) -> Result<Generated, GenerateError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| GenerateError::Failed {
                message: "the generator is shutting down".to_owned(),
                retryable: true,
                attempts: 0,
            })?;
        self.wait_turn().await;
        self.inner.generate(config, user).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Default)]
    struct Slow {
        running: AtomicUsize,
        peak: AtomicUsize,
    }

    #[async_trait]
    impl ImageGenerator for Slow {
        fn kind(&self) -> GeneratorKind {
            GeneratorKind::Placeholder
        }
        async fn generate(&self, _: &AvatarConfig, _: &str) -> Result<Generated, GenerateError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(Generated {
                png: Bytes::new(),
                attempts: 1,
                cost_usd: 0.0,
                usage: None,
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_concurrency_in_flight() {
        let slow = Arc::new(Slow::default());
        let paced = Arc::new(Paced::new(slow.clone(), 3, 0));
        let config = AvatarConfig::parse(&json!({})).unwrap();
        let started = Instant::now();
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let (paced, config) = (paced.clone(), config.clone());
                tokio::spawn(async move { paced.generate(&config, "u").await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(slow.peak.load(Ordering::SeqCst), 3);
        // 10 calls of 1 s, 3 at a time: 4 rounds.
        assert_eq!(started.elapsed().as_secs(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_by_the_per_minute_limit() {
        let slow = Arc::new(Slow::default());
        let paced = Arc::new(Paced::new(slow, 100, 60));
        let config = AvatarConfig::parse(&json!({})).unwrap();
        let started = Instant::now();
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let (paced, config) = (paced.clone(), config.clone());
                tokio::spawn(async move { paced.generate(&config, "u").await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        // Starts at 0, 1, 2, 3, 4 s; the last ends at 5 s.
        assert_eq!(started.elapsed().as_secs(), 5);
    }
}
