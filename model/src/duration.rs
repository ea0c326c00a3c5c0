//! Durations as users write them in the custom resource: `90s`, `1m`, `1h30m`, `250ms`, `1d`.

use std::time::Duration;

/// The pattern the CRD schema enforces; `parse_duration` accepts exactly this language.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a duration: write a number followed by a unit (ms, s, m, h, d), for example `30s`, `1m` or `1h30m`")]
pub struct DurationError {
    pub input: String,
}

/// Parses a sequence of `<digits><unit>` terms; units are ms, s, m, h and d.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let error = || DurationError { input: input.to_owned() };
    let mut rest = input;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(error());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(error());
        }
        let amount: u64 = rest[..digits].parse().map_err(|_| error())?;
        rest = &rest[digits..];
        let (unit_millis, unit_len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.bytes().next() {
                Some(b's') => (1_000, 1),
                Some(b'm') => (60_000, 1),
                Some(b'h') => (3_600_000, 1),
                Some(b'd') => (86_400_000, 1),
                _ => return Err(error()),
            }
        };
        rest = &rest[unit_len..];
        let millis = amount.checked_mul(unit_millis).ok_or_else(error)?;
        total = total.checked_add(Duration::from_millis(millis)).ok_or_else(error)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_terms() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        for bad in ["", "5", "s", "1.5m", "-1s", "1 m", "1w", "5sec", "m5", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn error_explains_the_format() {
        let message = parse_duration("soon").unwrap_err().to_string();
        assert!(message.contains("`soon`") && message.contains("1m"), "{message}");
    }
}
