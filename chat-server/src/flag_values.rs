//! Value parsers for command-line flags and environment variables, shared by the flag structs of
//! [`crate::config`], [`crate::serve`] and [`crate::limits`] (a leaf module, so those three do not
//! import each other for them).

use std::time::Duration;

/// As [`seconds`], also accepting 0.
pub fn seconds_or_zero(text: &str) -> Result<Duration, String> {
    if text.trim().parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    seconds(text)
}

/// Parses a positive number of seconds, fractions allowed (`10`, `0.25`), at most a day.
pub fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of seconds, got {text:?}"))?;
    if !(value > 0.0 && value <= 86_400.0) {
        return Err(format!(
            "expected more than 0 and at most 86400 seconds, got {text:?}"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}
