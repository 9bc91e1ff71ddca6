//! The replication protocol's decisions, as pure functions: positions and the holes between
//! them, how far a source of history can vouch for a range, and where a broker that lost its data
//! is re-anchored. No I/O here: the node follower ([`crate::node::follower`]), the replica's
//! follower ([`crate::log::follower`]) and the read paths ([`crate::api`]) gather the facts and
//! act on what these functions decide. Every decision is table-tested below.
//!
//! # Positions
//! A position is a message's place in the cluster-wide order. Within one broker epoch positions
//! are dense (`1, 2, 3 …`, taken by `INCR` in the write script). When the broker loses its data
//! the new epoch starts past every position the old one may have handed out (see
//! [`anchor_position`]), so a position is never given to a second message; the positions
//! skipped that way hold nothing anywhere.

use crate::message::Message;

#[cfg(test)]
mod sim;

/// A hole in what should be a dense run of positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// First missing position.
    pub from: u64,
    /// Last missing position.
    pub to: u64,
}

/// A batch read after a cursor, split at its first hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The messages that continue the cursor densely (may be empty).
    pub dense: Vec<Message>,
    /// The first hole after `dense`, and everything the batch held after it.
    pub gap: Option<(Gap, Vec<Message>)>,
}

/// Splits `batch` into the part that continues `cursor` densely and what follows the first hole.
/// Entries at or below the cursor (a replayed read) are dropped.
pub fn split_dense(cursor: u64, batch: Vec<Message>) -> Split {
    let mut dense: Vec<Message> = batch.into_iter().filter(|m| m.position > cursor).collect();
    for (i, (m, expected)) in dense.iter().zip(cursor + 1..).enumerate() {
        if m.position != expected {
            let gap = Gap {
                from: expected,
                to: m.position - 1,
            };
            let rest = dense.split_off(i);
            return Split {
                dense,
                gap: Some((gap, rest)),
            };
        }
    }
    Split { dense, gap: None }
}

/// How far one replica's channel page can be trusted: every message of the channel with a
/// position in `after+1 ..= covered` is in the page.
///
/// A replica answers a page from what it has persisted; a page shorter than `limit` is complete
/// only up to the replica's persisted position (read before the page), a full page up to its own
/// last message. `persisted: None` (a replica too old to say) vouches for nothing past the page.
pub fn page_covers(after: u64, limit: usize, positions: &[u64], persisted: Option<u64>) -> u64 {
    let last = positions.last().copied();
    if positions.len() >= limit {
        return last.unwrap_or(after);
    }
    match persisted {
        Some(p) => p.max(last.unwrap_or(after)),
        None => last.unwrap_or(after),
    }
}

/// What a node's history page needs from the replication log when its memory window no longer
/// holds the start of the range: a replica page that covers at least up to `needed` (the last
/// position evicted from memory), or that is full.
pub fn page_is_enough(covered: u64, needed: u64, full: bool) -> bool {
    full || covered >= needed
}

/// Where a broker without an epoch is anchored: the position its new epoch continues after.
///
/// - `persisted`: the anchoring replica's persisted position (after copying from any reachable
///   peer that was further);
/// - `limit`: the highest position the old epoch may have handed out, as recorded durably by the
///   replicas that granted it (0 when nothing was ever granted: a new cluster);
///
/// The new epoch continues after the larger of the two, so no position of the old epoch, even one
/// acknowledged and never persisted, is handed out again. The positions between `persisted` and
/// the anchor are void: they hold nothing on any node or replica.
pub fn anchor_position(persisted: u64, limit: u64) -> u64 {
    persisted.max(limit)
}

/// How far the broker may hand out positions once a replica has persisted through `persisted`:
/// `persisted + lease`. A replica raises the broker's limit (and records it on disk first) when
/// the limit comes within half a lease of what it has persisted, so writes never wait for it
/// while it keeps up.
pub fn next_limit(persisted: u64, current: u64, lease: u64) -> Option<u64> {
    let lease = lease.max(2);
    let wanted = persisted.saturating_add(lease);
    if current >= persisted.saturating_add(lease / 2) || wanted <= current {
        None
    } else {
        Some(wanted)
    }
}

/// Whether a log (or a node's copy) at `persisted` may follow a broker epoch it did not anchor,
/// whose history was anchored on `base` and continues after `anchor`:
/// - one that followed an earlier epoch (`followed`) fits when it holds nothing past `base`
///   (what is missing up to `base` comes from peers, `base+1 ..= anchor` is void), or when it
///   already ends exactly at `anchor` (it holds the void record);
/// - one that never followed an epoch (new, or copied from a peer) fits when it does not run
///   past the head.
///
/// A log holding positions in `base+1 ..= anchor` that are not void has history the cluster
/// declared lost: it has diverged.
pub fn epoch_fits(followed: bool, persisted: u64, base: u64, anchor: u64, head: u64) -> bool {
    if followed {
        persisted <= base || persisted == anchor
    } else {
        persisted <= head.max(anchor)
    }
}

/// The void record a copy at `cursor` must apply to continue the epoch anchored on `base` after
/// `anchor`: `Some(anchor)` when the copy ends exactly at `base` and the anchor skipped positions.
pub fn void_after(cursor: u64, base: u64, anchor: u64) -> Option<u64> {
    (cursor == base && anchor > base).then_some(anchor)
}

/// The next step in filling a hole up to [`GapFill::to`], as [`GapFill::next`] decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillStep {
    /// The copy holds everything through `to`: the hole is filled.
    Done,
    /// Apply a void record ending at this position (the epoch was anchored exactly where the
    /// copy ends: [`void_after`]); then ask again.
    Void(u64),
    /// Read the missing range from the broker's stream and apply its dense start; then ask again.
    Stream,
    /// The stream does not hold the next position (trimmed, or lost): fetch it from the other
    /// holders of the history — a node from the replication log, a replica from its peers; then
    /// ask again.
    Elsewhere,
    /// No source had the next position this round (the log or the peers have not persisted it
    /// yet): wait (with backoff) before asking again. Never skip it.
    Wait,
}

/// Filling one hole, the same way everywhere a copy of the history is repaired (the node's
/// follower, the replica's follower, and the simulation that runs both): each round tries the
/// stream first, then the other holders, and waits only when neither moved the copy forward. A
/// hole is never reported as filled before the copy reaches `to`.
///
/// Sans-I/O: the caller does what [`FillStep`] says and asks again with its copy's new cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapFill {
    /// Last position of the hole.
    pub to: u64,
    /// The cursor at the start of this round, and the sources tried in it.
    round: Option<(u64, bool, bool)>,
}

impl GapFill {
    /// Starts filling through `to`.
    pub fn new(to: u64) -> GapFill {
        GapFill { to, round: None }
    }

    /// The next step for a copy at `cursor` in the epoch anchored on `base` after `anchor`.
    /// A round ends when the cursor moves (a source helped: start again with the stream, which
    /// is the cheapest) or when both sources were tried without it moving ([`FillStep::Wait`]).
    pub fn next(&mut self, cursor: u64, base: u64, anchor: u64) -> FillStep {
        if cursor >= self.to {
            return FillStep::Done;
        }
        if let Some(void) = void_after(cursor, base, anchor) {
            return FillStep::Void(void);
        }
        let (stream, elsewhere) = match self.round {
            Some((at, stream, elsewhere)) if at == cursor => (stream, elsewhere),
            _ => (false, false),
        };
        let step = match (stream, elsewhere) {
            (false, _) => FillStep::Stream,
            (true, false) => FillStep::Elsewhere,
            (true, true) => FillStep::Wait,
        };
        self.round = match step {
            FillStep::Stream => Some((cursor, true, false)),
            FillStep::Elsewhere => Some((cursor, true, true)),
            _ => None,
        };
        step
    }
}

/// What a Redis process is to the cluster, from one connection's view of it (see
/// `crate::broker`, "Broker instances").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instance {
    /// Validated (`chat:instance` is its `run_id`) and the node's scripts are loaded.
    Validated,
    /// Validated, but its script cache was flushed (or holds another version's scripts): load
    /// them.
    Reload,
    /// Never validated: a restart, a restore from an older copy or a failover. It may have lost
    /// acknowledged writes up to the limit, so its epoch is retired and a new one anchored past
    /// the limit.
    New,
}

/// Classifies a Redis process: `scripts_loaded` (the write and resolve scripts are in its
/// cache), `recorded` (`chat:instance`, the `run_id` the epoch was validated on) and its own
/// `run_id` (`INFO server`). The `run_id` decides: loaded scripts on a process the epoch was not
/// validated on (an older version's node loaded them) do not make it validated.
pub fn instance_check(scripts_loaded: bool, recorded: Option<&str>, run_id: &str) -> Instance {
    match (recorded == Some(run_id), scripts_loaded) {
        (true, true) => Instance::Validated,
        (true, false) => Instance::Reload,
        (false, _) => Instance::New,
    }
}

/// Whether a node that holds positions up to `cursor` in epoch `followed` keeps its history when
/// the broker moves to a new epoch anchored on `base` that continues `previous`: its history is
/// the new epoch's up to `cursor` when the new epoch continues the one it followed and it holds
/// nothing past the base. Otherwise it reloads from the log (and closes its readers with 1012).
pub fn keeps_history(followed: &str, cursor: u64, previous: Option<&str>, base: u64) -> bool {
    previous == Some(followed) && cursor <= base
}

/// How long a component may go without a successful broker round trip before it checks whether
/// the others moved on without it.
pub const BROKER_SILENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a component that has not reached the broker for `silence` is *cut off*: the broker is
/// unreachable for it alone, so it may not be current. That is the case when, after
/// [`BROKER_SILENCE`], another part of the cluster (a replica) holds positions past `holds`;
/// when nobody is ahead, the broker is down for everyone and nothing was accepted meanwhile, so
/// the component stays ready and keeps serving what it has.
pub fn is_cut_off(silence: std::time::Duration, holds: u64, others_hold: Option<u64>) -> bool {
    silence >= BROKER_SILENCE && others_hold.is_some_and(|p| p > holds)
}

/// Whether a replica counts as current after one follow round that read `read` entries of at
/// most `read_count` (`repaired`: the round found a gap and copied it from elsewhere, leaving
/// part of its read for the next round) and left it holding `persisted` with the broker head at
/// `head`: current when nothing is left (`persisted >= head`) or when the round's read reached
/// the end of the stream and all of it was appended (fewer than `read_count` entries came back,
/// so everything accepted before the read is now persisted; what arrived while the round wrote is
/// the next round's). Behind when the read was cut at `read_count` with more entries past it, or
/// after a repair short of the head. Without the second case a replica
/// under steady writes flipped between live and catching up on every round, and its readiness
/// with it.
pub fn caught_up_after_round(
    read: usize,
    read_count: usize,
    repaired: bool,
    persisted: u64,
    head: u64,
) -> bool {
    persisted >= head || (read < read_count && !repaired)
}

/// How a resuming reader's position relates to the history a node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Nothing special: replay what follows `after`.
    Continue,
    /// `after` lies in a void range left by a broker data loss: positions `lost_from ..= after`
    /// the reader may hold were never persisted and are gone; replay continues after `after`
    /// (the next position the cluster has is past the void).
    Lost { lost_from: u64, void_to: u64 },
}

/// Classifies a reader's `after` against the void ranges a node knows (`(from, to)` inclusive,
/// ascending).
pub fn resume_point(after: u64, voids: &[(u64, u64)]) -> Resume {
    for &(from, to) in voids {
        if (from..=to).contains(&after) {
            return Resume::Lost {
                lost_from: from,
                void_to: to,
            };
        }
    }
    Resume::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_that_reached_the_end_of_the_stream_is_caught_up() {
        // (read, read_count, repaired, persisted, head) -> caught up
        let cases = [
            ((0, 1000, false, 50, 50), true),         // idle, nothing left
            ((10, 1000, false, 60, 75), true),        // steady writes: 15 arrived while it wrote
            ((999, 1000, false, 999, 5000), true),    // the read still reached the end
            ((1000, 1000, false, 1000, 5000), false), // cut at the read count: more to read
            ((1000, 1000, false, 5000, 5000), true),  // a full read that ended at the head
            ((10, 1000, true, 40, 60), false),        // repaired a gap, part of the read left over
            ((10, 1000, true, 60, 60), true),         // repaired up to the head
        ];
        for ((read, count, repaired, persisted, head), want) in cases {
            assert_eq!(
                caught_up_after_round(read, count, repaired, persisted, head),
                want,
                "read {read}/{count}, repaired {repaired}, persisted {persisted}, head {head}"
            );
        }
    }

    fn msg(position: u64) -> Message {
        Message {
            position,
            channel: "c".into(),
            id: position.to_string(),
            author: String::new(),
            text: "t".into(),
            sent_at: 0,
        }
    }

    fn positions(v: &[Message]) -> Vec<u64> {
        v.iter().map(|m| m.position).collect()
    }

    #[test]
    fn dense_batches_pass_and_replays_are_dropped() {
        let split = split_dense(2, vec![msg(1), msg(2), msg(3), msg(4)]);
        assert_eq!(positions(&split.dense), vec![3, 4]);
        assert_eq!(split.gap, None);
    }

    #[test]
    fn a_hole_is_reported_with_what_surrounds_it() {
        let split = split_dense(2, vec![msg(3), msg(6), msg(7)]);
        assert_eq!(positions(&split.dense), vec![3]);
        let (gap, rest) = split.gap.unwrap();
        assert_eq!(gap, Gap { from: 4, to: 5 });
        assert_eq!(positions(&rest), vec![6, 7]);
        let split = split_dense(0, vec![msg(10)]);
        assert!(split.dense.is_empty());
        assert_eq!(split.gap.unwrap().0, Gap { from: 1, to: 9 });
    }

    #[test]
    fn page_coverage_table() {
        // (after, limit, positions, persisted) -> covered through
        type Row<'a> = (u64, usize, &'a [u64], Option<u64>, u64);
        let rows: &[Row] = &[
            // A replica behind: an empty page vouches only for what it persisted (input 1).
            (5, 1000, &[], Some(5), 5),
            // Caught up: an empty page is complete through the persisted position.
            (5, 1000, &[], Some(45), 45),
            // A short page: complete through persisted.
            (0, 1000, &[1, 2, 3], Some(40), 40),
            // A full page: complete through its last message, whatever was persisted.
            (0, 3, &[1, 2, 3], Some(40), 3),
            (0, 3, &[1, 2, 3], Some(2), 3),
            // An old replica that does not say: only what it returned.
            (0, 1000, &[1, 2], None, 2),
            (7, 1000, &[], None, 7),
        ];
        for &(after, limit, pos, persisted, want) in rows {
            assert_eq!(
                page_covers(after, limit, pos, persisted),
                want,
                "after={after} limit={limit} positions={pos:?} persisted={persisted:?}"
            );
        }
    }

    #[test]
    fn page_enough_table() {
        let rows = [
            (5, 40, false, false),
            (40, 40, false, true),
            (45, 40, false, true),
            (3, 40, true, true),
        ];
        for (covered, needed, full, want) in rows {
            assert_eq!(
                page_is_enough(covered, needed, full),
                want,
                "{covered} {needed} {full}"
            );
        }
    }

    #[test]
    fn anchor_table() {
        // (persisted, recorded limit) -> anchor
        let rows = [
            (0, 0, 0),             // a new cluster starts at 1
            (5, 0, 5),             // nothing granted (an upgraded log): continue after the log
            (5, 100_005, 100_005), // input 2: 6..15 were acknowledged, never persisted
            (200_000, 100_005, 200_000),
        ];
        for (persisted, limit, want) in rows {
            assert_eq!(
                anchor_position(persisted, limit),
                want,
                "{persisted} {limit}"
            );
        }
    }

    #[test]
    fn limit_table() {
        // (persisted, current limit, lease) -> new limit
        let rows = [
            (0, 0, 1000, Some(1000)),
            (100, 1000, 1000, None), // still more than half a lease ahead
            (500, 1000, 1000, None), // exactly half a lease left: not yet
            (501, 1000, 1000, Some(1501)), // less than half left: raise
            (900, 1000, 1000, Some(1900)),
            (5000, 1000, 1000, Some(6000)), // far behind the log (a restored broker)
            (0, 5000, 1000, None),          // never lowered
        ];
        for (persisted, current, lease, want) in rows {
            assert_eq!(
                next_limit(persisted, current, lease),
                want,
                "{persisted} {current} {lease}"
            );
        }
    }

    #[test]
    fn epoch_fits_table() {
        // (followed, persisted, base, anchor, head) -> fits
        let rows = [
            (true, 5, 5, 100_005, 100_010, true), // the anchoring replica's history
            (true, 3, 5, 100_005, 100_010, true), // behind: 4..5 from peers, then void
            (true, 100_005, 5, 100_005, 100_010, true), // already holds the void record
            (true, 9, 5, 100_005, 100_010, false), // 6..9 were declared lost: diverged
            (true, 100_007, 5, 100_005, 100_010, false), // past the anchor: another history
            (true, 50, 50, 50, 60, true),         // no void (a new cluster's epoch)
            (false, 0, 5, 100_005, 100_010, true), // an empty log
            (false, 100_010, 5, 100_005, 100_010, true), // copied from a peer, caught up
            (false, 100_011, 5, 100_005, 100_010, false), // ahead of the broker
        ];
        for (followed, persisted, base, anchor, head, want) in rows {
            assert_eq!(
                epoch_fits(followed, persisted, base, anchor, head),
                want,
                "followed={followed} persisted={persisted} base={base} anchor={anchor} head={head}"
            );
        }
    }

    #[test]
    fn void_after_table() {
        // (cursor, base, anchor) -> void record to apply
        let rows = [
            (5, 5, 100_005, Some(100_005)),
            (4, 5, 100_005, None), // position 5 must come from the log first
            (100_005, 5, 100_005, None),
            (5, 5, 5, None), // nothing skipped
        ];
        for (cursor, base, anchor, want) in rows {
            assert_eq!(
                void_after(cursor, base, anchor),
                want,
                "{cursor} {base} {anchor}"
            );
        }
    }

    #[test]
    fn instance_table() {
        // (scripts loaded, recorded run_id, this run_id) -> what the process is
        let rows = [
            (true, Some("r1"), "r1", Instance::Validated),
            (false, Some("r1"), "r1", Instance::Reload), // SCRIPT FLUSH, or another version
            (false, Some("r1"), "r2", Instance::New),    // restarted or restored
            (true, Some("r1"), "r2", Instance::New),     // an old node loaded its script
            (false, None, "r2", Instance::New),          // anchored before instances existed
            (true, None, "r2", Instance::New),
        ];
        for (loaded, recorded, run_id, want) in rows {
            assert_eq!(
                instance_check(loaded, recorded, run_id),
                want,
                "{loaded} {recorded:?} {run_id}"
            );
        }
    }

    #[test]
    fn keeps_history_table() {
        // (followed, cursor, previous, base) -> keeps its history
        let rows = [
            ("e1", 5, Some("e1"), 5, true), // a restart: the base is what the copy held
            ("e1", 3, Some("e1"), 5, true), // behind the base: the rest comes from the stream
            ("e1", 9, Some("e1"), 5, false), // read past the copy: 6..9 were declared lost
            ("e1", 5, None, 5, false),      // a wipe: nobody vouches for the node's history
            ("e0", 5, Some("e1"), 5, false), // missed an epoch in between
        ];
        for (followed, cursor, previous, base, want) in rows {
            assert_eq!(
                keeps_history(followed, cursor, previous, base),
                want,
                "{followed} {cursor} {previous:?} {base}"
            );
        }
    }

    #[test]
    fn cut_off_table() {
        use std::time::Duration;
        let s = |secs| Duration::from_secs(secs);
        // (silence, holds, furthest other) -> cut off
        let rows = [
            (s(0), 10, Some(50), false),  // just heard from the broker
            (s(4), 10, Some(50), false),  // not silent long enough yet
            (s(5), 10, Some(50), true),   // silent, and a replica moved on
            (s(60), 50, Some(50), false), // silent, but nobody is ahead: broker-wide outage
            (s(60), 50, Some(40), false), // the others are behind
            (s(60), 50, None, false),     // nobody to ask
        ];
        for (silence, holds, others, want) in rows {
            assert_eq!(
                is_cut_off(silence, holds, others),
                want,
                "{silence:?} {holds} {others:?}"
            );
        }
    }

    #[test]
    fn resume_table() {
        let voids = [(6, 100_005), (200_001, 300_000)];
        let rows = [
            (0, Resume::Continue),
            (5, Resume::Continue),
            (
                6,
                Resume::Lost {
                    lost_from: 6,
                    void_to: 100_005,
                },
            ),
            (
                15,
                Resume::Lost {
                    lost_from: 6,
                    void_to: 100_005,
                },
            ),
            (100_006, Resume::Continue),
            (
                250_000,
                Resume::Lost {
                    lost_from: 200_001,
                    void_to: 300_000,
                },
            ),
        ];
        for (after, want) in rows {
            assert_eq!(resume_point(after, &voids), want, "after={after}");
        }
    }

    #[test]
    fn gap_fill_tries_the_stream_then_the_others_and_waits_only_when_neither_helped() {
        // Each case: the hole's end, then (cursor, base, anchor) asked in turn with the step
        // expected each time.
        type Case = (&'static str, u64, Vec<((u64, u64, u64), FillStep)>);
        let cases: Vec<Case> = vec![
            (
                "already filled",
                10,
                vec![((10, 0, 0), FillStep::Done), ((12, 0, 0), FillStep::Done)],
            ),
            (
                "the stream fills it",
                10,
                vec![((5, 0, 0), FillStep::Stream), ((10, 0, 0), FillStep::Done)],
            ),
            (
                "the stream helps part way, then again from the stream",
                10,
                vec![
                    ((5, 0, 0), FillStep::Stream),
                    ((7, 0, 0), FillStep::Stream),
                    ((7, 0, 0), FillStep::Elsewhere),
                    ((10, 0, 0), FillStep::Done),
                ],
            ),
            (
                "trimmed: the others fill it",
                10,
                vec![
                    ((5, 0, 0), FillStep::Stream),
                    ((5, 0, 0), FillStep::Elsewhere),
                    ((8, 0, 0), FillStep::Stream),
                    ((8, 0, 0), FillStep::Elsewhere),
                    ((10, 0, 0), FillStep::Done),
                ],
            ),
            (
                "nobody has it yet: wait, then a fresh round",
                10,
                vec![
                    ((5, 0, 0), FillStep::Stream),
                    ((5, 0, 0), FillStep::Elsewhere),
                    ((5, 0, 0), FillStep::Wait),
                    ((5, 0, 0), FillStep::Stream),
                    ((5, 0, 0), FillStep::Elsewhere),
                    ((5, 0, 0), FillStep::Wait),
                ],
            ),
            (
                "the copy ends at the epoch's base: the void record first",
                120,
                vec![
                    ((100, 100, 110), FillStep::Void(110)),
                    ((110, 100, 110), FillStep::Stream),
                    ((120, 100, 110), FillStep::Done),
                ],
            ),
            (
                "below the base: history first, then the void",
                120,
                vec![
                    ((90, 100, 110), FillStep::Stream),
                    ((90, 100, 110), FillStep::Elsewhere),
                    ((100, 100, 110), FillStep::Void(110)),
                    ((110, 100, 110), FillStep::Stream),
                ],
            ),
            (
                "an anchor that skipped nothing has no void",
                120,
                vec![((100, 100, 100), FillStep::Stream)],
            ),
        ];
        for (case, to, steps) in cases {
            let mut fill = GapFill::new(to);
            for (i, ((cursor, base, anchor), want)) in steps.into_iter().enumerate() {
                assert_eq!(fill.next(cursor, base, anchor), want, "{case}: step {i}");
            }
        }
    }
}
