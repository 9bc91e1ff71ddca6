//! A TCP proxy in the test process that can stop forwarding without closing anything, the way a
//! network partition (or a `SIGSTOP`ped peer) looks to both ends: bytes stay queued, no error,
//! no FIN. Used to cut one component off from Redis while the others still reach it, or to hold
//! back only Redis's replies (a request that ran whose answer is lost on the way back).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    /// Client → server.
    requests: Arc<watch::Sender<bool>>,
    /// Server → client.
    replies: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let requests = Arc::new(watch::channel(false).0);
        let replies = Arc::new(watch::channel(false).0);
        let (to_server, to_client) = (requests.clone(), replies.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, to_server.subscribe()));
                tokio::spawn(pipe(sr, cw, to_client.subscribe()));
            }
        });
        Proxy {
            port,
            requests,
            replies,
            task,
        }
    }

    /// The URL `role` connects through the proxy with (its ACL user).
    pub fn url(&self, role: chat_wire::redis_acl::RedisRole) -> String {
        super::redis::role_url(self.port, role)
    }

    /// Stops forwarding in both directions (connections stay open).
    pub fn pause(&self) {
        self.requests.send_replace(true);
        self.replies.send_replace(true);
    }

    /// Stops forwarding Redis's replies only: requests still reach Redis and run.
    pub fn pause_replies(&self) {
        self.replies.send_replace(true);
    }

    /// Forwards again in both directions, including what queued up meanwhile.
    pub fn resume(&self) {
        self.requests.send_replace(false);
        self.replies.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Stop reading as soon as a pause starts (the bytes stay in the socket).
            _ = paused.wait_for(|p| *p) => continue,
        };
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
