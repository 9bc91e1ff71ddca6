//! Channel permissions a token grants: which channels its holder may read (history pages,
//! `/ws` replay and live messages, `GET /channels`) and publish to. Default deny: a channel no
//! pattern matches is neither readable nor writable.
//!
//! Claims (docs/api.md, "Authentication and permissions"):
//! - `channels`: patterns readable **and** publishable;
//! - `subscribe`: patterns readable only;
//! - `publish`: patterns publishable only.
//!
//! A pattern is a channel name (exact match), `prefix.*` (every channel whose name starts with
//! `prefix.` and has at least one more character) or `*` (every channel).

use serde_json::Value;

/// One channel pattern of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Every channel (`*`).
    All,
    /// Channels named `<prefix>.<something>` (`prefix.*`); holds `prefix.`.
    Prefix(String),
    /// The channel of that name.
    Exact(String),
}

impl Pattern {
    /// Parses one pattern; an error names what is wrong with it.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern::All);
        }
        if let Some(prefix) = text.strip_suffix(".*") {
            if crate::message::validate_channel(prefix).is_ok() {
                return Ok(Pattern::Prefix(format!("{prefix}.")));
            }
            return Err(format!("bad channel pattern {text:?}"));
        }
        if text.contains('*') || crate::message::validate_channel(text).is_err() {
            return Err(format!(
                "bad channel pattern {text:?}: a channel name, \"prefix.*\" or \"*\""
            ));
        }
        Ok(Pattern::Exact(text.to_owned()))
    }

    /// Whether the pattern covers `channel`.
    pub fn matches(&self, channel: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Prefix(p) => channel.len() > p.len() && channel.starts_with(p.as_str()),
            Pattern::Exact(name) => name == channel,
        }
    }
}

/// What a request may do with channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grants {
    /// `--auth none`: everything.
    Everything,
    /// From a token's claims.
    Patterns {
        read: Vec<Pattern>,
        publish: Vec<Pattern>,
    },
}

impl Grants {
    /// The grants of a token's claims (`channels`, `subscribe`, `publish`; each absent, an array
    /// of patterns, or one comma-separated string). An error names the bad claim.
    pub fn from_claims(claims: &serde_json::Map<String, Value>) -> Result<Grants, String> {
        let both = patterns(claims, "channels")?;
        let mut read = patterns(claims, "subscribe")?;
        let mut publish = patterns(claims, "publish")?;
        read.extend(both.iter().cloned());
        publish.extend(both);
        Ok(Grants::Patterns { read, publish })
    }

    /// May read `channel` (history, replay, live, listing).
    pub fn may_read(&self, channel: &str) -> bool {
        match self {
            Grants::Everything => true,
            Grants::Patterns { read, .. } => read.iter().any(|p| p.matches(channel)),
        }
    }

    /// May publish to `channel`.
    pub fn may_publish(&self, channel: &str) -> bool {
        match self {
            Grants::Everything => true,
            Grants::Patterns { publish, .. } => publish.iter().any(|p| p.matches(channel)),
        }
    }
}

fn patterns(claims: &serde_json::Map<String, Value>, name: &str) -> Result<Vec<Pattern>, String> {
    let texts: Vec<&str> = match claims.get(name) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| format!("claim {name:?} must hold strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(format!(
                "claim {name:?} must be an array of channel patterns"
            ));
        }
    };
    texts
        .into_iter()
        .map(|t| Pattern::parse(t).map_err(|e| format!("claim {name:?}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pattern text → pattern or error, and what it matches.
    #[test]
    fn patterns_parse_and_match() {
        // (pattern, channels it matches or None when refused, channels it does not match)
        type Case<'a> = (&'a str, Option<&'a [&'a str]>, &'a [&'a str]);
        let table: &[Case] = &[
            (
                "general",
                Some(&["general"]),
                &["general2", "gen", "team.general"],
            ),
            (
                "team.*",
                Some(&["team.a", "team.b.c"]),
                &["team", "team.", "teams.a"],
            ),
            ("*", Some(&["general", "team.a"]), &[]),
            ("a.b.*", Some(&["a.b.c"]), &["a.b", "a.c"]),
            ("team*", None, &[]),
            ("*.team", None, &[]),
            ("", None, &[]),
            (".*", None, &[]),
            ("bad name", None, &[]),
        ];
        for (text, matches, misses) in table {
            let parsed = Pattern::parse(text);
            match matches {
                None => assert!(parsed.is_err(), "{text:?} should be refused"),
                Some(yes) => {
                    let p = parsed.unwrap_or_else(|e| panic!("{text:?}: {e}"));
                    for c in *yes {
                        assert!(p.matches(c), "{text:?} should match {c:?}");
                    }
                    for c in *misses {
                        assert!(!p.matches(c), "{text:?} should not match {c:?}");
                    }
                }
            }
        }
    }

    /// Claims → what may be read and published; default deny.
    #[test]
    fn claims_to_permissions() {
        let grants = |claims: Value| Grants::from_claims(claims.as_object().expect("object"));
        // (claims, channel, may read, may publish)
        let table: Vec<(Value, &str, bool, bool)> = vec![
            (serde_json::json!({}), "general", false, false),
            (
                serde_json::json!({"channels": ["general"]}),
                "general",
                true,
                true,
            ),
            (
                serde_json::json!({"channels": ["general"]}),
                "random",
                false,
                false,
            ),
            (
                serde_json::json!({"channels": "general, team.*"}),
                "team.x",
                true,
                true,
            ),
            (
                serde_json::json!({"subscribe": ["news"]}),
                "news",
                true,
                false,
            ),
            (
                serde_json::json!({"publish": ["inbox.*"]}),
                "inbox.ann",
                false,
                true,
            ),
            (
                serde_json::json!({"subscribe": ["*"], "publish": ["own"]}),
                "other",
                true,
                false,
            ),
            (
                serde_json::json!({"subscribe": ["*"], "publish": ["own"]}),
                "own",
                true,
                true,
            ),
            (
                serde_json::json!({"channels": null}),
                "general",
                false,
                false,
            ),
        ];
        for (claims, channel, read, publish) in table {
            let g = grants(claims.clone()).unwrap_or_else(|e| panic!("{claims}: {e}"));
            assert_eq!(g.may_read(channel), read, "{claims} read {channel}");
            assert_eq!(
                g.may_publish(channel),
                publish,
                "{claims} publish {channel}"
            );
        }
        for bad in [
            serde_json::json!({"channels": 5}),
            serde_json::json!({"channels": [1]}),
            serde_json::json!({"publish": ["x*"]}),
            serde_json::json!({"subscribe": {"a": 1}}),
        ] {
            assert!(grants(bad.clone()).is_err(), "{bad} should be refused");
        }
        assert!(Grants::Everything.may_read("x") && Grants::Everything.may_publish("x"));
    }
}
