//! Tracing output of the data-plane binaries: JSON lines when `RUST_LOG_FORMAT=json`,
//! human-readable otherwise; the filter comes from `RUST_LOG` (default `info`). The old name
//! `LOG_FORMAT` (easy to mistake for one of the replication log's `LOG_*` settings) still works
//! and logs a deprecation warning.

use tracing_subscriber::EnvFilter;

/// The environment variable that selects the tracing output format.
pub const FORMAT_VAR: &str = "RUST_LOG_FORMAT";
/// Its deprecated former name, accepted for one release.
pub const DEPRECATED_FORMAT_VAR: &str = "LOG_FORMAT";

/// The output format asked for: `(json, deprecated name used)`, from the values of
/// [`FORMAT_VAR`] and [`DEPRECATED_FORMAT_VAR`] (the new name wins when both are set).
pub fn format_choice(new: Option<&str>, old: Option<&str>) -> (bool, bool) {
    match (new, old) {
        (Some(v), _) => (v.eq_ignore_ascii_case("json"), false),
        (None, Some(v)) => (v.eq_ignore_ascii_case("json"), true),
        (None, None) => (false, false),
    }
}

/// Installs the global subscriber. Call once at start-up.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (new, old) = (
        std::env::var(FORMAT_VAR).ok(),
        std::env::var(DEPRECATED_FORMAT_VAR).ok(),
    );
    let (json, deprecated) = format_choice(new.as_deref(), old.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests) finds a subscriber in place; that is fine.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    if deprecated {
        tracing::warn!(
            "{DEPRECATED_FORMAT_VAR} is deprecated and will be removed in the next release; set \
             {FORMAT_VAR} instead"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_choice_table() {
        // (RUST_LOG_FORMAT, LOG_FORMAT) -> (json, deprecated name used)
        let rows = [
            (None, None, (false, false)),
            (Some("json"), None, (true, false)),
            (Some("JSON"), None, (true, false)),
            (Some("text"), Some("json"), (false, false)),
            (None, Some("json"), (true, true)),
            (None, Some("text"), (false, true)),
        ];
        for (new, old, want) in rows {
            assert_eq!(format_choice(new, old), want, "{new:?} {old:?}");
        }
    }
}
