//! Test data: metric events for C components × M metrics, deterministic for a seed, with event
//! times shifted back by a random jitter so they arrive out of order.

use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

use metrics_pipeline_model::event::{EventTime, MetricEvent};
use tokio::time::Instant;

use crate::kinesis::sink::{KinesisSink, MAX_BATCH_RECORDS, OutputRecord};

#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: String,
    pub unit: String,
}

/// How producers spread events over shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PartitionKey {
    /// The component's name, as most producers do: a component stays on one shard.
    Component,
    /// A fresh key per event: every key's events are spread over all shards.
    Random,
}

#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    pub components: Vec<String>,
    pub metrics: Vec<Metric>,
    /// Event time of the first round.
    pub start: EventTime,
    /// Event time between rounds; each round has one event per component and metric.
    pub step: Duration,
    /// Each event's time is moved back by a random amount up to this.
    pub jitter: Duration,
    pub seed: u64,
}

/// The events of a [`GeneratorConfig`], round after round, without end.
pub struct Generator {
    config: GeneratorConfig,
    produced: u64,
    random: SplitMix64,
    /// Separate from `random`, so the events do not depend on how they are keyed.
    key_random: SplitMix64,
}

impl Generator {
    pub fn new(config: GeneratorConfig) -> Self {
        assert!(!config.components.is_empty() && !config.metrics.is_empty(), "at least one component and one metric");
        let (random, key_random) = (SplitMix64(config.seed), SplitMix64(!config.seed));
        Self { config, produced: 0, random, key_random }
    }

    /// The partition key a producer would give `event`.
    fn partition_key(&mut self, event: &MetricEvent<'_>, mode: PartitionKey) -> String {
        match mode {
            PartitionKey::Component => event.component_name.to_string(),
            PartitionKey::Random => format!("{:016x}", self.key_random.next()),
        }
    }
}

impl Iterator for Generator {
    type Item = MetricEvent<'static>;

    fn next(&mut self) -> Option<Self::Item> {
        let per_round = (self.config.components.len() * self.config.metrics.len()) as u64;
        let (round, index) = (self.produced / per_round, (self.produced % per_round) as usize);
        self.produced += 1;
        let component = &self.config.components[index / self.config.metrics.len()];
        let metric = &self.config.metrics[index % self.config.metrics.len()];
        let step_ms = self.config.step.as_millis() as i64;
        let jitter_ms = self.config.jitter.as_millis() as u64;
        let jitter = if jitter_ms == 0 { 0 } else { self.random.next() % (jitter_ms + 1) } as i64;
        let value = (self.random.next() % 10_000) as f64 / 100.0;
        Some(MetricEvent {
            component_name: Cow::Owned(component.clone()),
            metric_name: Cow::Owned(metric.name.clone()),
            unit: Cow::Owned(metric.unit.clone()),
            value,
            timestamp: EventTime(self.config.start.0 + round as i64 * step_ms - jitter),
        })
    }
}

/// Publishes `count` events (or until `stop`), at `rate` events per second (as fast as the
/// stream takes them when `None`). Returns how many were published.
pub async fn publish(
    sink: &KinesisSink,
    mut generator: Generator,
    partition_key: PartitionKey,
    count: Option<u64>,
    rate: Option<f64>,
    stop: impl Future<Output = ()>,
) -> u64 {
    tokio::pin!(stop);
    let started = Instant::now();
    let chunk = rate.map_or(MAX_BATCH_RECORDS, |rate| ((rate / 10.0) as usize).clamp(1, MAX_BATCH_RECORDS));
    let mut published = 0u64;
    while count.is_none_or(|count| published < count) {
        let size = count.map_or(chunk, |count| chunk.min((count - published) as usize));
        let events: Vec<MetricEvent<'static>> = (&mut generator).take(size).collect();
        let records: Vec<OutputRecord> = events
            .iter()
            .map(|event| OutputRecord {
                partition_key: generator.partition_key(event, partition_key),
                data: serde_json::to_vec(event).expect("an event always serializes"),
            })
            .collect();
        tokio::select! {
            biased;
            () = &mut stop => break,
            () = sink.put_all(records) => published += size as u64,
        }
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(published as f64 / rate);
            tokio::select! {
                biased;
                () = &mut stop => break,
                () = tokio::time::sleep_until(due) => {}
            }
        }
    }
    published
}

/// A small, seedable, portable random sequence (SplitMix64): the same events on every machine.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(jitter: Duration) -> GeneratorConfig {
        GeneratorConfig {
            components: vec!["user-service".into(), "order-service".into()],
            metrics: vec![Metric { name: "cpu".into(), unit: "percent".into() }, Metric { name: "ram".into(), unit: "MB".into() }],
            start: EventTime(1_000_000),
            step: Duration::from_secs(1),
            jitter,
            seed: 7,
        }
    }

    #[test]
    fn each_round_has_every_component_and_metric_once() {
        let events: Vec<_> = Generator::new(config(Duration::ZERO)).take(8).collect();
        let keys: Vec<(&str, &str, i64)> = events.iter().map(|e| (&*e.component_name, &*e.metric_name, e.timestamp.0)).collect();
        assert_eq!(
            keys,
            [
                ("user-service", "cpu", 1_000_000),
                ("user-service", "ram", 1_000_000),
                ("order-service", "cpu", 1_000_000),
                ("order-service", "ram", 1_000_000),
                ("user-service", "cpu", 1_001_000),
                ("user-service", "ram", 1_001_000),
                ("order-service", "cpu", 1_001_000),
                ("order-service", "ram", 1_001_000),
            ]
        );
    }

    #[test]
    fn jitter_moves_events_back_by_at_most_the_jitter_and_out_of_order() {
        let events: Vec<_> = Generator::new(config(Duration::from_secs(5))).take(400).collect();
        for (n, event) in events.iter().enumerate() {
            let nominal = 1_000_000 + (n as i64 / 4) * 1_000;
            assert!((nominal - 5_000..=nominal).contains(&event.timestamp.0), "event {n} at {}", event.timestamp.0);
        }
        assert!(events.windows(2).any(|pair| pair[1].timestamp < pair[0].timestamp), "some events arrive out of order");
    }

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let first: Vec<_> = Generator::new(config(Duration::from_secs(5))).take(50).collect();
        let second: Vec<_> = Generator::new(config(Duration::from_secs(5))).take(50).collect();
        assert_eq!(first, second);
    }
}
