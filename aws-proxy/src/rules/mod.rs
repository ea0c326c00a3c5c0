//! AWS's rules that moto does not enforce, each a pure decision plus the little state it needs.

pub mod iam_propagation;
pub mod object_hold;
pub mod quotas;
pub mod shard_count;
pub mod tags_on_create;
pub mod transitions;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How strict the rules are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSettings {
    /// How long after CreateRole / PutRolePolicy / UpdateAssumeRolePolicy / AttachRolePolicy
    /// Firehose refuses the role. Zero turns the rule off.
    #[serde(rename = "iamPropagationMs", with = "crate::faults::millis")]
    pub iam_propagation: Duration,
    /// UpdateShardCount calls a stream may make per rolling 24 hours (AWS: 10).
    pub scalings_per_day: u32,
    /// How long a new or scaled stream and a new delivery stream stay CREATING or UPDATING
    /// (AWS: seconds to minutes; moto: not at all). Zero turns the rule off.
    #[serde(rename = "transitionMs", with = "crate::faults::millis")]
    pub transition: Duration,
    /// Throttle calls above AWS's documented per-account request rates ([`quotas::DOCUMENTED`]).
    pub quotas: bool,
}

impl Default for RuleSettings {
    fn default() -> Self {
        RuleSettings {
            iam_propagation: Duration::ZERO,
            scalings_per_day: shard_count::SCALINGS_PER_DAY,
            transition: Duration::ZERO,
            quotas: false,
        }
    }
}
