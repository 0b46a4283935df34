//! Properties of the backup "due" function over random schedules and random timelines of
//! observations: never two runs for one slot, never due before the first slot after the last
//! run, one run after any outage, and a next-due time always in the future.

use proptest::prelude::*;
use stator_control::{BackupSchedule, Due, backup_due};

const MINUTE: u64 = 60_000;
const DAY: u64 = 24 * 60 * MINUTE;
/// 2020-01-01T00:00:00Z and 2035-01-01T00:00:00Z.
const FROM: u64 = 1_577_836_800_000;
const TO: u64 = 2_051_222_400_000;

/// One field of a schedule in the portable syntax the api crate accepts.
fn field(min: u32, max: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        (1..=max.max(2)).prop_map(|step| format!("*/{step}")),
        (min..=max).prop_map(|v| v.to_string()),
        (min..=max, min..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        (min..=max, min..=max).prop_map(|(a, b)| format!("{a},{b}")),
        (min..=max, min..=max, 1..=max.max(2)).prop_map(|(a, b, s)| format!(
            "{}-{}/{s}",
            a.min(b),
            a.max(b)
        )),
    ]
}

/// Schedules that run at least once a year (an impossible date such as `0 0 31 2 *` is an error,
/// tested in the unit tests).
fn schedule() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0 3 * * *".to_string()),
        Just("*/15 * * * *".to_string()),
        Just("30 2 * * SUN".to_string()),
        Just("0 0 1 * *".to_string()),
        (field(0, 59), field(0, 23), field(0, 6))
            .prop_map(|(m, h, dow)| format!("{m} {h} * * {dow}")),
        (field(0, 59), field(0, 23), field(1, 28), field(1, 12))
            .prop_map(|(m, h, dom, mon)| format!("{m} {h} {dom} {mon} *")),
    ]
}

/// Gaps between observations: mostly seconds to hours, sometimes an outage of weeks.
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 0..=10 * MINUTE,
        4 => 0..=DAY,
        1 => 30 * DAY..=400 * DAY,
    ]
}

/// Whether some minute in (after, until] is a slot, by looking at every minute (the oracle).
fn slot_between(schedule: &BackupSchedule, after: u64, until: u64) -> bool {
    let mut minute = (after / MINUTE + 1) * MINUTE;
    while minute <= until {
        if schedule.matches(minute) {
            return true;
        }
        minute += MINUTE;
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every schedule the api crate accepts is one croner can run.
    #[test]
    fn every_schedule_the_api_accepts_parses(text in schedule()) {
        prop_assert_eq!(stator_api::schedule::cron_problem(&text), None, "{}", text);
        prop_assert!(BackupSchedule::parse(&text).is_ok(), "{}", text);
    }

    /// Days of month that some months lack (`0 0 31 2 *`): what the api crate accepts always has
    /// a next slot, so validation, not the scheduler, is where an impossible date is refused.
    #[test]
    fn every_date_the_api_accepts_has_a_next_slot(
        dom in field(1, 31),
        month in field(1, 12),
        now in FROM..TO,
    ) {
        let text = format!("0 0 {dom} {month} *");
        if stator_api::schedule::cron_problem(&text).is_none() {
            let schedule = BackupSchedule::parse(&text).unwrap();
            prop_assert!(backup_due(&schedule, Some(now), now).is_ok(), "{}", text);
        }
    }

    /// A shell that observes at random times and starts a backup whenever one is due: each
    /// run stands for a different slot, lies after the last run's first slot, and next-due is
    /// always after now. Short gaps are checked minute by minute against an oracle.
    #[test]
    fn a_timeline_of_observations_never_runs_a_slot_twice(
        text in schedule(),
        start in FROM..TO,
        never_ran in any::<bool>(),
        gaps in prop::collection::vec(gap(), 1..24),
    ) {
        let schedule = BackupSchedule::parse(&text).unwrap();
        let mut last = (!never_ran).then_some(start);
        let mut now = start;
        let mut slots = Vec::new();
        for g in gaps {
            now += g;
            let due = backup_due(&schedule, last, now).unwrap();
            prop_assert!(due.next_ms() > now, "{text}: next {} not after now {now}", due.next_ms());
            match (due, last) {
                (Due::Now { slot_ms: Some(slot), .. }, Some(l)) => {
                    prop_assert!(slot > l && slot <= now, "{text}: slot {slot} outside ({l}, {now}]");
                    prop_assert!(!slots.contains(&slot), "{text}: slot {slot} ran twice");
                    prop_assert!(schedule.matches(slot), "{text}: {slot} is not a slot");
                    slots.push(slot);
                }
                (Due::Now { slot_ms: None, .. }, None) => {}
                (Due::Later { .. }, Some(l)) => {
                    if now - l <= DAY {
                        prop_assert!(!slot_between(&schedule, l, now), "{text}: a slot in ({l}, {now}] was not due");
                    }
                }
                (other, l) => prop_assert!(false, "{text}: {other:?} with last run {l:?}"),
            }
            if due.is_due() {
                last = Some(now);
                // The run just recorded covers every slot up to now: no burst.
                let again = backup_due(&schedule, last, now).unwrap();
                prop_assert_eq!(again, Due::Later { next_ms: due.next_ms() }, "{}", text);
            }
        }
    }

    /// However long the outage, it yields exactly one due run; observing again at any time
    /// before the next slot finds nothing due.
    #[test]
    fn a_long_outage_yields_exactly_one_run(
        text in schedule(),
        last in FROM..TO,
        outage in 2 * 366 * DAY..=5 * 366 * DAY,
        later in 0.0f64..1.0,
    ) {
        let schedule = BackupSchedule::parse(&text).unwrap();
        let now = last + outage;
        let due = backup_due(&schedule, Some(last), now).unwrap();
        prop_assert!(due.is_due(), "{}", text);
        let next = due.next_ms();
        let before_next = now + ((next - now - 1) as f64 * later) as u64;
        let again = backup_due(&schedule, Some(now), before_next).unwrap();
        prop_assert_eq!(again, Due::Later { next_ms: next }, "{}", text);
        let at_next = backup_due(&schedule, Some(now), next).unwrap();
        prop_assert!(at_next.is_due(), "{}: the next slot is due", text);
    }
}
