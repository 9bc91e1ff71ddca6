//! HTTP client of the replication log's API, used by chat-server nodes (bootstrap snapshots, old
//! history pages) and by replicas bootstrapping from a peer. It tries the configured replicas in
//! order and takes the first that answers. Every request carries the data plane's internal
//! token when one is configured; URLs in its errors have their credentials redacted.

use std::time::Duration;

use bytes::BytesMut;
use chat_wire::ReplicaStatus;

use crate::auth::InternalToken;
use crate::auth::internal::INTERNAL_TOKEN_HEADER;
use crate::http::MessagesPage;
use crate::message::Message;
use crate::protocol::{page_covers, page_is_enough};
use crate::telemetry::redact_url;

/// Header carrying the position a snapshot runs up to.
pub const SNAPSHOT_POSITION_HEADER: &str = "x-snapshot-position";
/// Header of a replica's channel page: the replica's persisted position, read before the page.
pub const PERSISTED_POSITION_HEADER: &str = "x-persisted-position";
/// Header carrying the cluster id of the replica's log (a UUID), when it has one.
pub const LOG_CLUSTER_ID_HEADER: &str = "x-log-cluster-id";

/// What went wrong reading from the replication log.
#[derive(Debug, thiserror::Error)]
pub enum LogClientError {
    #[error("no replication-log replica answered ({0})")]
    Unreachable(String),
    #[error("replica {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// `url` is redacted and `source` carries no URL (see [`LogClientError::transport`]).
    #[error("replica {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("replica {url} sent a bad snapshot: {reason}")]
    BadSnapshot { url: String, reason: String },
}

impl LogClientError {
    /// A transport error of a request to `url`: the URL with its credentials redacted, the
    /// reqwest error without its own copy of the URL.
    pub fn transport(url: &str, source: reqwest::Error) -> LogClientError {
        LogClientError::Transport {
            url: redact_url(url),
            source: source.without_url(),
        }
    }
}

/// Client of one or more replicas (tried in order).
#[derive(Clone, Debug)]
pub struct LogClient {
    urls: Vec<String>,
    http: reqwest::Client,
    internal: Option<InternalToken>,
}

impl LogClient {
    /// `urls` are base URLs such as `http://127.0.0.1:8090`; trailing slashes are ignored.
    pub fn new(urls: impl IntoIterator<Item = String>) -> LogClient {
        let urls = urls
            .into_iter()
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        // No redirects: the internal token goes only to the replicas named here; a redirect
        // (from a compromised or misconfigured peer) would carry it to any host, since only
        // `Authorization` is stripped across hosts. A 3xx is an error like any other non-2xx.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        LogClient {
            urls,
            http,
            internal: None,
        }
    }

    /// The same client, sending `token` in [`INTERNAL_TOKEN_HEADER`] with every request.
    pub fn with_internal_token(mut self, token: Option<InternalToken>) -> LogClient {
        self.internal = token;
        self
    }

    /// Parses a comma-separated list of URLs.
    pub fn from_list(list: &str) -> LogClient {
        LogClient::new(list.split(',').map(str::to_owned))
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Opens `GET /snapshot?after=P` on the first replica that answers.
    pub async fn snapshot(&self, after: u64) -> Result<Snapshot, LogClientError> {
        let mut failures = Vec::new();
        for url in &self.urls {
            match self.snapshot_from(url, after).await {
                Ok(s) => return Ok(s),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(LogClientError::Unreachable(failures.join("; ")))
    }

    /// Opens `GET /snapshot?after=P` on one replica.
    pub async fn snapshot_from(&self, url: &str, after: u64) -> Result<Snapshot, LogClientError> {
        let resp = self
            .get(url, &format!("/snapshot?after={after}"), None)
            .await?;
        let position = resp
            .headers()
            .get(SNAPSHOT_POSITION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| LogClientError::BadSnapshot {
                url: redact_url(url),
                reason: format!("missing {SNAPSHOT_POSITION_HEADER} header"),
            })?;
        let cluster_id = resp
            .headers()
            .get(LOG_CLUSTER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Snapshot {
            source: redact_url(url),
            after,
            position,
            cluster_id,
            last: after,
            resp,
            buf: BytesMut::new(),
            done: false,
        })
    }

    /// One page of a channel's history (`GET /channels/{c}/messages?after=P&limit=N`), preferably
    /// one complete at least through position `needed`: the first replica whose page is full,
    /// or whose persisted position (`X-Persisted-Position`) reaches `needed`, answers. When every
    /// replica is behind, the page that reaches furthest is returned with how far it is
    /// complete ([`ReplicaPage::covered`]): a replica that is behind is never taken as "nothing
    /// more".
    ///
    /// Errors: [`LogClientError::Unreachable`] when no replica answered.
    pub async fn channel_page(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
        needed: u64,
    ) -> Result<ReplicaPage, LogClientError> {
        let path = format!("/channels/{channel}/messages?after={after}&limit={limit}");
        let mut failures = Vec::new();
        let mut best: Option<ReplicaPage> = None;
        for url in &self.urls {
            let resp = match self.get(url, &path, Some(Duration::from_secs(10))).await {
                Ok(r) => r,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            let persisted: Option<u64> = resp
                .headers()
                .get(PERSISTED_POSITION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let page = match resp.json::<MessagesPage>().await {
                Ok(page) => page,
                Err(source) => {
                    failures.push(LogClientError::transport(url, source).to_string());
                    continue;
                }
            };
            let positions: Vec<u64> = page.messages.iter().map(|m| m.position).collect();
            let covered = page_covers(after, limit, &positions, persisted);
            let enough = page_is_enough(covered, needed, positions.len() >= limit);
            let candidate = ReplicaPage {
                source: redact_url(url),
                page,
                covered,
                enough,
            };
            if enough {
                return Ok(candidate);
            }
            if best.as_ref().is_none_or(|b| covered > b.covered) {
                best = Some(candidate);
            }
        }
        best.ok_or_else(|| LogClientError::Unreachable(failures.join("; ")))
    }

    /// `GET /status` of one replica.
    pub async fn status_of(&self, url: &str) -> Result<ReplicaStatus, LogClientError> {
        let resp = self
            .get(url, "/status", Some(Duration::from_secs(2)))
            .await?;
        let body = resp
            .bytes()
            .await
            .map_err(|source| LogClientError::transport(url, source))?;
        let status: ReplicaStatus =
            serde_json::from_slice(&body).map_err(|e| LogClientError::BadSnapshot {
                url: redact_url(url),
                reason: format!("bad status document: {e}"),
            })?;
        // A replica that did not take our internal token shows only its public status, without
        // the limit it granted: treated as unreachable, never as a limit of 0.
        if self.internal.is_some() && status.limit.is_none() {
            return Err(LogClientError::Status {
                url: redact_url(url),
                status: 403,
                body: "the replica did not accept this internal token (no status details)".into(),
            });
        }
        Ok(status)
    }

    async fn get(
        &self,
        url: &str,
        path: &str,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, LogClientError> {
        let mut req = self.http.get(format!("{url}{path}"));
        if let Some(token) = &self.internal {
            req = req.header(INTERNAL_TOKEN_HEADER, token.header_value());
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| LogClientError::transport(url, source))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            return Err(LogClientError::Status {
                url: redact_url(url),
                status,
                body: body.chars().take(200).collect(),
            });
        }
        Ok(resp)
    }
}

/// A replica's channel page and how far it can be trusted.
#[derive(Debug, Clone)]
pub struct ReplicaPage {
    /// The replica that answered.
    pub source: String,
    pub page: MessagesPage,
    /// Every message of the channel in `after+1 ..= covered` is in the page.
    pub covered: u64,
    /// The page reaches the position that was needed (or is full).
    pub enough: bool,
}

/// A snapshot being streamed: NDJSON messages in global order, dense from `after + 1` up to
/// `position`. Read it in batches; it is never held whole in memory.
pub struct Snapshot {
    /// The replica it comes from.
    pub source: String,
    pub after: u64,
    /// The position the snapshot runs up to (`X-Snapshot-Position`).
    pub position: u64,
    /// The serving log's cluster id (`X-Log-Cluster-Id`), if it sent one.
    pub cluster_id: Option<String>,
    last: u64,
    resp: reqwest::Response,
    buf: BytesMut,
    done: bool,
}

impl Snapshot {
    /// The next batch of messages, or `None` at the end. Checks density and that the stream ends
    /// exactly at `position`.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Message>>, LogClientError> {
        loop {
            let batch = self.take_lines()?;
            if !batch.is_empty() {
                return Ok(Some(batch));
            }
            if self.done {
                if !self.buf.is_empty() {
                    return Err(self.bad("stream ended inside a line"));
                }
                if self.last != self.position {
                    return Err(self.bad(&format!(
                        "stream ended at {} before {}",
                        self.last, self.position
                    )));
                }
                return Ok(None);
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => self.done = true,
                Err(source) => return Err(LogClientError::transport(&self.source, source)),
            }
        }
    }

    fn take_lines(&mut self) -> Result<Vec<Message>, LogClientError> {
        let Some(end) = self.buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let block = self.buf.split_to(end + 1);
        let mut batch = Vec::new();
        for line in block[..].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let m: Message =
                serde_json::from_slice(line).map_err(|e| self.bad(&format!("bad line: {e}")))?;
            if !m.continues(self.last) {
                return Err(self.bad(&format!("position {} after {}", m.position, self.last)));
            }
            self.last = m.position;
            batch.push(m);
        }
        if self.last > self.position {
            return Err(self.bad(&format!(
                "position {} past the snapshot end {}",
                self.last, self.position
            )));
        }
        Ok(batch)
    }

    fn bad(&self, reason: &str) -> LogClientError {
        LogClientError::BadSnapshot {
            url: self.source.clone(),
            reason: reason.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A replica URL that answers `302` to another host: the client does not follow it, so the
    /// internal token never reaches that host.
    #[tokio::test]
    async fn the_internal_token_does_not_follow_redirects() {
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let elsewhere_port = elsewhere.local_addr().expect("addr").port();
        let redirector = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let redirector_url = format!(
            "http://127.0.0.1:{}",
            redirector.local_addr().expect("addr").port()
        );
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = redirector.accept().await {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://localhost:{elsewhere_port}/status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        let token =
            InternalToken::from_bytes(b"internal-token-0123456789abcdef".to_vec()).expect("token");
        let client = LogClient::new([redirector_url.clone()]).with_internal_token(Some(token));
        assert!(client.status_of(&redirector_url).await.is_err());
        let reached = tokio::time::timeout(Duration::from_millis(500), elsewhere.accept()).await;
        assert!(reached.is_err(), "the redirect was followed");
    }
}
