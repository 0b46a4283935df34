//! `decide`: one pass of the pipeline
//! `confirm fences → adopt a primary → fence stray writers → take the request → watch the primary
//! or step the transition → maintain the replicas → status`.
//!
//! The invariant every step keeps: an instance is ordered promoted (or unfenced) only when
//! every other instance that could accept writes has been *seen* unable to — absent, down,
//! stopped, a replica or read-only — in an observation made after it was ordered fenced.
//! So there are never two writable primaries, whatever the shells observe late or fail to do.

use std::collections::BTreeSet;

use stator_api::instance::ServerState;
use stator_api::position::{MariadbGtidPosition, ReplicationPosition};
use stator_api::{Engine, Phase, Role};

use crate::action::{Action, Bootstrap, Decision, Reason, Status};
use crate::candidate::{
    choose_promotion_candidate, diverged_past_fork, follows_line_of, ineligibility,
    may_lack_acknowledged_writes, no_replacement, ordinals, relay_log_backlog,
};
use crate::input::{Input, Presence, Request};
use crate::lease::DownVerdict;
use crate::memory::{Fence, FenceMethod, Memory, Transition, TransitionKind, TransitionPhase};

/// Decides the next actions. Pure and deterministic: the same input gives the same decision.
pub fn decide(input: &Input) -> Decision {
    let mut run = Run {
        input,
        memory: input.memory.clone(),
        actions: Vec::new(),
        fences_ordered: BTreeSet::new(),
        said: None,
        notes: Vec::new(),
        refusal: None,
    };
    run.confirm_fences();
    let mut created = false;
    if run.memory.primary.is_none() && run.memory.transition.is_none() {
        created = run.adopt_or_bootstrap();
    }
    run.fence_stray_writers();
    run.take_request();
    if run.memory.transition.is_some() {
        run.step_transition();
    } else if run.memory.primary.is_some() && !created {
        run.watch_primary();
    }
    if run.memory.transition.is_none() && run.primary_serving() {
        run.maintain();
    }
    run.finish()
}

struct Run<'a> {
    input: &'a Input,
    memory: Memory,
    actions: Vec<Action>,
    /// Fences already in `actions`.
    fences_ordered: BTreeSet<u32>,
    /// Phase, reason and message set by the step that knows best.
    said: Option<(Phase, Reason, String)>,
    /// Secondary remarks appended to the message.
    notes: Vec<String>,
    /// A refused switchover request.
    refusal: Option<String>,
}

impl Run<'_> {
    fn name(&self, ordinal: u32) -> String {
        self.input.spec.instance_name(ordinal)
    }

    fn presence(&self, ordinal: u32) -> &Presence {
        self.input.presence(ordinal)
    }

    fn say(&mut self, phase: Phase, reason: Reason, message: String) {
        self.said = Some((phase, reason, message));
    }

    fn wait(&mut self, reason: String, recheck_at_ms: Option<u64>) {
        self.actions.push(Action::Wait {
            reason,
            recheck_at_ms,
        });
    }

    fn now(&self) -> u64 {
        self.input.now_ms
    }

    fn engine(&self) -> Engine {
        self.input.spec.engine
    }

    // ----------------------------------------------------------------------------- fencing

    /// A fence is confirmed by an observation made after it was ordered (one decision later),
    /// in which the instance cannot write; an instance seen writable again loses confirmation.
    fn confirm_fences(&mut self) {
        let input = self.input;
        for (&ordinal, fence) in self.memory.fenced.iter_mut() {
            if input.presence(ordinal).writable() {
                fence.confirmed = false;
            } else if input.cannot_write(ordinal) {
                fence.confirmed = true;
            }
        }
    }

    /// Orders `ordinal` fenced (remembered until it rejoins) and repeats the order until the
    /// fence is confirmed.
    fn order_fence(&mut self, ordinal: u32, method: FenceMethod) {
        let fence = self.memory.fenced.entry(ordinal).or_insert(Fence {
            method,
            confirmed: false,
            floor: None,
        });
        if !fence.confirmed && self.fences_ordered.insert(ordinal) {
            let method = fence.method;
            self.actions.push(Action::Fence { ordinal, method });
        }
    }

    /// The instance allowed to accept writes right now, if any.
    fn authorised_writer(&self) -> Option<u32> {
        self.memory.authorised_writer()
    }

    /// Any instance other than the authorised writer that accepts writes, or reports itself a
    /// primary that may start accepting them, is fenced at once (killed); fences not yet
    /// confirmed are ordered again.
    fn fence_stray_writers(&mut self) {
        let authorised = self.authorised_writer();
        let strays: Vec<u32> = self
            .input
            .observed
            .iter()
            .filter(|(o, p)| Some(**o) != authorised && claims_primary(p))
            .map(|(o, _)| *o)
            .collect();
        for ordinal in strays {
            if !self.memory.fenced.contains_key(&ordinal) {
                self.notes.push(format!(
                    "{} is {} but not the primary: fencing it",
                    self.name(ordinal),
                    self.presence(ordinal).describe()
                ));
            }
            self.order_fence(ordinal, FenceMethod::Kill);
        }
        let pending: Vec<(u32, FenceMethod)> = self
            .memory
            .fenced
            .iter()
            .filter(|(_, f)| !f.confirmed)
            .map(|(o, f)| (*o, f.method))
            .collect();
        for (ordinal, method) in pending {
            self.order_fence(ordinal, method);
        }
    }

    /// `ordinal` may accept writes, as far as anyone can tell: it is not seen unable to, its
    /// fence (if any) is not confirmed, and it was ordered fenced, is or was the primary, or
    /// reports itself a primary. A replica that cannot be reached cannot write: only the core
    /// promotes.
    fn may_write(&self, ordinal: u32) -> bool {
        let presence = self.presence(ordinal);
        if let Some(fence) = self.memory.fenced.get(&ordinal) {
            // Only a sighting after the order counts (`confirm_fences`). An instance that
            // cannot be reached and whose every lease is void cannot write whether or not the
            // order reached it: the lease rule is a matter of time, not of sightings, so the
            // failover goes on in the decision that ordered the fence, not a round later.
            let void = matches!(presence, Presence::Unreachable { .. })
                && self.input.cannot_write(ordinal);
            return !fence.confirmed && !void;
        }
        let was_writer = self.memory.primary == Some(ordinal)
            || self.memory.transition.as_ref().and_then(|t| t.from) == Some(ordinal);
        if was_writer {
            // Never ordered fenced: whatever it looks like now, it may be restarted writable.
            return !matches!(presence, Presence::Absent) || !self.input.lease_void(ordinal);
        }
        // Only known through the runtime, and a lease naming it may still be valid (a
        // candidate ordered promoted that was cut off since).
        claims_primary(presence) || (presence.facts().is_none() && !self.input.lease_void(ordinal))
    }

    /// Instances other than `except` that block a promotion because they may accept writes.
    fn blocking_writers(&self, except: Option<u32>) -> Vec<u32> {
        ordinals(self.input, &self.memory)
            .into_iter()
            .filter(|o| Some(*o) != except && self.may_write(*o))
            .collect()
    }

    fn describe_blocking(&self, blocking: &[u32]) -> String {
        blocking
            .iter()
            .map(|o| {
                let presence = self.presence(*o);
                match &self.input.leases {
                    Some(leases) if presence.facts().is_none() && !self.input.lease_void(*o) => {
                        format!(
                            "{} ({}; a lease of it may be valid for {} ms more)",
                            self.name(*o),
                            presence.describe(),
                            leases.may_hold_lease_until(*o).saturating_sub(self.now())
                        )
                    }
                    _ => format!("{} ({})", self.name(*o), presence.describe()),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The shell's time when a lease of one of `blocking` may end, the earliest: when to
    /// decide again (`None` without leases or when no lease holds them).
    fn lease_recheck(&self, blocking: &[u32]) -> Option<u64> {
        let leases = self.input.leases.as_ref()?;
        blocking
            .iter()
            .filter(|o| self.presence(**o).facts().is_none() && !self.input.lease_void(**o))
            .map(|o| leases.may_hold_lease_until(*o))
            .min()
    }

    /// With leases, when some other instance counts as unable to write only by the lease rule
    /// (down or absent, not reported): `candidate` must itself have answered continuously for
    /// the Down bound. Why not, when it has not.
    fn candidate_unproven(&self, candidate: u32) -> Option<(String, Option<u64>)> {
        let leases = self.input.leases.as_ref()?;
        let by_rule = ordinals(self.input, &self.memory)
            .into_iter()
            .any(|o| o != candidate && self.presence(o).facts().is_none());
        if !by_rule {
            return None;
        }
        match leases.candidate_verdict(candidate, self.now()) {
            DownVerdict::CandidateNotReachableLongEnough { since_ms, until_ms } => {
                let bound = leases.down_after_ms();
                let why = match since_ms {
                    Some(since) => format!(
                        "{} has answered its leases for {} ms, and must for {bound} ms before \
                         an instance it cannot see is taken for down",
                        self.name(candidate),
                        self.now().saturating_sub(since)
                    ),
                    None => format!(
                        "{} does not answer its leases now, and must for {bound} ms before an \
                         instance it cannot see is taken for down",
                        self.name(candidate)
                    ),
                };
                Some((why, until_ms))
            }
            DownVerdict::Down | DownVerdict::LeaseMayBeValid { .. } => None,
        }
    }

    // ----------------------------------------------------------------------------- primary

    /// No primary remembered: create the first one, or adopt the one the instances report
    /// (the memory was lost). True when the first primary was just ordered created.
    fn adopt_or_bootstrap(&mut self) -> bool {
        let input = self.input;
        let existing: Vec<u32> = input
            .observed
            .iter()
            .filter(|(_, p)| !matches!(p, Presence::Absent))
            .map(|(o, _)| *o)
            .collect();
        if existing.is_empty() {
            if input.spec.instances == 0 {
                return false;
            }
            self.actions.push(Action::Create {
                ordinal: 0,
                bootstrap: Bootstrap::InitPrimary,
            });
            self.memory.primary = Some(0);
            self.memory.primary_confirmed = false;
            self.memory.term += 1;
            self.say(
                Phase::Creating,
                Reason::Creating,
                format!("creating {} as the first primary", self.name(0)),
            );
            return true;
        }
        let most_advanced = |candidates: Vec<u32>| -> Option<u32> {
            candidates.iter().copied().find(|o| {
                let mine = input.facts(*o).and_then(|f| f.held());
                candidates.iter().all(|other| {
                    match (&mine, input.facts(*other).and_then(|f| f.held())) {
                        (Some(m), Some(t)) => m.includes(&t),
                        (_, None) => true,
                        (None, Some(_)) => false,
                    }
                })
            })
        };
        let writable: Vec<u32> = existing
            .iter()
            .copied()
            .filter(|o| input.presence(*o).writable())
            .collect();
        let reported_primary: Vec<u32> = existing
            .iter()
            .copied()
            .filter(|o| {
                input
                    .facts(*o)
                    .is_some_and(|f| f.role == Some(Role::Primary))
            })
            .collect();
        let adopted = if !writable.is_empty() {
            most_advanced(writable.clone()).or(writable.first().copied())
        } else if !reported_primary.is_empty() {
            most_advanced(reported_primary.clone()).or(reported_primary.first().copied())
        } else {
            // The instance most replicas follow.
            let mut upstreams: Vec<u32> = existing
                .iter()
                .filter_map(|o| input.facts(*o).and_then(|f| f.upstream))
                .collect();
            upstreams.sort_unstable();
            let mut best: Option<(usize, u32)> = None;
            for u in upstreams.iter().copied() {
                let count = upstreams.iter().filter(|x| **x == u).count();
                if best.is_none_or(|(c, _)| count > c) {
                    best = Some((count, u));
                }
            }
            best.map(|(_, u)| u)
        };
        match adopted {
            Some(primary) => {
                self.memory.primary = Some(primary);
                self.memory.primary_confirmed = true;
                self.memory.term = self.memory.term.max(1);
                self.notes.push(format!(
                    "no primary was remembered; adopted {}, which the instances report as primary",
                    self.name(primary)
                ));
            }
            None => {
                let reason = "no primary is remembered and no instance reports one".to_string();
                self.wait(reason.clone(), None);
                self.say(Phase::Unavailable, Reason::NoPrimary, reason);
            }
        }
        false
    }

    /// The primary is serving: remembered, confirmed, writable and ready, and no transition.
    fn primary_serving(&self) -> bool {
        self.memory.primary.is_some_and(|p| {
            self.memory.primary_confirmed
                && !self.memory.fenced.contains_key(&p)
                && self
                    .presence(p)
                    .facts()
                    .is_some_and(|f| f.writable() && f.ready)
        })
    }

    /// The detection clock: the primary is failed over once it has not been seen serving for
    /// the whole detection timeout (counted from the last sighting that it served, or from the
    /// first unhealthy one when there was none); any healthy observation resets the clock.
    fn watch_primary(&mut self) {
        let Some(primary) = self.memory.primary else {
            return;
        };
        if self.primary_serving() {
            self.memory.primary_unhealthy_since_ms = None;
            self.memory.primary_serving_at_ms = Some(self.now());
            return;
        }
        let healthy_now = self
            .presence(primary)
            .facts()
            .is_some_and(|f| f.writable() && f.ready);
        if healthy_now && !self.memory.fenced.contains_key(&primary) {
            // First healthy sighting of a new primary.
            self.memory.primary_confirmed = true;
            self.memory.primary_unhealthy_since_ms = None;
            self.memory.primary_serving_at_ms = Some(self.now());
            return;
        }
        if self.primary_data_lost(primary) {
            return;
        }
        let how = self.presence(primary).describe();
        if !self.memory.primary_confirmed {
            let message = format!(
                "waiting for {} to become a ready primary: it is {how}",
                self.name(primary)
            );
            self.wait(message.clone(), None);
            self.say(Phase::Creating, Reason::Creating, message);
            return;
        }
        let now = self.now();
        let last_served = self
            .memory
            .primary_serving_at_ms
            .filter(|t| *t <= now)
            .unwrap_or(now);
        let since = *self
            .memory
            .primary_unhealthy_since_ms
            .get_or_insert(last_served);
        let elapsed = now.saturating_sub(since);
        let timeout = self.input.spec.detection_timeout_ms;
        if !self.input.spec.failover_enabled {
            let message = format!(
                "primary {} has been {how} for {} ms; automatic failover is disabled \
                 (spec.failover.enabled: false), so nothing is done",
                self.name(primary),
                elapsed
            );
            self.wait(message.clone(), None);
            self.say(Phase::Unavailable, Reason::FailoverDisabled, message);
            return;
        }
        if elapsed < timeout {
            let message = format!(
                "primary {} has been {how} for {elapsed} ms; failing over if it stays so for {timeout} ms",
                self.name(primary)
            );
            self.wait(message.clone(), Some(since.saturating_add(timeout)));
            self.say(Phase::Unavailable, Reason::PrimaryUnhealthy, message);
            return;
        }
        // A failover kills the primary before it chooses; with no replica able to take its
        // place that only destroys the one instance that may still serve (a 2-instance
        // synchronous MariaDB whose replica was being cloned from a primary observed slowly
        // lost both, for good). Wait for the primary, or for a replica that can replace it.
        if let Some(why) = no_replacement(self.input, &self.memory, primary) {
            let message = format!(
                "primary {} has been {how} for {elapsed} ms, but no replica can take its place \
                 ({why}); not failing over: waiting for it to recover or for a replica",
                self.name(primary)
            );
            self.wait(message.clone(), None);
            self.say(Phase::Unavailable, Reason::FailoverBlocked, message);
            return;
        }
        self.notes.push(format!(
            "primary {} has been {how} for {elapsed} ms (detection timeout {timeout} ms): failing over",
            self.name(primary)
        ));
        self.memory.transition = Some(Transition {
            kind: TransitionKind::Failover,
            from: Some(primary),
            target: None,
            started_ms: now,
            phase: TransitionPhase::Fencing,
        });
        self.order_fence(primary, FenceMethod::Kill);
        self.step_transition();
    }

    /// The remembered primary's data is gone ([`Presence::Absent`]) while other instances hold
    /// data: it can never come back with the writes, and an empty primary would lose them all.
    /// Fail over at once (confirmed or not, no detection timeout), as soon as every instance
    /// holding data reports what it holds, so the most advanced of them is promoted and the
    /// lost one is created again as its replica. False (nothing decided) otherwise: with no
    /// other instance holding data there is nothing to fail over to.
    fn primary_data_lost(&mut self, primary: u32) -> bool {
        if !matches!(self.presence(primary), Presence::Absent) {
            return false;
        }
        let input = self.input;
        let holders: Vec<u32> = (0..input.spec.instances)
            .filter(|o| *o != primary && !matches!(input.presence(*o), Presence::Absent))
            .collect();
        if holders.is_empty() {
            return false;
        }
        let lost = format!("the data of primary {} is gone", self.name(primary));
        if !input.spec.failover_enabled {
            let message = format!(
                "{lost}; automatic failover is disabled (spec.failover.enabled: false), so \
                 nothing is done: switch over to an instance that holds the data"
            );
            self.wait(message.clone(), None);
            self.say(Phase::Unavailable, Reason::FailoverDisabled, message);
            return true;
        }
        let silent: Vec<u32> = holders
            .iter()
            .copied()
            .filter(|o| input.facts(*o).and_then(|f| f.held()).is_none())
            .collect();
        if !silent.is_empty() {
            let message = format!(
                "{lost}; waiting for {} to report what it holds before the most advanced \
                 instance is promoted",
                silent
                    .iter()
                    .map(|o| format!("{} ({})", self.name(*o), self.presence(*o).describe()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.wait(message.clone(), None);
            self.say(Phase::Unavailable, Reason::PrimaryUnhealthy, message);
            return true;
        }
        self.notes.push(format!(
            "{lost}: failing over to the most advanced instance that holds data"
        ));
        self.memory.transition = Some(Transition {
            kind: TransitionKind::Failover,
            from: Some(primary),
            target: None,
            started_ms: self.now(),
            phase: TransitionPhase::Fencing,
        });
        self.memory.primary_unhealthy_since_ms = None;
        self.step_transition();
        true
    }

    // ----------------------------------------------------------------------------- request

    fn take_request(&mut self) {
        let Some(Request::Switchover { to }) = self.input.request.clone() else {
            // Scale-down: the primary itself is beyond spec.instances; move it away first.
            if let Some(p) = self.memory.primary
                && p >= self.input.spec.instances
                && self.memory.transition.is_none()
                && self.primary_serving()
                && choose_promotion_candidate(self.input, &self.memory, Some(p), None).is_ok()
            {
                self.notes.push(format!(
                    "{} is beyond spec.instances: switching over before removing it",
                    self.name(p)
                ));
                self.start_switchover(None);
            }
            return;
        };
        if let Some(t) = &self.memory.transition {
            if t.kind == TransitionKind::Switchover && (to.is_none() || to == t.target) {
                return;
            }
            self.refusal = Some(format!(
                "switchover refused: a {} is already in progress",
                match t.kind {
                    TransitionKind::Failover => "failover",
                    TransitionKind::Switchover => "switchover",
                }
            ));
            return;
        }
        self.start_switchover(to);
    }

    fn start_switchover(&mut self, to: Option<u32>) {
        let Some(primary) = self.memory.primary else {
            self.refusal = Some("switchover refused: there is no primary".into());
            return;
        };
        if !self.primary_serving() {
            self.refusal = Some(format!(
                "switchover refused: primary {} is {}; a failover, not a switchover, replaces it",
                self.name(primary),
                self.presence(primary).describe()
            ));
            return;
        }
        let target = match to {
            Some(t) if t == primary => {
                self.refusal = Some(format!(
                    "switchover refused: {} is already the primary",
                    self.name(t)
                ));
                return;
            }
            Some(t) => match ineligibility(self.input, &self.memory, t, Some(primary)) {
                None => t,
                Some(why) => {
                    self.refusal = Some(format!(
                        "switchover refused: {} cannot take over: it {why}",
                        self.name(t)
                    ));
                    return;
                }
            },
            None => match choose_promotion_candidate(self.input, &self.memory, Some(primary), None)
            {
                Ok((t, _)) => t,
                Err(why) => {
                    self.refusal = Some(format!("switchover refused: {why}"));
                    return;
                }
            },
        };
        let method = match self.engine() {
            Engine::Postgres => FenceMethod::Shutdown,
            Engine::Mysql | Engine::Mariadb => FenceMethod::ReadOnly,
        };
        self.memory.transition = Some(Transition {
            kind: TransitionKind::Switchover,
            from: Some(primary),
            target: Some(target),
            started_ms: self.now(),
            phase: TransitionPhase::Fencing,
        });
        self.memory.primary_unhealthy_since_ms = None;
        self.memory.primary_serving_at_ms = None;
        self.order_fence(primary, method);
    }

    // ----------------------------------------------------------------------------- transition

    fn step_transition(&mut self) {
        let Some(t) = self.memory.transition.clone() else {
            return;
        };
        match t.phase {
            TransitionPhase::Fencing => {
                let method = match (t.kind, self.engine()) {
                    (TransitionKind::Failover, _) => FenceMethod::Kill,
                    (TransitionKind::Switchover, Engine::Postgres) => FenceMethod::Shutdown,
                    (TransitionKind::Switchover, _) => FenceMethod::ReadOnly,
                };
                for old in [t.from, self.memory.primary].into_iter().flatten() {
                    if self.may_write(old) {
                        self.order_fence(old, method);
                    }
                }
                let blocking = self.blocking_writers(None);
                if !blocking.is_empty() {
                    let message = format!(
                        "{}: fencing {} before anything is promoted; each must be seen stopped \
                         or read-only first",
                        self.transition_title(&t),
                        self.describe_blocking(&blocking)
                    );
                    let recheck = self.lease_recheck(&blocking);
                    self.wait(message.clone(), recheck);
                    self.say(Phase::FailingOver, Reason::Fencing, message);
                    return;
                }
                match t.kind {
                    TransitionKind::Switchover => {
                        self.set_phase(TransitionPhase::CatchingUp);
                        self.catch_up(&t);
                    }
                    TransitionKind::Failover => self.choose_and_promote(&t),
                }
            }
            TransitionPhase::CatchingUp => self.catch_up(&t),
            TransitionPhase::Promoting {
                candidate,
                since_ms,
                restore,
                ref fork,
            } => self.await_promotion(&t, candidate, since_ms, restore, fork.clone()),
        }
    }

    fn transition_title(&self, t: &Transition) -> String {
        let from = t
            .from
            .map_or("an unknown primary".to_string(), |f| self.name(f));
        match t.kind {
            TransitionKind::Failover => format!("failover from {from}"),
            TransitionKind::Switchover => match t.target {
                Some(target) => format!("switchover from {from} to {}", self.name(target)),
                None => format!("switchover from {from}"),
            },
        }
    }

    fn set_phase(&mut self, phase: TransitionPhase) {
        if let Some(t) = self.memory.transition.as_mut() {
            t.phase = phase;
        }
    }

    /// Failover, every writer fenced: promote the most advanced safe replica; with none, bring
    /// back the old primary if it can be; otherwise say why and try again next time.
    fn choose_and_promote(&mut self, t: &Transition) {
        let title = self.transition_title(t);
        let chosen = choose_promotion_candidate(self.input, &self.memory, t.from, t.target);
        let why = match chosen {
            Ok((candidate, held)) => {
                match may_lack_acknowledged_writes(
                    self.input,
                    &self.memory,
                    candidate,
                    &held,
                    t.from,
                ) {
                    None => {
                        let backlog = relay_log_backlog(self.input, candidate);
                        if backlog > 0 {
                            let message = format!(
                                "{title}: {} is applying its relay log ({backlog} transactions \
                                 received but not applied) before it is promoted",
                                self.name(candidate)
                            );
                            self.wait(message.clone(), None);
                            self.say(Phase::FailingOver, Reason::Promoting, message);
                            return;
                        }
                        self.promote(t, candidate, held);
                        return;
                    }
                    Some(why) => why,
                }
            }
            Err(why) => why,
        };
        if let Some(old) = self.restorable(t.from) {
            self.restore(t, old, &why);
            return;
        }
        let message = format!("{title} cannot finish yet: {why}; retrying");
        self.wait(message.clone(), None);
        self.say(Phase::FailingOver, Reason::FailoverBlocked, message);
    }

    /// The old primary can take writes again: fenced (confirmed), reporting, not diverged,
    /// still within spec.instances.
    fn restorable(&self, from: Option<u32>) -> Option<u32> {
        let old = from?;
        let fenced = self.memory.fenced.get(&old)?;
        let facts = self.presence(old).facts()?;
        let usable = fenced.confirmed
            && old < self.input.spec.instances
            && !facts.diverged
            && facts.role == Some(Role::Primary)
            && facts.held().is_some()
            && matches!(facts.state, ServerState::Stopped | ServerState::Running);
        usable.then_some(old)
    }

    fn restore(&mut self, t: &Transition, old: u32, why: &str) {
        let blocking = self.blocking_writers(Some(old));
        if !blocking.is_empty() {
            let message = format!(
                "{}: waiting for {} to be fenced before {} takes writes again",
                self.transition_title(t),
                self.describe_blocking(&blocking),
                self.name(old)
            );
            let recheck = self.lease_recheck(&blocking);
            self.wait(message.clone(), recheck);
            self.say(Phase::FailingOver, Reason::Fencing, message);
            return;
        }
        self.memory.fenced.remove(&old);
        self.actions.push(Action::Unfence { ordinal: old });
        self.set_phase(TransitionPhase::Promoting {
            candidate: old,
            since_ms: self.now(),
            restore: true,
            fork: None,
        });
        let (reason, lead) = match t.kind {
            TransitionKind::Switchover => (
                Reason::SwitchoverAbandoned,
                format!("{} abandoned", self.transition_title(t)),
            ),
            TransitionKind::Failover => (Reason::FailoverBlocked, self.transition_title(t)),
        };
        let message = format!(
            "{lead}: {why}; {} takes writes again instead",
            self.name(old)
        );
        self.say(Phase::FailingOver, reason, message);
    }

    fn promote(&mut self, t: &Transition, candidate: u32, held: ReplicationPosition) {
        let blocking = self.blocking_writers(Some(candidate));
        if !blocking.is_empty() {
            let message = format!(
                "{}: {} is chosen, but {} must be fenced first",
                self.transition_title(t),
                self.name(candidate),
                self.describe_blocking(&blocking)
            );
            let recheck = self.lease_recheck(&blocking);
            self.wait(message.clone(), recheck);
            self.say(Phase::FailingOver, Reason::Fencing, message);
            return;
        }
        if let Some((why, recheck)) = self.candidate_unproven(candidate) {
            let message = format!(
                "{}: {} is chosen, but {why}",
                self.transition_title(t),
                self.name(candidate)
            );
            self.wait(message.clone(), recheck);
            self.say(Phase::FailingOver, Reason::Fencing, message);
            return;
        }
        let term = self.memory.term + 1;
        self.actions.push(Action::Promote {
            ordinal: candidate,
            term,
        });
        let message = format!(
            "{}: promoting {} (holds {held}) to primary, term {term}",
            self.transition_title(t),
            self.name(candidate)
        );
        self.set_phase(TransitionPhase::Promoting {
            candidate,
            since_ms: self.now(),
            restore: false,
            fork: Some(held),
        });
        self.say(Phase::FailingOver, Reason::Promoting, message);
    }

    /// Switchover, the old primary fenced: promote the target once it holds the old primary's
    /// final position; give up (the old primary takes writes again) when the target becomes
    /// unusable or the switchover timeout runs out.
    fn catch_up(&mut self, t: &Transition) {
        let (Some(from), Some(target)) = (t.from, t.target) else {
            self.convert_to_failover(t, "the switchover lost track of its instances");
            return;
        };
        let title = self.transition_title(t);
        let final_position = self.presence(from).facts().and_then(|f| f.held());
        let unusable = ineligibility(self.input, &self.memory, target, Some(from));
        let target_facts = self.presence(target).facts();
        let target_held = target_facts.and_then(|f| f.held());
        let target_applied = target_facts.and_then(|f| f.position.clone());
        if let (Some(fin), None, Some(held)) = (&final_position, &unusable, &target_held) {
            let applied_enough = match self.engine() {
                Engine::Postgres => true,
                Engine::Mysql | Engine::Mariadb => {
                    target_applied.as_ref().is_some_and(|a| a.includes(fin))
                }
            };
            if held.includes(fin) && applied_enough {
                self.promote(t, target, held.clone());
                return;
            }
        }
        let elapsed = self.now().saturating_sub(t.started_ms);
        let timeout = self.input.spec.switchover_timeout_ms;
        let give_up = match (&unusable, elapsed >= timeout) {
            (Some(why), _) => Some(format!("{} {why}", self.name(target))),
            (None, true) => Some(format!(
                "{} did not catch up within {timeout} ms",
                self.name(target)
            )),
            (None, false) => None,
        };
        if let Some(why) = give_up {
            match self.restorable(Some(from)) {
                Some(old) => self.restore(t, old, &why),
                None => self.convert_to_failover(t, &why),
            }
            return;
        }
        let message = match (&final_position, &target_held) {
            (Some(fin), Some(held)) => format!(
                "{title}: waiting for {} to catch up with {}'s final position {fin} (it holds \
                 {held}, {} behind)",
                self.name(target),
                self.name(from),
                fin.ahead_of(held).unwrap_or(0)
            ),
            (None, _) => format!(
                "{title}: waiting for the fenced {} to report its final position",
                self.name(from)
            ),
            (Some(fin), None) => format!(
                "{title}: waiting for {} to report its position (target {fin})",
                self.name(target)
            ),
        };
        self.wait(message.clone(), Some(t.started_ms.saturating_add(timeout)));
        self.say(Phase::FailingOver, Reason::CatchingUp, message);
    }

    fn convert_to_failover(&mut self, t: &Transition, why: &str) {
        self.notes.push(format!(
            "{} turned into a failover: {why}",
            self.transition_title(t)
        ));
        let failover = Transition {
            kind: TransitionKind::Failover,
            from: t.from,
            target: None,
            started_ms: t.started_ms,
            phase: TransitionPhase::Fencing,
        };
        self.memory.transition = Some(failover);
        self.step_transition();
    }

    /// A promotion (or restore) was ordered: finish when the candidate accepts writes; repeat
    /// the order while it runs; give it up if the candidate is gone for the detection timeout.
    fn await_promotion(
        &mut self,
        t: &Transition,
        candidate: u32,
        since_ms: u64,
        restore: bool,
        fork: Option<ReplicationPosition>,
    ) {
        let presence = self.presence(candidate).clone();
        if presence.writable() {
            self.memory.primary = Some(candidate);
            self.memory.primary_confirmed = true;
            self.memory.primary_unhealthy_since_ms = None;
            self.memory.primary_serving_at_ms = Some(self.now());
            self.memory.transition = None;
            self.memory.fenced.remove(&candidate);
            // A restore is counted too: its lease carried the next term.
            self.memory.term += 1;
            if !restore {
                if let Some(fork) = &fork {
                    for fence in self.memory.fenced.values_mut() {
                        fence.floor = Some(match &fence.floor {
                            Some(floor) => lowest(floor, fork),
                            None => fork.clone(),
                        });
                    }
                }
                self.memory.fork = fork;
                self.memory.sync_standbys = self
                    .input
                    .observed
                    .iter()
                    .filter(|(o, p)| **o != candidate && !matches!(p, Presence::Absent))
                    .map(|(o, _)| *o)
                    .collect();
            }
            self.notes.push(format!(
                "{} done: {} is the primary (term {})",
                self.transition_title(t),
                self.name(candidate),
                self.memory.term
            ));
            return;
        }
        let title = self.transition_title(t);
        let blocking = self.blocking_writers(Some(candidate));
        if !blocking.is_empty() {
            let message = format!(
                "{title}: {} must be fenced before {} may take writes",
                self.describe_blocking(&blocking),
                self.name(candidate)
            );
            let recheck = self.lease_recheck(&blocking);
            self.wait(message.clone(), recheck);
            self.say(Phase::FailingOver, Reason::Fencing, message);
            return;
        }
        let progressing = presence
            .facts()
            .is_some_and(|f| matches!(f.state, ServerState::Running | ServerState::Starting));
        let elapsed = self.now().saturating_sub(since_ms);
        if !progressing && elapsed >= self.input.spec.detection_timeout_ms {
            // Give the candidate up; it may still turn writable, so it is fenced like any
            // instance that was ever told it may write. Its term is spent: its lease named it
            // at `term + 1`, and the managers that took that lease refuse the same term naming
            // the next candidate (or the restored primary).
            self.order_fence(candidate, FenceMethod::Kill);
            self.memory.term += 1;
            self.set_phase(TransitionPhase::Fencing);
            let message = format!(
                "{title}: {} is {} {elapsed} ms after it was told to take writes; giving it up \
                 and choosing again",
                self.name(candidate),
                presence.describe()
            );
            self.wait(message.clone(), None);
            self.say(Phase::FailingOver, Reason::FailoverBlocked, message);
            return;
        }
        let running_replica = presence
            .facts()
            .is_some_and(|f| f.state == ServerState::Running && f.role == Some(Role::Replica));
        if restore {
            self.actions.push(Action::Unfence { ordinal: candidate });
        } else if running_replica {
            self.actions.push(Action::Promote {
                ordinal: candidate,
                term: self.memory.term + 1,
            });
        }
        let message = format!(
            "{title}: waiting for {} to accept writes (it is {})",
            self.name(candidate),
            presence.describe()
        );
        self.wait(message.clone(), None);
        self.say(Phase::FailingOver, Reason::Promoting, message);
    }

    // ----------------------------------------------------------------------------- replicas

    /// With a serving primary: create missing instances one at a time, remove surplus ones,
    /// repoint replicas that follow someone else, rejoin fenced former primaries, repair
    /// diverged instances.
    fn maintain(&mut self) {
        let Some(primary) = self.memory.primary else {
            return;
        };
        let input = self.input;
        let spec = &input.spec;
        let existing: Vec<u32> = input
            .observed
            .iter()
            .filter(|(o, p)| {
                **o != primary && **o < spec.instances && !matches!(p, Presence::Absent)
            })
            .map(|(o, _)| *o)
            .collect();
        self.memory.sync_standbys.extend(existing);
        let mut creating = false;
        let mut not_ready: Vec<String> = Vec::new();
        for ordinal in ordinals(input, &self.memory) {
            if ordinal == primary {
                continue;
            }
            let presence = input.presence(ordinal);
            if ordinal >= spec.instances {
                match presence {
                    Presence::Absent => {
                        self.memory.fenced.remove(&ordinal);
                        self.memory.sync_standbys.remove(&ordinal);
                    }
                    // Removed: its server is stopped and its data kept (a PVC left behind);
                    // nothing is degraded. Its fence and standby record stay, so it never
                    // comes back writable nor is its data forgotten.
                    Presence::Down { .. } => {}
                    _ => {
                        self.actions.push(Action::Remove { ordinal });
                        not_ready.push(format!("{} is being removed", self.name(ordinal)));
                    }
                }
                continue;
            }
            if matches!(presence, Presence::Absent) {
                // Its data is gone: nothing left to fence or rejoin; it is created again.
                self.memory.fenced.remove(&ordinal);
            }
            if self.memory.fenced.contains_key(&ordinal) {
                if let Some(note) = self.rejoin(ordinal, primary) {
                    not_ready.push(note);
                }
                continue;
            }
            match presence {
                Presence::Absent => {
                    let lower_ready = (0..ordinal).all(|o| input.facts(o).is_some_and(|f| f.ready));
                    if !creating && lower_ready {
                        self.actions.push(Action::Create {
                            ordinal,
                            bootstrap: Bootstrap::CloneFrom { upstream: primary },
                        });
                    }
                    creating = true;
                    not_ready.push(format!("{} is being created", self.name(ordinal)));
                }
                Presence::Reported(facts) if facts.writable() => {}
                Presence::Reported(facts)
                    if facts.role == Some(Role::Replica) && facts.state == ServerState::Running =>
                {
                    let follows = follows_line_of(input, ordinal, primary);
                    // PostgreSQL: a replica that cannot follow because it is on another
                    // timeline than the primary is rewound onto the primary's.
                    let off_timeline = self.engine() == Engine::Postgres
                        && facts.replication_error.is_some()
                        && facts.held().and_then(|h| h.timeline())
                            != input
                                .facts(primary)
                                .and_then(|f| f.held())
                                .and_then(|h| h.timeline());
                    if facts.diverged
                        || off_timeline
                        || diverged_past_fork(&self.memory, facts.held().as_ref(), follows)
                    {
                        self.repair(ordinal, primary);
                        not_ready.push(format!(
                            "{} diverged from the primary's history and is being repaired",
                            self.name(ordinal)
                        ));
                    } else if facts.upstream != Some(primary) {
                        self.actions.push(Action::Repoint {
                            ordinal,
                            upstream: primary,
                        });
                        not_ready.push(format!(
                            "{} is being repointed to {}",
                            self.name(ordinal),
                            self.name(primary)
                        ));
                    } else if !facts.ready {
                        not_ready.push(format!(
                            "{} is {}",
                            self.name(ordinal),
                            presence.describe()
                        ));
                    }
                }
                other => {
                    not_ready.push(format!("{} is {}", self.name(ordinal), other.describe()));
                }
            }
        }
        if self.said.is_none() {
            let p = self.name(primary);
            if not_ready.is_empty() {
                self.say(
                    Phase::Ready,
                    Reason::Healthy,
                    format!(
                        "{p} is the primary; all {} instances are ready",
                        spec.instances
                    ),
                );
            } else {
                let phase = if creating {
                    Phase::Creating
                } else {
                    Phase::Degraded
                };
                let reason = if creating {
                    Reason::Creating
                } else {
                    Reason::Degraded
                };
                self.say(
                    phase,
                    reason,
                    format!("{p} is the primary; {}", not_ready.join("; ")),
                );
            }
        }
    }

    /// A fenced former primary that reports again rejoins as a replica: rewound when it may
    /// have diverged (PostgreSQL), rebuilt when its GTID set is errant (MySQL family).
    /// Returns a note for the status while it is not back.
    fn rejoin(&mut self, ordinal: u32, primary: u32) -> Option<String> {
        let input = self.input;
        let name = self.name(ordinal);
        let presence = input.presence(ordinal);
        let Some(facts) = presence.facts() else {
            return Some(format!(
                "{name} is fenced and {}; it rejoins as a replica when it returns",
                presence.describe()
            ));
        };
        if facts.role == Some(Role::Replica)
            && facts.state == ServerState::Running
            && facts.upstream == Some(primary)
            && !facts.diverged
        {
            self.memory.fenced.remove(&ordinal);
            return None;
        }
        let confirmed = self
            .memory
            .fenced
            .get(&ordinal)
            .is_some_and(|f| f.confirmed);
        if !confirmed
            || matches!(
                facts.state,
                ServerState::Initializing | ServerState::Starting
            )
        {
            return Some(format!("{name} is fenced and {}", presence.describe()));
        }
        let held = facts.held();
        let primary_held = input.facts(primary).and_then(|f| f.held());
        let floor = self
            .memory
            .fenced
            .get(&ordinal)
            .and_then(|f| f.floor.clone());
        match self.engine() {
            Engine::Postgres => {
                let same_line = |line: &Option<ReplicationPosition>| match (&held, line) {
                    (Some(h), Some(l)) => l.includes(h) && h.timeline() == l.timeline(),
                    _ => false,
                };
                let rewind = facts.diverged || !(same_line(&floor) || same_line(&primary_held));
                self.actions.push(Action::Rejoin {
                    ordinal,
                    upstream: primary,
                    rewind,
                });
                Some(if rewind {
                    format!(
                        "{name} rejoins as a replica after pg_rewind (its WAL may have diverged)"
                    )
                } else {
                    format!("{name} rejoins as a replica")
                })
            }
            Engine::Mysql | Engine::Mariadb => {
                // Per-domain sequence numbers cannot tell the old primary's transactions from
                // the new line's with the same numbers, so the floor of the line is asked first.
                let errant = if facts.diverged {
                    Some(true)
                } else {
                    match (&held, &floor, &primary_held) {
                        // Not reporting its GTID set (stopped, being demoted): unknown, not
                        // errant; it is judged when it reports one.
                        (None, _, _) => None,
                        (Some(h), Some(floor), _) => Some(!floor.includes(h)),
                        (Some(h), None, Some(p)) => Some(!p.includes(h)),
                        (Some(_), None, None) => None,
                    }
                };
                // A killed former primary whose server is down for good reports no GTID set
                // (only a running server tells it; one killed while its manager was frozen
                // never did). It is told to rejoin: its manager reads the set with the server
                // private and refuses to follow when it holds transactions the primary lacks
                // (then it reports them, and is rebuilt).
                let killed = self
                    .memory
                    .fenced
                    .get(&ordinal)
                    .is_some_and(|f| f.method == FenceMethod::Kill);
                let checked_by_its_manager = errant.is_none()
                    && held.is_none()
                    && killed
                    && facts.state == ServerState::Stopped;
                let errant = if checked_by_its_manager {
                    Some(false)
                } else {
                    errant
                };
                match errant {
                    Some(true) => {
                        self.actions.push(Action::Rebuild {
                            ordinal,
                            upstream: primary,
                        });
                        Some(format!(
                            "{name} holds transactions the primary lacks (errant GTIDs): rebuilding it from {}",
                            self.name(primary)
                        ))
                    }
                    Some(false) => {
                        self.actions.push(Action::Rejoin {
                            ordinal,
                            upstream: primary,
                            rewind: false,
                        });
                        Some(if checked_by_its_manager {
                            format!(
                                "{name} rejoins as a replica once its manager found no transaction {} lacks",
                                self.name(primary)
                            )
                        } else {
                            format!("{name} rejoins as a replica")
                        })
                    }
                    None => Some(format!(
                        "{name} waits to rejoin until it and the primary report their GTID sets"
                    )),
                }
            }
        }
    }

    fn repair(&mut self, ordinal: u32, primary: u32) {
        let action = match self.engine() {
            Engine::Postgres => Action::Rejoin {
                ordinal,
                upstream: primary,
                rewind: true,
            },
            Engine::Mysql | Engine::Mariadb => Action::Rebuild {
                ordinal,
                upstream: primary,
            },
        };
        self.actions.push(action);
    }

    // ----------------------------------------------------------------------------- status

    fn finish(mut self) -> Decision {
        let input = self.input;
        let (phase, reason, mut message) =
            self.said
                .take()
                .unwrap_or_else(|| match self.memory.primary {
                    Some(p) => (
                        Phase::Unavailable,
                        Reason::PrimaryUnhealthy,
                        format!(
                            "primary {} is {}",
                            self.name(p),
                            self.presence(p).describe()
                        ),
                    ),
                    None => (
                        Phase::Unavailable,
                        Reason::NoPrimary,
                        "no primary".to_string(),
                    ),
                });
        let mut reason = reason;
        if let Some(refusal) = self.refusal.take() {
            message = format!("{refusal}; {message}");
            reason = Reason::SwitchoverRefused;
        }
        for note in &self.notes {
            message.push_str("; ");
            message.push_str(note);
        }
        let rw = if self.memory.transition.is_none() && self.memory.primary_confirmed {
            self.memory
                .primary
                .filter(|p| !self.memory.fenced.contains_key(p))
        } else {
            None
        };
        let candidate = match &self.memory.transition {
            Some(Transition {
                phase: TransitionPhase::Promoting { candidate, .. },
                ..
            }) => Some(*candidate),
            _ => None,
        };
        let ro = input
            .observed
            .iter()
            .filter(|(o, p)| {
                **o < input.spec.instances
                    && Some(**o) != rw
                    && Some(**o) != candidate
                    && !self.memory.fenced.contains_key(o)
                    && p.facts().is_some_and(|f| {
                        f.ready
                            && f.role == Some(Role::Replica)
                            && f.state == ServerState::Running
                            && (rw.is_none() || f.upstream == rw)
                    })
            })
            .map(|(o, _)| *o)
            .collect();
        Decision {
            actions: self.actions,
            memory: self.memory,
            status: Status {
                phase,
                reason,
                message,
                rw,
                ro,
            },
        }
    }
}

/// Reported as a primary that accepts writes or may soon (running, starting, crashed and about
/// to be restarted), and not read-only.
fn claims_primary(presence: &Presence) -> bool {
    presence.writable()
        || (!presence.cannot_write()
            && presence
                .facts()
                .is_some_and(|f| f.role == Some(Role::Primary)))
}

/// The position held by both: the earlier WAL position, the intersection of GTID sets (per
/// domain the lower sequence for MariaDB).
fn lowest(a: &ReplicationPosition, b: &ReplicationPosition) -> ReplicationPosition {
    match (a, b) {
        (ReplicationPosition::Wal(x), ReplicationPosition::Wal(y)) => {
            ReplicationPosition::Wal(*x.min(y))
        }
        (ReplicationPosition::Mysql { gtid: x }, ReplicationPosition::Mysql { gtid: y }) => {
            ReplicationPosition::Mysql {
                gtid: x.difference(&x.difference(y)),
            }
        }
        (ReplicationPosition::Mariadb { gtid: x }, ReplicationPosition::Mariadb { gtid: y }) => {
            let gtids = x.gtids().filter_map(|g| {
                let theirs = y.gtids().find(|t| t.domain == g.domain)?;
                Some(if theirs.sequence < g.sequence {
                    theirs
                } else {
                    g
                })
            });
            ReplicationPosition::Mariadb {
                gtid: MariadbGtidPosition::from_gtids(gtids.collect::<Vec<_>>()),
            }
        }
        _ => a.clone(),
    }
}
