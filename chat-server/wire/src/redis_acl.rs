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
//! `MODULE`, `REPLICAOF` or any other command outside its list, nor touch a key outside `chat:*`
//! or any Pub/Sub channel.

/// The user with every permission (`~* &* +@all`).
pub const ADMIN_USER: &str = "admin";

/// The rules every data-plane role starts from: only keys under `chat:`, no Pub/Sub channel, no
/// command but the connection ones that are not `@dangerous` (`AUTH`, `HELLO`, `PING`,
/// `CLIENT SETNAME`/`SETINFO`, `SELECT`, …), then the commands the broker client sends outside its
/// scripts: `INFO server` and `SCRIPT EXISTS` (the instance check), `SCRIPT LOAD`, `EVALSHA` and
/// `EVAL` (every script), `GET`/`MGET` (broker state), `XREAD`/`XRANGE`/`XLEN` (stream reads).
const COMMON: &[&str] = &[
    "resetkeys",
    "~chat:*",
    "resetchannels",
    "-@all",
    "+@connection",
    "-@dangerous",
    "+info",
    "+script|exists",
    "+script|load",
    "+evalsha",
    "+eval",
    "+time",
    "+get",
    "+mget",
    "+exists",
    "+xread",
    "+xrange",
    "+xlen",
];

/// The chat-server's extra commands: the write script (`HMGET`, `INCR`, `XADD`, `HSET`,
/// `EXPIRE`), the idempotency resolve script (`SET`) and the epoch retire script (`DEL`, `SET`).
const CHAT_SERVER: &[&str] = &[
    "+hmget", "+incr", "+xadd", "+hset", "+expire", "+set", "+del",
];

/// The replication log's extra commands: the anchor script (`XDEL`, `SET`, `DEL`), the grant
/// and retire scripts (`SET`, `DEL`), the registry `chat:replicas` (`HSET`, `HGETALL`, `HDEL`)
/// and trimming the stream (`XTRIM`).
const REPLICATION_LOG: &[&str] = &[
    "+xdel", "+xtrim", "+set", "+del", "+hset", "+hgetall", "+hdel",
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
            // Only single commands are added after the categories are narrowed.
            let after = rules.iter().position(|r| *r == "-@dangerous").unwrap_or(0);
            assert!(
                rules[after + 1..]
                    .iter()
                    .all(|r| r.starts_with('+') && !r.contains('@'))
            );
        }
        assert!(RedisRole::ReplicationLog.rules().contains(&"+xtrim"));
        assert!(!RedisRole::ChatServer.rules().contains(&"+xtrim"));
        assert!(!RedisRole::ReplicationLog.rules().contains(&"+xadd"));
    }
}
