//! A real `redis-server` per test: free port, temp dir, AOF on, killed on drop, with the ACL users
//! the operator gives the broker (`chat_wire::redis_acl`: `default` off, `admin`, one user per
//! data-plane role), so every test that runs a node or a replica proves its role's rules suffice.
//! [`RedisServer::url`] is the admin's (for the test's own assertions and fault injection);
//! [`RedisServer::url_as`] a role's. Can be restarted
//! on the same data, killed, wiped (restarted empty) to simulate broker loss, restarted from an
//! older copy of its data files, or paused and resumed (SIGSTOP/SIGCONT) to simulate a stalled
//! broker.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_wire::redis_acl::{ADMIN_USER, RedisRole, server_args};

use super::free_port;
use super::tls::TlsFiles;

/// The test broker's admin password.
const ADMIN_PASSWORD: &str = "admin-password";

/// The test broker's password for `role`.
fn password(role: RedisRole) -> String {
    format!("{}-password", role.username())
}

/// `redis://user:password@127.0.0.1:port` for `role` (a node's or replica's `--redis-url`).
pub fn role_url(port: u16, role: RedisRole) -> String {
    format!(
        "redis://{}:{}@127.0.0.1:{port}",
        role.username(),
        password(role)
    )
}

pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Set: the server listens only with TLS (`--tls-port`), clients need `rediss://` and the CA.
    tls: Option<TlsFiles>,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_with(None)
    }

    /// Starts a server that accepts only TLS connections, with a certificate for `127.0.0.1`
    /// signed by a new CA ([`RedisServer::ca_file`]); clients are not asked for certificates
    /// (they authenticate as ACL users, as with the operator's `spec.broker.tls`).
    pub fn start_tls() -> RedisServer {
        RedisServer::start_with(Some(TlsFiles::generate()))
    }

    fn start_with(tls: Option<TlsFiles>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
            tls,
        };
        server.spawn();
        server
    }

    /// The CA file that signs a TLS server's certificate (`--redis-ca-file`).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(TlsFiles::ca)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        }
    }

    /// The admin's URL (every command): for the test's assertions and fault injection.
    pub fn url(&self) -> String {
        format!(
            "{}://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:{}",
            self.scheme(),
            self.port
        )
    }

    /// The URL `role` connects with (its ACL user).
    pub fn url_as(&self, role: RedisRole) -> String {
        let url = role_url(self.port, role);
        match self.tls {
            Some(_) => url.replacen("redis://", "rediss://", 1),
            None => url,
        }
    }

    /// A client with the admin's URL (and the CA for TLS).
    fn client(&self) -> redis::RedisResult<redis::Client> {
        match self.ca_file() {
            None => redis::Client::open(self.url()),
            Some(ca) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca).expect("read ca.crt")),
                },
            ),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let listen: Vec<String> = match &self.tls {
            None => vec!["--port".into(), port],
            Some(tls) => [
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-auth-clients",
                "no",
            ]
            .map(String::from)
            .into_iter()
            .chain(
                [
                    ("--tls-cert-file", tls.cert()),
                    ("--tls-key-file", tls.key()),
                    ("--tls-ca-cert-file", tls.ca()),
                ]
                .into_iter()
                .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()]),
            )
            .collect(),
        };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(&listen)
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(server_args(ADMIN_PASSWORD, password))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = self.client()
                && let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (SIGKILL) without touching its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGSTOP: connections stay open, nothing is answered (a stalled
    /// broker: a long fsync, a swap storm, a paused VM).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// Kills and starts it again on the same port and data (AOF replay).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A copy of the data files as they are now (with `appendfsync always` every acknowledged
    /// command is in them; an incomplete last command is dropped when it is loaded).
    pub fn copy_data(&self) -> tempfile::TempDir {
        let copy = tempfile::tempdir().expect("temp dir for a redis copy");
        copy_tree(self.dir.path(), copy.path());
        copy
    }

    /// Kills the server and starts it on the same port from `copy` (see [`RedisServer::copy_data`]):
    /// a broker restored from an older copy, or restarted having lost its last writes.
    pub fn restart_from(&mut self, copy: &tempfile::TempDir) {
        self.kill();
        clear_dir(self.dir.path());
        copy_tree(copy.path(), self.dir.path());
        self.spawn();
    }

    /// Kills it, deletes its data, and starts it empty: a broker that lost everything.
    pub fn wipe(&mut self) {
        self.kill();
        clear_dir(self.dir.path());
        self.spawn();
    }

    /// Panics with Redis's `ACL LOG` when a command or key was refused to any user since the
    /// server started.
    pub fn assert_no_acl_denial(&self) {
        let log: redis::Value = redis::cmd("ACL")
            .arg("LOG")
            .query(&mut self.conn())
            .expect("ACL LOG");
        assert!(
            matches!(&log, redis::Value::Array(entries) if entries.is_empty()),
            "Redis refused commands to an ACL user: {log:?}"
        );
    }

    /// A synchronous connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn clear_dir(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).expect("redis dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            std::fs::create_dir_all(&dst).expect("create dir");
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy redis file");
        }
    }
}
