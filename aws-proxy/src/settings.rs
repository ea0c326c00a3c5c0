//! Everything the proxy can be told, and the one-line form scripts and the control endpoint
//! use: `throttle=0.1,error=0.02,seed=7` (`AWS_FAULTS` for `scripts/dev-env up`).

use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_kinesis::config::Credentials;

use metrics_pipeline_model::duration::parse_duration;

use crate::faults::FaultSettings;
use crate::rules::RuleSettings;
use crate::rules::object_hold::Hold;

/// How a proxy starts; everything but `listen` and the credentials can change while it runs.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Where it listens; the default, port 0 on 127.0.0.1, picks a free port.
    pub listen: SocketAddr,
    pub faults: FaultSettings,
    pub rules: RuleSettings,
    pub holds: Vec<Hold>,
    /// The account named in throttling messages (moto's default account).
    pub account_id: String,
    /// Credentials of the proxy's own calls to the emulator (the stream lookup before an
    /// UpdateShardCount, the tags of a create call); the default credential chain when `None`. Needed when the emulator
    /// enforces IAM: then they must allow `kinesis:DescribeStreamSummary`, `kinesis:AddTagsToStream`
    /// and `s3:PutBucketTagging`.
    pub upstream_credentials: Option<Credentials>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            faults: FaultSettings::none(),
            rules: RuleSettings::default(),
            holds: Vec::new(),
            account_id: "123456789012".to_owned(),
            upstream_credentials: None,
        }
    }
}

/// The keys of the one-line form, for error messages.
pub const SPEC_KEYS: &str =
    "seed, throttle, error, drop, lost, latency, latency-rate, scope, iam-propagation, scalings-per-day, transition, quotas, hold";

impl ProxySettings {
    /// Applies `key=value` pairs separated by commas, e.g.
    /// `throttle=0.1,error=0.02,latency=50ms,seed=7,scope=kinesis+s3:DeleteObjects,iam-propagation=10s,transition=5s,quotas=on,hold=bucket/prefix`.
    /// Keys not given keep their value; `scope=all` clears the scope; `hold` adds a hold.
    pub fn apply_spec(&mut self, spec: &str) -> Result<(), String> {
        for pair in spec.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not key=value; keys: {SPEC_KEYS}"))?;
            let fraction = || value.parse::<f64>().map_err(|_| format!("{key}={value}: not a number"));
            let duration = || parse_duration(value).map_err(|error| format!("{key}: {error}"));
            match key {
                "seed" => self.faults.seed = value.parse().map_err(|_| format!("seed={value}: not a whole number"))?,
                "throttle" => self.faults.throttle_rate = fraction()?,
                "error" => self.faults.error_rate = fraction()?,
                "drop" => self.faults.drop_rate = fraction()?,
                "lost" => self.faults.lost_answer_rate = fraction()?,
                "latency" => self.faults.latency = duration()?,
                "latency-rate" => self.faults.latency_rate = fraction()?,
                "scope" if value == "all" => self.faults.scope.clear(),
                "scope" => self.faults.scope = value.split('+').map(str::parse).collect::<Result<_, _>>()?,
                "iam-propagation" => self.rules.iam_propagation = duration()?,
                "transition" => self.rules.transition = duration()?,
                "quotas" => {
                    self.rules.quotas = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("quotas={value}: write quotas=on or quotas=off")),
                    };
                }
                "scalings-per-day" => {
                    self.rules.scalings_per_day = value.parse().map_err(|_| format!("scalings-per-day={value}: not a whole number"))?;
                }
                "hold" => {
                    let (bucket, prefix) =
                        value.split_once('/').ok_or_else(|| format!("hold={value}: write hold=<bucket>/<key prefix>"))?;
                    self.holds.push(Hold::new(bucket, prefix));
                }
                _ => return Err(format!("unknown key `{key}`; keys: {SPEC_KEYS}")),
            }
        }
        self.faults.validate()
    }
}

/// A duration for command-line flags: `200ms`, `10s`, `1m`.
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Selector;
    use crate::protocol::Service;

    #[test]
    fn the_one_line_form_sets_faults_rules_and_holds() {
        let mut settings = ProxySettings::default();
        settings
            .apply_spec("throttle=0.1, error=0.02,seed=7,latency=50ms,latency-rate=0.5,scope=kinesis+s3:DeleteObjects,iam-propagation=10s,scalings-per-day=3,transition=5s,quotas=on,hold=b/held/")
            .unwrap();
        let faults = &settings.faults;
        assert_eq!((faults.throttle_rate, faults.error_rate, faults.seed, faults.latency_rate), (0.1, 0.02, 7, 0.5));
        assert_eq!(faults.latency, Duration::from_millis(50));
        assert_eq!(
            faults.scope,
            [
                Selector { service: Service::Kinesis, operation: None },
                Selector { service: Service::S3, operation: Some("DeleteObjects".into()) }
            ]
        );
        let rules = &settings.rules;
        assert_eq!((rules.iam_propagation, rules.scalings_per_day, rules.transition), (Duration::from_secs(10), 3, Duration::from_secs(5)));
        assert!(rules.quotas);
        assert_eq!(settings.holds, [Hold::new("b", "held/")]);

        settings.apply_spec("throttle=0,scope=all").unwrap();
        assert_eq!((settings.faults.throttle_rate, settings.faults.error_rate, settings.faults.scope.len()), (0.0, 0.02, 0));
    }

    #[test]
    fn mistakes_name_the_key_and_the_fix() {
        let mut settings = ProxySettings::default();
        assert!(settings.apply_spec("throttel=0.1").unwrap_err().starts_with("unknown key `throttel`; keys: seed"));
        assert_eq!(settings.apply_spec("throttle").unwrap_err(), format!("`throttle` is not key=value; keys: {SPEC_KEYS}"));
        assert_eq!(settings.apply_spec("error=lots").unwrap_err(), "error=lots: not a number");
        assert!(settings.apply_spec("latency=5").unwrap_err().starts_with("latency: `5` is not a duration"));
        assert!(settings.apply_spec("scope=lambda").unwrap_err().contains("unknown service `lambda`"));
        assert_eq!(settings.apply_spec("hold=bucket").unwrap_err(), "hold=bucket: write hold=<bucket>/<key prefix>");
        assert!(settings.apply_spec("throttle=0.7,error=0.7").unwrap_err().contains("more than every call"));
    }
}
