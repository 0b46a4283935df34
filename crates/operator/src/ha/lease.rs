//! Write leases (`spec.failover.lease: true`): the operator's half of lease fencing. The pods
//! then run `stator instance --managed --lease`, whose primary serves only while it holds a
//! write lease and kills its own server when the lease runs out (unless every peer confirms
//! the operator, not the primary, is gone). [`Leases`] keeps one [`LeaseLedger`] per
//! `Database` loop and a task that renews the leases every [`period`] (a quarter of L, L being
//! `spec.failover.detectionTimeout`), on its own, so a slow tick of the loop (a status write,
//! a probe timing out) never lets a healthy primary's lease run out:
//!
//! - each round `POST /lease` goes to every pod with an address, **every other pod first and
//!   the writer last**, the writer's lease built on a clock reading taken after the others'
//!   renewals: a peer confirms the writer's failsafe once its last reading + L has passed on
//!   its clock, and the writer's lease ends at its own reading + L, so a writer whose reading
//!   were not the later one by more than a failsafe round would, during an operator outage,
//!   fence itself before its peers confirm (the drill "operator stopped for 3 × L" found it);
//! - the writer named is [`Memory::lease_writer`] at [`Memory::lease_term`]: the core's
//!   authorised writer gets a write lease; when there is none (a failover fencing the old
//!   primary) the old primary is named to the others only, and is itself only asked for its
//!   clock (`GET /status`): nothing renews its lease;
//! - a manager whose clock reading is not known yet (a new ledger, a restarted manager: another
//!   incarnation) is asked for it first and granted at once in the same round;
//! - every send, answer and failure goes into the ledger, which the failover shell passes to
//!   the core ([`stator_failover::Runtime::leases`]), so an unreachable instance whose lease
//!   may still be valid is never taken for down;
//! - when the writer changes (bootstrap, promotion, restore), [`Leases::plan`] starts a round
//!   at once and waits for it, so the new writer holds its lease before the promotion is
//!   ordered and a bootstrapped primary starts without waiting for the next round.
//!
//! A new loop (a restarted operator, a new leader) starts a new ledger: the core then counts
//! every instance as holding a lease sent at the ledger's start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use stator_control::{LeaseLedger, Memory};
use stator_engine::manager_client::request_at;
use stator_engine::tls::Dial;
use tokio::sync::{Notify, watch};

/// The least time between two rounds.
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// How long an exchange with a manager whose last exchange failed may take (never the
/// authorised writer's).
const QUICK_TIMEOUT: Duration = Duration::from_millis(300);

/// The time between two rounds for leases of `lease_ms`: a quarter of L, so a lease is
/// renewed about four times before it would end, and a round whose peer answers only at the
/// [`timeout`] still leaves the writer half a lease.
pub fn period(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms / 4).max(MIN_PERIOD)
}

/// How long one exchange may take: a quarter of L, at least 250 ms, at most 2 s.
pub fn timeout(lease_ms: u64) -> Duration {
    Duration::from_millis((lease_ms / 4).clamp(250, 2_000))
}

/// Whom the leases name, and where the managers are.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub term: u64,
    /// [`Memory::lease_writer`].
    pub writer: Option<u32>,
    /// [`Memory::authorised_writer`]: the only instance granted a write lease.
    pub authorised: Option<u32>,
    /// Each pod's manager with an address.
    pub managers: BTreeMap<u32, Dial>,
}

impl Plan {
    /// The plan for `memory`, with the managers at `managers`. `initialised`: the instance
    /// the loop ordered `/bootstrap init` while the core remembers no primary (the database's
    /// first instance, which the core adopts once it serves): it is the writer until the core
    /// names one, or its manager would wait for a lease forever.
    pub fn of(memory: &Memory, managers: BTreeMap<u32, Dial>, initialised: Option<u32>) -> Plan {
        let first = initialised.filter(|_| memory.primary.is_none() && memory.transition.is_none());
        Plan {
            term: memory.lease_term(),
            writer: memory.lease_writer().or(first),
            authorised: memory.authorised_writer().or(first),
            managers,
        }
    }

    /// The writer a lease to `ordinal` names (in the ledger: a write lease only when it is
    /// `ordinal` itself); `None`: only its clock is asked for.
    fn names_to(&self, ordinal: u32) -> Option<u32> {
        match self.writer {
            Some(w) if w == ordinal => self.authorised.filter(|a| *a == ordinal),
            other => other,
        }
    }

    /// The order of a round: every manager but the writer's, then the writer's.
    fn rounds(&self) -> (Vec<u32>, Option<u32>) {
        let peers = self
            .managers
            .keys()
            .copied()
            .filter(|o| Some(*o) != self.writer)
            .collect();
        let writer = self.writer.filter(|w| self.managers.contains_key(w));
        (peers, writer)
    }
}

struct Shared {
    ledger: LeaseLedger,
    /// Pods whose manager answered without a clock reading: not in lease mode (started before
    /// `spec.failover.lease` was turned on, and not rolled yet).
    unleased: BTreeSet<u32>,
    plan: Plan,
    /// Bumped when whom the leases name changes.
    generation: u64,
}

/// The leases of one `Database`, renewed by a task of their own; it ends with this value.
pub struct Leases {
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
    /// Told when a new writer is authorised: the round in flight is abandoned.
    renamed: Arc<Notify>,
    /// The generation of the plan the last finished round used.
    done: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Leases {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Leases {
    /// Starts renewing leases of `lease_ms` for database `name` (pods `NAME-N`), with the
    /// api-token `token`; nothing is sent before the first [`Leases::plan`].
    pub fn start(name: &str, token: String, lease_ms: u64) -> Leases {
        let now = stator_failover::clock::monotonic_ms();
        let shared = Arc::new(Mutex::new(Shared {
            ledger: LeaseLedger::new(lease_ms, now),
            unleased: BTreeSet::new(),
            plan: Plan::default(),
            generation: 0,
        }));
        let wake = Arc::new(Notify::new());
        let renamed = Arc::new(Notify::new());
        let (done_tx, done) = watch::channel(0);
        let task = tokio::spawn(renew_forever(
            shared.clone(),
            wake.clone(),
            renamed.clone(),
            done_tx,
            name.to_string(),
            token,
        ));
        Leases {
            shared,
            wake,
            renamed,
            done,
            task,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ledger as it stands, for the core; `None` while a pod's manager is not in lease
    /// mode (the pods are being rolled into or out of it): such a manager never answers a
    /// lease, so the core would wait for it forever before promoting it over a pod that is
    /// gone; it decides as without leases until every pod runs in lease mode.
    pub fn ledger(&self) -> Option<LeaseLedger> {
        let s = self.lock();
        s.unleased.is_empty().then(|| s.ledger.clone())
    }

    /// From now on the leases follow `plan`, of length `lease_ms`. When whom they name
    /// changed, a round starts at once; when it authorises a writer, the round in flight is
    /// abandoned and this waits for the new one (at most four exchange timeouts; a round is at
    /// most a peers' exchange and the writer's two, peers that stopped answering are not
    /// waited for): a writer just named holds its lease when this returns, unless it did not
    /// answer.
    pub async fn plan(&mut self, plan: Plan, lease_ms: u64) {
        let waited = {
            let mut s = self.lock();
            s.ledger.set_lease_ms(lease_ms);
            let renamed = (s.plan.term, s.plan.writer, s.plan.authorised)
                != (plan.term, plan.writer, plan.authorised);
            let new_pods = s.plan.managers.keys().ne(plan.managers.keys());
            if renamed {
                s.generation += 1;
            }
            s.unleased.retain(|o| plan.managers.contains_key(o));
            s.plan = plan;
            (renamed || new_pods).then_some((renamed, s.generation))
        };
        let authorised = self.lock().plan.authorised.is_some();
        let Some((renamed, generation)) = waited else {
            return;
        };
        self.wake.notify_one();
        // Only a writer just named must hold its lease before the caller goes on (a
        // promotion is ordered after this). A plan naming no authorised writer (a failover
        // fencing the old primary) renews nothing anyone waits for: the ledger already
        // counts every lease sent, so the Down rule needs no round to end.
        if renamed && authorised {
            self.renamed.notify_one();
            let _ = tokio::time::timeout(
                timeout(lease_ms) * 4,
                self.done.wait_for(|g| *g >= generation),
            )
            .await;
        }
    }
}

/// What a manager's answer to `/lease` or `/status` says of its clock.
#[derive(Deserialize)]
struct ClockAnswer {
    clock: u64,
    incarnation: String,
}

async fn renew_forever(
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
    renamed: Arc<Notify>,
    done: watch::Sender<u64>,
    name: String,
    token: String,
) {
    // Peers being asked on a task of their own (see below), aborted with this task.
    let mut asking: BTreeSet<u32> = BTreeSet::new();
    let mut askers: tokio::task::JoinSet<u32> = tokio::task::JoinSet::new();
    loop {
        while let Some(done) = askers.try_join_next() {
            match done {
                Ok(o) => {
                    asking.remove(&o);
                }
                // Which one is unknown: each may be asked again.
                Err(_) => asking.clear(),
            }
        }
        let (plan, generation, lease_ms) = {
            let s = shared.lock().unwrap_or_else(|e| e.into_inner());
            (s.plan.clone(), s.generation, s.ledger.lease_ms)
        };
        let (peers, writer) = plan.rounds();
        let exchange = |o, names| {
            let limit = if plan.authorised == Some(o) {
                // The writer's renewals always get the full time: a slow answer under load
                // must not turn into a run of quick failures and a lease let run out.
                timeout(lease_ms)
            } else {
                exchange_timeout(&shared, o, lease_ms)
            };
            exchange(&shared, &plan, &name, &token, o, names, limit)
        };
        // A peer whose last exchange failed (a frozen node, a partition) is asked on its own
        // task, never awaited by the round: it would hold up, by its timeout, the writer's
        // renewal, the round a promotion waits for, and every lease behind it. One still
        // being asked from an earlier round is skipped. It answers again: it is awaited
        // again from the next round on, so the writer's reading is the later one once more
        // (until then only the failsafe's timing is at stake, never the Down rule, which
        // counts every lease as granted when sent).
        let (answering, mut failing): (Vec<u32>, Vec<u32>) =
            peers.into_iter().partition(|o| !last_failed(&shared, *o));
        // A writer only named (an old primary being fenced: only its clock is asked) is a
        // peer like the others here.
        let writer = match writer {
            Some(w) if plan.names_to(w).is_none() && last_failed(&shared, w) => {
                failing.push(w);
                None
            }
            w => w,
        };
        for o in failing {
            if !asking.insert(o) {
                continue;
            }
            let (shared, plan, name, token) =
                (shared.clone(), plan.clone(), name.clone(), token.clone());
            askers.spawn(async move {
                let limit = exchange_timeout(&shared, o, lease_ms);
                self::exchange(&shared, &plan, &name, &token, o, plan.names_to(o), limit).await;
                o
            });
        }
        let round = async {
            futures::future::join_all(answering.into_iter().map(|o| exchange(o, plan.names_to(o))))
                .await;
            if let Some(w) = writer {
                // The writer's lease is built on a reading taken now, after the peers were
                // renewed: a peer confirms the failsafe once its own last reading + L has
                // passed, the writer's lease ends at its reading + L, so the writer's reading
                // must be the later one by more than a failsafe round, or during an operator
                // outage the writer fences itself before its peers would confirm. A writer
                // that is only named (an old primary being fenced) is only asked for its
                // clock, once.
                // A writer that did not answer the question is not sent the lease: built on
                // the reading it already holds, it would extend nothing, and a second
                // timeout per round would hold up every peer's renewal.
                if exchange(w, None).await && plan.names_to(w).is_some() {
                    exchange(w, plan.names_to(w)).await;
                }
            }
        };
        // A new writer named meanwhile ends this round at once: its renewal to the old
        // writer may be waiting out a frozen node's timeout, and the promotion waits for the
        // new writer's lease. What the round sent stays in the ledger, granted when sent.
        let renamed_since = async {
            loop {
                renamed.notified().await;
                let now = shared.lock().unwrap_or_else(|e| e.into_inner()).generation;
                if now != generation {
                    return;
                }
            }
        };
        let finished = tokio::select! {
            () = round => true,
            () = renamed_since => false,
        };
        if !finished {
            continue;
        }
        done.send_replace(generation);
        tokio::select! {
            _ = tokio::time::sleep(period(lease_ms)) => {}
            _ = wake.notified() => {}
        }
    }
}

/// How long an exchange with `ordinal` (not the authorised writer) may take: [`timeout`], or
/// [`QUICK_TIMEOUT`] when its last exchange failed: a manager that stopped answering (a frozen
/// node, a partition) must not hold every round up for a full timeout, which would delay the
/// renewal of every lease behind it and a new writer's first lease (a promotion waits for
/// it). One that answers again within the shorter time gets the full one from the next
/// exchange on.
fn exchange_timeout(shared: &Mutex<Shared>, ordinal: u32, lease_ms: u64) -> Duration {
    if last_failed(shared, ordinal) {
        timeout(lease_ms).min(QUICK_TIMEOUT)
    } else {
        timeout(lease_ms)
    }
}

/// The last exchange with `ordinal` that ended failed (no answer with a clock reading).
fn last_failed(shared: &Mutex<Shared>, ordinal: u32) -> bool {
    let s = shared.lock().unwrap_or_else(|e| e.into_inner());
    s.ledger
        .instance(ordinal)
        .and_then(|i| {
            i.recent
                .iter()
                .rev()
                .find(|e| e.outcome != stator_control::lease::Outcome::Pending)
        })
        .is_some_and(|e| matches!(e.outcome, stator_control::lease::Outcome::Failed { .. }))
}

/// One lease to `ordinal`'s manager naming `names` (`None`: a question for its clock only,
/// `GET /status`), recorded in the ledger; when its clock reading was not known (or it
/// answered as another incarnation), granted again at once with the new one. True when it
/// answered with a clock reading.
async fn exchange(
    shared: &Mutex<Shared>,
    plan: &Plan,
    name: &str,
    token: &str,
    ordinal: u32,
    names: Option<u32>,
    timeout: Duration,
) -> bool {
    let Some(manager) = plan.managers.get(&ordinal) else {
        return false;
    };
    let lock = || shared.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..2 {
        let sent = lock().ledger.send(
            ordinal,
            plan.term,
            names,
            stator_failover::clock::monotonic_ms(),
        );
        let order = sent
            .lease
            .as_ref()
            .and_then(|l| l.order(|o| format!("{name}-{o}")));
        let answer = match &order {
            Some(order) => {
                let body = serde_json::to_string(order).unwrap_or_default();
                request_at(manager, "POST", "/lease", Some(token), Some(&body), timeout).await
            }
            None => request_at(manager, "GET", "/status", Some(token), None, timeout).await,
        };
        let now = stator_failover::clock::monotonic_ms();
        let pod = format!("{name}-{ordinal}");
        let clock = match answer {
            Ok((status, body)) => {
                if status != 200 {
                    tracing::debug!(
                        pod = %pod,
                        "lease: HTTP {status}: {}",
                        stator_failover::client::answer_text(&body)
                    );
                }
                let clock = serde_json::from_slice::<ClockAnswer>(&body).ok();
                let mut s = lock();
                if clock.is_some() {
                    s.unleased.remove(&ordinal);
                } else if s.unleased.insert(ordinal) {
                    tracing::warn!(
                        pod = %pod,
                        "its manager answers without a lease clock: not in lease mode (yet); \
                         failovers are decided without leases until every pod is"
                    );
                }
                clock
            }
            Err(e) => {
                tracing::debug!(pod = %pod, "lease: {}", e.detail());
                None
            }
        };
        let Some(clock) = clock else {
            lock().ledger.failed(ordinal, sent.id, now);
            return false;
        };
        lock()
            .ledger
            .answered(ordinal, sent.id, now, clock.clock, &clock.incarnation);
        let granted_to_it = sent
            .lease
            .as_ref()
            .is_some_and(|l| l.incarnation == clock.incarnation);
        // A lease that named nobody was only a question for the clock.
        if granted_to_it || names.is_none() {
            return true;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_control::{Transition, TransitionKind, TransitionPhase};

    fn managers(ordinals: &[u32]) -> BTreeMap<u32, Dial> {
        ordinals
            .iter()
            .map(|o| (*o, Dial::registered("127.0.0.1", 8000 + *o as u16)))
            .collect()
    }

    /// Every other pod is renewed before the writer; the writer's lease is a write lease only
    /// while the core authorises it, and a pod without an address is skipped.
    #[test]
    fn a_round_renews_every_peer_before_the_writer() {
        let steady = Memory {
            term: 2,
            primary: Some(1),
            ..Memory::default()
        };
        let plan = Plan::of(&steady, managers(&[0, 1, 2]), None);
        assert_eq!(plan.rounds(), (vec![0, 2], Some(1)));
        assert_eq!(plan.names_to(1), Some(1));
        assert_eq!(plan.names_to(0), Some(1));
        // The writer's pod has no address: the peers still hear the operator.
        let plan = Plan::of(&steady, managers(&[0, 2]), None);
        assert_eq!(plan.rounds(), (vec![0, 2], None));
        // Fencing the old primary: it is named to the others, and only asked for its clock.
        let fencing = Memory {
            transition: Some(Transition {
                kind: TransitionKind::Failover,
                from: Some(1),
                target: None,
                started_ms: 0,
                phase: TransitionPhase::Fencing,
            }),
            ..steady.clone()
        };
        let plan = Plan::of(&fencing, managers(&[0, 1, 2]), Some(2));
        assert_eq!(plan.names_to(1), None);
        assert_eq!(plan.names_to(2), Some(1));
        assert_eq!(plan.term, 2);
        // Promoting pg-2: it is the writer, at the term its promotion starts, renewed last.
        let promoting = Memory {
            transition: Some(Transition {
                phase: TransitionPhase::Promoting {
                    candidate: 2,
                    since_ms: 0,
                    restore: false,
                    fork: None,
                },
                ..fencing.transition.clone().unwrap()
            }),
            ..steady
        };
        let plan = Plan::of(&promoting, managers(&[0, 1, 2]), None);
        assert_eq!(plan.rounds(), (vec![0, 1], Some(2)));
        assert_eq!(
            (plan.term, plan.names_to(2), plan.names_to(1)),
            (3, Some(2), Some(2))
        );
        // No primary yet: only clocks; the instance ordered initialised is the writer until
        // the core names one (a stale one is ignored once it does).
        let plan = Plan::of(&Memory::default(), managers(&[0, 1]), None);
        assert_eq!(plan.names_to(0), None);
        let plan = Plan::of(&Memory::default(), managers(&[0, 1]), Some(1));
        assert_eq!(plan.rounds(), (vec![0], Some(1)));
        assert_eq!((plan.names_to(1), plan.names_to(0)), (Some(1), Some(1)));
    }

    #[test]
    fn renewals_come_four_times_a_lease_and_never_faster_than_the_floor() {
        assert_eq!(period(2_000), Duration::from_millis(500));
        assert_eq!(timeout(2_000), Duration::from_millis(500));
        assert_eq!(period(100), MIN_PERIOD);
        assert_eq!(timeout(60_000), Duration::from_secs(2));
    }
}
