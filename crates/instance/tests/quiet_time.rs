//! The two halves of the failsafe's safety, held together: the operator's lease ledger
//! (`stator_control::LeaseLedger`) counts a replica as reachable all along, a promotion
//! candidate, while it answers within 0.99 of the quiet time it sends; the replica's own book
//! (`stator_instance::lease::LeaseBook`) confirms a writer's failsafe only once it has not
//! heard the operator for that quiet time. So a replica the ledger counts reachable at a
//! moment never confirms at that moment: the candidate never vouches for the writer it
//! replaces.
//!
//! The model: one replica behind a network that delays each lease (and each answer) by up to
//! 800 ms, drops some, and so reorders them; the replica's clock has its own offset and runs
//! up to 1 % slower or faster than the operator's; the operator sends every 50–1 600 ms. At
//! every moment an event happens, whenever the ledger says the replica has been reachable
//! since some moment, the replica, asked right then, refuses. A second property runs the same
//! model with a replica that takes its quiet time from what is left of each grant on arrival
//! (the rule before the fix) and shows the model finds the hole.

use proptest::prelude::*;
use stator_control::LeaseLedger;
use stator_instance::lease::{Confirmation, Grant, LeaseBook};

const REPLICA: u32 = 1;
const WRITER: u32 = 0;
const L: u64 = 2_000;
const INCARNATION: &str = "0123456789abcdef";

/// One exchange: sent `gap` after the previous, delivered after `there` (dropped: `None`),
/// answered after `back` more (lost: `None`).
#[derive(Clone, Debug)]
struct Exchange {
    gap: u64,
    there: Option<u64>,
    back: Option<u64>,
}

fn exchanges() -> impl Strategy<Value = Vec<Exchange>> {
    proptest::collection::vec(
        (
            50u64..1_600,
            prop_oneof![9 => (0u64..800).prop_map(Some), 1 => Just(None)],
            prop_oneof![9 => (0u64..800).prop_map(Some), 1 => Just(None)],
        )
            .prop_map(|(gap, there, back)| Exchange { gap, there, back }),
        1..60,
    )
}

#[derive(Debug)]
enum Event {
    /// Exchange `n` is sent.
    Send(usize),
    /// Its lease reaches the replica.
    Deliver(usize),
    /// Its answer reaches the operator.
    Answer(usize),
}

/// The replica's clock at the operator's time `t`: `offset + t · (1 + ppm / 10⁶)`.
fn replica_clock(offset: u64, ppm: i64, t: u64) -> u64 {
    let drift = (t as i128 * ppm as i128) / 1_000_000;
    (offset as i128 + t as i128 + drift) as u64
}

/// Runs the model; `Err` names the first moment the ledger counts the replica reachable while
/// it would confirm. `honour_quiet`: the replica uses the grant's `quietMs` (the rule); false:
/// it ignores it and falls back on what is left of the grant (the rule before the fix).
fn run(plan: &[Exchange], offset: u64, ppm: i64, honour_quiet: bool) -> Result<(), String> {
    let mut events: Vec<(u64, u8, Event)> = Vec::new();
    let mut t = 0;
    let mut sends = Vec::new();
    for (n, x) in plan.iter().enumerate() {
        t += x.gap;
        sends.push(t);
        events.push((t, 0, Event::Send(n)));
        if let Some(there) = x.there {
            events.push((t + there, 1, Event::Deliver(n)));
            if let Some(back) = x.back {
                events.push((t + there + back, 2, Event::Answer(n)));
            }
        }
    }
    events.sort_by_key(|(at, order, _)| (*at, *order));
    let mut ledger = LeaseLedger::new(L, 0);
    let mut book = LeaseBook::new("db-1", INCARNATION, None);
    let asked = Confirmation {
        term: 1,
        writer: "db-0".into(),
    };
    let mut sent = vec![None; plan.len()];
    // What each delivered exchange read of the replica's clock.
    let mut read = vec![None; plan.len()];
    for (at, _, event) in events {
        match event {
            Event::Send(n) => sent[n] = Some(ledger.send(REPLICA, 1, Some(WRITER), at)),
            Event::Deliver(n) => {
                let now = replica_clock(offset, ppm, at);
                read[n] = Some(now);
                let order = sent[n].as_ref().expect("sent before delivered");
                // A request with no lease (no reading known yet) only asks the clock: the
                // replica's book hears nothing.
                if let Some(order) = order
                    .lease
                    .as_ref()
                    .and_then(|l| l.order(|o| format!("db-{o}")))
                {
                    let grant = Grant {
                        term: order.term,
                        writer: order.writer,
                        expires_at: order.expires_at,
                        incarnation: order.incarnation,
                        quiet: order.quiet_ms.filter(|_| honour_quiet),
                    };
                    let _ = book.accept(&grant, now);
                }
            }
            Event::Answer(n) => {
                let id = sent[n].as_ref().expect("sent").id;
                let clock = read[n].expect("delivered before answered");
                ledger.answered(REPLICA, id, at, clock, INCARNATION);
            }
        }
        if let Some(since) = ledger.reachable_since(REPLICA, at) {
            let now = replica_clock(offset, ppm, at);
            if book.confirm(&asked, now).is_ok() {
                return Err(format!(
                    "at {at} ms the ledger counts the replica reachable since {since} ms, \
                     and the replica confirms the writer's failsafe"
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn a_replica_the_ledger_counts_reachable_never_confirms(
        plan in exchanges(),
        offset in 0u64..1_000_000,
        ppm in -10_000i64..=10_000,
    ) {
        prop_assert_eq!(run(&plan, offset, ppm, true), Ok(()));
    }
}

/// The rule before the fix (a replica's quiet time = what was left of its grant on arrival)
/// is caught by the same model.
#[test]
fn the_model_finds_the_arrival_based_quiet_time() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(2_000));
    let found = runner.run(
        &(exchanges(), 0u64..1_000_000, -10_000i64..=10_000),
        |(plan, offset, ppm)| {
            prop_assert_eq!(run(&plan, offset, ppm, false), Ok(()));
            Ok(())
        },
    );
    assert!(
        found.is_err(),
        "the model did not find the hole of the arrival-based quiet time"
    );
}
