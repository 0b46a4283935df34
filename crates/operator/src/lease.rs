//! Leader election on one `coordination.k8s.io/v1` `Lease` (kube-runtime has none): only the
//! holder reconciles and runs the high-availability loops; the others wait, passive.
//!
//! A lease is taken over only when its record (holder and renew time) has not changed for a
//! whole `leaseDurationSeconds` as measured on this process's own monotonic clock, as
//! client-go does: the clocks of two operator pods are never compared. Writes go through
//! `create` and `replace` with the resourceVersion read, so two contenders cannot both win.
//! The holder renews every third of the duration and gives up (the process stops leading)
//! when it could not renew for the whole duration.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// The lease as read, reduced to what the election needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub holder: Option<String>,
    /// Changes each time the holder writes it (the resourceVersion).
    pub version: String,
    pub duration: Duration,
}

/// What to do with the lease now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds it: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Its holder stopped renewing: take it over.
    TakeOver,
    /// Someone else holds it and renews it: wait.
    Wait,
}

/// The election's choice: `seen` the lease now (`None`: it does not exist), `unchanged_for`
/// how long its record has not changed as this process observed it.
pub fn step(seen: Option<&Seen>, me: &str, unchanged_for: Duration) -> Step {
    match seen {
        None => Step::Create,
        Some(s) if s.holder.as_deref() == Some(me) => Step::Renew,
        Some(s) if s.holder.as_deref().is_none_or(str::is_empty) => Step::TakeOver,
        Some(s) if unchanged_for >= s.duration => Step::TakeOver,
        Some(_) => Step::Wait,
    }
}

/// One contender for the lease `name`.
pub struct Election {
    api: Api<Lease>,
    name: String,
    me: String,
    duration: Duration,
    /// The record last seen and since when (monotonic).
    observed: Option<(Seen, Instant)>,
}

fn seen(lease: &Lease, default: Duration) -> Seen {
    let spec = lease.spec.clone().unwrap_or_default();
    Seen {
        holder: spec.holder_identity,
        version: lease.metadata.resource_version.clone().unwrap_or_default(),
        duration: spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(default),
    }
}

impl Election {
    pub fn new(api: Api<Lease>, name: &str, me: &str, duration: Duration) -> Election {
        Election {
            api,
            name: name.to_string(),
            me: me.to_string(),
            duration,
            observed: None,
        }
    }

    fn lease(&self, mut base: Lease, transitions: bool) -> Lease {
        let now = MicroTime(jiff::Timestamp::now());
        let spec = base.spec.get_or_insert_with(LeaseSpec::default);
        if transitions {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(now.clone());
        }
        spec.holder_identity = Some(self.me.clone());
        spec.lease_duration_seconds = Some(self.duration.as_secs() as i32);
        spec.renew_time = Some(now);
        base
    }

    /// One round: whether this process holds the lease now.
    pub async fn round(&mut self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Instant::now();
        let seen_now = current.as_ref().map(|l| seen(l, self.duration));
        let since = match (&self.observed, &seen_now) {
            (Some((old, at)), Some(new)) if old == new => *at,
            _ => now,
        };
        self.observed = seen_now.clone().map(|s| (s, since));
        let step = step(seen_now.as_ref(), &self.me, now - since);
        let written = match (step, current) {
            (Step::Wait, _) => return Ok(false),
            (Step::Create, _) => {
                let lease = self.lease(
                    Lease {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            ..ObjectMeta::default()
                        },
                        spec: None,
                    },
                    true,
                );
                self.api.create(&PostParams::default(), &lease).await
            }
            (Step::Renew | Step::TakeOver, Some(lease)) => {
                let lease = self.lease(lease, step == Step::TakeOver);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            (Step::Renew | Step::TakeOver, None) => return Ok(false),
        };
        match written {
            Ok(lease) => {
                self.observed = Some((seen(&lease, self.duration), Instant::now()));
                Ok(true)
            }
            // Another contender wrote first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this process holds the lease.
    pub async fn acquire(&mut self) {
        let mut said = false;
        loop {
            match self.round().await {
                Ok(true) => return,
                Ok(false) if !said => {
                    tracing::info!(lease = %self.name, "another operator leads; waiting, passive");
                    said = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = %self.name, "leader election: {e}"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews the lease until it cannot for a whole lease duration (or another took it);
    /// returns then: this process must stop leading.
    pub async fn keep(&mut self) {
        let mut last_held = Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.round().await {
                Ok(true) => last_held = Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.name, "lost the lease to another operator");
                    return;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, "renewing the lease: {e}");
                    if last_held.elapsed() >= self.duration {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str) -> Seen {
        Seen {
            holder: Some(by.into()),
            version: "1".into(),
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn election_steps() {
        let s = Duration::from_secs;
        let rows: [(&str, Option<Seen>, Duration, Step); 6] = [
            ("no lease: create it", None, s(0), Step::Create),
            ("ours: renew", Some(held("a")), s(0), Step::Renew),
            (
                "ours, even if stale: renew",
                Some(held("a")),
                s(60),
                Step::Renew,
            ),
            ("another renews: wait", Some(held("b")), s(14), Step::Wait),
            (
                "another stopped renewing: take over",
                Some(held("b")),
                s(15),
                Step::TakeOver,
            ),
            (
                "released (no holder): take over",
                Some(Seen {
                    holder: None,
                    ..held("b")
                }),
                s(0),
                Step::TakeOver,
            ),
        ];
        let failing: Vec<_> = rows
            .iter()
            .filter(|(_, seen, unchanged, want)| step(seen.as_ref(), "a", *unchanged) != *want)
            .map(|(name, ..)| *name)
            .collect();
        assert!(failing.is_empty(), "failing rows: {failing:?}");
    }
}
