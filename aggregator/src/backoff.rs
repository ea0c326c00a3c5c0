//! How long every retried call of the aggregator waits (Kinesis reads and writes, S3 objects).

use std::time::Duration;

/// Exponential backoff with a cap: 100 ms, 200 ms, ... 5 s.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Duration::from_millis(100) }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        delay
    }
}
