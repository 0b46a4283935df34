//! The write lease's bookkeeping, pure: no clock, no file, no socket (time comes in as an
//! argument, in milliseconds of the manager's own `CLOCK_BOOTTIME`). [`crate::self_fencing`]
//! is the shell that reads the clock, persists the term, answers `POST /lease` and
//! `POST /confirm`, and kills the server when [`LeaseBook::may_write`] turns false.
//!
//! The rules:
//! - a grant naming another incarnation of this manager is refused (it was meant for a manager
//!   that has since restarted: its clock readings mean nothing here);
//! - a grant of a lower term than the highest seen is refused; at the highest term, a grant
//!   naming another writer than the one that term named is refused (one writer per term);
//! - a grant whose `expiresAt` is not later than this manager's clock when it arrives is
//!   refused (it expired on the way);
//! - only the writer it names holds a write lease, and at one term a grant extends it only
//!   when its `expiresAt` is later than the one held: a late, duplicated or reordered renewal
//!   never extends the lease. A higher term voids the lease held at the lower one;
//! - L, the lease length, is `expiresAt` minus this manager's clock when the grant arrived
//!   (at most the operator's L: the request's travel time is lost, which shortens the
//!   failsafe and never lengthens it);
//! - a peer's quiet time, after which it confirms, is the grant's `quietMs` (the operator's L
//!   minus a renewal period), not the arrival-based L, which can be far shorter;
//! - failsafe: while it may write, the writer asks every peer to confirm; a round that every
//!   peer confirmed, started at clock `t0`, lets it write until `t0 + L`. A round started
//!   after the right to write lapsed extends nothing (a fenced writer is not revived);
//! - a peer confirms `{term, writer}` only when that is its own highest term and the writer it
//!   names, it is not that writer itself, and it has received a lease since it started but
//!   none for at least L (then the operator, not the writer, is what is gone). A peer that
//!   restarted confirms nothing until it hears the operator once and then stops hearing it.

use std::fmt;

/// Milliseconds of a manager's `CLOCK_BOOTTIME`.
pub type Millis = u64;

/// `POST /lease`: the operator's grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub term: u64,
    /// The instance (`NAME-N`) allowed to write at `term`.
    pub writer: String,
    /// On the receiving manager's clock.
    pub expires_at: Millis,
    /// The manager incarnation the operator means.
    pub incarnation: String,
    /// `quietMs`, when the operator says it: how long a peer must not hear the operator
    /// before it confirms a writer's failsafe.
    pub quiet: Option<Millis>,
}

/// `POST /confirm`: a writer asking a peer whether it still follows it at this term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirmation {
    pub term: u64,
    pub writer: String,
}

/// Why a grant was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    ForeignIncarnation {
        given: String,
        mine: String,
    },
    LowerTerm {
        given: u64,
        highest: u64,
    },
    OtherWriter {
        term: u64,
        given: String,
        named: String,
    },
    ExpiredOnArrival {
        expires_at: Millis,
        now: Millis,
    },
    NotLater {
        expires_at: Millis,
        held: Millis,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ForeignIncarnation { given, mine } => write!(
                f,
                "incarnation: {given:?} is not this manager's ({mine:?}): the lease was meant for a manager that has restarted since; read /status for the incarnation and clock"
            ),
            Refusal::LowerTerm { given, highest } => write!(
                f,
                "term: {given} is lower than the highest term seen, {highest}: a lease of an older term is refused"
            ),
            Refusal::OtherWriter { term, given, named } => write!(
                f,
                "writer: term {term} already names {named:?} as its writer, not {given:?}: a new writer needs a higher term"
            ),
            Refusal::ExpiredOnArrival { expires_at, now } => write!(
                f,
                "expiresAt: {expires_at} is not later than this manager's clock now ({now}): the lease expired before it arrived"
            ),
            Refusal::NotLater { expires_at, held } => write!(
                f,
                "expiresAt: {expires_at} is not later than the write lease held ({held}): a late or duplicated renewal does not extend it"
            ),
        }
    }
}

/// What an accepted grant did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Granted {
    /// This instance holds the write lease until then.
    WriteLease { expires_at: Millis },
    /// Another instance is the writer; this one follows it.
    Follows { writer: String },
}

/// Why a peer does not confirm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unconfirmed {
    OtherTerm { asked: u64, mine: u64 },
    OtherWriter { asked: String, mine: Option<String> },
    IsTheWriter,
    NeverHeard,
    HeardRecently { ago: Millis, length: Millis },
}

impl fmt::Display for Unconfirmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unconfirmed::OtherTerm { asked, mine } => {
                write!(
                    f,
                    "term: asked about {asked}, this instance is at term {mine}"
                )
            }
            Unconfirmed::OtherWriter { asked, mine } => match mine {
                Some(w) => write!(f, "writer: this instance follows {w:?}, not {asked:?}"),
                None => write!(f, "writer: this instance knows no writer, not {asked:?}"),
            },
            Unconfirmed::IsTheWriter => {
                write!(
                    f,
                    "writer: this instance is the writer named; a writer does not confirm itself"
                )
            }
            Unconfirmed::NeverHeard => write!(
                f,
                "no lease received since this manager started: it cannot tell whether the operator is gone"
            ),
            Unconfirmed::HeardRecently { ago, length } => write!(
                f,
                "heard the operator {ago} ms ago, within its quiet time ({length} ms): the operator is not gone"
            ),
        }
    }
}

/// One manager's lease facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseBook {
    me: String,
    incarnation: String,
    /// The highest term seen (persisted).
    term: u64,
    /// The writer `term` names (persisted).
    writer: Option<String>,
    /// This instance's write lease at `term`.
    write_expires: Option<Millis>,
    /// When the last grant of this incarnation at the highest term arrived.
    heard_at: Option<Millis>,
    /// L, from the last accepted grant: `expiresAt` minus its arrival (the writer's
    /// failsafe length: shorter than the operator's L, which only shortens the failsafe).
    length: Option<Millis>,
    /// How long this peer must not hear the operator before it confirms a writer's failsafe:
    /// the `quietMs` of the last accepted grant (the operator counts a replica reachable while
    /// it answers within 0.99 of it). Not the arrival-based `length`: a grant is built on a
    /// clock reading a round old, so that can be far shorter, and a peer confirming that soon
    /// vouched for a writer the operator was failing over (the stand-in's partition drill
    /// found it). The arrival-based length only for a grant without `quietMs`.
    quiet: Option<Millis>,
    /// Until when every peer's confirmation lets this writer go on after its lease.
    failsafe_until: Option<Millis>,
}

impl LeaseBook {
    /// The book of manager `me` (`NAME-N`) in `incarnation`, with the term and writer
    /// persisted by an earlier incarnation (none: term 0).
    pub fn new(me: &str, incarnation: &str, persisted: Option<(u64, String)>) -> LeaseBook {
        let (term, writer) = match persisted {
            Some((term, writer)) => (term, Some(writer)),
            None => (0, None),
        };
        LeaseBook {
            me: me.to_string(),
            incarnation: incarnation.to_string(),
            term,
            writer,
            write_expires: None,
            heard_at: None,
            length: None,
            quiet: None,
            failsafe_until: None,
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn writer(&self) -> Option<&str> {
        self.writer.as_deref()
    }

    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// The write lease's expiry, when this instance holds one (valid or not any more).
    pub fn write_expires(&self) -> Option<Millis> {
        self.write_expires
    }

    pub fn heard_at(&self) -> Option<Millis> {
        self.heard_at
    }

    pub fn length(&self) -> Option<Millis> {
        self.length
    }

    pub fn failsafe_until(&self) -> Option<Millis> {
        self.failsafe_until
    }

    /// This instance is the writer of the highest term.
    pub fn is_writer(&self) -> bool {
        self.writer.as_deref() == Some(self.me.as_str())
    }

    /// Checks a grant without taking it: `Ok(true)` when accepting it raises the term (the
    /// shell persists the new term first).
    pub fn check(&self, g: &Grant, now: Millis) -> Result<bool, Refusal> {
        self.clone().accept(g, now).map(|_| g.term > self.term)
    }

    /// Takes a grant arriving at `now`. A refused grant changes nothing but the time the
    /// operator was last heard from (when it is of this incarnation and the highest term).
    pub fn accept(&mut self, g: &Grant, now: Millis) -> Result<Granted, Refusal> {
        if g.incarnation != self.incarnation {
            return Err(Refusal::ForeignIncarnation {
                given: g.incarnation.clone(),
                mine: self.incarnation.clone(),
            });
        }
        if g.term < self.term {
            return Err(Refusal::LowerTerm {
                given: g.term,
                highest: self.term,
            });
        }
        if g.term == self.term
            && let Some(named) = &self.writer
            && *named != g.writer
        {
            return Err(Refusal::OtherWriter {
                term: g.term,
                given: g.writer.clone(),
                named: named.clone(),
            });
        }
        // The operator reached this manager at the highest term, late or not.
        self.heard_at = Some(self.heard_at.map_or(now, |h| h.max(now)));
        if g.expires_at <= now {
            return Err(Refusal::ExpiredOnArrival {
                expires_at: g.expires_at,
                now,
            });
        }
        let new_term = g.term > self.term;
        if !new_term
            && g.writer == self.me
            && let Some(held) = self.write_expires
            && g.expires_at <= held
        {
            return Err(Refusal::NotLater {
                expires_at: g.expires_at,
                held,
            });
        }
        if new_term {
            self.term = g.term;
            self.write_expires = None;
            self.failsafe_until = None;
        }
        self.writer = Some(g.writer.clone());
        let arrived = g.expires_at - now;
        self.length = Some(arrived);
        self.quiet = Some(g.quiet.unwrap_or(arrived));
        if g.writer == self.me {
            self.write_expires = Some(g.expires_at);
            Ok(Granted::WriteLease {
                expires_at: g.expires_at,
            })
        } else {
            Ok(Granted::Follows {
                writer: g.writer.clone(),
            })
        }
    }

    /// Holds a write lease valid at `now`.
    pub fn holds_write(&self, now: Millis) -> bool {
        self.is_writer() && self.write_expires.is_some_and(|e| now < e)
    }

    /// Until when this instance may write: its lease or the failsafe, whichever is later;
    /// `None` when it has neither.
    pub fn writes_until(&self) -> Option<Millis> {
        if !self.is_writer() {
            return None;
        }
        match (self.write_expires, self.failsafe_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// May write at `now`: a valid write lease, or the failsafe.
    pub fn may_write(&self, now: Millis) -> bool {
        self.writes_until().is_some_and(|until| now < until)
    }

    /// The confirmation to ask every peer for at `now`, when a failsafe round is due: this
    /// instance is the writer, may still write, and its right ends within half a lease.
    pub fn failsafe_round(&self, now: Millis) -> Option<Confirmation> {
        let length = self.length?;
        let until = self.writes_until()?;
        (now < until && until - now <= length / 2).then(|| Confirmation {
            term: self.term,
            writer: self.me.clone(),
        })
    }

    /// Every peer confirmed `asked` in a round started at `started_at`: this writer may go on
    /// until `started_at + L`. Nothing when the term moved on, when it is no longer the
    /// writer, or when its right to write had already lapsed at `started_at`.
    pub fn failsafe_confirmed(&mut self, asked: &Confirmation, started_at: Millis) -> bool {
        let (Some(length), Some(until)) = (self.length, self.writes_until()) else {
            return false;
        };
        if asked.term != self.term || asked.writer != self.me || started_at >= until {
            return false;
        }
        let new = started_at.saturating_add(length);
        self.failsafe_until = Some(self.failsafe_until.map_or(new, |f| f.max(new)));
        true
    }

    /// A peer's answer to a writer's `POST /confirm` at `now`.
    pub fn confirm(&self, asked: &Confirmation, now: Millis) -> Result<(), Unconfirmed> {
        if asked.term != self.term {
            return Err(Unconfirmed::OtherTerm {
                asked: asked.term,
                mine: self.term,
            });
        }
        if self.writer.as_deref() != Some(asked.writer.as_str()) {
            return Err(Unconfirmed::OtherWriter {
                asked: asked.writer.clone(),
                mine: self.writer.clone(),
            });
        }
        if asked.writer == self.me {
            return Err(Unconfirmed::IsTheWriter);
        }
        let (Some(heard), Some(length)) = (self.heard_at, self.quiet) else {
            return Err(Unconfirmed::NeverHeard);
        };
        let ago = now.saturating_sub(heard);
        if ago < length {
            return Err(Unconfirmed::HeardRecently { ago, length });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ME: &str = "db-0";
    const INC: &str = "0123456789abcdef";

    fn grant(term: u64, writer: &str, expires_at: Millis) -> Grant {
        Grant {
            term,
            writer: writer.into(),
            expires_at,
            incarnation: INC.into(),
            quiet: None,
        }
    }

    fn book() -> LeaseBook {
        LeaseBook::new(ME, INC, None)
    }

    #[test]
    fn a_grant_naming_this_instance_is_a_write_lease_until_its_expiry() {
        let mut b = book();
        assert!(!b.may_write(0));
        assert_eq!(
            b.accept(&grant(1, ME, 5_000), 1_000),
            Ok(Granted::WriteLease { expires_at: 5_000 })
        );
        assert_eq!(b.length(), Some(4_000));
        assert!(b.holds_write(4_999));
        assert!(!b.holds_write(5_000));
        assert_eq!(b.writes_until(), Some(5_000));
    }

    #[test]
    fn late_lower_term_foreign_and_other_writer_grants_are_refused_and_change_nothing() {
        let mut b = book();
        b.accept(&grant(2, ME, 10_000), 1_000).unwrap();
        let before = b.clone();
        type Case = (Grant, fn(&Refusal) -> bool);
        let cases: Vec<Case> = vec![
            (grant(2, ME, 10_000), |r| {
                matches!(r, Refusal::NotLater { .. })
            }),
            (grant(2, ME, 9_000), |r| {
                matches!(r, Refusal::NotLater { .. })
            }),
            (grant(1, ME, 20_000), |r| {
                matches!(r, Refusal::LowerTerm { .. })
            }),
            (grant(2, "db-1", 20_000), |r| {
                matches!(r, Refusal::OtherWriter { .. })
            }),
            (
                Grant {
                    incarnation: "feedface".into(),
                    ..grant(3, ME, 20_000)
                },
                |r| matches!(r, Refusal::ForeignIncarnation { .. }),
            ),
            (grant(3, ME, 1_000), |r| {
                matches!(r, Refusal::ExpiredOnArrival { .. })
            }),
        ];
        let mut failed = Vec::new();
        for (g, check) in cases {
            let mut after = b.clone();
            let result = after.accept(&g, 1_000);
            after.heard_at = before.heard_at;
            match result {
                Err(r) if check(&r) && after == before => {
                    let text = r.to_string();
                    let field = text.split(':').next().unwrap_or_default();
                    assert!(
                        ["incarnation", "term", "writer", "expiresAt"].contains(&field),
                        "{text}"
                    );
                }
                other => failed.push(format!("{g:?}: {other:?}, book {after:?}")),
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn a_higher_term_voids_the_lease_held_and_may_name_another_writer() {
        let mut b = book();
        b.accept(&grant(1, ME, 10_000), 0).unwrap();
        assert_eq!(
            b.accept(&grant(2, "db-1", 20_000), 100),
            Ok(Granted::Follows {
                writer: "db-1".into()
            })
        );
        assert!(!b.may_write(200));
        assert_eq!(b.writes_until(), None);
        // A shorter lease of a higher term replaces a longer one of a lower term.
        b.accept(&grant(3, ME, 1_000), 200).unwrap();
        assert_eq!(b.write_expires(), Some(1_000));
    }

    #[test]
    fn the_persisted_term_and_writer_bind_a_new_incarnation() {
        let mut b = LeaseBook::new(ME, INC, Some((7, "db-1".into())));
        assert!(matches!(
            b.accept(&grant(6, ME, 9_000), 0),
            Err(Refusal::LowerTerm { .. })
        ));
        assert!(matches!(
            b.accept(&grant(7, ME, 9_000), 0),
            Err(Refusal::OtherWriter { .. })
        ));
        assert_eq!(b.check(&grant(8, ME, 9_000), 0), Ok(true));
        assert_eq!(b.check(&grant(7, "db-1", 9_000), 0), Ok(false));
    }

    #[test]
    fn the_failsafe_extends_only_a_writer_that_may_still_write() {
        let mut b = book();
        b.accept(&grant(1, ME, 4_000), 0).unwrap();
        assert_eq!(b.failsafe_round(1_000), None, "not due yet");
        let asked = b.failsafe_round(2_000).expect("due within L/2");
        assert_eq!(
            asked,
            Confirmation {
                term: 1,
                writer: ME.into()
            }
        );
        assert!(b.failsafe_confirmed(&asked, 3_000));
        assert_eq!(b.failsafe_until(), Some(7_000));
        assert!(b.may_write(6_999));
        assert!(!b.holds_write(6_999));
        assert!(!b.may_write(7_000));
        // A round started after the right lapsed revives nothing.
        assert!(!b.failsafe_confirmed(&asked, 7_000));
        assert!(!b.may_write(7_001));
        // Nor does a round of an older term.
        let mut c = book();
        c.accept(&grant(1, ME, 4_000), 0).unwrap();
        c.accept(&grant(2, ME, 4_500), 100).unwrap();
        assert!(!c.failsafe_confirmed(&asked, 3_000));
    }

    /// A grant built on a reading a round old arrives with far less than L left; the peer
    /// still waits the operator's quiet time (`quietMs`) before it confirms.
    #[test]
    fn a_peer_waits_the_operators_lease_length_not_what_was_left_of_a_grant() {
        let asked = Confirmation {
            term: 1,
            writer: "db-1".into(),
        };
        // L = 2 000 on the operator's side, Q = 1 500; the reading was 1 500 ms old at
        // arrival, so 500 ms were left of the grant.
        let mut peer = book();
        let late = Grant {
            quiet: Some(1_500),
            ..grant(1, "db-1", 1_500)
        };
        peer.accept(&late, 1_000).unwrap();
        assert_eq!(peer.length(), Some(500));
        assert_eq!(
            peer.confirm(&asked, 2_000),
            Err(Unconfirmed::HeardRecently {
                ago: 1_000,
                length: 1_500
            })
        );
        assert!(peer.confirm(&asked, 2_499).is_err());
        assert_eq!(peer.confirm(&asked, 2_500), Ok(()));
        // An operator that does not say L (older): what was left, as before.
        let mut old = book();
        old.accept(&grant(1, "db-1", 1_500), 1_000).unwrap();
        assert_eq!(old.confirm(&asked, 1_500), Ok(()));
    }

    #[test]
    fn a_peer_confirms_only_after_not_hearing_the_operator_for_a_lease_length() {
        let asked = Confirmation {
            term: 1,
            writer: "db-1".into(),
        };
        let mut peer = book();
        assert_eq!(
            peer.confirm(&asked, 0),
            Err(Unconfirmed::OtherTerm { asked: 1, mine: 0 })
        );
        peer.accept(&grant(1, "db-1", 3_000), 1_000).unwrap();
        assert_eq!(
            peer.confirm(&asked, 2_999),
            Err(Unconfirmed::HeardRecently {
                ago: 1_999,
                length: 2_000
            })
        );
        assert_eq!(peer.confirm(&asked, 3_000), Ok(()));
        assert!(matches!(
            peer.confirm(
                &Confirmation {
                    term: 1,
                    writer: "db-2".into()
                },
                3_000
            ),
            Err(Unconfirmed::OtherWriter { .. })
        ));
        // A late grant is refused but still proves the operator is there.
        assert!(peer.accept(&grant(1, "db-1", 3_500), 3_600).is_err());
        assert!(matches!(
            peer.confirm(&asked, 3_700),
            Err(Unconfirmed::HeardRecently { .. })
        ));
        // A restarted peer (the term persisted) has not heard anyone yet.
        let restarted = LeaseBook::new(ME, "other", Some((1, "db-1".into())));
        assert_eq!(
            restarted.confirm(&asked, 99_000),
            Err(Unconfirmed::NeverHeard)
        );
        // The writer itself does not confirm.
        let mut writer = book();
        writer.accept(&grant(1, ME, 3_000), 1_000).unwrap();
        let me = Confirmation {
            term: 1,
            writer: ME.into(),
        };
        assert_eq!(writer.confirm(&me, 9_000), Err(Unconfirmed::IsTheWriter));
    }

    /// A grant from a small space, so that duplicates and equal expiries are common.
    fn any_grant() -> impl Strategy<Value = Grant> {
        (
            0u64..4,
            prop_oneof![Just(ME), Just("db-1"), Just("db-2")],
            0u64..60,
            prop_oneof![4 => Just(INC), 1 => Just("stale")],
        )
            .prop_map(|(term, writer, e, inc)| Grant {
                term,
                writer: writer.into(),
                expires_at: e * 100,
                incarnation: inc.into(),
                quiet: None,
            })
    }

    proptest! {
        /// No sequence of lease messages, duplicated or reordered, ever leaves a lease
        /// expiring later than the latest expiresAt granted at the highest term; the term
        /// never goes down; within a term the lease never shortens; a refused grant changes
        /// nothing a writer relies on.
        #[test]
        fn no_sequence_of_grants_extends_a_lease_past_the_latest_granted_at_the_highest_term(
            sent in proptest::collection::vec(any_grant(), 1..30),
            order in proptest::collection::vec((0usize..30, 0u64..300), 1..60),
        ) {
            let mut b = book();
            let mut now = 0;
            let mut delivered: Vec<Grant> = Vec::new();
            for (pick, advance) in order {
                // Any grant sent, any number of times, in any order.
                let g = sent[pick % sent.len()].clone();
                now += advance;
                let before = b.clone();
                let result = b.accept(&g, now);
                delivered.push(g.clone());
                prop_assert!(b.term() >= before.term());
                match &result {
                    Err(_) => {
                        prop_assert_eq!(b.term(), before.term());
                        prop_assert_eq!(b.writer(), before.writer());
                        prop_assert_eq!(b.write_expires(), before.write_expires());
                        prop_assert_eq!(b.failsafe_until(), before.failsafe_until());
                    }
                    Ok(_) if b.term() == before.term() && before.write_expires().is_some() => {
                        prop_assert!(b.write_expires() >= before.write_expires());
                    }
                    Ok(_) => {}
                }
                if let Some(e) = b.write_expires() {
                    let latest = delivered
                        .iter()
                        .filter(|d| d.incarnation == INC && d.term == b.term() && d.writer == ME)
                        .map(|d| d.expires_at)
                        .max();
                    prop_assert!(latest.is_some_and(|l| e <= l), "{e} vs {latest:?}");
                    prop_assert_eq!(b.writer(), Some(ME));
                }
                if b.holds_write(now) {
                    prop_assert!(b.is_writer());
                }
            }
        }

        /// The failsafe never lets a writer go on longer than L after the start of the last
        /// round every peer confirmed, and never after a lapse.
        #[test]
        fn the_failsafe_ends_one_lease_length_after_the_last_confirmed_round(
            steps in proptest::collection::vec((any::<bool>(), 0u64..3_000), 1..40),
        ) {
            let mut b = book();
            b.accept(&grant(1, ME, 2_000), 0).unwrap();
            let length = b.length().unwrap();
            let mut now = 0;
            let mut last_confirmed: Option<Millis> = None;
            let mut lapsed = false;
            for (confirmed, advance) in steps {
                now += advance;
                if !b.may_write(now) {
                    lapsed = true;
                }
                if confirmed {
                    let asked = Confirmation { term: 1, writer: ME.into() };
                    if b.failsafe_confirmed(&asked, now) {
                        prop_assert!(!lapsed, "revived after a lapse at {now}");
                        last_confirmed = Some(now);
                    }
                }
                if let Some(f) = b.failsafe_until() {
                    prop_assert!(last_confirmed.is_some_and(|t| f == t + length));
                }
            }
        }
    }
}
