//! `stator switchover` and `stator drain`: planned moves of the primary, asked of the running
//! supervisor (`POST /switchover` with the api-token) and followed in its `/status` until they
//! finish. The decision core does the work (fence the primary's writes, let the target catch
//! up, promote it, rejoin the old primary as a replica); these commands wait, and say what
//! happened and how long `rw` had no writable target.
//!
//! `drain` honours the disruption budget the way `kubectl drain` honours a PodDisruptionBudget
//! with `maxUnavailable: 1`: it refuses while another instance is unavailable, moves the primary
//! away first, then stops the instance and keeps it stopped (a hold file) until
//! `stator drain --uncordon` or the next `stator up`.

use std::time::{Duration, Instant};

use stator_api::Database;
use stator_api::instance::LocalPorts;
use stator_api::names::secret_keys;

use crate::error::LocalError;
use crate::failover::{self, SwitchoverTicket};
use crate::report::SupervisorReport;
use crate::runtime::{block_on, fetch_report, running_supervisor};
use crate::secrets::read_secret;
use crate::state::DatabaseDir;
use stator_failover::client;
use stator_failover::{EventKind, EventOutcome, TicketState};

/// How often the supervisor's report is read while waiting.
const POLL: Duration = Duration::from_millis(100);
/// How long a done switchover waits for its client write outage to be measured.
const OUTAGE_WAIT: Duration = Duration::from_secs(10);

/// N of `NAME-N` for an instance of `db` within `spec.instances`; the error names `field`.
pub fn instance_ordinal(db: &Database, field: &str, instance: &str) -> Result<u32, LocalError> {
    let ordinal = instance
        .strip_prefix(db.name())
        .and_then(|r| r.strip_prefix('-'))
        .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|r| r.parse::<u32>().ok());
    match ordinal {
        Some(o) if o < db.spec.instances => Ok(o),
        _ => Err(LocalError::Invalid(format!(
            "{field}: {instance:?} is not an instance of {} (expected {}-0 … {}-{})",
            db.name(),
            db.name(),
            db.name(),
            db.spec.instances.saturating_sub(1)
        ))),
    }
}

/// Why a switchover or a drain did not happen (or did not finish in time).
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    #[error("{database} is not running (no supervisor): `stator up -f FILE` first")]
    NotRunning { database: String },
    #[error("the supervisor of {database}: {source}")]
    Unreachable {
        database: String,
        #[source]
        source: client::ClientError,
    },
    #[error("the supervisor refused the switchover (HTTP {code}): {reason}")]
    Refused { code: u16, reason: String },
    #[error("the supervisor's answer cannot be read: {0}")]
    Unreadable(#[source] serde_json::Error),
    #[error("the supervisor was restarted during the switchover; it ended {outcome}: {message}")]
    EndedUnseen {
        outcome: EventOutcome,
        message: String,
    },
    #[error("the supervisor was restarted before the switchover started; ask again")]
    Forgotten,
    #[error("another switchover was requested meanwhile; see `stator status`")]
    Superseded,
    #[error("the switchover did not finish within {timeout:?}; it goes on: {message}")]
    Unfinished { timeout: Duration, message: String },
    #[error(
        "refusing to drain {instance}: the disruption budget allows 1 unavailable instance \
         (maxUnavailable: 1) and {} already unavailable; wait until it is ready",
        .unavailable.join(", ")
    )]
    BudgetExhausted {
        instance: String,
        unavailable: Vec<String>,
    },
    #[error(
        "refusing to drain {instance}, the primary, as the switchover away from it did not happen: {outcome}"
    )]
    PrimaryStays { instance: String, outcome: String },
    #[error(
        "{instance} is held but did not stop within {timeout:?}; it stops when its server has shut down"
    )]
    NotStopped { instance: String, timeout: Duration },
}

fn require_supervisor(dir: &DatabaseDir) -> Result<(), LocalError> {
    if running_supervisor(dir).is_none() {
        return Err(SwitchoverError::NotRunning {
            database: dir.key(),
        }
        .into());
    }
    Ok(())
}

/// Asks for a switchover to `to` (`None`: the most advanced replica) and waits until it
/// finished, was refused or was abandoned, or `timeout` passed.
pub fn switchover(
    dir: &DatabaseDir,
    db: &Database,
    to: Option<&str>,
    timeout: Duration,
) -> Result<SwitchoverTicket, LocalError> {
    if let Some(to) = to {
        instance_ordinal(db, "--to", to)?;
    }
    require_supervisor(dir)?;
    crate::transport::register(db, dir)?;
    let token = read_secret(&dir.secrets_dir(), secret_keys::API_TOKEN)?;
    // The supervisor that takes the request: a new one (restarted by the keeper) forgets it.
    let supervisor_pid = running_supervisor(dir);
    let host = db.spec.local.listen_address.clone();
    let port = LocalPorts::of(db).supervisor();
    let body = serde_json::json!({ "to": to }).to_string();
    let (code, answer) = block_on(async {
        client::post(
            &host,
            port,
            "/switchover",
            &token,
            &body,
            Duration::from_secs(5),
        )
        .await
    })?
    .map_err(|source| SwitchoverError::Unreachable {
        database: dir.key(),
        source,
    })?;
    if code != 202 {
        return Err(SwitchoverError::Refused {
            code,
            reason: client::answer_text(&answer),
        }
        .into());
    }
    let ticket: SwitchoverTicket =
        serde_json::from_slice(&answer).map_err(SwitchoverError::Unreadable)?;
    let deadline = Instant::now() + timeout;
    let requested_at = failover::wall_ms();
    let mut last_message = String::new();
    let mut outage_deadline: Option<Instant> = None;
    loop {
        std::thread::sleep(POLL);
        let Ok(report) = fetch_report(dir, db) else {
            // Its keeper is restarting the supervisor: ask again.
            if Instant::now() >= deadline {
                fetch_report(dir, db)?;
            }
            continue;
        };
        let failover = report.failover.as_ref();
        if report.supervisor_pid != supervisor_pid
            && let Some(f) = failover
            && f.current.is_none()
        {
            // The supervisor was restarted and its desk forgot the request: the switchover it
            // started was resumed from `failover.json`, or never started.
            let event = f.last.as_ref().filter(|e| {
                e.kind == EventKind::Switchover && e.started_at_ms + 1000 >= requested_at
            });
            return match event {
                Some(e) if e.outcome == EventOutcome::Done => Ok(SwitchoverTicket {
                    id: ticket.id,
                    to: ticket.to.clone(),
                    state: TicketState::Done,
                    message: format!(
                        "the supervisor was restarted during the switchover and finished it: {} is the primary",
                        e.to.as_deref().unwrap_or("?")
                    ),
                    from: e.from.clone(),
                    primary: e.to.clone(),
                    outage: e.outage,
                }),
                Some(e) => Err(SwitchoverError::EndedUnseen {
                    outcome: e.outcome,
                    message: e.message.clone(),
                }
                .into()),
                None => Err(SwitchoverError::Forgotten.into()),
            };
        }
        if let Some(seen) = failover
            .and_then(|f| f.switchover.as_ref())
            .filter(|t| t.id == ticket.id)
        {
            // A done switchover's client write outage ends with the first write the new
            // primary accepts through rw, measured just after: wait a moment for it.
            if seen.finished() {
                let measuring = seen.state == TicketState::Done
                    && seen.outage.client_write_outage_ms.is_none()
                    && Instant::now()
                        < *outage_deadline.get_or_insert_with(|| Instant::now() + OUTAGE_WAIT);
                if !measuring {
                    return Ok(seen.clone());
                }
            }
            if seen.message != last_message {
                tracing::info!("{}", seen.message);
                last_message = seen.message.clone();
            }
        } else if failover
            .and_then(|f| f.switchover.as_ref())
            .is_some_and(|t| t.id > ticket.id)
        {
            return Err(SwitchoverError::Superseded.into());
        }
        if Instant::now() >= deadline {
            return Err(SwitchoverError::Unfinished {
                timeout,
                message: failover.map(|f| f.message.clone()).unwrap_or_default(),
            }
            .into());
        }
    }
}

/// What `drain` did.
#[derive(Debug)]
pub struct Drained {
    pub instance: String,
    /// The switchover that moved the primary away first, if it was the primary.
    pub switchover: Option<SwitchoverTicket>,
    /// It was drained before.
    pub already: bool,
}

/// Drains `instance`: refuses when another instance is unavailable, switches the primary
/// away first, then stops it and keeps it stopped until [`uncordon`].
pub fn drain(
    dir: &DatabaseDir,
    db: &Database,
    instance: &str,
    timeout: Duration,
) -> Result<Drained, LocalError> {
    let ordinal = instance_ordinal(db, "instance", instance)?;
    require_supervisor(dir)?;
    if failover::held(dir, ordinal).is_some() {
        return Ok(Drained {
            instance: instance.to_string(),
            switchover: None,
            already: true,
        });
    }
    let report = fetch_report(dir, db)?;
    let unavailable = unavailable_others(&report, db, instance);
    if !unavailable.is_empty() {
        return Err(SwitchoverError::BudgetExhausted {
            instance: instance.to_string(),
            unavailable,
        }
        .into());
    }
    let primary = report
        .failover
        .as_ref()
        .and_then(|f| f.primary.clone())
        .unwrap_or_else(|| report.primary.clone());
    let started = Instant::now();
    let moved = if primary == instance {
        let ticket = switchover(dir, db, None, timeout)?;
        if ticket.state != TicketState::Done {
            return Err(SwitchoverError::PrimaryStays {
                instance: instance.to_string(),
                outcome: ticket.outcome(),
            }
            .into());
        }
        Some(ticket)
    } else {
        None
    };
    failover::hold(
        dir,
        ordinal,
        &format!(
            "drained by `stator drain` at {}",
            failover::rfc3339(failover::wall_ms())
        ),
    )?;
    let deadline = started + timeout;
    loop {
        let report = fetch_report(dir, db)?;
        let row = report.instances.iter().find(|r| r.name == instance);
        if row.is_none_or(|r| r.manager_pid.is_none() && r.state == "held") {
            break;
        }
        if Instant::now() >= deadline {
            return Err(SwitchoverError::NotStopped {
                instance: instance.to_string(),
                timeout,
            }
            .into());
        }
        std::thread::sleep(POLL);
    }
    Ok(Drained {
        instance: instance.to_string(),
        switchover: moved,
        already: false,
    })
}

/// Lets a drained instance run again; false when it was not drained.
pub fn uncordon(dir: &DatabaseDir, db: &Database, instance: &str) -> Result<bool, LocalError> {
    let ordinal = instance_ordinal(db, "instance", instance)?;
    failover::release(dir, ordinal)
}

/// Instances other than `instance` that are not ready (or are held), in words.
fn unavailable_others(report: &SupervisorReport, db: &Database, instance: &str) -> Vec<String> {
    let mut out = Vec::new();
    for ordinal in 0..db.spec.instances {
        let name = db.instance_name(ordinal);
        if name == instance {
            continue;
        }
        match report.instances.iter().find(|r| r.name == name) {
            Some(row) if row.ready() => {}
            Some(row) => out.push(format!("{name} ({})", row.state)),
            None => out.push(format!("{name} (not started)")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Database {
        stator_api::load_database(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: pg}\nspec: {engine: postgres, instances: 3}\n",
        )
        .unwrap()
        .database
    }

    #[test]
    fn an_instance_name_outside_the_database_is_refused_naming_the_field() {
        let db = db();
        assert_eq!(instance_ordinal(&db, "--to", "pg-2").unwrap(), 2);
        for bad in ["pg-3", "pg-", "pg-x", "other-1", "pg1", ""] {
            let e = instance_ordinal(&db, "--to", bad).unwrap_err().to_string();
            assert!(e.starts_with("--to: "), "{e}");
            assert!(e.contains("pg-0 … pg-2"), "{e}");
        }
    }
}
