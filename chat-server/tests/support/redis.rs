//! A real `redis-server` per test: free port, temp dir, AOF on, killed on drop. Can be restarted
//! on the same data, killed, wiped (restarted empty) to simulate broker loss, restarted from an
//! older copy of its data files, or paused and resumed (SIGSTOP/SIGCONT) to simulate a stalled
//! broker.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
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

    /// A synchronous connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
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
