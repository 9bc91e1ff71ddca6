//! Tracing output of the data-plane binaries: JSON lines when `RUST_LOG_FORMAT=json`,
//! human-readable otherwise; the filter comes from `RUST_LOG` (default `info`). The old name
//! `LOG_FORMAT` (easy to mistake for one of the replication log's `LOG_*` settings) still works
//! and logs a deprecation warning. [`redact_url`] hides the credentials of a URL (Redis URLs
//! with a password, peer URLs with userinfo) wherever one is logged or shown in `/status`.

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

/// `url` with its credentials replaced by `***`: the password of the userinfo (`user:***@`, or
/// `***@` when the userinfo has no `:`), and the values of query parameters whose name holds
/// `pass` (`password`, and `pass` of `redis+unix://…?pass=`), `secret` or `token`. Text that is not a URL is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                None => format!("***{host}"),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if ["pass", "secret", "token"]
                            .iter()
                            .any(|s| k.to_ascii_lowercase().contains(s)) =>
                    {
                        format!("{k}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", pairs.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{}{authority}{tail}", &url[..scheme_end])
}

/// Keeps a warning that can repeat per request (a write failing during a broker outage) from
/// flooding the log: the first occurrence in each `interval` is logged, the others are counted
/// and the count is reported with the next one that is logged.
#[derive(Debug)]
pub struct Throttle {
    interval: std::time::Duration,
    /// When the last occurrence was logged, and how many were suppressed since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    /// A throttle that logs at most once per `interval`.
    pub const fn new(interval: std::time::Duration) -> Throttle {
        Throttle {
            interval,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Records an occurrence at `now`; returns `Some(suppressed)` when it should be logged, with
    /// how many occurrences were suppressed since the last one logged.
    pub fn admit(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if due(state.0, now, self.interval) {
            let suppressed = state.1;
            *state = (Some(now), 0);
            Some(suppressed)
        } else {
            state.1 += 1;
            None
        }
    }
}

/// Whether an occurrence at `now` is logged, the last logged one being at `last`.
fn due(
    last: Option<std::time::Instant>,
    now: std::time::Instant,
    interval: std::time::Duration,
) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// URLs with credentials → the same URLs with the secrets replaced.
    #[test]
    fn redact_url_table() {
        let table = [
            ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
            (
                "redis://app:s3cret@redis:6379",
                "redis://app:***@redis:6379",
            ),
            ("rediss://user:p%40ss@host", "rediss://user:***@host"),
            ("redis://s3cret@redis", "redis://***@redis"),
            (
                "http://peer:pw@10.0.0.1:8090/x?y=1",
                "http://peer:***@10.0.0.1:8090/x?y=1",
            ),
            ("http://127.0.0.1:8090", "http://127.0.0.1:8090"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "http://h/p?password=x&a=b#f",
                "http://h/p?password=***&a=b#f",
            ),
            ("http://h/?access_token=abc", "http://h/?access_token=***"),
            (
                "redis+unix:///run/redis.sock?db=0&user=u&pass=s3cret",
                "redis+unix:///run/redis.sock?db=0&user=u&pass=***",
            ),
            ("http://h/p@q", "http://h/p@q"),
            ("not a url", "not a url"),
            ("", ""),
        ];
        for (url, want) in table {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
    use std::time::{Duration, Instant};

    #[test]
    fn throttle_logs_once_per_interval_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        // (time, logged with suppressed count)
        let rows = [
            (0, Some(0)),
            (1, None),
            (5, None),
            (9, None),
            (10, Some(3)),
            (12, None),
            (30, Some(1)),
            (41, Some(0)),
        ];
        for (s, want) in rows {
            assert_eq!(t.admit(at(s)), want, "t={s}");
        }
    }

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
