//! Backup schedules: the 5-field cron syntax (`minute hour day-of-month month day-of-week`, UTC)
//! that both a Kubernetes CronJob and the local supervisor accept, checked field by field so an
//! error says which field is wrong and what it may hold.
//!
//! Only the portable subset is accepted: numbers, `*`, ranges `a-b`, lists `a,b`, steps on `*`
//! or on a range (`*/15`, `1-5/2`), and the English names of months (`JAN`) and weekdays
//! (`MON`). Extensions some parsers know (`L`, `W`, `#`, `?`, `@daily`, seconds, years) are
//! refused, because the rendered CronJob would not understand them.

/// One field of a cron schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTH_NAMES,
    },
    Field {
        name: "day-of-week",
        min: 0,
        max: 6,
        names: &WEEKDAY_NAMES,
    },
];

/// What is wrong with `text` as a 5-field cron schedule, e.g. `minute 61 is out of range
/// (expected 0-59)`; `None` when it is valid.
pub fn cron_problem(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    if parts.len() != FIELDS.len() {
        return Some(format!(
            "has {} field(s); expected 5: minute hour day-of-month month day-of-week \
             (e.g. \"0 3 * * *\" for 03:00 UTC daily; no seconds, no @daily)",
            parts.len()
        ));
    }
    if let Some(problem) = FIELDS
        .iter()
        .zip(&parts)
        .find_map(|(field, part)| field_problem(field, part))
    {
        return Some(problem);
    }
    never_runs(&parts)
}

/// Days in each month at most (February: 29, in leap years).
const MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// A schedule whose days of month never occur in its months (`0 0 31 2 *`): it would never run.
/// With a day-of-week other than `*` it runs on those weekdays (cron reads the two as OR).
fn never_runs(parts: &[&str]) -> Option<String> {
    if parts[4] != "*" {
        return None;
    }
    let days = values(&FIELDS[2], parts[2]);
    let months = values(&FIELDS[3], parts[3]);
    let runs = months
        .iter()
        .any(|m| days.iter().any(|d| *d <= MONTH_DAYS[*m as usize - 1]));
    (!runs).then(|| {
        format!(
            "never runs: day-of-month {} does not occur in month {} (expected a day that exists, \
             e.g. 1-28)",
            parts[2], parts[3]
        )
    })
}

/// Every value a valid field allows.
fn values(field: &Field, text: &str) -> Vec<u32> {
    let mut all = Vec::new();
    for item in text.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, step.parse::<u32>().unwrap_or(1)),
            None => (item, 1),
        };
        let (low, high) = match base.split_once('-') {
            _ if base == "*" => (field.min, field.max),
            Some((low, high)) => (
                value(field, low).unwrap_or(field.min),
                value(field, high).unwrap_or(field.max),
            ),
            None => {
                let v = value(field, base).unwrap_or(field.min);
                (v, v)
            }
        };
        all.extend((low..=high).step_by(step.max(1) as usize));
    }
    all
}

fn field_problem(field: &Field, text: &str) -> Option<String> {
    text.split(',').find_map(|item| item_problem(field, item))
}

fn item_problem(field: &Field, item: &str) -> Option<String> {
    let Field { name, min, max, .. } = *field;
    if item.is_empty() {
        return Some(format!("{name} has an empty list item"));
    }
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(step)),
        None => (item, None),
    };
    if let Some(step) = step {
        match step.parse::<u32>() {
            Ok(s) if (1..=max.max(1)).contains(&s) => {}
            _ => {
                return Some(format!(
                    "{name} step {step:?} is not a number from 1 to {max} (e.g. */15)"
                ));
            }
        }
    }
    if base == "*" {
        return None;
    }
    match base.split_once('-') {
        Some((low, high)) => {
            let low = match value(field, low) {
                Ok(v) => v,
                Err(problem) => return Some(problem),
            };
            let high = match value(field, high) {
                Ok(v) => v,
                Err(problem) => return Some(problem),
            };
            (low > high).then(|| {
                format!("{name} range {base} runs backwards (expected low-high within {min}-{max})")
            })
        }
        None if step.is_some() => Some(format!(
            "{name} {item:?} steps from a single value; write a range or * with the step \
             (e.g. {base}-{max}/{} or */{})",
            step.unwrap_or_default(),
            step.unwrap_or_default()
        )),
        None => value(field, base).err(),
    }
}

/// A single value of `field`: a number in range or (months, weekdays) an English name.
fn value(field: &Field, text: &str) -> Result<u32, String> {
    let Field {
        name,
        min,
        max,
        names,
    } = *field;
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(min + i as u32);
    }
    match text.parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{name} {v} is out of range (expected {min}-{max})")),
        Err(_) if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) => Err(format!(
            "{name} {text} is out of range (expected {min}-{max})"
        )),
        Err(_) => {
            let names = if names.is_empty() {
                String::new()
            } else {
                format!(" or {}-{}", names[0], names[names.len() - 1])
            };
            Err(format!(
                "{name} {text:?} is not a value (expected {min}-{max}{names}, *, a range a-b, \
                 a list a,b or a step */n)"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cron_problem;

    #[test]
    fn accepts_the_portable_syntax() {
        for ok in [
            "0 3 * * *",
            "*/15 * * * *",
            "0,30 1-5 * * 1-5",
            "0 0 1 */2 *",
            "5 4 * * SUN",
            "0 0 1 jan,jul *",
            "0 2 * * mon-fri",
            "59 23 31 12 6",
            "0 1-23/2 * * *",
            "  0   3 * * *  ",
            "0 0 29 2 *",
            "0 0 31 2 MON",
            "0 0 31 1-3 *",
        ] {
            assert_eq!(cron_problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn names_the_field_and_its_range() {
        let rows = [
            ("61 * * * *", "minute 61 is out of range (expected 0-59)"),
            ("0 24 * * *", "hour 24 is out of range (expected 0-23)"),
            (
                "0 0 0 * *",
                "day-of-month 0 is out of range (expected 1-31)",
            ),
            ("0 0 * 13 *", "month 13 is out of range (expected 1-12)"),
            ("0 0 * * 7", "day-of-week 7 is out of range (expected 0-6)"),
            (
                "0 0 * * FUN",
                "day-of-week \"FUN\" is not a value (expected 0-6 or SUN-SAT",
            ),
            ("0 3 * *", "has 4 field(s); expected 5"),
            ("0 0 3 * * *", "has 6 field(s); expected 5"),
            ("@daily", "has 1 field(s); expected 5"),
            ("", "has 0 field(s); expected 5"),
            (
                "*/0 * * * *",
                "minute step \"0\" is not a number from 1 to 59",
            ),
            ("5/10 * * * *", "steps from a single value"),
            ("30-10 * * * *", "minute range 30-10 runs backwards"),
            ("0 0 L * *", "day-of-month \"L\" is not a value"),
            ("0 0 * * 1#2", "day-of-week \"1#2\" is not a value"),
            ("0,,5 * * * *", "minute has an empty list item"),
            ("99999999999 * * * *", "minute 99999999999 is out of range"),
            (
                "0 0 31 2 *",
                "never runs: day-of-month 31 does not occur in month 2",
            ),
            ("0 0 30,31 2 *", "never runs"),
            ("0 0 31 4,6,9,11 *", "never runs"),
        ];
        let mut failures = Vec::new();
        for (text, expected) in rows {
            match cron_problem(text) {
                Some(problem) if problem.contains(expected) => {}
                other => failures.push(format!("{text:?}: got {other:?}, want {expected:?}")),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
