//! Property tests of the Down rule against a model of the world it must survive: a shell (the
//! operator) that sends leases through a [`LeaseLedger`] every tick, and instance managers
//! whose clocks have their own offsets and run up to 1 % slower or faster than the shell's,
//! behind a network that delays messages arbitrarily, drops, duplicates and reorders them, cuts
//! the old writer off, and lets an old incarnation of it (a partitioned pod) live on next to a
//! new one with another clock. The shell itself may restart (a new, empty ledger).
//!
//! Managers apply a lease only by the rule "never beyond its `expiresAt` on my own clock; a
//! lower term or another incarnation is refused", and write only while they hold a lease
//! naming themselves that their clock has not reached.
//!
//! The property: whenever the rule says the old writer is Down, no lease naming it that was
//! ever sent (answered or not, delivered or still in the network) is valid on its own clock,
//! then or at any later time. Two deliberately wrong rules are run through the same model to
//! show it finds what it is there to find.

use proptest::prelude::*;
use stator_control::lease::ClockReading;
use stator_control::{DownVerdict, Lease, LeaseLedger, down_after_ms};

const WRITER: u32 = 0;
const CANDIDATE: u32 = 1;

/// splitmix64: the network's and the managers' choices, from one seed proptest picks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `0..n` (0 when n is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn clock(&mut self) -> Clock {
        Clock {
            offset: self.below(1_000_000_000),
            // Within ±1 % of the shell's rate, both ends included, often at the ends.
            rate_ppm: match self.below(4) {
                0 => 990_000,
                1 => 1_010_000,
                _ => 990_000 + self.below(20_001),
            },
        }
    }
}

/// A manager's `CLOCK_BOOTTIME` as a function of the shell's time.
#[derive(Clone, Copy, Debug)]
struct Clock {
    offset: u64,
    rate_ppm: u64,
}

impl Clock {
    fn at(&self, t: u64) -> u64 {
        self.offset + (u128::from(t) * u128::from(self.rate_ppm) / 1_000_000) as u64
    }
}

/// One running instance manager process.
#[derive(Debug)]
struct Incarnation {
    name: String,
    clock: Clock,
    /// The highest term it accepted.
    term: u64,
    /// (term, writer, expiresAt on its clock)
    lease: Option<(u64, Option<u32>, u64)>,
}

impl Incarnation {
    /// Receives a request at `t`: applies its lease by the manager's rule, answers its clock.
    fn receive(&mut self, t: u64, lease: &Option<Lease>) -> u64 {
        if let Some(l) = lease
            && l.incarnation == self.name
            && l.term >= self.term
        {
            let expires = match self.lease {
                // A renewal of the same lease: whichever ends later, each within its own
                // expiresAt, so never beyond what was granted.
                Some((term, writer, old)) if term == l.term && writer == l.writer => {
                    old.max(l.expires_at_ms)
                }
                _ => l.expires_at_ms,
            };
            self.term = l.term;
            self.lease = Some((l.term, l.writer, expires));
        }
        self.clock.at(t)
    }

    fn may_write(&self, me: u32, t: u64) -> bool {
        matches!(self.lease, Some((_, Some(w), expires)) if w == me && self.clock.at(t) < expires)
    }
}

#[derive(Debug)]
enum Message {
    Request {
        epoch: u32,
        to: u32,
        id: u64,
        lease: Option<Lease>,
    },
    Answer {
        epoch: u32,
        to: u32,
        id: u64,
        clock: u64,
        incarnation: String,
    },
}

/// How the old writer is judged Down.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    /// [`LeaseLedger::judge_down`].
    Ledger,
    /// Wrong: L (no 1 %, no margin) from when the reading the lease was built on came back.
    FromReadingAnswerWithoutSkew,
    /// Wrong: L / 0.99 from the send of the request whose answer carried the reading (the
    /// manager may have read its clock any time after that send).
    FromReadingRequestSend,
    /// Wrong: L (no 1 %, no margin) from the lease's own send.
    FromLeaseSendWithoutSkew,
}

#[derive(Clone, Debug)]
struct Scenario {
    seed: u64,
    instances: u32,
    lease_ms: u64,
    tick_ms: u64,
    /// The shell gives up on a request after this long.
    timeout_ms: u64,
    /// From then on the old writer is cut off: its messages are mostly dropped, the rest
    /// delayed up to 4 L (a frozen manager that thaws, a network that held them).
    partition_at: u64,
    /// The shell names the old writer in its leases until `partition_at` + this (its
    /// detection timeout ran out, a failover began), no one after.
    detected_after: u64,
    /// The old writer restarts then (a new incarnation), on another clock when `moved`; the
    /// old incarnation keeps receiving some messages.
    restart_at: Option<u64>,
    moved: bool,
    /// The shell restarts then, with an empty ledger.
    shell_restart_at: Option<u64>,
    /// The shell raises its term then (the old writer is still the writer).
    term_bump_at: Option<u64>,
    rule: Rule,
}

struct World {
    s: Scenario,
    rng: Rng,
    now: u64,
    /// Per instance: its incarnations, the newest last.
    managers: Vec<Vec<Incarnation>>,
    /// In flight: (delivery time, order of sending, message).
    network: Vec<(u64, u64, Message)>,
    sent: u64,
    ledger: LeaseLedger,
    epoch: u32,
    term: u64,
    /// Exchanges of the current epoch not yet ended: (instance, id, sent).
    pending: Vec<(u32, u64, u64)>,
    /// Every lease naming the old writer sent to it: (incarnation, expiresAt).
    writer_leases: Vec<(String, u64)>,
    /// For the wrong rules: the reading each lease naming the writer was built on.
    writer_bases: Vec<ClockReading>,
    /// For the wrong rules: when each lease naming the writer was sent.
    writer_sends: Vec<u64>,
}

impl World {
    fn new(s: Scenario) -> World {
        let mut rng = Rng(s.seed);
        let managers = (0..s.instances)
            .map(|i| {
                vec![Incarnation {
                    name: format!("{i}-0"),
                    clock: rng.clock(),
                    term: 0,
                    lease: None,
                }]
            })
            .collect();
        World {
            ledger: LeaseLedger::new(s.lease_ms, 0),
            s,
            rng,
            now: 0,
            managers,
            network: Vec::new(),
            sent: 0,
            epoch: 0,
            term: 1,
            pending: Vec::new(),
            writer_leases: Vec::new(),
            writer_bases: Vec::new(),
            writer_sends: Vec::new(),
        }
    }

    fn cut_off(&self, instance: u32, t: u64) -> bool {
        instance == WRITER && t >= self.s.partition_at
    }

    /// Puts `message`, sent at `t`, on the network: dropped, delayed, maybe duplicated.
    fn post(&mut self, instance: u32, t: u64, message: impl Fn() -> Message) {
        let l = self.s.lease_ms;
        let copies = if self.rng.chance(10) { 2 } else { 1 };
        for _ in 0..copies {
            let cut = self.cut_off(instance, t);
            if self.rng.chance(if cut { 50 } else { 3 }) {
                continue;
            }
            let delay = if cut || self.rng.chance(8) {
                self.rng.below(4 * l + 1)
            } else {
                self.rng.below(40)
            };
            self.sent += 1;
            self.network.push((t + delay, self.sent, message()));
        }
    }

    /// Delivers every message due by `until`, in time order; answers go back on the network.
    fn deliver(&mut self, until: u64) {
        loop {
            let Some(next) = self
                .network
                .iter()
                .enumerate()
                .filter(|(_, (at, _, _))| *at <= until)
                .min_by_key(|(_, (at, order, _))| (*at, *order))
                .map(|(i, _)| i)
            else {
                return;
            };
            let (at, _, message) = self.network.swap_remove(next);
            match message {
                Message::Request {
                    epoch,
                    to,
                    id,
                    lease,
                } => {
                    let incarnations = &mut self.managers[to as usize];
                    // The newest incarnation mostly; an older one (a pod cut off on its node)
                    // now and then.
                    let which = if incarnations.len() > 1 && self.rng.chance(40) {
                        self.rng.below(incarnations.len() as u64 - 1) as usize
                    } else {
                        incarnations.len() - 1
                    };
                    let incarnation = &mut incarnations[which];
                    let clock = incarnation.receive(at, &lease);
                    let name = incarnation.name.clone();
                    self.post(to, at, || Message::Answer {
                        epoch,
                        to,
                        id,
                        clock,
                        incarnation: name.clone(),
                    });
                }
                Message::Answer {
                    epoch,
                    to,
                    id,
                    clock,
                    incarnation,
                } => {
                    // Another shell process's answers never reach this one.
                    if epoch == self.epoch {
                        self.ledger.answered(to, id, at, clock, &incarnation);
                    }
                }
            }
        }
    }

    fn tick(&mut self) {
        let t = self.now;
        let s = self.s.clone();
        if s.restart_at == Some(t) {
            let clock = if s.moved {
                self.rng.clock()
            } else {
                self.managers[WRITER as usize][0].clock
            };
            let n = self.managers[WRITER as usize].len();
            self.managers[WRITER as usize].push(Incarnation {
                name: format!("{WRITER}-{n}"),
                clock,
                term: 0,
                lease: None,
            });
        }
        if s.shell_restart_at == Some(t) {
            self.ledger = LeaseLedger::new(s.lease_ms, t);
            self.epoch += 1;
            self.pending.clear();
        }
        if s.term_bump_at == Some(t) {
            self.term += 1;
        }
        let timeout = s.timeout_ms;
        let ledger = &mut self.ledger;
        self.pending.retain(|&(to, id, sent)| {
            if t >= sent + timeout {
                ledger.failed(to, id, t);
                false
            } else {
                true
            }
        });
        for to in 0..s.instances {
            let basis = self.ledger.instance(to).and_then(|i| i.reading.clone());
            let writer = (t < s.partition_at + s.detected_after).then_some(WRITER);
            let order = self.ledger.send(to, self.term, writer, t);
            self.pending.push((to, order.id, t));
            if to == WRITER
                && let Some(lease) = &order.lease
                && lease.writer == Some(WRITER)
            {
                self.writer_leases
                    .push((lease.incarnation.clone(), lease.expires_at_ms));
                self.writer_bases.extend(basis);
                self.writer_sends.push(t);
            }
            let epoch = self.epoch;
            self.post(to, t, || Message::Request {
                epoch,
                to,
                id: order.id,
                lease: order.lease.clone(),
            });
        }
    }

    fn down(&self, t: u64) -> bool {
        let l = self.s.lease_ms;
        let wrong = |until: Option<u64>| until.is_some_and(|u| t >= u);
        match self.s.rule {
            Rule::Ledger => self.ledger.judge_down(WRITER, CANDIDATE, t) == DownVerdict::Down,
            Rule::FromReadingAnswerWithoutSkew => {
                wrong(self.writer_bases.iter().map(|b| b.answered_ms + l).max())
            }
            Rule::FromReadingRequestSend => wrong(
                self.writer_bases
                    .iter()
                    .map(|b| b.sent_ms + (l * 100).div_ceil(99))
                    .max(),
            ),
            Rule::FromLeaseSendWithoutSkew => {
                wrong(self.writer_sends.iter().map(|sent| sent + l).max())
            }
        }
    }

    /// The property, at `t` when the rule says Down.
    fn check(&self, t: u64) -> Result<(), String> {
        let incarnations = &self.managers[WRITER as usize];
        for (name, expires) in &self.writer_leases {
            let incarnation = incarnations
                .iter()
                .find(|i| &i.name == name)
                .ok_or_else(|| format!("a lease for an unknown incarnation {name}"))?;
            let clock = incarnation.clock.at(t);
            if clock < *expires {
                return Err(format!(
                    "Down at {t}, but a lease naming the writer expires at {expires} on {name}'s \
                     clock, which reads {clock} ({} ms left; clock {:?})",
                    expires - clock,
                    incarnation.clock
                ));
            }
        }
        if let Some(i) = incarnations.iter().find(|i| i.may_write(WRITER, t)) {
            return Err(format!("Down at {t}, but {} holds {:?}", i.name, i.lease));
        }
        Ok(())
    }

    /// Runs until the rule says Down (checking the property there) or the scenario ends.
    /// The Down time, if reached.
    fn run(self) -> Result<Option<u64>, String> {
        Ok(self.run_to_down()?.map(|(at, _)| at))
    }

    /// [`World::run`], with the last clock reading of the writer the ledger had heard at
    /// the Down time: (Down time, when that reading's answer came back).
    fn run_to_down(mut self) -> Result<Option<(u64, Option<u64>)>, String> {
        let end = self.s.partition_at + 8 * self.s.lease_ms + 5_000;
        while self.now <= end {
            self.deliver(self.now);
            self.tick();
            let next = self.now + self.s.tick_ms;
            // The rule is also asked between ticks, at the first instants it could say Down:
            // the bound itself and when the candidate's run is long enough.
            let mut instants = vec![self.now];
            let bound = self.ledger.may_hold_lease_until(WRITER);
            instants.push(bound);
            if let Some(since) = self.ledger.reachable_since(CANDIDATE, self.now) {
                instants.push(since + down_after_ms(self.s.lease_ms));
            }
            for sent in &self.writer_sends {
                instants.push(sent + self.s.lease_ms);
            }
            for b in &self.writer_bases {
                instants.push(b.answered_ms + self.s.lease_ms);
                instants.push(b.sent_ms + (self.s.lease_ms * 100).div_ceil(99));
            }
            instants.sort_unstable();
            for t in instants.into_iter().filter(|t| *t >= self.now && *t < next) {
                if self.down(t) {
                    self.check(t)?;
                    let reading = self
                        .ledger
                        .instance(WRITER)
                        .and_then(|i| i.reading.as_ref())
                        .map(|r| r.answered_ms);
                    return Ok(Some((t, reading)));
                }
            }
            self.now = next;
        }
        Ok(None)
    }
}

fn scenario(rule: Rule) -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        2u32..5,
        prop::sample::select(vec![1_000u64, 2_000, 3_000, 10_000]),
        20u64..600,
        0u64..15_000,
        0u64..3,
        prop::option::weighted(0.3, 0u64..20_000),
        any::<bool>(),
        prop::option::weighted(0.3, 0u64..20_000),
        prop::option::weighted(0.3, 0u64..20_000),
        1u64..5,
    )
        .prop_map(
            move |(
                seed,
                instances,
                lease_ms,
                tick_ms,
                partition,
                detect,
                restart,
                moved,
                shell,
                bump,
                tmo,
            )| {
                // Events land on ticks.
                let on_tick = |t: u64| t / tick_ms * tick_ms;
                Scenario {
                    seed,
                    instances,
                    lease_ms,
                    tick_ms,
                    timeout_ms: lease_ms * tmo / 5,
                    partition_at: on_tick(partition),
                    // Even before the writer is lost (a detection that was wrong), or long
                    // after.
                    detected_after: lease_ms * detect,
                    restart_at: restart.map(on_tick),
                    moved,
                    shell_restart_at: shell.map(on_tick),
                    term_bump_at: bump.map(on_tick),
                    rule,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The heart of it: never Down while a lease of the old writer may be valid on its clock.
    #[test]
    fn the_rule_never_declares_down_while_a_lease_of_the_writer_may_be_valid(
        s in scenario(Rule::Ledger)
    ) {
        World::new(s).run().map_err(TestCaseError::fail)?;
    }
}

/// Runs `rule` over fixed seeds: how many scenarios came to an unsafe Down, and how many to a
/// safe one.
fn violations(rule: Rule) -> (usize, usize) {
    let mut broken = 0;
    let mut down = 0;
    for seed in 0..300u64 {
        let s = Scenario {
            seed,
            instances: 3,
            lease_ms: [1_000, 2_000, 10_000][seed as usize % 3],
            tick_ms: 50 + seed % 7 * 40,
            timeout_ms: 500,
            partition_at: 1_000 + seed * 37 % 5_000,
            // At the cut (the shell's last reading is fresh), or a detection timeout later.
            detected_after: [1_000, 2_000, 10_000][seed as usize % 3] * (seed / 3 % 2),
            restart_at: None,
            moved: false,
            shell_restart_at: None,
            term_bump_at: None,
            rule,
        };
        match World::new(s).run() {
            Err(_) => broken += 1,
            Ok(Some(_)) => down += 1,
            Ok(None) => {}
        }
    }
    (broken, down)
}

#[test]
fn the_model_catches_a_rule_that_ignores_clock_skew() {
    let (broken, down) = violations(Rule::FromReadingAnswerWithoutSkew);
    println!(
        "L from the reading's answer: {broken} unsafe and {down} safe Down verdicts in 300 scenarios"
    );
    assert!(
        broken > 0,
        "the model found no unsafe Down for the skew-blind rule"
    );
    let (broken, down) = violations(Rule::FromLeaseSendWithoutSkew);
    println!(
        "L from the lease's send: {broken} unsafe and {down} safe Down verdicts in 300 scenarios"
    );
    assert!(
        broken > 0,
        "the model found no unsafe Down for the skew-blind rule"
    );
}

#[test]
fn the_model_catches_a_rule_counting_from_the_readings_request() {
    let (broken, down) = violations(Rule::FromReadingRequestSend);
    println!(
        "L / 0.99 from the reading's request: {broken} unsafe and {down} safe Down verdicts in 300 scenarios"
    );
    assert!(
        broken > 0,
        "the model found no unsafe Down for the reading-send rule"
    );
}

#[test]
fn the_rule_says_down_in_the_same_scenarios_and_stays_safe() {
    let (broken, down) = violations(Rule::Ledger);
    println!("the ledger's rule: {broken} unsafe and {down} safe Down verdicts in 300 scenarios");
    assert_eq!(broken, 0);
    // Each of these scenarios cuts the writer off with a healthy candidate: the rule must
    // come to Down in every one, or it is safe only by never deciding.
    assert_eq!(down, 300);
}

/// With no fault but the writer's partition and a candidate that answers all along, Down
/// comes exactly one bound after the answer carrying the writer's last clock reading: before
/// one bound after the last lease naming it was sent (the shell renews until its detection
/// timeout ran out, on that same reading), which is what a rule counting from sends would
/// wait.
#[test]
fn a_writer_cut_off_is_down_one_bound_after_its_last_reading() {
    for lease_ms in [1_000u64, 2_000, 10_000] {
        let s = Scenario {
            seed: 7,
            instances: 3,
            lease_ms,
            tick_ms: 100,
            timeout_ms: lease_ms / 2,
            partition_at: 30_000,
            detected_after: lease_ms,
            restart_at: None,
            moved: false,
            shell_restart_at: None,
            term_bump_at: None,
            rule: Rule::Ledger,
        };
        let (at, reading) = World::new(s)
            .run_to_down()
            .expect("safe")
            .expect("the writer is taken for Down");
        let reading = reading.expect("the writer's clock was read before the partition");
        assert_eq!(at, reading + down_after_ms(lease_ms), "{lease_ms}");
        // The last lease naming it is sent at the last tick before 30 000 + L.
        let last = 30_000 + lease_ms - 100;
        assert!(at < last + down_after_ms(lease_ms), "{lease_ms}: {at}");
    }
}
