//! When a scheduled backup is due: a pure function of the schedule, the last run and the time
//! now (no clock is read here).
//!
//! The rules it keeps:
//! - A backup is due when a slot of the schedule lies after the last run and at or before now.
//! - However many slots were missed (the supervisor or the operator was down for a week), that
//!   is ONE due run, for the latest missed slot: never a burst. The shell records the run's
//!   start as the new last run, which covers every slot up to now.
//! - The next due time is always strictly after now.
//! - A database that never ran a backup is due at once: without a first full backup there is no
//!   recovery at all, so waiting for the first slot would leave it unprotected until then.
//!
//! Times are milliseconds since the Unix epoch, UTC; the schedule is read in UTC.

use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::Offset;

/// A parsed 5-field backup schedule (`spec.backup.schedule`, already validated by the api crate).
#[derive(Clone, Debug)]
pub struct BackupSchedule {
    cron: Cron,
    text: String,
}

/// Why a schedule cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("spec.backup.schedule: {text:?} is not a 5-field cron schedule: {reason}")]
    Invalid { text: String, reason: String },
    #[error("spec.backup.schedule: {text:?} has no time after {after_ms} ms since the epoch")]
    NeverRuns { text: String, after_ms: u64 },
}

impl BackupSchedule {
    /// Parses `text`: exactly 5 fields, no seconds, no years.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(text).map_err(|e| ScheduleError::Invalid {
            text: text.to_string(),
            reason: e.to_string(),
        })?;
        Ok(BackupSchedule {
            cron,
            text: text.to_string(),
        })
    }

    /// The first slot strictly after `after_ms` (slots are whole minutes).
    pub fn next_slot_after(&self, after_ms: u64) -> Result<u64, ScheduleError> {
        let never = || ScheduleError::NeverRuns {
            text: self.text.clone(),
            after_ms,
        };
        let start = civil(after_ms).ok_or_else(never)?;
        let next = self
            .cron
            .find_next_occurrence(&start, false)
            .map_err(|_| never())?;
        millis(next).ok_or_else(never)
    }

    /// The latest slot at or before `at_ms`, if the schedule has one.
    fn latest_slot_until(&self, at_ms: u64) -> Option<u64> {
        let at = civil(at_ms)?;
        let slot = self.cron.find_previous_occurrence(&at, true).ok()?;
        millis(slot)
    }

    /// Whether `at_ms` falls inside a slot's minute of the schedule.
    pub fn matches(&self, at_ms: u64) -> bool {
        civil(at_ms).is_some_and(|t| self.cron.is_time_matching(&t).unwrap_or(false))
    }
}

impl FromStr for BackupSchedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        BackupSchedule::parse(text)
    }
}

/// What [`backup_due`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Take one backup now. `slot_ms` is the slot it stands for (the latest one missed), `None`
    /// for the first backup of a database that never had one.
    Now {
        slot_ms: Option<u64>,
        /// The slot after this run, strictly after now.
        next_ms: u64,
    },
    /// Nothing to do before `next_ms`, strictly after now.
    Later { next_ms: u64 },
}

impl Due {
    pub fn is_due(&self) -> bool {
        matches!(self, Due::Now { .. })
    }

    /// The next time a backup will be due (strictly after the `now` it was computed for).
    pub fn next_ms(&self) -> u64 {
        match *self {
            Due::Now { next_ms, .. } | Due::Later { next_ms } => next_ms,
        }
    }
}

/// Whether a backup is due at `now_ms`, given the start of the last run (successful or still
/// running; `None`: never), and when the next one is due. A run recorded at `now_ms` makes the
/// same call answer [`Due::Later`]: missed slots give one run, not a burst.
pub fn backup_due(
    schedule: &BackupSchedule,
    last_run_ms: Option<u64>,
    now_ms: u64,
) -> Result<Due, ScheduleError> {
    let next_ms = schedule.next_slot_after(now_ms)?;
    let Some(last) = last_run_ms else {
        return Ok(Due::Now {
            slot_ms: None,
            next_ms,
        });
    };
    let first_missed = schedule.next_slot_after(last)?;
    if first_missed > now_ms {
        // Also when the last run lies after now (a clock stepped back): wait for its next slot.
        return Ok(Due::Later {
            next_ms: first_missed,
        });
    }
    Ok(Due::Now {
        slot_ms: Some(
            schedule
                .latest_slot_until(now_ms)
                .unwrap_or(first_missed)
                .max(first_missed),
        ),
        next_ms,
    })
}

/// `ms` as a UTC date and time, to the second (slots are whole minutes, so the milliseconds
/// never decide anything).
fn civil(ms: u64) -> Option<DateTime> {
    let seconds = i64::try_from(ms / 1000).ok()?;
    let timestamp = Timestamp::from_second(seconds).ok()?;
    Some(Offset::UTC.to_datetime(timestamp))
}

fn millis(at: DateTime) -> Option<u64> {
    let timestamp = Offset::UTC.to_timestamp(at).ok()?;
    u64::try_from(timestamp.as_millisecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a UTC time written `2026-11-26T03:00:00`.
    fn at(text: &str) -> u64 {
        let dt: DateTime = text.parse().expect("a civil date-time");
        millis(dt).unwrap()
    }

    fn due(schedule: &str, last: Option<&str>, now: &str) -> Due {
        let schedule = BackupSchedule::parse(schedule).unwrap();
        backup_due(&schedule, last.map(at), at(now)).unwrap()
    }

    #[test]
    fn situations() {
        let daily = "0 3 * * *";
        // (name, schedule, last run, now, expected)
        let rows: Vec<(&str, &str, Option<&str>, &str, Due)> = vec![
            (
                "never backed up: at once, next at the first slot",
                daily,
                None,
                "2026-11-26T10:00:00",
                Due::Now {
                    slot_ms: None,
                    next_ms: at("2026-11-27T03:00:00"),
                },
            ),
            (
                "ran at today's slot: not before tomorrow's",
                daily,
                Some("2026-11-26T03:00:00"),
                "2026-11-26T10:00:00",
                Due::Later {
                    next_ms: at("2026-11-27T03:00:00"),
                },
            ),
            (
                "a second before the slot: not yet",
                daily,
                Some("2026-11-25T03:00:05"),
                "2026-11-26T02:59:59",
                Due::Later {
                    next_ms: at("2026-11-26T03:00:00"),
                },
            ),
            (
                "exactly at the slot: due",
                daily,
                Some("2026-11-25T03:00:05"),
                "2026-11-26T03:00:00",
                Due::Now {
                    slot_ms: Some(at("2026-11-26T03:00:00")),
                    next_ms: at("2026-11-27T03:00:00"),
                },
            ),
            (
                "the slot's millisecond does not count twice",
                daily,
                Some("2026-11-26T03:00:00"),
                "2026-11-26T03:00:00",
                Due::Later {
                    next_ms: at("2026-11-27T03:00:00"),
                },
            ),
            (
                "down for a week: one run for the latest missed slot",
                daily,
                Some("2026-11-19T03:00:00"),
                "2026-11-26T12:00:00",
                Due::Now {
                    slot_ms: Some(at("2026-11-26T03:00:00")),
                    next_ms: at("2026-11-27T03:00:00"),
                },
            ),
            (
                "every 15 minutes, missed two: one run",
                "*/15 * * * *",
                Some("2026-11-26T10:00:10"),
                "2026-11-26T10:40:00",
                Due::Now {
                    slot_ms: Some(at("2026-11-26T10:30:00")),
                    next_ms: at("2026-11-26T10:45:00"),
                },
            ),
            (
                "a run that started just before its slot covers only earlier slots",
                daily,
                Some("2026-11-26T02:59:59"),
                "2026-11-26T03:00:30",
                Due::Now {
                    slot_ms: Some(at("2026-11-26T03:00:00")),
                    next_ms: at("2026-11-27T03:00:00"),
                },
            ),
            (
                "last run in the future (clock stepped back): wait for its next slot",
                daily,
                Some("2026-11-27T04:00:00"),
                "2026-11-26T10:00:00",
                Due::Later {
                    next_ms: at("2026-11-28T03:00:00"),
                },
            ),
            (
                "weekdays only: Friday's run waits for Monday",
                "0 3 * * MON-FRI",
                Some("2026-11-27T03:00:00"),
                "2026-11-29T12:00:00",
                Due::Later {
                    next_ms: at("2026-11-30T03:00:00"),
                },
            ),
            (
                "day-of-month OR day-of-week, as cron and CronJob read it",
                "0 3 1 * MON",
                Some("2026-11-24T03:00:00"),
                "2026-11-30T03:00:00",
                Due::Now {
                    slot_ms: Some(at("2026-11-30T03:00:00")),
                    next_ms: at("2026-12-01T03:00:00"),
                },
            ),
            (
                "leap day: only every fourth year",
                "0 0 29 2 *",
                Some("2024-02-29T00:00:00"),
                "2026-11-26T00:00:00",
                Due::Later {
                    next_ms: at("2028-02-29T00:00:00"),
                },
            ),
        ];
        let mut failures = Vec::new();
        for (name, schedule, last, now, expected) in rows {
            let got = due(schedule, last, now);
            if got != expected {
                failures.push(format!("{name}: got {got:?}, want {expected:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn only_five_fields_parse() {
        for bad in ["0 0 3 * * *", "0 3 * *", "@daily x", "", "0 3 * * * 2026"] {
            assert!(BackupSchedule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_schedule_without_a_date_is_an_error_not_a_hang() {
        let schedule = BackupSchedule::parse("0 0 31 2 *").unwrap();
        assert!(matches!(
            backup_due(&schedule, Some(0), at("2026-11-26T00:00:00")),
            Err(ScheduleError::NeverRuns { .. })
        ));
    }
}
