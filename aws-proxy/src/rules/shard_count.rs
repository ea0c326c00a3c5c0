//! `UpdateShardCount`'s limits, which moto does not enforce. AWS's API reference: a call may
//! not scale up to more than double or down below half the current open shard count, and a
//! stream may be scaled at most ten times per rolling 24-hour period; each refusal is a
//! `LimitExceededException` (400). The ×2 messages are AWS's own; AWS does not document the
//! daily limit's text, so that one is ours, in AWS's style and without "Rate exceeded" (it is a
//! quota, not throttling).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::protocol::AwsError;

/// AWS's default number of scalings per stream per rolling 24 hours.
pub const SCALINGS_PER_DAY: u32 = 10;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The request's stream and target, as the JSON body names them.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateShardCount {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub target_shard_count: u32,
}

/// Why AWS refuses an `UpdateShardCount`, if it does: `open_shards` is the stream's current
/// open shard count, `recent_scalings` how often it was scaled in the last 24 hours.
pub fn refusal(
    open_shards: u32,
    target: u32,
    recent_scalings: usize,
    scalings_per_day: u32,
    stream: &str,
    account: &str,
) -> Option<AwsError> {
    let counts = format!("Current open shard count: {open_shards} Target shard count: {target}");
    let message = if u64::from(target) > 2 * u64::from(open_shards) {
        format!("UpdateShardCount cannot scale up over double your current open shard count. {counts}")
    } else if 2 * u64::from(target) < u64::from(open_shards) {
        format!("UpdateShardCount cannot scale down below half your current open shard count. {counts}")
    } else if recent_scalings >= scalings_per_day as usize {
        format!(
            "Exceeded the limit of {scalings_per_day} UpdateShardCount calls per rolling 24-hour period for stream {stream} under account {account}."
        )
    } else {
        return None;
    };
    Some(AwsError::new(400, "LimitExceededException", message))
}

/// When each stream was scaled, for the rolling 24-hour limit.
#[derive(Debug, Default)]
pub struct ScalingHistory {
    by_stream: HashMap<String, VecDeque<Instant>>,
}

impl ScalingHistory {
    /// Scalings of `stream` in the 24 hours before `now`.
    pub fn recent(&mut self, stream: &str, now: Instant) -> usize {
        let Some(times) = self.by_stream.get_mut(stream) else { return 0 };
        while times.front().is_some_and(|&at| now.duration_since(at) >= DAY) {
            times.pop_front();
        }
        times.len()
    }

    pub fn record(&mut self, stream: &str, now: Instant) {
        self.by_stream.entry(stream.to_owned()).or_default().push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(open: u32, target: u32, recent: usize) -> Option<String> {
        refusal(open, target, recent, 2, "in", "123456789012").map(|error| {
            assert_eq!((error.status.as_u16(), error.code.as_str()), (400, "LimitExceededException"));
            error.message
        })
    }

    #[test]
    fn at_most_double_and_at_least_half_per_call() {
        assert_eq!(refused(1, 2, 0), None);
        assert_eq!(refused(3, 6, 0), None);
        assert_eq!(refused(4, 2, 0), None);
        assert_eq!(refused(3, 2, 0), None);
        assert_eq!(
            refused(1, 4, 0).as_deref(),
            Some(
                "UpdateShardCount cannot scale up over double your current open shard count. Current open shard count: 1 Target shard count: 4"
            )
        );
        assert_eq!(
            refused(3, 1, 0).as_deref(),
            Some(
                "UpdateShardCount cannot scale down below half your current open shard count. Current open shard count: 3 Target shard count: 1"
            )
        );
    }

    #[test]
    fn the_daily_limit_is_a_quota_not_throttling() {
        assert_eq!(refused(2, 4, 1), None);
        let message = refused(2, 4, 2).unwrap();
        assert!(
            message.starts_with("Exceeded the limit of 2 UpdateShardCount calls per rolling 24-hour period for stream in"),
            "{message}"
        );
        assert!(!message.contains("Rate exceeded"));
    }

    #[test]
    fn scalings_leave_the_window_after_24_hours() {
        let mut history = ScalingHistory::default();
        let start = Instant::now();
        history.record("in", start);
        history.record("in", start + Duration::from_secs(3600));
        history.record("out", start);
        assert_eq!(history.recent("in", start + Duration::from_secs(7200)), 2);
        assert_eq!(history.recent("in", start + DAY), 1);
        assert_eq!(history.recent("in", start + DAY + Duration::from_secs(3600)), 0);
        assert_eq!(history.recent("out", start), 1);
        assert_eq!(history.recent("other", start), 0);
    }
}
