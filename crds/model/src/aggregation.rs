//! How events are windowed: the settings as people write them (durations as text, in
//! `spec.aggregation` or the aggregator's flags), their defaults, and the checked [`WindowConfig`]
//! the window engine runs on.

use std::fmt;
use std::time::Duration;

use crate::duration::parse_duration;

pub const DEFAULT_WINDOW: &str = "1m";
pub const DEFAULT_OUT_OF_ORDERNESS: &str = "10s";
pub const DEFAULT_ALLOWED_LATENESS: &str = "1m";
pub const DEFAULT_IDLE_TIMEOUT: &str = "30s";

/// The aggregation settings as written, each a duration such as `1m` or `1h30m`.
#[derive(Clone, Copy, Debug)]
pub struct AggregationSettings<'a> {
    pub window: &'a str,
    pub out_of_orderness: &'a str,
    pub allowed_lateness: &'a str,
    pub idle_timeout: &'a str,
}

/// One setting that cannot be used: its name as `spec.aggregation` spells it, and what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingError {
    pub setting: &'static str,
    pub message: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

/// Windowing whose every setting has been checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    pub window: Duration,
    pub out_of_orderness: Duration,
    pub allowed_lateness: Duration,
    pub idle_timeout: Duration,
}

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);

impl WindowConfig {
    /// Checks every setting; returns all problems at once.
    pub fn parse(settings: &AggregationSettings<'_>) -> Result<Self, Vec<SettingError>> {
        let mut errors = Vec::new();
        let mut problem = |setting: &'static str, message: String| errors.push(SettingError { setting, message });
        let mut parse = |setting: &'static str, value: &str| match parse_duration(value) {
            Ok(duration) => Some(duration),
            Err(error) => {
                problem(setting, error.to_string());
                None
            }
        };
        let window = parse("window", settings.window);
        let out_of_orderness = parse("outOfOrderness", settings.out_of_orderness);
        let allowed_lateness = parse("allowedLateness", settings.allowed_lateness);
        let idle_timeout = parse("idleTimeout", settings.idle_timeout);

        let mut problem = |setting: &'static str, message: String| errors.push(SettingError { setting, message });
        if let Some(window) = window
            && !(SECOND..=DAY).contains(&window)
        {
            problem("window", format!("`{}` is out of range: use 1s to 1d", settings.window));
        }
        if let Some(out_of_orderness) = out_of_orderness
            && out_of_orderness > DAY
        {
            problem(
                "outOfOrderness",
                format!("`{}` is more than 1d: every open window would be held that long; use 1d or less", settings.out_of_orderness),
            );
        }
        if let Some(allowed_lateness) = allowed_lateness
            && allowed_lateness > 7 * DAY
        {
            problem(
                "allowedLateness",
                format!("`{}` is more than 7d: fired windows would be kept that long; use 7d or less", settings.allowed_lateness),
            );
        }
        if let Some(idle_timeout) = idle_timeout {
            if idle_timeout < SECOND {
                problem("idleTimeout", format!("`{}` is too short: use at least 1s", settings.idle_timeout));
            } else if let Some(out_of_orderness) = out_of_orderness
                && idle_timeout < out_of_orderness
            {
                problem(
                    "idleTimeout",
                    format!(
                        "`{}` is shorter than outOfOrderness `{}`: windows would fire before the out-of-order events they wait \
                         for can arrive; make idleTimeout at least as long as outOfOrderness",
                        settings.idle_timeout, settings.out_of_orderness
                    ),
                );
            }
        }
        match (window, out_of_orderness, allowed_lateness, idle_timeout) {
            (Some(window), Some(out_of_orderness), Some(allowed_lateness), Some(idle_timeout)) if errors.is_empty() => {
                Ok(Self { window, out_of_orderness, allowed_lateness, idle_timeout })
            }
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings<'a>(window: &'a str, idle_timeout: &'a str) -> AggregationSettings<'a> {
        AggregationSettings { window, out_of_orderness: DEFAULT_OUT_OF_ORDERNESS, allowed_lateness: DEFAULT_ALLOWED_LATENESS, idle_timeout }
    }

    #[test]
    fn the_defaults_are_a_valid_configuration() {
        let defaults = settings(DEFAULT_WINDOW, DEFAULT_IDLE_TIMEOUT);
        let config = WindowConfig::parse(&defaults).unwrap();
        assert_eq!((config.window, config.idle_timeout), (Duration::from_secs(60), Duration::from_secs(30)));
    }

    #[test]
    fn every_problem_names_its_setting() {
        let errors = WindowConfig::parse(&settings("0s", "soon")).unwrap_err();
        let named: Vec<&str> = errors.iter().map(|error| error.setting).collect();
        assert_eq!(named, ["idleTimeout", "window"]);
        assert!(errors[1].to_string().starts_with("window: `0s` is out of range"), "{}", errors[1]);
    }
}
