//! The Origin check of browser requests that change state (WebSocket handshakes and POSTs):
//! the request's `Origin` (RFC 6454) must be the server's own origin (same host and port as
//! the `Host` header) or one of `--allowed-origins`. A request without `Origin` comes from a
//! non-browser client and is let through: the check stops other sites' pages from acting with a
//! visitor's browser (cross-site WebSocket hijacking, RFC 6455 §10.2; cross-site `text/plain`
//! POSTs that need no CORS preflight), not clients that choose their own headers.

/// The origins a node accepts besides its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Serialized origins (`scheme://host[:port]`, lowercase, default port dropped).
    allowed: Vec<String>,
    /// `*` was listed: every origin.
    any: bool,
}

impl OriginPolicy {
    /// From `--allowed-origins` (comma-separated origins such as `https://chat.example.com`, or
    /// `*`). An error names an entry that is no origin.
    pub fn parse(list: &str) -> Result<OriginPolicy, String> {
        let mut policy = OriginPolicy::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                policy.any = true;
                continue;
            }
            let origin = normalize(entry).ok_or_else(|| {
                format!(
                    "--allowed-origins: {entry:?} is not an origin (scheme://host[:port], no path)"
                )
            })?;
            policy.allowed.push(origin.0);
        }
        Ok(policy)
    }

    /// Whether `origin` is listed in `--allowed-origins` (or `*` is): a page there may call this
    /// node cross-origin, so its CORS preflights are answered ([`crate::api::cors`]). The node's
    /// own origin needs no CORS and is not listed here.
    pub fn lists(&self, origin: &str) -> bool {
        self.any
            || normalize(origin)
                .is_some_and(|(serialized, _, _)| self.allowed.contains(&serialized))
    }

    /// Decides a request with these `Origin` and `Host` headers: `Ok` to serve it, else why not.
    pub fn check(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), String> {
        let Some(origin) = origin else {
            return Ok(());
        };
        if self.any {
            return Ok(());
        }
        let refused = || format!("origin {origin} is not allowed (--allowed-origins)");
        let Some((serialized, scheme, authority)) = normalize(origin) else {
            return Err(refused());
        };
        if self.allowed.contains(&serialized) {
            return Ok(());
        }
        let same =
            host.is_some_and(|h| strip_default_port(&h.to_ascii_lowercase(), &scheme) == authority);
        if same { Ok(()) } else { Err(refused()) }
    }
}

/// `scheme://host[:port]` → (serialized origin, scheme, authority), lowercase with the scheme's
/// default port dropped; `None` for anything else (`null`, a path, no scheme).
fn normalize(origin: &str) -> Option<(String, String, String)> {
    let origin = origin.trim().to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    if scheme.is_empty()
        || authority.is_empty()
        || authority.contains(['/', '?', '#', '@', ' '])
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    let authority = strip_default_port(authority, scheme);
    Some((
        format!("{scheme}://{authority}"),
        scheme.to_owned(),
        authority,
    ))
}

fn strip_default_port(authority: &str, scheme: &str) -> String {
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => "",
    };
    match authority.strip_suffix(default) {
        Some(rest) if !default.is_empty() => rest.to_owned(),
        _ => authority.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (allowed list, Origin, Host) → served or refused.
    #[test]
    fn origin_decisions() {
        let table: &[(&str, Option<&str>, Option<&str>, bool)] = &[
            ("", None, Some("chat.example:8080"), true),
            (
                "",
                Some("http://chat.example:8080"),
                Some("chat.example:8080"),
                true,
            ),
            (
                "",
                Some("http://CHAT.example:8080"),
                Some("chat.example:8080"),
                true,
            ),
            (
                "",
                Some("http://chat.example"),
                Some("chat.example:80"),
                true,
            ),
            (
                "",
                Some("https://chat.example:443"),
                Some("chat.example"),
                true,
            ),
            (
                "",
                Some("http://evil.example"),
                Some("chat.example:8080"),
                false,
            ),
            (
                "",
                Some("http://chat.example:9999"),
                Some("chat.example:8080"),
                false,
            ),
            ("", Some("null"), Some("chat.example"), false),
            ("", Some("http://chat.example"), None, false),
            (
                "",
                Some("http://chat.example/path"),
                Some("chat.example"),
                false,
            ),
            (
                "https://app.example",
                Some("https://app.example"),
                Some("chat.example"),
                true,
            ),
            (
                "https://app.example",
                Some("https://app.example:443"),
                Some("chat.example"),
                true,
            ),
            (
                "https://app.example",
                Some("http://app.example"),
                Some("chat.example"),
                false,
            ),
            (
                "https://a.example, https://b.example:8443",
                Some("https://b.example:8443"),
                Some("x"),
                true,
            ),
            ("*", Some("http://evil.example"), Some("chat.example"), true),
        ];
        for (list, origin, host, ok) in table {
            let policy = OriginPolicy::parse(list).expect("list");
            assert_eq!(
                policy.check(*origin, *host).is_ok(),
                *ok,
                "allowed {list:?}, Origin {origin:?}, Host {host:?}"
            );
        }
        for bad in ["example.com", "https://a.example/path", "null"] {
            assert!(OriginPolicy::parse(bad).is_err(), "{bad}");
        }
    }
}
