//! Which archived transactions a point-in-time restore of MariaDB replays: the GTID path from
//! a backup's position to a target, across failovers. Pure: the archive's index in, a plan out.
//!
//! The archive holds binary logs per term (one primary's time in office, see
//! [`crate::mysql_family::binlog_archive`]). Each term records its promotion GTID: the
//! position its primary had replicated when it took over. A term's logs are the history only up
//! to the promotion GTID of every later term: what an older primary wrote past that point never
//! reached the survivors (a diverged tail) and is never replayed. For each sequence number the
//! path takes the transaction from the oldest term that holds it within those bounds (the term
//! that wrote it, when its logs were archived; a later primary's replicated copy otherwise); the path
//! runs from the backup's position while sequence numbers follow one another (MariaDB's strict
//! GTID mode numbers the transactions of a domain without holes), so a missing archive file
//! shows as a gap, never as a silent jump.
//!
//! Stator runs one replication domain (`gtid_domain_id = 0`); positions of other domains are
//! refused.

use std::collections::BTreeMap;

use stator_api::position::{MariadbGtid, MariadbGtidPosition};

use crate::mysql_family::binlog::LoggedTransaction;

/// The replication domain Stator's servers write in.
pub const DOMAIN: u32 = 0;

/// A term of the archive: its number and promotion GTID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub term: u64,
    pub start: MariadbGtidPosition,
}

/// One archived binary log: its term, its key in the archive, its transactions in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedLog {
    pub term: u64,
    pub key: String,
    pub transactions: Vec<LoggedTransaction>,
}

/// One transaction of the path and the archived log it is replayed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathStep {
    pub gtid: MariadbGtid,
    pub time: i64,
    /// Index into the logs given to [`history_after`].
    pub log: usize,
}

/// The recoverable history after a position: the transactions in sequence order, and where it
/// stops short of archived transactions further on (a missing file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub path: Vec<PathStep>,
    /// The first sequence number missing while later ones are archived.
    pub gap: Option<u64>,
}

/// Why no path exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    /// A position or transaction outside domain 0.
    OtherDomain(MariadbGtidPosition),
    /// The start position is not on the surviving history (a diverged primary's).
    OffHistory {
        position: MariadbGtid,
        history: MariadbGtid,
    },
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathError::OtherDomain(p) => write!(
                f,
                "position {p} is outside replication domain {DOMAIN}, the only one Stator writes"
            ),
            PathError::OffHistory { position, history } => write!(
                f,
                "{} is not on the surviving history (the archive holds {} at that sequence number): it was written by a primary that lost a failover",
                gtid_text(position),
                gtid_text(history)
            ),
        }
    }
}

/// `domain-server-sequence`.
pub fn gtid_text(g: &MariadbGtid) -> String {
    format!("{}-{}-{}", g.domain, g.server, g.sequence)
}

/// How far each term's logs are history: the lowest promotion sequence number of any later term
/// (none: unbounded).
fn bounds(terms: &[Term]) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    let mut sorted: Vec<&Term> = terms.iter().collect();
    sorted.sort_by_key(|t| t.term);
    let mut lowest_later = u64::MAX;
    for t in sorted.iter().rev() {
        out.insert(t.term, lowest_later);
        lowest_later = lowest_later.min(t.start.sequence(DOMAIN));
    }
    out
}

/// The transaction the surviving history holds at each sequence number, and the log it is taken
/// from: the oldest term's copy within that term's bound.
fn candidates(terms: &[Term], logs: &[ArchivedLog]) -> BTreeMap<u64, (u64, PathStep)> {
    let bounds = bounds(terms);
    let mut out: BTreeMap<u64, (u64, PathStep)> = BTreeMap::new();
    for (index, log) in logs.iter().enumerate() {
        // A log of a term without a record is bounded by every recorded later term.
        let bound = bounds.get(&log.term).copied().unwrap_or_else(|| {
            terms
                .iter()
                .filter(|t| t.term > log.term)
                .map(|t| t.start.sequence(DOMAIN))
                .min()
                .unwrap_or(u64::MAX)
        });
        for t in &log.transactions {
            let seq = t.gtid.sequence;
            if t.gtid.domain != DOMAIN || seq > bound {
                continue;
            }
            let step = PathStep {
                gtid: t.gtid,
                time: t.time,
                log: index,
            };
            match out.get(&seq) {
                Some((term, _)) if *term <= log.term => {}
                _ => {
                    out.insert(seq, (log.term, step));
                }
            }
        }
    }
    out
}

/// The recoverable history after `from` (a backup's position): the surviving transactions
/// with sequence numbers `from + 1, from + 2, …` as long as they follow one another.
pub fn history_after(
    terms: &[Term],
    logs: &[ArchivedLog],
    from: &MariadbGtidPosition,
) -> Result<History, PathError> {
    if from.gtids().any(|g| g.domain != DOMAIN) {
        return Err(PathError::OtherDomain(from.clone()));
    }
    let all = candidates(terms, logs);
    if let Some(at) = from.gtids().next()
        && let Some((_, step)) = all.get(&at.sequence)
        && step.gtid != at
    {
        return Err(PathError::OffHistory {
            position: at,
            history: step.gtid,
        });
    }
    let mut history = History::default();
    let mut next = from.sequence(DOMAIN) + 1;
    while let Some((_, step)) = all.get(&next) {
        history.path.push(*step);
        next += 1;
    }
    if all.range(next..).next().is_some() {
        history.gap = Some(next);
    }
    Ok(history)
}

/// Where a replay stops.
#[derive(Clone, Debug, PartialEq)]
pub enum PathTarget {
    /// The end of the recoverable history.
    Latest,
    /// Up to and including this transaction (it must be on the history).
    Gtid(MariadbGtid),
    /// Up to the last transaction logged at or before this time (seconds since the epoch; the
    /// binary log's 1 s resolution: a transaction logged in second S counts as committed at S).
    Time(f64),
}

/// How many transactions of `history` a replay to `target` takes; `None` when a GTID target
/// is not on it.
pub fn replay_length(history: &History, target: &PathTarget) -> Option<usize> {
    match target {
        PathTarget::Latest => Some(history.path.len()),
        PathTarget::Gtid(g) => history
            .path
            .iter()
            .position(|s| s.gtid == *g)
            .map(|i| i + 1),
        PathTarget::Time(t) => Some(
            history
                .path
                .iter()
                .rposition(|s| s.time as f64 <= *t)
                .map_or(0, |i| i + 1),
        ),
    }
}

/// One `mariadb-binlog --start-position=AFTER --stop-position=STOP LOGS… | mariadb` run: logs
/// of one term, by index into the logs given to [`history_after`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRun {
    pub logs: Vec<usize>,
    /// The position before the run's first transaction (empty: from the first log's start).
    pub after: MariadbGtidPosition,
    pub stop: MariadbGtid,
}

/// The runs replaying the first `length` transactions of `history` after `from`: one per
/// stretch taken from the logs of one term.
pub fn replay_runs(
    history: &History,
    logs: &[ArchivedLog],
    from: &MariadbGtidPosition,
    length: usize,
) -> Vec<ReplayRun> {
    let mut runs: Vec<ReplayRun> = Vec::new();
    let mut after = from.clone();
    let mut current_term = None;
    for step in history.path.iter().take(length) {
        let term = logs[step.log].term;
        match runs.last_mut() {
            Some(run) if current_term == Some(term) => {
                if !run.logs.contains(&step.log) {
                    run.logs.push(step.log);
                }
                run.stop = step.gtid;
            }
            _ => runs.push(ReplayRun {
                logs: vec![step.log],
                after: after.clone(),
                stop: step.gtid,
            }),
        }
        current_term = Some(term);
        after = MariadbGtidPosition::from_gtids([step.gtid]);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g(server: u32, sequence: u64) -> MariadbGtid {
        MariadbGtid {
            domain: DOMAIN,
            server,
            sequence,
        }
    }

    fn log(term: u64, key: &str, gtids: &[MariadbGtid]) -> ArchivedLog {
        ArchivedLog {
            term,
            key: key.into(),
            transactions: gtids
                .iter()
                .map(|g| LoggedTransaction {
                    gtid: *g,
                    time: g.sequence as i64 * 10,
                })
                .collect(),
        }
    }

    fn pos(gtids: &[MariadbGtid]) -> MariadbGtidPosition {
        MariadbGtidPosition::from_gtids(gtids.iter().copied())
    }

    fn term(term: u64, start: &[MariadbGtid]) -> Term {
        Term {
            term,
            start: pos(start),
        }
    }

    /// After 0-1-1: `term_one` logs up to 0-1-3 (the promotion), then log 2 (term 2) to 0-2-5.
    fn term_one_then_two(term_one: Vec<usize>) -> Vec<ReplayRun> {
        vec![
            ReplayRun {
                logs: term_one,
                after: pos(&[g(1, 1)]),
                stop: g(1, 3),
            },
            ReplayRun {
                logs: vec![2],
                after: pos(&[g(1, 3)]),
                stop: g(2, 5),
            },
        ]
    }

    /// Server 1 wrote 1..=6 (4..=6 never reached server 2); server 2 took over at 3 and wrote
    /// 4..=5 of its own.
    fn failover() -> (Vec<Term>, Vec<ArchivedLog>) {
        let terms = vec![term(1, &[]), term(2, &[g(1, 3)])];
        let logs = vec![
            log(1, "1-a", &[g(1, 1), g(1, 2), g(1, 3)]),
            log(1, "1-b", &[g(1, 4), g(1, 5), g(1, 6)]),
            log(2, "2-a", &[g(1, 2), g(1, 3), g(2, 4), g(2, 5)]),
        ];
        (terms, logs)
    }

    #[test]
    fn a_diverged_term_is_excluded() {
        let (terms, logs) = failover();
        let h = history_after(&terms, &logs, &pos(&[])).unwrap();
        let gtids: Vec<MariadbGtid> = h.path.iter().map(|s| s.gtid).collect();
        assert_eq!(gtids, [g(1, 1), g(1, 2), g(1, 3), g(2, 4), g(2, 5)]);
        assert_eq!(h.gap, None);
        // 1-1-4 was written, but by the primary that lost: no target reaches it.
        assert_eq!(replay_length(&h, &PathTarget::Gtid(g(1, 4))), None);
        // A backup taken on the old primary past the promotion is off the history.
        assert!(matches!(
            history_after(&terms, &logs, &pos(&[g(1, 4)])),
            Err(PathError::OffHistory { .. })
        ));
        // From a backup at 1: term 1's own copy of 2..3, then term 2's log: one run per term.
        let from_one = history_after(&terms, &logs, &pos(&[g(1, 1)])).unwrap();
        assert_eq!(from_one.path.len(), 4);
        let runs = replay_runs(&from_one, &logs, &pos(&[g(1, 1)]), 4);
        assert_eq!(runs, term_one_then_two(vec![0]));
    }

    #[test]
    fn runs_split_at_terms_and_a_time_maps_to_the_last_transaction_logged_by_then() {
        let terms = vec![term(1, &[]), term(2, &[g(1, 3)])];
        let logs = vec![
            log(1, "1-a", &[g(1, 1), g(1, 2)]),
            log(1, "1-b", &[g(1, 3), g(1, 4)]),
            log(2, "2-a", &[g(2, 4), g(2, 5)]),
        ];
        let from = pos(&[g(1, 1)]);
        let h = history_after(&terms, &logs, &from).unwrap();
        assert_eq!(replay_length(&h, &PathTarget::Time(35.0)), Some(2));
        assert_eq!(replay_length(&h, &PathTarget::Time(5.0)), Some(0));
        assert_eq!(replay_length(&h, &PathTarget::Latest), Some(4));
        let runs = replay_runs(&h, &logs, &from, 4);
        assert_eq!(runs, term_one_then_two(vec![0, 1]));
    }

    #[test]
    fn a_missing_file_is_a_gap_not_a_jump() {
        let terms = vec![term(1, &[])];
        let logs = vec![log(1, "a", &[g(1, 1), g(1, 2)]), log(1, "c", &[g(1, 5)])];
        let h = history_after(&terms, &logs, &pos(&[])).unwrap();
        assert_eq!(h.path.len(), 2);
        assert_eq!(h.gap, Some(3));
    }

    /// A simulated database: each term's primary holds a prefix of the previous one's log
    /// (what it had replicated) and appends its own; it archives a prefix of its log's files
    /// (it may die before archiving the rest) whose first file starts where its binary log began
    /// (a clone starts a fresh one).
    fn simulated() -> impl Strategy<Value = (Vec<Term>, Vec<ArchivedLog>, Vec<MariadbGtid>)> {
        proptest::collection::vec(
            (
                0.0f64..=1.0,
                0usize..6,
                1usize..4,
                0.0f64..=1.0,
                0.0f64..=1.0,
            ),
            1..5,
        )
        .prop_map(|spec| {
            let mut terms = Vec::new();
            let mut logs = Vec::new();
            let mut previous: Vec<MariadbGtid> = Vec::new();
            for (i, (kept, own, file_len, clone_at, archived)) in spec.into_iter().enumerate() {
                let number = i as u64 + 1;
                let server = (number % 3) as u32 + 1;
                let keep = (previous.len() as f64 * kept) as usize;
                let mut history: Vec<MariadbGtid> = previous[..keep].to_vec();
                terms.push(Term {
                    term: number,
                    start: MariadbGtidPosition::from_gtids(history.last().copied()),
                });
                for _ in 0..own {
                    let seq = history.len() as u64 + 1;
                    history.push(g(server, seq));
                }
                let began = (keep as f64 * clone_at) as usize;
                let files: Vec<&[MariadbGtid]> = history[began..].chunks(file_len).collect();
                let count = (files.len() as f64 * archived).ceil() as usize;
                for (n, f) in files.iter().take(count).enumerate() {
                    logs.push(log(number, &format!("{number}-{n}"), f));
                }
                previous = history;
            }
            (terms, logs, previous)
        })
    }

    proptest! {
        /// The path is always a stretch of the surviving history: never a transaction a losing
        /// primary wrote past a promotion, never out of order.
        #[test]
        fn the_path_is_a_prefix_of_the_surviving_history((terms, logs, survivor) in simulated(), from in 0usize..4) {
            let from = from.min(survivor.len());
            let start = MariadbGtidPosition::from_gtids(survivor[..from].last().copied());
            let h = history_after(&terms, &logs, &start).unwrap();
            let path: Vec<MariadbGtid> = h.path.iter().map(|s| s.gtid).collect();
            prop_assert!(path.len() <= survivor.len() - from);
            prop_assert_eq!(&path[..], &survivor[from..from + path.len()]);
            // Each run replays exactly its stretch: logs of one term, positions chained.
            let runs = replay_runs(&h, &logs, &start, path.len());
            let mut after = start.clone();
            for run in &runs {
                prop_assert_eq!(&run.after, &after);
                let term = logs[run.logs[0]].term;
                prop_assert!(run.logs.iter().all(|&l| logs[l].term == term));
                after = MariadbGtidPosition::from_gtids([run.stop]);
            }
            prop_assert_eq!(runs.last().map(|r| r.stop), path.last().copied());
        }
    }
}
