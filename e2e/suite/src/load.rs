//! Message writers: `clients` concurrent tasks POSTing through the chat-server Service, either a
//! fixed number of messages as fast as they go or a steady rate until stopped. A failed send is
//! retried with the same idempotency key (so a message accepted but not acknowledged is not
//! stored twice) until `retry_for` has passed; every acknowledged message is recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chat_server::message::Message;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use crate::history::Accepted;
use crate::proxy::{Proxy, Target};

/// How many messages, how fast.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// This many messages, as fast as the clients manage.
    Count(u64),
    /// This many messages per second (all clients together) until [`Load::stop`].
    Rate(f64),
}

/// What to send where.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The chat-server Service.
    pub target: Target,
    /// Channel written to.
    pub channel: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Count or rate.
    pub pace: Pace,
    /// How long one message is retried before it is given up.
    pub retry_for: Duration,
    /// Prefix of ids and texts, unique per load.
    pub prefix: String,
}

/// What a load did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Acknowledged messages.
    pub accepted: Vec<Accepted>,
    /// Ids given up after `retry_for` (never acknowledged; may or may not be stored).
    pub abandoned: Vec<String>,
    /// Ids refused with a permanent error, with the error.
    pub rejected: Vec<(String, String)>,
    /// Failed attempts (each retried).
    pub failed_attempts: u64,
    /// A few distinct failure texts, for the log.
    pub failure_samples: Vec<String>,
    /// From start to the last acknowledgement.
    pub elapsed: Duration,
    /// Messages offered to the clients.
    pub offered: u64,
}

impl LoadReport {
    /// Acknowledged messages per second.
    pub fn rate(&self) -> f64 {
        self.accepted.len() as f64 / self.elapsed.as_secs_f64().max(0.001)
    }

    /// One line for the test log.
    pub fn summary(&self) -> String {
        format!(
            "offered {}, accepted {} in {:.1?} ({:.0}/s), abandoned {}, rejected {}, failed attempts {} {:?}",
            self.offered,
            self.accepted.len(),
            self.elapsed,
            self.rate(),
            self.abandoned.len(),
            self.rejected.len(),
            self.failed_attempts,
            self.failure_samples
        )
    }
}

/// A running load.
pub struct Load {
    stop: watch::Sender<bool>,
    task: JoinHandle<LoadReport>,
    accepted: Arc<AtomicU64>,
}

impl Load {
    /// Starts the producer and the clients.
    pub fn start(proxy: Proxy, spec: LoadSpec) -> Load {
        let (stop, stop_rx) = watch::channel(false);
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(run(proxy, spec, stop_rx, counter));
        Load {
            stop,
            task,
            accepted,
        }
    }

    /// Messages acknowledged so far.
    pub fn accepted_so_far(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops offering new messages, lets the clients finish (retries included) and reports.
    pub async fn stop(self) -> Result<LoadReport> {
        let _ = self.stop.send(true);
        self.task.await.context("load task panicked")
    }

    /// Waits for a [`Pace::Count`] load to send everything.
    pub async fn finish(self) -> Result<LoadReport> {
        self.task.await.context("load task panicked")
    }
}

#[derive(Default)]
struct Shared {
    report: LoadReport,
    last_ack: Option<Instant>,
}

async fn run(
    proxy: Proxy,
    spec: LoadSpec,
    mut stop: watch::Receiver<bool>,
    counter: Arc<AtomicU64>,
) -> LoadReport {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<u64>(1024);
    let rx = Arc::new(Mutex::new(rx));
    let shared = Arc::new(std::sync::Mutex::new(Shared::default()));
    let mut clients = Vec::new();
    for client in 0..spec.clients.max(1) {
        let (proxy, spec, rx, shared, counter) = (
            proxy.clone(),
            spec.clone(),
            rx.clone(),
            shared.clone(),
            counter.clone(),
        );
        clients.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some(seq) = next else { break };
                send_one(&proxy, &spec, client, seq, &shared, &counter).await;
            }
        }));
    }
    let mut offered = 0u64;
    match spec.pace {
        Pace::Count(n) => {
            for seq in 1..=n {
                if *stop.borrow() || tx.send(seq).await.is_err() {
                    break;
                }
                offered += 1;
            }
        }
        Pace::Rate(per_second) => {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / per_second.max(0.1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        seq += 1;
                        if tx.send(seq).await.is_err() { break; }
                        offered += 1;
                    }
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() { break; }
                    }
                }
            }
        }
    }
    drop(tx);
    for client in clients {
        let _ = client.await;
    }
    let (mut report, last_ack) = shared
        .lock()
        .map(|mut s| (std::mem::take(&mut s.report), s.last_ack))
        .unwrap_or_default();
    report.offered = offered;
    report.elapsed = last_ack
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(started);
    report.accepted.sort_by_key(|a| a.position);
    report
}

async fn send_one(
    proxy: &Proxy,
    spec: &LoadSpec,
    client: usize,
    seq: u64,
    shared: &std::sync::Mutex<Shared>,
    counter: &AtomicU64,
) {
    let id = format!("{}-{seq}", spec.prefix);
    let text = format!("{} message {seq}", spec.prefix);
    let body = serde_json::json!({"text": text, "author": format!("client-{client}"), "id": id});
    let path = format!("/channels/{}/messages", spec.channel);
    let deadline = Instant::now() + spec.retry_for;
    let mut backoff = Duration::from_millis(100);
    loop {
        match proxy.post::<Message>(&spec.target, &path, &body).await {
            Ok(m) => {
                counter.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut s) = shared.lock() {
                    s.report.accepted.push(Accepted {
                        id,
                        position: m.position,
                        text,
                    });
                    s.last_ack = Some(Instant::now());
                }
                return;
            }
            Err(e) => {
                let permanent = e.is_permanent();
                if let Ok(mut s) = shared.lock() {
                    s.report.failed_attempts += 1;
                    let text = e.to_string();
                    let short: String = text.chars().take(120).collect();
                    if s.report.failure_samples.len() < 5
                        && !s.report.failure_samples.contains(&short)
                    {
                        s.report.failure_samples.push(short);
                    }
                    if permanent {
                        s.report.rejected.push((id, text));
                        return;
                    }
                    if Instant::now() >= deadline {
                        s.report.abandoned.push(id);
                        return;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
