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
pub const DEFAULT_MAX_FUTURE_SKEW: &str = "5m";

/// The aggregation settings as written, each a duration such as `1m` or `1h30m`.
#[derive(Clone, Copy, Debug)]
pub struct AggregationSettings<'a> {
    pub window: &'a str,
    pub out_of_orderness: &'a str,
    pub allowed_lateness: &'a str,
    pub idle_timeout: &'a str,
    pub max_future_skew: &'a str,
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
    /// Events stamped later than the wall clock plus this are refused (dead-lettered); within
    /// it they count in their window, but a shard's clock never runs ahead of the wall clock.
    pub max_future_skew: Duration,
}

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);
/// Most fired windows allowedLateness may keep per key (a day of 1m windows): each is held in
/// memory and written in every checkpoint.
pub const MAX_WINDOWS_KEPT_PER_KEY: u128 = 1_440;

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
        let max_future_skew = parse("maxFutureSkew", settings.max_future_skew);

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
        // Every fired window is kept for allowedLateness and rides in every checkpoint: a 1s window
        // with 7d of lateness would keep 604,800 per key.
        if let (Some(window), Some(allowed_lateness)) = (window, allowed_lateness)
            && window >= SECOND
            && allowed_lateness <= 7 * DAY
            && allowed_lateness.as_millis() / window.as_millis() > MAX_WINDOWS_KEPT_PER_KEY
        {
            let kept = allowed_lateness.as_millis() / window.as_millis();
            let most = window.as_secs() * MAX_WINDOWS_KEPT_PER_KEY as u64;
            problem(
                "allowedLateness",
                format!(
                    "`{}` keeps {kept} fired windows of `{}` per key, more than {MAX_WINDOWS_KEPT_PER_KEY}: use at most {most}s of \
                     lateness with this window, or a longer window",
                    settings.allowed_lateness, settings.window
                ),
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
        if let Some(max_future_skew) = max_future_skew
            && !(SECOND..=DAY).contains(&max_future_skew)
        {
            problem(
                "maxFutureSkew",
                format!(
                    "`{}` is out of range: use 1s to 1d (how far ahead of the wall clock a producer's clock may be; events later \
                     than that are kept as dead letters)",
                    settings.max_future_skew
                ),
            );
        }
        match (window, out_of_orderness, allowed_lateness, idle_timeout, max_future_skew) {
            (Some(window), Some(out_of_orderness), Some(allowed_lateness), Some(idle_timeout), Some(max_future_skew))
                if errors.is_empty() =>
            {
                Ok(Self { window, out_of_orderness, allowed_lateness, idle_timeout, max_future_skew })
            }
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings<'a>(window: &'a str, idle_timeout: &'a str) -> AggregationSettings<'a> {
        AggregationSettings {
            window,
            out_of_orderness: DEFAULT_OUT_OF_ORDERNESS,
            allowed_lateness: DEFAULT_ALLOWED_LATENESS,
            idle_timeout,
            max_future_skew: DEFAULT_MAX_FUTURE_SKEW,
        }
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

    #[test]
    fn lateness_is_bounded_by_how_many_fired_windows_it_keeps_per_key() {
        let defaults = settings(DEFAULT_WINDOW, DEFAULT_IDLE_TIMEOUT);
        let day_of_minutes = AggregationSettings { allowed_lateness: "1d", ..defaults };
        assert!(WindowConfig::parse(&day_of_minutes).is_ok(), "1,440 minute windows a key");
        let week_of_seconds = AggregationSettings { window: "1s", allowed_lateness: "7d", idle_timeout: "5s", ..defaults };
        let errors = WindowConfig::parse(&week_of_seconds).unwrap_err();
        assert_eq!(errors[0].setting, "allowedLateness");
        assert!(
            errors[0].message.contains("keeps 604800 fired windows of `1s` per key, more than 1440: use at most 1440s"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn the_future_skew_is_bounded_and_says_what_it_is_for() {
        let defaults = settings(DEFAULT_WINDOW, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(WindowConfig::parse(&defaults).unwrap().max_future_skew, Duration::from_secs(300));
        for (value, problem) in [("0s", "out of range: use 1s to 1d"), ("2d", "out of range"), ("soon", "not a duration")] {
            let errors = WindowConfig::parse(&AggregationSettings { max_future_skew: value, ..defaults }).unwrap_err();
            assert_eq!(errors[0].setting, "maxFutureSkew");
            assert!(errors[0].message.contains(problem), "{}", errors[0]);
        }
    }
}
