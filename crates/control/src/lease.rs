//! Write leases and the Down rule: when an instance that cannot be reached, and may hold a
//! write lease, counts as unable to write, so that another instance may be promoted.
//!
//! The shell (the operator, later the local supervisor) sends every instance manager a lease
//! each tick, `POST /lease {term, writer, expiresAt, incarnation}`; the answer carries the
//! manager's `CLOCK_BOOTTIME` reading and its incarnation. A manager serves writes only while
//! it holds a lease naming itself whose `expiresAt` its own clock has not reached, and refuses
//! leases with a lower term or another incarnation. [`LeaseLedger`] is the shell's record of
//! those exchanges for one database; it computes each lease and answers the one question the
//! core needs: may this instance still hold a valid lease?
//!
//! # Times
//! Two kinds of clock meet here and are never mixed:
//! - the shell's monotonic clock (`*_ms` fields named `sent`, `at`, `until`, `since`, and the
//!   `now_ms` arguments): the same clock as [`Input::now_ms`](crate::Input::now_ms);
//! - each manager's `CLOCK_BOOTTIME` in milliseconds (`clock_ms`, `expires_at_ms`): only ever
//!   compared with the same manager's clock, and only by the manager.
//!
//! # The lease length
//! L is `spec.failover.detectionTimeout` ([`lease_length_ms`]): a primary cut off from the
//! shell stops taking writes after L without a renewal, which is as long as the shell waits
//! before it starts failing that primary over; so the self-fence and the detection fire at
//! about the same moment and the Down rule below adds only the 1 % and the margin on top of
//! the detection timeout. The shell must renew well within L (each tick, at a period of a
//! fraction of L): a lease's `expiresAt` is the manager's *last* clock reading + L, so a lease
//! lasts L minus the age of that reading.
//!
//! # The Down rule
//! `expiresAt` = the manager's clock reading `c` the lease is built on + L. The reading was
//! taken before its answer came back (however long the request took to arrive, the manager
//! read its clock before answering). The manager's clock runs at a rate within ±1 % of the
//! shell's, so it advances L in at most L / 0.99 of the shell's time: the lease is void on the
//! manager's own clock at the latest L / 0.99 after the **answer that carried its reading**
//! came back, however late the lease itself is sent, delivered or answered (a lease never
//! answered may have been applied all the same; it still ends at `c` + L). So a shell that
//! keeps sending leases to a writer it no longer hears extends nothing: each is built on the
//! last reading it got. An instance unreachable since counts as Down only once
//! [`down_after_ms`] = L / 0.99 + max(L / 10, 250 ms) has passed since that answer, for the
//! reading of every lease naming it the writer that was ever sent, and the promotion candidate
//! has itself answered continuously for that long (so it has heard the shell within its quiet
//! time Q = ¾ L, [`quiet_ms`], all along, and will not vouch for the old writer in the
//! manager's failsafe, which a peer confirms only after Q without the shell). Pod phase, node
//! conditions or a deleted pod never shorten the wait: the rule looks at nothing but the
//! ledger and the time.
//!
//! A new ledger (a shell that starts, a new operator leader) knows nothing of the leases its
//! predecessor sent: it counts every instance as holding a lease sent at its own start.
//! Limit: a predecessor that ran with a longer L (the detection timeout was shortened since)
//! may have granted leases longer than that.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The clock rate a manager's clock is allowed to run at, relative to the shell's, at the
/// slowest: 99 % (±1 % skew). A slower clock would keep a lease valid past the Down bound.
pub const SLOWEST_CLOCK_PERCENT: u64 = 99;

/// The least safety margin added to L / 0.99.
pub const MIN_MARGIN_MS: u64 = 250;

/// How many exchanges per instance the ledger keeps for display and for matching late answers.
/// Safety never depends on them: what the rule needs is folded in when a lease is sent.
pub const RECENT_EXCHANGES: usize = 64;

/// The lease length L for a detection timeout (`spec.failover.detectionTimeout` in ms): equal
/// to it, see the module documentation.
pub fn lease_length_ms(detection_timeout_ms: u64) -> u64 {
    detection_timeout_ms
}

/// How long after the answer carrying the reading of the last lease naming an unreachable
/// instance the writer it counts as Down: `ceil(L / 0.99) + max(L / 10, 250 ms)`.
pub fn down_after_ms(lease_ms: u64) -> u64 {
    let slowest = (u128::from(lease_ms) * 100).div_ceil(u128::from(SLOWEST_CLOCK_PERCENT));
    let margin = u128::from((lease_ms / 10).max(MIN_MARGIN_MS));
    u64::try_from(slowest + margin).unwrap_or(u64::MAX)
}

/// A peer's quiet time Q: how long it must not hear the shell before it confirms a writer's
/// failsafe (sent with every lease, [`stator_api::orders::LeaseOrder::quiet_ms`]): L minus a
/// quarter of L (one renewal period). Shorter than L, so that when the shell is gone the
/// peers confirm while the writer's lease (its last reading, taken after theirs, + L) still
/// runs, with a renewal period to spare (with Q = L they never did in time: the writer
/// fenced itself whenever the operator stopped); and never shorter than what the Down rule
/// counts as a continuous run of answers ([`max_silence_ms`]), so a candidate never vouches
/// for the writer it replaces.
pub fn quiet_ms(lease_ms: u64) -> u64 {
    lease_ms - lease_ms / 4
}

/// The longest silence (the shell's time between two moments an instance heard it) that still
/// counts as reachable continuously: 0.99 Q ([`quiet_ms`]), so that the instance, on a clock
/// up to 1 % fast, has never gone its quiet time without hearing the shell, and so never
/// confirmed a failsafe meanwhile.
pub fn max_silence_ms(lease_ms: u64) -> u64 {
    quiet_ms(lease_ms).saturating_mul(SLOWEST_CLOCK_PERCENT) / 100
}

/// A lease as the instance manager receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The core's term; a manager refuses a lower one.
    pub term: u64,
    /// The instance allowed to write, by ordinal; `None`: no one.
    pub writer: Option<u32>,
    /// On the manager's clock (ms of its `CLOCK_BOOTTIME`): the reading it last reported + L.
    pub expires_at_ms: u64,
    /// The incarnation that reported that reading; any other refuses the lease.
    pub incarnation: String,
    /// [`quiet_ms`] of the L it was sent with: a peer confirms the writer's failsafe only after
    /// this long without hearing the shell.
    #[serde(default)]
    pub quiet_ms: u64,
}

impl Lease {
    /// The body of the manager's `POST /lease` ([`stator_api::orders::LeaseOrder`]): the same
    /// term, `expiresAt` the same milliseconds of the manager's clock, the same incarnation,
    /// and the writer by its instance name (`NAME-N`, from `name`), which is what a manager
    /// knows itself by. `None` without a writer: a manager's lease always names one, so a
    /// lease naming none can only be a request for the clock reading (`GET /status`).
    pub fn order(&self, name: impl Fn(u32) -> String) -> Option<stator_api::orders::LeaseOrder> {
        Some(stator_api::orders::LeaseOrder {
            term: self.term,
            writer: name(self.writer?),
            expires_at: self.expires_at_ms,
            incarnation: self.incarnation.clone(),
            quiet_ms: Some(self.quiet_ms),
        })
    }
}

/// What the shell must send to one instance manager, from [`LeaseLedger::send`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseOrder {
    pub ordinal: u32,
    /// Pass back to [`LeaseLedger::answered`] or [`LeaseLedger::failed`].
    pub id: u64,
    /// `None`: no clock reading of this manager is known yet, so nothing can be granted: send
    /// a request that grants nothing (no writer, `expiresAt` 0) to learn its clock.
    pub lease: Option<Lease>,
}

/// A manager's clock reading, from an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClockReading {
    /// The manager's `CLOCK_BOOTTIME`, ms.
    pub clock_ms: u64,
    pub incarnation: String,
    /// The send of the request it answered (shell's clock).
    pub sent_ms: u64,
    /// When the answer came back (shell's clock).
    pub answered_ms: u64,
}

/// How an exchange ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "outcome"
)]
pub enum Outcome {
    /// Sent, no answer yet.
    Pending,
    /// Answered at `at_ms` (shell's clock) with the manager's clock reading.
    Answered {
        at_ms: u64,
        clock_ms: u64,
        incarnation: String,
    },
    /// Gave up at `at_ms` (timeout, connection refused, an error without a clock reading).
    Failed { at_ms: u64 },
}

/// One request to one manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exchange {
    pub id: u64,
    /// When the request was sent (shell's clock).
    pub sent_ms: u64,
    /// `None`: a request for the clock reading only.
    pub lease: Option<Lease>,
    pub outcome: Outcome,
}

/// An unbroken run of answers from one instance: it heard the shell at least every
/// [`max_silence_ms`]. A request lost between two answers that came soon enough does not break
/// it: what the run proves is that the instance never went L without hearing the shell, so it
/// never vouched for a writer the shell had stopped renewing (the manager's failsafe).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Streak {
    /// The first answer of the run came back then: the instance is known to have heard the
    /// shell since (at the earliest).
    pub since_ms: u64,
    /// The send of the run's latest answered request: the instance heard the shell after it.
    pub last_sent_ms: u64,
}

/// What the ledger holds about one instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceLeases {
    /// The latest exchanges, in the order they were sent (at most [`RECENT_EXCHANGES`]).
    #[serde(default)]
    pub recent: Vec<Exchange>,
    /// The reading the next lease is built on.
    #[serde(default)]
    pub reading: Option<ClockReading>,
    /// Until then (shell's clock) a lease naming this instance the writer may be valid on its
    /// clock: the greatest `sent + down_after(L)` over every such lease ever sent.
    #[serde(default)]
    pub writer_lease_until_ms: Option<u64>,
    #[serde(default)]
    pub streak: Option<Streak>,
}

/// Why an unreachable instance does not count as Down yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "verdict"
)]
pub enum DownVerdict {
    /// It counts as Down: no lease naming it can be valid, and the candidate has answered
    /// continuously for the whole bound.
    Down,
    /// A lease naming it may be valid on its clock until `until_ms`.
    LeaseMayBeValid { until_ms: u64 },
    /// The candidate has not answered continuously for long enough: it answers since
    /// `since_ms` (`None`: it does not answer now), and would have to until `until_ms`.
    CandidateNotReachableLongEnough {
        since_ms: Option<u64>,
        until_ms: Option<u64>,
    },
}

/// The lease exchanges of one database, on the shell's monotonic clock. Pure: the shell passes
/// the time and reports what came back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseLedger {
    /// L, ms: the length of the leases sent from now on.
    pub lease_ms: u64,
    /// Any instance may hold a lease an earlier shell sent, until then.
    pub inherited_until_ms: u64,
    next_id: u64,
    #[serde(default)]
    instances: BTreeMap<u32, InstanceLeases>,
}

impl LeaseLedger {
    /// A ledger started at `now_ms`, sending leases of `lease_ms`. Every instance counts as
    /// holding a lease sent at `now_ms` by a predecessor.
    pub fn new(lease_ms: u64, now_ms: u64) -> LeaseLedger {
        LeaseLedger {
            lease_ms,
            inherited_until_ms: now_ms.saturating_add(down_after_ms(lease_ms)),
            next_id: 0,
            instances: BTreeMap::new(),
        }
    }

    /// The length of the leases sent from now on (the detection timeout changed). Leases sent
    /// before keep the bound they were sent with.
    pub fn set_lease_ms(&mut self, lease_ms: u64) {
        self.lease_ms = lease_ms;
    }

    /// [`down_after_ms`] of the current L.
    pub fn down_after_ms(&self) -> u64 {
        down_after_ms(self.lease_ms)
    }

    /// What the ledger holds about `ordinal`.
    pub fn instance(&self, ordinal: u32) -> Option<&InstanceLeases> {
        self.instances.get(&ordinal)
    }

    /// The shell sends `ordinal`'s manager a lease of `term` naming `writer` now: records the
    /// send and returns what to send. From this moment on the lease counts as granted, whether
    /// or not it is ever answered.
    pub fn send(
        &mut self,
        ordinal: u32,
        term: u64,
        writer: Option<u32>,
        now_ms: u64,
    ) -> LeaseOrder {
        let id = self.next_id;
        self.next_id += 1;
        let lease_ms = self.lease_ms;
        let entry = self.instances.entry(ordinal).or_default();
        let lease = entry.reading.as_ref().map(|r| Lease {
            term,
            writer,
            expires_at_ms: r.clock_ms.saturating_add(lease_ms),
            incarnation: r.incarnation.clone(),
            quiet_ms: quiet_ms(lease_ms),
        });
        if let Some(reading) = entry.reading.as_ref().filter(|_| writer == Some(ordinal)) {
            // The lease ends at the reading + L on the manager's clock, and the reading was
            // taken before its answer came back: at the latest L / 0.99 after that answer,
            // however late this lease is sent or delivered.
            let until = reading.answered_ms.saturating_add(down_after_ms(lease_ms));
            entry.writer_lease_until_ms =
                Some(entry.writer_lease_until_ms.map_or(until, |u| u.max(until)));
        }
        entry.recent.push(Exchange {
            id,
            sent_ms: now_ms,
            lease: lease.clone(),
            outcome: Outcome::Pending,
        });
        if entry.recent.len() > RECENT_EXCHANGES {
            let extra = entry.recent.len() - RECENT_EXCHANGES;
            entry.recent.drain(..extra);
        }
        LeaseOrder { ordinal, id, lease }
    }

    /// The answer to exchange `id` came back at `now_ms` with the manager's clock reading and
    /// incarnation (whether it accepted the lease or refused it). A duplicate, or the answer to
    /// an exchange the ledger no longer holds, changes nothing. False when ignored.
    pub fn answered(
        &mut self,
        ordinal: u32,
        id: u64,
        now_ms: u64,
        clock_ms: u64,
        incarnation: &str,
    ) -> bool {
        let silence = max_silence_ms(self.lease_ms);
        let Some(entry) = self.instances.get_mut(&ordinal) else {
            return false;
        };
        let Some(exchange) = entry.recent.iter_mut().find(|e| e.id == id) else {
            return false;
        };
        if matches!(exchange.outcome, Outcome::Answered { .. }) {
            return false;
        }
        let sent = exchange.sent_ms;
        exchange.outcome = Outcome::Answered {
            at_ms: now_ms,
            clock_ms,
            incarnation: incarnation.to_string(),
        };
        let fresher = match &entry.reading {
            None => true,
            Some(r) if r.incarnation == incarnation => clock_ms > r.clock_ms,
            Some(r) => sent > r.sent_ms,
        };
        if fresher {
            entry.reading = Some(ClockReading {
                clock_ms,
                incarnation: incarnation.to_string(),
                sent_ms: sent,
                answered_ms: now_ms,
            });
        }
        let fresh_run = Streak {
            since_ms: now_ms,
            last_sent_ms: sent,
        };
        match &mut entry.streak {
            Some(streak) if sent > streak.last_sent_ms => {
                // It heard the shell after the previous send and before this answer.
                if now_ms.saturating_sub(streak.last_sent_ms) <= silence {
                    streak.last_sent_ms = sent;
                } else {
                    entry.streak = Some(fresh_run);
                }
            }
            // An earlier request answered late: it says nothing new.
            Some(_) => {}
            None => entry.streak = Some(fresh_run),
        }
        true
    }

    /// Exchange `id` failed at `now_ms` (no answer carrying a clock reading). Recorded for the
    /// record only: the lease it carried still counts as granted at its send, and a run of
    /// answers breaks on silence, not on one request lost among answered ones. False when
    /// ignored (unknown, or already ended).
    pub fn failed(&mut self, ordinal: u32, id: u64, now_ms: u64) -> bool {
        let Some(entry) = self.instances.get_mut(&ordinal) else {
            return false;
        };
        let Some(exchange) = entry.recent.iter_mut().find(|e| e.id == id) else {
            return false;
        };
        if exchange.outcome != Outcome::Pending {
            return false;
        }
        exchange.outcome = Outcome::Failed { at_ms: now_ms };
        true
    }

    /// Until when (shell's clock, exclusive) a lease naming `ordinal` the writer may be valid
    /// on its manager's clock: the bound of the last such lease sent, or of the leases an
    /// earlier shell may have sent before this ledger started.
    pub fn may_hold_lease_until(&self, ordinal: u32) -> u64 {
        let granted = self
            .instances
            .get(&ordinal)
            .and_then(|i| i.writer_lease_until_ms)
            .unwrap_or(0);
        granted.max(self.inherited_until_ms)
    }

    /// No lease naming `ordinal` can be valid at `now_ms`.
    pub fn lease_void(&self, ordinal: u32, now_ms: u64) -> bool {
        now_ms >= self.may_hold_lease_until(ordinal)
    }

    /// Since when `ordinal` has answered continuously, if it still does at `now_ms`: it heard
    /// the shell within [`max_silence_ms`] of every moment since.
    pub fn reachable_since(&self, ordinal: u32, now_ms: u64) -> Option<u64> {
        let streak = self.instances.get(&ordinal)?.streak.as_ref()?;
        (now_ms.saturating_sub(streak.last_sent_ms) <= max_silence_ms(self.lease_ms))
            .then_some(streak.since_ms)
    }

    /// `candidate` has answered continuously for [`LeaseLedger::down_after_ms`] at `now_ms`;
    /// otherwise why not.
    pub fn candidate_verdict(&self, candidate: u32, now_ms: u64) -> DownVerdict {
        match self.reachable_since(candidate, now_ms) {
            Some(since) => {
                let until = since.saturating_add(self.down_after_ms());
                if now_ms >= until {
                    DownVerdict::Down
                } else {
                    DownVerdict::CandidateNotReachableLongEnough {
                        since_ms: Some(since),
                        until_ms: Some(until),
                    }
                }
            }
            None => DownVerdict::CandidateNotReachableLongEnough {
                since_ms: None,
                until_ms: None,
            },
        }
    }

    /// The Down rule: may `writer`, which the shell cannot reach, be taken for Down at `now_ms`
    /// so that `candidate` is promoted? Only the ledger and the time count.
    pub fn judge_down(&self, writer: u32, candidate: u32, now_ms: u64) -> DownVerdict {
        let until = self.may_hold_lease_until(writer);
        if now_ms < until {
            return DownVerdict::LeaseMayBeValid { until_ms: until };
        }
        self.candidate_verdict(candidate, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ledger's lease and the manager's `POST /lease` body agree: the writer as the name
    /// the manager knows itself by, `expiresAt` in the same milliseconds of its clock.
    #[test]
    fn a_lease_is_sent_as_the_managers_lease_order() {
        let lease = Lease {
            term: 3,
            writer: Some(2),
            expires_at_ms: 12_345,
            incarnation: "0123456789abcdef".into(),
            quiet_ms: 1_500,
        };
        let order = lease.order(|o| format!("pg-{o}")).expect("names a writer");
        assert_eq!(
            serde_json::to_value(&order).unwrap(),
            serde_json::json!({"term": 3, "writer": "pg-2", "expiresAt": 12_345,
                               "incarnation": "0123456789abcdef", "quietMs": 1_500})
        );
        let nobody = Lease {
            writer: None,
            ..lease
        };
        assert_eq!(nobody.order(|o| format!("pg-{o}")), None);
    }

    const L: u64 = 2_000;
    /// `down_after_ms(L)`: ceil(2000 / 0.99) = 2021, + max(200, 250).
    const B: u64 = 2_271;
    const WRITER: u32 = 0;
    const CANDIDATE: u32 = 1;

    /// One thing that happens to the ledger. Exchanges are named by the order they were sent
    /// in the row (0, 1, …), which is also the id the ledger gives them.
    #[derive(Clone, Copy)]
    enum Step {
        /// Send `to` a lease naming `writer`.
        Send {
            to: u32,
            writer: Option<u32>,
            at: u64,
        },
        Answer {
            to: u32,
            nth: u64,
            at: u64,
            clock: u64,
        },
        Fail {
            to: u32,
            nth: u64,
            at: u64,
        },
        /// `to` answers every request, sent every 500 ms from `from` to `until`, 10 ms later.
        Heartbeat {
            to: u32,
            from: u64,
            until: u64,
        },
    }
    use Step::*;

    fn send(to: u32, writer: Option<u32>, at: u64) -> Step {
        Send { to, writer, at }
    }

    fn answer(to: u32, nth: u64, at: u64, clock: u64) -> Step {
        Answer { to, nth, at, clock }
    }

    fn fail(to: u32, nth: u64, at: u64) -> Step {
        Fail { to, nth, at }
    }

    fn beat(to: u32, from: u64, until: u64) -> Step {
        Heartbeat { to, from, until }
    }

    /// The writer's clock is known: a probe at 100 answered at 110.
    fn writer_known() -> Vec<Step> {
        vec![send(WRITER, None, 100), answer(WRITER, 0, 110, 50_000)]
    }

    fn run(steps: &[Step]) -> LeaseLedger {
        let mut ledger = LeaseLedger::new(L, 0);
        for step in steps {
            match *step {
                Send { to, writer, at } => {
                    ledger.send(to, 1, writer, at);
                }
                Answer { to, nth, at, clock } => {
                    ledger.answered(to, nth, at, clock, "a");
                }
                Fail { to, nth, at } => {
                    ledger.failed(to, nth, at);
                }
                Heartbeat { to, from, until } => {
                    let mut at = from;
                    while at <= until {
                        let order = ledger.send(to, 1, Some(WRITER), at);
                        ledger.answered(to, order.id, at + 10, 1_000_000 + at, "c");
                        at += 500;
                    }
                }
            }
        }
        ledger
    }

    /// The writer's clock is known (a probe at 100 answered at 110), the candidate answers
    /// all along from 100 to 20 000.
    fn known() -> Vec<Step> {
        with(writer_known(), &[beat(CANDIDATE, 100, 20_000)])
    }

    fn with(mut steps: Vec<Step>, more: &[Step]) -> Vec<Step> {
        steps.extend_from_slice(more);
        steps
    }

    /// The id of the first exchange after `known()`.
    const NEXT: u64 = 1 + 40;

    fn lease_at(at: u64) -> Step {
        Send {
            to: WRITER,
            writer: Some(WRITER),
            at,
        }
    }

    fn may_be_valid(until_ms: u64) -> DownVerdict {
        DownVerdict::LeaseMayBeValid { until_ms }
    }

    fn too_briefly(since: Option<u64>) -> DownVerdict {
        DownVerdict::CandidateNotReachableLongEnough {
            since_ms: since,
            until_ms: since.map(|s| s + B),
        }
    }

    /// A fresh reading of the writer's clock: a request sent at `at` - 20 (exchange `nth`)
    /// answered at `at`.
    fn read(nth: u64, at: u64) -> [Step; 2] {
        [
            send(WRITER, None, at - 20),
            answer(WRITER, nth, at, 60_000 + at),
        ]
    }

    /// `known()`, then the writer's clock read at `at` (exchange `NEXT`) and a lease naming it
    /// sent at `lease` (exchange `NEXT + 1`).
    fn read_then_lease(at: u64, lease: u64) -> Vec<Step> {
        let mut steps = with(known(), &read(NEXT, at));
        steps.push(lease_at(lease));
        steps
    }

    #[test]
    fn the_down_rule_table() {
        let rows: Vec<(&str, Vec<Step>, u64, DownVerdict)> = vec![
            (
                "one ms before the bound after the answer carrying the lease's reading, it may \
                 still be valid",
                read_then_lease(10_000, 10_000),
                10_000 + B - 1,
                may_be_valid(10_000 + B),
            ),
            (
                "exactly at the bound it is down",
                read_then_lease(10_000, 10_000),
                10_000 + B,
                DownVerdict::Down,
            ),
            (
                "a lease sent long after its reading ends with the reading, not its send",
                read_then_lease(5_000, 10_000),
                5_000 + B,
                DownVerdict::Down,
            ),
            (
                "leases sent on to a writer that stopped answering extend nothing",
                with(
                    read_then_lease(5_000, 5_000),
                    &[lease_at(5_500), lease_at(6_000), lease_at(7_000)],
                ),
                5_000 + B - 1,
                may_be_valid(5_000 + B),
            ),
            (
                "a lease whose request failed counts as granted all the same",
                with(
                    read_then_lease(10_000, 10_000),
                    &[fail(WRITER, NEXT + 1, 10_300)],
                ),
                10_000 + B - 1,
                may_be_valid(10_000 + B),
            ),
            (
                "the answer to a lease extends nothing by itself: only a lease built on it does",
                with(
                    read_then_lease(10_000, 10_000),
                    &[answer(WRITER, NEXT + 1, 11_900, 80_000)],
                ),
                10_000 + B,
                DownVerdict::Down,
            ),
            (
                "a later lease on a later reading moves the bound",
                with(
                    read_then_lease(10_000, 10_000),
                    &[answer(WRITER, NEXT + 1, 10_500, 80_000), lease_at(10_600)],
                ),
                10_000 + B,
                may_be_valid(10_500 + B),
            ),
            (
                "a reading taken earlier but answered later is not the one a lease is built on",
                with(
                    known(),
                    &[
                        send(WRITER, None, 9_980),
                        send(WRITER, None, 10_000),
                        answer(WRITER, NEXT + 1, 10_100, 70_000),
                        answer(WRITER, NEXT, 10_400, 69_990),
                        lease_at(10_500),
                    ],
                ),
                10_100 + B - 1,
                may_be_valid(10_100 + B),
            ),
            (
                "a lease naming another writer does not hold the instance it is sent to",
                with(known(), &[send(WRITER, Some(CANDIDATE), 11_000)]),
                11_001,
                DownVerdict::Down,
            ),
            (
                "a request without a known clock reading grants nothing",
                with(known(), &[send(2, Some(2), 11_000)]),
                11_001,
                DownVerdict::Down,
            ),
            (
                "a new ledger counts every instance as holding a lease sent at its start",
                known(),
                B - 1,
                may_be_valid(B),
            ),
            (
                "a new ledger's inherited leases end at the bound",
                vec![beat(CANDIDATE, 0, 20_000)],
                // The candidate answers since 10, so it is enough only from 10 + B.
                10 + B,
                DownVerdict::Down,
            ),
            (
                "a candidate reachable too briefly blocks; its first answer counts, not its send",
                with(
                    writer_known(),
                    &[lease_at(10_000), beat(CANDIDATE, 11_000, 20_000)],
                ),
                10_000 + B,
                too_briefly(Some(11_010)),
            ),
            (
                "a candidate reachable for exactly the bound is enough",
                with(
                    writer_known(),
                    &[lease_at(10_000), beat(CANDIDATE, 11_000, 20_000)],
                ),
                11_010 + B,
                DownVerdict::Down,
            ),
            (
                "a request lost between timely answers does not break the candidate's run",
                vec![
                    lease_at(5_000),
                    beat(CANDIDATE, 100, 10_500),
                    // id 22: sent at 11 000, fails; the next answer comes 1 010 after 10 500.
                    send(CANDIDATE, None, 11_000),
                    fail(CANDIDATE, 22, 11_400),
                    beat(CANDIDATE, 11_500, 20_000),
                ],
                12_000,
                DownVerdict::Down,
            ),
            (
                "requests failing for longer than 0.99 Q break the run: it counts from the next answer",
                vec![
                    lease_at(5_000),
                    beat(CANDIDATE, 100, 9_000),
                    // ids 19, 20, 21, 22: sent 9 500 to 11 000, all fail.
                    send(CANDIDATE, None, 9_500),
                    send(CANDIDATE, None, 10_000),
                    send(CANDIDATE, None, 10_500),
                    send(CANDIDATE, None, 11_000),
                    fail(CANDIDATE, 19, 10_000),
                    fail(CANDIDATE, 20, 10_500),
                    fail(CANDIDATE, 21, 11_000),
                    fail(CANDIDATE, 22, 11_500),
                    beat(CANDIDATE, 11_500, 20_000),
                ],
                12_000,
                too_briefly(Some(11_510)),
            ),
            (
                "a candidate silent for more than 0.99 Q starts a new run",
                vec![
                    lease_at(5_000),
                    beat(CANDIDATE, 100, 8_000),
                    beat(CANDIDATE, 10_000, 20_000),
                ],
                12_000,
                too_briefly(Some(10_010)),
            ),
            (
                "a candidate silent for 0.99 Q exactly keeps its run",
                vec![
                    lease_at(5_000),
                    beat(CANDIDATE, 100, 7_600),
                    // 7 600 + 1 970 + 10 = 9 580: heard within 1 980 of the last send.
                    beat(CANDIDATE, 9_570, 20_000),
                ],
                12_000,
                DownVerdict::Down,
            ),
            (
                "a candidate that stopped answering is not reachable now",
                with(vec![lease_at(5_000)], &[beat(CANDIDATE, 100, 9_000)]),
                9_000 + 1_981,
                too_briefly(None),
            ),
            (
                "a candidate's late answer after a silence starts a new run at the answer",
                vec![
                    lease_at(5_000),
                    beat(CANDIDATE, 100, 9_000),
                    // id 19: sent at 9 500, answered only at 11 600 (2 600 after 9 000).
                    send(CANDIDATE, None, 9_500),
                    answer(CANDIDATE, 19, 11_600, 2_000_000),
                    beat(CANDIDATE, 11_700, 20_000),
                ],
                // It heard the shell some time after 9 500: no proof of within 0.99 Q at
                // 11 600, so the run starts again at the next answer.
                12_000,
                too_briefly(Some(11_710)),
            ),
            (
                "a late answer alone does not make a candidate reachable now",
                vec![
                    lease_at(5_000),
                    beat(CANDIDATE, 100, 9_000),
                    send(CANDIDATE, None, 9_500),
                    answer(CANDIDATE, 19, 11_600, 2_000_000),
                ],
                11_600,
                too_briefly(None),
            ),
        ];
        let mut failures = Vec::new();
        for (name, steps, at, want) in rows {
            let got = run(&steps).judge_down(WRITER, CANDIDATE, at);
            if got != want {
                failures.push(format!("{name}: at {at} want {want:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "\n{}\n", failures.join("\n"));
    }

    #[test]
    fn the_bound_is_l_over_0_99_plus_a_tenth_of_l_or_250_ms() {
        assert_eq!(down_after_ms(2_000), 2_021 + 250);
        assert_eq!(down_after_ms(1_000), 1_011 + 250);
        assert_eq!(down_after_ms(2_500), 2_526 + 250);
        assert_eq!(down_after_ms(3_000), 3_031 + 300);
        assert_eq!(down_after_ms(300_000), 303_031 + 30_000);
        assert_eq!(down_after_ms(99), 100 + 250);
        assert_eq!(down_after_ms(u64::MAX), u64::MAX);
        assert!(down_after_ms(u64::MAX / 2) > u64::MAX / 2);
        // Q = 3/4 L, and a run of answers breaks past 0.99 Q.
        assert_eq!(quiet_ms(2_000), 1_500);
        assert_eq!(max_silence_ms(2_000), 1_485);
        assert_eq!(lease_length_ms(2_000), 2_000);
    }

    #[test]
    fn a_lease_expires_at_the_managers_last_reading_plus_l_for_its_incarnation() {
        let mut ledger = LeaseLedger::new(L, 0);
        let probe = ledger.send(0, 3, Some(0), 100);
        assert_eq!(probe.lease, None, "no reading yet: nothing is granted");
        assert_eq!(
            ledger.may_hold_lease_until(0),
            B,
            "only the inherited bound"
        );
        assert!(ledger.answered(0, probe.id, 120, 7_000, "x"));
        assert!(
            !ledger.answered(0, probe.id, 130, 9_000, "x"),
            "a duplicate"
        );
        let order = ledger.send(0, 3, Some(0), 200);
        assert_eq!(
            order.lease,
            Some(Lease {
                term: 3,
                writer: Some(0),
                expires_at_ms: 9_000,
                incarnation: "x".into(),
                quiet_ms: 1_500,
            })
        );
        assert_eq!(
            ledger.may_hold_lease_until(0),
            120 + B,
            "from the answer carrying the reading, not from the send"
        );
        // A restarted manager (new incarnation, another clock) answers the newer request; the
        // old incarnation's answer to the older request arrives after it and is not used.
        let newer = ledger.send(0, 3, Some(0), 300);
        assert!(ledger.answered(0, newer.id, 320, 100, "y"));
        assert!(ledger.answered(0, order.id, 330, 7_500, "x"));
        let next = ledger.send(0, 3, Some(0), 400).lease.unwrap();
        assert_eq!(
            (next.expires_at_ms, next.incarnation.as_str()),
            (2_100, "y")
        );
        // Within one incarnation the highest reading is used, whatever order answers came in.
        let a = ledger.send(0, 3, Some(0), 500);
        let b = ledger.send(0, 3, Some(0), 510);
        assert!(ledger.answered(0, b.id, 520, 400, "y"));
        assert!(ledger.answered(0, a.id, 530, 390, "y"));
        assert_eq!(
            ledger.send(0, 3, Some(0), 600).lease.unwrap().expires_at_ms,
            2_400
        );
        assert_eq!(
            ledger.may_hold_lease_until(0),
            520 + B,
            "the reading of 400 came back at 520"
        );
    }

    #[test]
    fn forgetting_old_exchanges_never_shortens_a_bound() {
        let mut ledger = LeaseLedger::new(L, 0);
        let probe = ledger.send(0, 1, None, 9_980);
        ledger.answered(0, probe.id, 9_990, 10, "x");
        let lease = ledger.send(0, 1, Some(0), 10_000);
        for i in 0..(RECENT_EXCHANGES as u64 * 2) {
            ledger.send(0, 1, Some(1), 10_000 + i);
        }
        let held = ledger.instance(0).unwrap();
        assert_eq!(held.recent.len(), RECENT_EXCHANGES);
        assert!(held.recent.iter().all(|e| e.id != lease.id));
        assert!(
            !ledger.answered(0, lease.id, 10_200, 20, "x"),
            "forgotten: ignored"
        );
        assert_eq!(ledger.may_hold_lease_until(0), 9_990 + B);
    }

    #[test]
    fn a_shorter_lease_length_keeps_the_bounds_of_the_leases_already_sent() {
        let mut ledger = LeaseLedger::new(10_000, 0);
        let probe = ledger.send(0, 1, None, 99_980);
        ledger.answered(0, probe.id, 99_990, 10, "x");
        ledger.send(0, 1, Some(0), 100_000);
        ledger.set_lease_ms(1_000);
        ledger.send(0, 1, Some(0), 100_100);
        assert_eq!(
            ledger.may_hold_lease_until(0),
            99_990 + down_after_ms(10_000)
        );
        assert_eq!(ledger.down_after_ms(), down_after_ms(1_000));
    }

    #[test]
    fn the_ledger_round_trips_through_json() {
        let ledger = run(&with(known(), &[lease_at(10_000)]));
        let text = serde_json::to_string(&ledger).unwrap();
        let back: LeaseLedger = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ledger);
    }
}
