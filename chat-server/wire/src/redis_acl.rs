//! The broker's Redis ACL users (Redis 6+ ACL, <https://redis.io/docs/latest/operate/oss_and_stack/management/security/acl/>):
//! which user each data-plane role connects as and the commands and keys that user may touch.
//! The rules are the inventory of what `chat-server/src/broker.rs` sends (its commands and the
//! commands its Lua scripts call, which Redis checks against the calling user as well); the
//! operator passes them to `redis-server`, and the data plane's tests run the real roles against a
//! `redis-server` started with them, so a command added to the broker without its rule fails a
//! test rather than a deployment.
//!
//! Users:
//! - `default`: disabled (`off`, no password), so no connection can run anything as it: one that
//!   does not name a user must `AUTH` before any command. It keeps every permission
//!   (`~* &* +@all`) for Redis itself: Redis 7.0–7.2 replays a `MULTI`/`EXEC` from the
//!   append-only file as the `default` user and checks each command against that user's rules,
//!   silently dropping what they deny (redis/redis#14541, fixed by #14545; valkey#3983). Every
//!   script's writes are in the AOF as `MULTI`/`EXEC`, so a `default` with no permission would
//!   lose acknowledged messages at every broker restart (`chat-server/tests/data_plane.rs`
//!   `redis_restart_with_aof_loses_no_acknowledged_message` fails that way).
//! - [`ADMIN_USER`] (`admin`): every command and key, for people (break-glass: inspection,
//!   `redis-cli --user admin`) and the broker's own readiness probe. No data-plane pod has its
//!   password.
//! - [`RedisRole::ChatServer`] (`chat-server`): the write script, the epoch checks, stream reads.
//! - [`RedisRole::ReplicationLog`] (`replication-log`): stream reads, trims, the epoch scripts
//!   and its registry keys (`chat:replicas`).
//!
//! Neither role can run `FLUSHALL`, `FLUSHDB`, `CONFIG`, `DEBUG`, `SHUTDOWN`, `KEYS`, `ACL`,
//! `MODULE`, `REPLICAOF`, `SELECT`, `CLIENT TRACKING` or any other command outside its list, nor
//! touch a key outside `chat:*` or any Pub/Sub channel; each write command is granted only on the
//! keys the role's scripts write (Redis 7 selectors, `(+command ~key)`), so a chat-server cannot
//! delete the stream or set the sequence, and a replica cannot append or forge a dedupe record.
//! What the rules cannot stop: a role that loads its own Lua may loop in it, and Redis then
//! answers `BUSY` to everyone until `admin` runs `SCRIPT KILL`; its password is a data-plane
//! secret like the others.

/// The user with every permission (`~* &* +@all`).
pub const ADMIN_USER: &str = "admin";

/// The rules every data-plane role starts from: keys under `chat:` (the keys its scripts declare
/// and its reads name), no Pub/Sub channel, no command but the connection ones that are not
/// `@dangerous` (`AUTH`, `HELLO`, `PING`, `CLIENT SETNAME`/`SETINFO`, …) less `CLIENT TRACKING`
/// and `CLIENT CACHING` (invalidation messages would name keys outside `chat:`) and `SELECT`
/// (other databases), then the commands the broker client sends outside its scripts and the
/// reads its scripts make: `INFO server` and `SCRIPT EXISTS` (the instance check), `SCRIPT LOAD`,
/// `EVALSHA` and `EVAL` (every script), `TIME`, `GET`/`MGET`/`EXISTS`/`HMGET` (state, dedupe
/// records), `XREAD`/`XRANGE`/`XLEN` (stream reads). Writes are granted per key by each role's
/// selectors below, so a role can write only the keys its scripts write.
const COMMON: &[&str] = &[
    "resetkeys",
    "~chat:*",
    "resetchannels",
    "-@all",
    "+@connection",
    "-@dangerous",
    "-client|tracking",
    "-client|caching",
    "-select",
    "+info",
    "+script|exists",
    "+script|load",
    "+evalsha",
    "+eval",
    "+time",
    "+get",
    "+mget",
    "+exists",
    "+hmget",
    "+xread",
    "+xrange",
    "+xlen",
];

/// The chat-server's writes, each a Redis 7 selector (command and key together): the write
/// script appends to `chat:stream` (`XADD`), takes the next position (`INCR chat:seq`) and
/// records the dedupe record `chat:idem:*` (`HSET`, `EXPIRE`); the resolve script fences a lost
/// write (`SET chat:fence:*`); the retire script retires the epoch (`DEL chat:epoch`,
/// `SET chat:retired`). Nothing else: not `DEL chat:stream`, not `SET chat:seq`, not the
/// replicas' registry.
const CHAT_SERVER: &[&str] = &[
    "(+xadd ~chat:stream)",
    "(+incr ~chat:seq)",
    "(+hset +expire ~chat:idem:*)",
    "(+set ~chat:fence:* ~chat:retired)",
    "(+del ~chat:epoch)",
];

/// The replication log's reads of its registry (`HGETALL chat:replicas`) and its writes, each a
/// selector: trimming and the anchor script's clean-up of the stream (`XTRIM`, `XDEL` on
/// `chat:stream`), its registry (`HSET`, `HDEL` on `chat:replicas`), the anchor, grant and retire
/// scripts' state keys (`SET`, `DEL`). Not `DEL chat:stream`, not `XADD`, not a dedupe record.
const REPLICATION_LOG: &[&str] = &[
    "+hgetall",
    "(+xdel +xtrim ~chat:stream)",
    "(+hset +hdel ~chat:replicas)",
    "(+set ~chat:epoch ~chat:seq ~chat:anchor ~chat:base ~chat:limit ~chat:instance ~chat:retired ~chat:previous)",
    "(+del ~chat:epoch ~chat:retired ~chat:previous)",
];

/// A data-plane component that connects to the broker with its own ACL user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedisRole {
    /// The chat-server nodes.
    ChatServer,
    /// The replication-log replicas.
    ReplicationLog,
}

impl RedisRole {
    /// Both roles.
    pub const ALL: [RedisRole; 2] = [RedisRole::ChatServer, RedisRole::ReplicationLog];

    /// The ACL user name the role connects as (the userinfo of its `REDIS_URL`).
    pub const fn username(self) -> &'static str {
        match self {
            RedisRole::ChatServer => "chat-server",
            RedisRole::ReplicationLog => "replication-log",
        }
    }

    /// The role's ACL rules after `on` and its password, in the order Redis applies them.
    pub fn rules(self) -> Vec<&'static str> {
        let extra = match self {
            RedisRole::ChatServer => CHAT_SERVER,
            RedisRole::ReplicationLog => REPLICATION_LOG,
        };
        COMMON.iter().chain(extra).copied().collect()
    }
}

/// `redis-server` command-line arguments that define every user:
/// `--user default off resetpass ~* &* +@all` (see the module docs for why it keeps its
/// permissions), then
/// `--user admin on >{admin} ~* &* +@all` and one `--user` per [`RedisRole`] with the password
/// `password(role)`. Each rule is its own argument (Redis 7 quotes every argument of an option
/// and splits the line again, so `>{password}` must not contain whitespace or start with `--`;
/// the operator's generated passwords are alphanumeric). Passwords may be `$(VAR)` references
/// that Kubernetes expands in a container's `args`.
pub fn server_args(admin: &str, password: impl Fn(RedisRole) -> String) -> Vec<String> {
    let mut args: Vec<String> = ["--user", "default", "off", "resetpass", "~*", "&*", "+@all"]
        .map(String::from)
        .to_vec();
    args.extend(
        [
            "--user",
            ADMIN_USER,
            "on",
            &format!(">{admin}"),
            "~*",
            "&*",
            "+@all",
        ]
        .map(String::from),
    );
    for role in RedisRole::ALL {
        args.extend([
            "--user".to_owned(),
            role.username().to_owned(),
            "on".to_owned(),
        ]);
        args.push(format!(">{}", password(role)));
        args.extend(role.rules().into_iter().map(String::from));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_is_defined_once_and_default_is_off() {
        let args = server_args("A", |r| format!("P-{}", r.username()));
        let users: Vec<&str> = args
            .iter()
            .enumerate()
            .filter(|(_, a)| *a == "--user")
            .map(|(i, _)| args[i + 1].as_str())
            .collect();
        assert_eq!(
            users,
            ["default", ADMIN_USER, "chat-server", "replication-log"]
        );
        assert_eq!(args[..4], ["--user", "default", "off", "resetpass"]);
        assert!(args.contains(&">A".to_owned()));
        assert!(args.contains(&">P-chat-server".to_owned()));
        assert!(args.contains(&">P-replication-log".to_owned()));
    }

    #[test]
    fn roles_are_confined_to_chat_keys_and_granted_no_dangerous_command() {
        for role in RedisRole::ALL {
            let rules = role.rules();
            assert_eq!(
                rules[..4],
                ["resetkeys", "~chat:*", "resetchannels", "-@all"]
            );
            for denied in [
                "+flushall",
                "+flushdb",
                "+config",
                "+debug",
                "+keys",
                "+@all",
            ] {
                assert!(!rules.contains(&denied), "{role:?} grants {denied}");
            }
            // After the categories are narrowed: single commands taken away or added, and
            // selectors that pair write commands with their keys.
            let after = rules.iter().position(|r| *r == "-@dangerous").unwrap_or(0);
            for rule in &rules[after + 1..] {
                let single =
                    (rule.starts_with('+') || rule.starts_with('-')) && !rule.contains('@');
                let selector = rule.starts_with("(+") && rule.ends_with(')') && !rule.contains('@');
                assert!(single || selector, "{role:?}: {rule}");
                if selector {
                    assert!(rule.contains(" ~chat:"), "{role:?}: {rule} names no key");
                    assert!(
                        !rule.contains("~chat:*"),
                        "{role:?}: {rule} writes every key"
                    );
                }
            }
        }
        let has = |role: RedisRole, word: &str| role.rules().iter().any(|r| r.contains(word));
        assert!(has(RedisRole::ReplicationLog, "+xtrim"));
        assert!(!has(RedisRole::ChatServer, "+xtrim"));
        assert!(!has(RedisRole::ReplicationLog, "+xadd"));
    }
}
