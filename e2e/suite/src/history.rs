//! Reading histories and judging them. A holder (chat-server pod or log replica) is read through
//! the pod proxy, page by page, until it has returned everything; [`check`] then compares every
//! holder's history with the others and with what the writers were told was accepted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use chat_server::message::Message;
use serde::Deserialize;

use crate::proxy::{Proxy, Target};

/// Page size used when reading a history (the API's maximum).
const PAGE: usize = 10_000;

/// A message the chat-server acknowledged (`201`, or `200` for a retried idempotency key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Idempotency key the writer chose.
    pub id: String,
    /// Position the server answered with.
    pub position: u64,
    /// Text sent.
    pub text: String,
}

#[derive(Deserialize)]
struct Page {
    messages: Vec<Message>,
    next: Option<u64>,
}

/// Every message of `channel` held by `holder`, ascending.
pub async fn read_channel(proxy: &Proxy, holder: &Target, channel: &str) -> Result<Vec<Message>> {
    let mut all = Vec::new();
    let mut after = 0u64;
    loop {
        let path = format!("/channels/{channel}/messages?after={after}&limit={PAGE}");
        let page: Page = match proxy.get(holder, &path).await {
            Ok(page) => page,
            Err(e) => bail!("reading {} from {}: {e}", path, holder.name()),
        };
        let full = page.messages.len() >= PAGE;
        all.extend(page.messages);
        match page.next {
            Some(next) if full && next > after => after = next,
            _ => return Ok(all),
        }
    }
}

/// The position a holder reports in `/status` (`position` on a chat-server, `persisted` on a
/// log replica).
pub async fn reported_position(proxy: &Proxy, holder: &Target) -> Result<u64> {
    let status: serde_json::Value = match proxy.get(holder, "/status").await {
        Ok(s) => s,
        Err(e) => bail!("GET /status of {}: {e}", holder.name()),
    };
    status
        .get("position")
        .or_else(|| status.get("persisted"))
        .and_then(|v| v.as_u64())
        .ok_or_else(|| anyhow::anyhow!("no position in /status of {}: {status}", holder.name()))
}

/// Waits (up to `timeout`) until every holder reports the same position, at least `at_least`,
/// twice in a row one second apart; then reads `channel` from each. On timeout it still reads
/// the histories (the check then shows what differs) and prints the positions it last saw.
pub async fn converged_histories(
    proxy: &Proxy,
    holders: &[Target],
    channel: &str,
    at_least: u64,
    timeout: Duration,
) -> Result<Vec<(String, Vec<Message>)>> {
    let started = Instant::now();
    let mut previous: Option<u64> = None;
    loop {
        let mut positions = Vec::new();
        for holder in holders {
            positions.push(reported_position(proxy, holder).await.ok());
        }
        let all_same = positions.iter().all(|p| p.is_some() && *p == positions[0]);
        let position = positions.first().copied().flatten();
        if all_same && position.is_some_and(|p| p >= at_least) {
            if previous == position {
                break;
            }
            previous = position;
        } else {
            previous = None;
        }
        if started.elapsed() > timeout {
            eprintln!("holders did not converge within {timeout:?}: {positions:?}");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut histories = Vec::new();
    for holder in holders {
        histories.push((
            holder.name().to_owned(),
            read_channel(proxy, holder, channel).await?,
        ));
    }
    Ok(histories)
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Everything wrong; empty when the histories are good.
    pub problems: Vec<String>,
    /// Length of the reference history.
    pub messages: usize,
}

impl Verdict {
    /// An error listing the problems (at most 20), if any.
    pub fn into_result(self) -> Result<usize> {
        if self.problems.is_empty() {
            return Ok(self.messages);
        }
        let shown: Vec<&str> = self.problems.iter().take(20).map(String::as_str).collect();
        bail!(
            "{} problem(s) in the histories:\n  {}",
            self.problems.len(),
            shown.join("\n  ")
        )
    }
}

/// Checks `histories` (holder name, messages of one channel):
/// - each is strictly ascending by position and holds no idempotency key twice;
/// - with `skips: Some(k)`, positions run densely from 1 but for at most `k` skipped ranges (dense
///   when the cluster only ever saw this channel; every broker restart skips the positions its
///   previous process may have handed out: a void);
/// - all are identical to the first (same positions, ids and texts in the same order);
/// - every accepted message is there at the position it was acknowledged with, with its text.
pub fn check(
    accepted: &[Accepted],
    histories: &[(String, Vec<Message>)],
    skips: Option<usize>,
) -> Verdict {
    let mut verdict = Verdict::default();
    let problems = &mut verdict.problems;
    let Some((reference_name, reference)) = histories.first() else {
        problems.push("no holders to check".to_owned());
        return verdict;
    };
    verdict.messages = reference.len();
    for (name, history) in histories {
        let mut ids = HashSet::new();
        let mut skipped = 0;
        for (i, m) in history.iter().enumerate() {
            if i > 0 && m.position <= history[i - 1].position {
                problems.push(format!(
                    "{name}: position {} after {}",
                    m.position,
                    history[i - 1].position
                ));
            }
            if let Some(allowed) = skips {
                let expected = if i == 0 {
                    1
                } else {
                    history[i - 1].position + 1
                };
                if m.position != expected {
                    skipped += 1;
                    if i == 0 || skipped > allowed {
                        problems.push(format!(
                            "{name}: index {i} holds position {} (not dense: at most {allowed} skipped ranges expected)",
                            m.position
                        ));
                        break;
                    }
                }
            }
            if !ids.insert(m.id.as_str()) {
                problems.push(format!("{name}: id {} held twice", m.id));
            }
        }
        if name != reference_name {
            if history.len() != reference.len() {
                problems.push(format!(
                    "{name} holds {} messages, {reference_name} holds {}",
                    history.len(),
                    reference.len()
                ));
            }
            let differs = history
                .iter()
                .zip(reference)
                .find(|(a, b)| (a.position, &a.id, &a.text) != (b.position, &b.id, &b.text));
            if let Some((a, b)) = differs {
                problems.push(format!(
                    "{name} diverges from {reference_name}: position {} id {} vs position {} id {}",
                    a.position, a.id, b.position, b.id
                ));
            }
        }
    }
    let by_id: HashMap<&str, &Message> = reference.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut positions: BTreeMap<u64, &str> = BTreeMap::new();
    for a in accepted {
        if let Some(other) = positions.insert(a.position, &a.id) {
            problems.push(format!(
                "position {} acknowledged for both {} and {other}",
                a.position, a.id
            ));
        }
        match by_id.get(a.id.as_str()) {
            None => problems.push(format!(
                "accepted message {} (position {}) lost",
                a.id, a.position
            )),
            Some(m) if m.position != a.position || m.text != a.text => problems.push(format!(
                "accepted message {} acknowledged at {} but held at {} ({:?})",
                a.id, a.position, m.position, m.text
            )),
            Some(_) => {}
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(position: u64, id: &str) -> Message {
        Message {
            position,
            channel: "c".into(),
            id: id.into(),
            author: "a".into(),
            text: format!("text {id}"),
            sent_at: 0,
        }
    }

    fn acc(position: u64, id: &str) -> Accepted {
        Accepted {
            id: id.into(),
            position,
            text: format!("text {id}"),
        }
    }

    #[test]
    fn identical_dense_histories_pass() {
        let h = vec![msg(1, "a"), msg(2, "b"), msg(3, "c")];
        let histories = vec![("n1".to_owned(), h.clone()), ("n2".to_owned(), h)];
        let accepted = vec![acc(1, "a"), acc(3, "c")];
        assert_eq!(
            check(&accepted, &histories, Some(0)).into_result().unwrap(),
            3
        );
    }

    #[test]
    fn a_void_after_a_broker_restart_is_allowed_when_expected() {
        let h = vec![msg(1, "a"), msg(2, "b"), msg(100_003, "c")];
        let histories = vec![("n1".to_owned(), h)];
        assert_eq!(check(&[], &histories, Some(1)).into_result().unwrap(), 3);
        assert!(check(&[], &histories, Some(0)).into_result().is_err());
        let late_start = vec![("n1".to_owned(), vec![msg(2, "b")])];
        assert!(check(&[], &late_start, Some(1)).into_result().is_err());
    }

    #[test]
    fn finds_gaps_divergence_loss_and_duplicates() {
        let good = vec![msg(1, "a"), msg(2, "b"), msg(3, "c")];
        let gap = vec![msg(1, "a"), msg(3, "c")];
        let v = check(
            &[],
            &[("n1".into(), good.clone()), ("n2".into(), gap)],
            Some(0),
        );
        assert!(
            v.problems.iter().any(|p| p.contains("not dense")),
            "{:?}",
            v.problems
        );
        assert!(
            v.problems.iter().any(|p| p.contains("holds 2 messages")),
            "{:?}",
            v.problems
        );

        let swapped = vec![msg(1, "a"), msg(2, "c"), msg(3, "b")];
        let v = check(
            &[],
            &[("n1".into(), good.clone()), ("n2".into(), swapped)],
            Some(0),
        );
        assert!(
            v.problems.iter().any(|p| p.contains("diverges")),
            "{:?}",
            v.problems
        );

        let v = check(&[acc(4, "d")], &[("n1".into(), good.clone())], Some(0));
        assert!(
            v.problems.iter().any(|p| p.contains("lost")),
            "{:?}",
            v.problems
        );

        let v = check(&[acc(1, "b")], &[("n1".into(), good)], Some(0));
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("acknowledged at 1 but held at 2")),
            "{:?}",
            v.problems
        );

        let dup = vec![msg(1, "a"), msg(2, "a")];
        let v = check(&[], &[("n1".into(), dup)], Some(0));
        assert!(
            v.problems.iter().any(|p| p.contains("held twice")),
            "{:?}",
            v.problems
        );

        let backwards = vec![msg(2, "a"), msg(1, "b")];
        let v = check(&[], &[("n1".into(), backwards)], None);
        assert!(
            v.problems.iter().any(|p| p.contains("after")),
            "{:?}",
            v.problems
        );
    }
}
