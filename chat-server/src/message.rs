//! The message model shared by every part of the data plane: the [`Message`] record, its JSON
//! form, and the validation rules for channel names, ids and text that the contract fixes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest client-supplied idempotency key, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest author name, in bytes.
pub const MAX_AUTHOR_BYTES: usize = 128;
/// Longest channel name, in bytes (`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`).
pub const MAX_CHANNEL_BYTES: usize = 128;
/// The channel `GET /messages` reads.
pub const DEFAULT_CHANNEL: &str = "default-channel";

/// One accepted chat message. `position` is its place in the cluster-wide order and its identity
/// in every API: dense integers from 1, identical on every node and replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub position: u64,
    pub channel: String,
    pub id: String,
    pub author: String,
    pub text: String,
    /// Milliseconds since the Unix epoch; RFC 3339 UTC with milliseconds on the wire.
    #[serde(serialize_with = "ser_millis", deserialize_with = "de_millis")]
    pub sent_at: i64,
}

impl Message {
    /// The message as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A void record at `position`: it stands for the positions after the record before it up to
    /// `position`, which hold nothing because a broker data loss skipped them (see
    /// [`crate::protocol`]). It is the one record with an empty channel (no channel name is
    /// empty); it belongs to no channel and is never shown to clients.
    pub fn void(position: u64) -> Message {
        Message {
            position,
            channel: String::new(),
            id: String::new(),
            author: String::new(),
            text: String::new(),
            sent_at: 0,
        }
    }

    /// True for a void record ([`Message::void`]).
    pub fn is_void(&self) -> bool {
        self.channel.is_empty()
    }

    /// True when this record may follow position `cursor` in the log: a message at `cursor + 1`,
    /// or a void record past `cursor`.
    pub fn continues(&self, cursor: u64) -> bool {
        self.position == cursor + 1 || (self.is_void() && self.position > cursor)
    }

    /// Bytes of user payload (text, author, id, channel): the basis of the memory bound.
    pub fn payload_bytes(&self) -> usize {
        self.text.len() + self.author.len() + self.id.len() + self.channel.len()
    }
}

/// Why a message, or a part of a request naming one, is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("invalid channel name {0:?}: must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$")]
    Channel(String),
    #[error("text must not be empty")]
    EmptyText,
    #[error("text is {len} bytes, more than the limit of {max}")]
    TextTooLong { len: usize, max: usize },
    #[error("id is {0} bytes, more than the limit of 128")]
    IdTooLong(usize),
    #[error("id must not be empty")]
    EmptyId,
    #[error("author is {0} bytes, more than the limit of 128")]
    AuthorTooLong(usize),
}

/// Checks a channel name against `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`.
pub fn validate_channel(name: &str) -> Result<(), InvalidInput> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_CHANNEL_BYTES
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::Channel(name.to_owned()))
    }
}

/// A write as a client asks for it, before the broker gives it a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub channel: String,
    /// The client's idempotency key; `None` lets the server generate one.
    pub id: Option<String>,
    pub author: String,
    pub text: String,
    /// Whose idempotency keys `id` belongs to: the token's subject under `--auth token` (the
    /// author may be a display name two users share); `None`: the author. One user's id never
    /// suppresses another's message (issue 11).
    pub scope: Option<String>,
}

impl NewMessage {
    /// The owner of this write's idempotency key (see [`NewMessage::scope`]).
    pub fn idempotency_scope(&self) -> &str {
        self.scope.as_deref().unwrap_or(&self.author)
    }

    /// Validates every field against the contract's limits.
    pub fn validate(&self, max_text_bytes: usize) -> Result<(), InvalidInput> {
        validate_channel(&self.channel)?;
        if self.text.is_empty() {
            return Err(InvalidInput::EmptyText);
        }
        if self.text.len() > max_text_bytes {
            return Err(InvalidInput::TextTooLong {
                len: self.text.len(),
                max: max_text_bytes,
            });
        }
        match &self.id {
            Some(id) if id.is_empty() => return Err(InvalidInput::EmptyId),
            Some(id) if id.len() > MAX_ID_BYTES => return Err(InvalidInput::IdTooLong(id.len())),
            _ => {}
        }
        if self.author.len() > MAX_AUTHOR_BYTES {
            return Err(InvalidInput::AuthorTooLong(self.author.len()));
        }
        Ok(())
    }
}

/// A random (version 4, RFC 9562 §5.4) UUID from the thread's CSPRNG (`rand::rng()`, ChaCha
/// seeded and reseeded from the OS). `Uuid::new_v4` without uuid's `fast-rng` feature makes a
/// `getrandom` system call for every UUID, and a write takes two (its generated id and its
/// token): about 2 % of a node's CPU under write load in a profile.
pub fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// Current time in Unix milliseconds.
pub fn now_millis() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Formats Unix milliseconds as RFC 3339 UTC with exactly three fractional digits.
pub fn format_millis(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "1970-01-01T00:00:00.000Z".to_owned(),
    }
}

/// Parses an RFC 3339 timestamp into Unix milliseconds.
pub fn parse_millis(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn ser_millis<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_millis(*ms))
}

fn de_millis<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    parse_millis(&s).ok_or_else(|| serde::de::Error::custom(format!("bad timestamp {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_uuids_are_version_4_and_differ() {
        let (a, b) = (random_uuid(), random_uuid());
        assert_ne!(a, b);
        for u in [a, b] {
            assert_eq!(u.get_version(), Some(uuid::Version::Random));
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(u.to_string().len(), 36);
        }
    }

    #[test]
    fn channel_names_follow_the_contract() {
        for ok in ["a", "general", "A.b_c-d", "0", &"x".repeat(128)] {
            assert_eq!(validate_channel(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "é", &"x".repeat(129)] {
            assert!(validate_channel(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn message_json_round_trips_with_millisecond_timestamps() {
        let m = Message {
            position: 7,
            channel: "general".into(),
            id: "abc".into(),
            author: "ann".into(),
            text: "hi \"there\"".into(),
            sent_at: 1_764_140_664_123,
        };
        let json = String::from_utf8(m.to_json()).unwrap();
        assert!(
            json.contains(r#""sent_at":"2025-11-26T07:04:24.123Z""#),
            "{json}"
        );
        let back: Message = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn new_message_limits() {
        let base = NewMessage {
            channel: "c".into(),
            id: None,
            author: "a".into(),
            text: "t".into(),
            scope: None,
        };
        assert_eq!(base.validate(4), Ok(()));
        let long = NewMessage {
            text: "12345".into(),
            ..base.clone()
        };
        assert_eq!(
            long.validate(4),
            Err(InvalidInput::TextTooLong { len: 5, max: 4 })
        );
        let empty = NewMessage {
            text: String::new(),
            ..base.clone()
        };
        assert_eq!(empty.validate(4), Err(InvalidInput::EmptyText));
        let id = NewMessage {
            id: Some("x".repeat(129)),
            ..base
        };
        assert_eq!(id.validate(4), Err(InvalidInput::IdTooLong(129)));
    }
}
