//! Rolling a spec change through the pods. Operator mode renders `updateStrategy: OnDelete`:
//! the StatefulSet controller creates a pod from the new revision only once its old pod is
//! gone, and deleting pods is this module's job, one at a time. When the StatefulSet's
//! `status.updateRevision` differs from a pod's `controller-revision-hash`, and every instance
//! is ready (its pod's `Ready` condition and its manager's report) and routed (the core's `rw`
//! target or one of its `ro` targets) and no failover or switchover runs: one outdated replica
//! pod is deleted (a normal delete, its grace period honoured, never forced), highest ordinal
//! first; the next waits until it is back at the new revision, ready and routed. When only the
//! primary is outdated, a switchover is requested on the same [`SwitchoverDesk`] the annotation
//! uses, and the core chooses the target; the old primary is then an outdated replica, rolled
//! like the others.
//!
//! Nothing here decides a failover or a promotion: [`next`] only picks which pod goes next,
//! or that the core is asked for a switchover. A single instance is never rolled (its only
//! pod is its primary): the condition says so, and deleting the pod is the user's call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::events::Recorder;
use kube::{Client, ResourceExt};
use stator_api::Database;
use stator_control::{Memory, Status, TransitionKind};
use stator_failover::{Sighting, SwitchoverDesk, TicketState};

use super::runtime::{Observed, PodView};

/// The reason of the `Progressing` condition while a rollout runs.
pub const REASON: &str = "RollingUpdate";
/// How long after a refused or abandoned switchover the rollout asks again.
const ASK_AGAIN: Duration = Duration::from_secs(30);

/// What one tick saw, for the choice.
pub struct View<'a> {
    /// `NAME`: pods are `NAME-N`.
    pub name: &'a str,
    pub instances: u32,
    /// The StatefulSet's `status.updateRevision`.
    pub revision: &'a str,
    pub pods: &'a BTreeMap<u32, PodView>,
    /// Instances whose manager reports them ready.
    pub reported_ready: &'a BTreeSet<u32>,
    /// The core's routes.
    pub rw: Option<u32>,
    pub ro: &'a [u32],
    /// The primary the core holds.
    pub primary: Option<u32>,
    /// Why a failover or switchover blocks the rollout now, if one does.
    pub busy: Option<String>,
    /// The pod deleted last (ordinal, uid), until another pod stands in its place.
    pub deleted: Option<&'a (u32, String)>,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Every instance's pod is at the revision.
    Done,
    /// Nothing now, and why.
    Wait(String),
    /// Delete this replica's pod.
    Delete(u32),
    /// Only the primary (this ordinal) is outdated: ask the core for a switchover.
    Switchover(u32),
}

impl View<'_> {
    fn pod(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    fn current(&self, ordinal: u32) -> bool {
        self.pods
            .get(&ordinal)
            .is_some_and(|p| !p.deleting && p.revision.as_deref() == Some(self.revision))
    }

    /// How many of the instances' pods are at the revision.
    pub fn at_revision(&self) -> usize {
        (0..self.instances).filter(|&o| self.current(o)).count()
    }
}

/// The next step of the rollout (pure: no API call).
pub fn next(v: &View<'_>) -> Next {
    if (0..v.instances).all(|o| v.current(o)) {
        return Next::Done;
    }
    if let Some((ordinal, uid)) = v.deleted {
        let back = v
            .pods
            .get(ordinal)
            .is_some_and(|p| !p.deleting && &p.uid != uid);
        if !back {
            return Next::Wait(format!(
                "waiting for pod {} to be recreated",
                v.pod(*ordinal)
            ));
        }
    }
    for o in 0..v.instances {
        let pod = v.pod(o);
        let Some(p) = v.pods.get(&o) else {
            return Next::Wait(format!("waiting for pod {pod} to be created"));
        };
        if p.deleting {
            return Next::Wait(format!("waiting for pod {pod} to be deleted"));
        }
        if !p.ready || !v.reported_ready.contains(&o) {
            return Next::Wait(format!("waiting for {pod} to be ready"));
        }
        if v.rw != Some(o) && !v.ro.contains(&o) {
            return Next::Wait(format!("waiting for {pod} to be routed"));
        }
    }
    if let Some(why) = &v.busy {
        return Next::Wait(format!("waiting: {why}"));
    }
    let primary = match v.primary {
        Some(p) if p < v.instances && v.rw == Some(p) => p,
        Some(p) if p >= v.instances => {
            return Next::Wait(format!(
                "waiting for the primary {} (beyond spec.instances) to be switched away",
                v.pod(p)
            ));
        }
        _ => return Next::Wait("waiting for a primary taking writes".into()),
    };
    let replica = (0..v.instances)
        .rev()
        .find(|&o| o != primary && !v.current(o));
    match replica {
        Some(o) => Next::Delete(o),
        None if v.instances < 2 => Next::Wait(format!(
            "a single instance cannot be rolled without stopping its writes: delete pod {} \
             to restart it at the new revision",
            v.pod(primary)
        )),
        None => Next::Switchover(primary),
    }
}

/// The rollout of one Database, kept by its loop.
#[derive(Default)]
pub struct Rollout {
    deleted: Option<(u32, String)>,
    /// The switchover this rollout asked for (its ticket id) and when.
    asked: Option<(u64, Instant)>,
}

/// What the loop hands [`Rollout::step`] of its tick.
pub struct Tick<'a> {
    pub memory: &'a Memory,
    pub status: &'a Status,
    pub sightings: &'a [Sighting],
    pub observed: &'a Observed,
    pub desk: &'a Mutex<SwitchoverDesk>,
}

impl Rollout {
    /// The switchover ticket `id` was asked for by the rollout, not by the annotation.
    pub fn owns(&self, id: u64) -> bool {
        self.asked.is_some_and(|(asked, _)| asked == id)
    }

    /// One step; the `Progressing` message while a rollout runs (`None`: nothing to roll).
    pub async fn step(
        &mut self,
        client: &Client,
        recorder: &Recorder,
        db: &Database,
        tick: Tick<'_>,
    ) -> Option<String> {
        let sts: Api<StatefulSet> = Api::namespaced(client.clone(), db.namespace());
        let revision = match sts.get_opt(db.name()).await {
            Ok(found) => found.and_then(|s| s.status).and_then(|s| s.update_revision),
            Err(e) => {
                tracing::warn!(database = %db.name_any(), "reading the StatefulSet: {e}");
                None
            }
        }?;
        let ticket = tick.desk.lock().unwrap_or_else(|e| e.into_inner()).last();
        let busy = match (&tick.memory.transition, &ticket) {
            (Some(t), _) => Some(match t.kind {
                TransitionKind::Failover => "a failover is in progress".to_string(),
                TransitionKind::Switchover => "a switchover is in progress".to_string(),
            }),
            (None, Some(t)) if !t.finished() => Some(format!("switchover {} is {}", t.id, t.state)),
            (None, Some(t))
                if self.owns(t.id)
                    && t.state != TicketState::Done
                    && self.asked.is_some_and(|(_, at)| at.elapsed() < ASK_AGAIN) =>
            {
                Some(format!("asking again soon ({})", t.outcome()))
            }
            _ => None,
        };
        let reported_ready: BTreeSet<u32> = tick
            .sightings
            .iter()
            .filter(|s| s.report.as_ref().is_some_and(|r| r.ready))
            .map(|s| s.ordinal)
            .collect();
        let view = View {
            name: db.name(),
            instances: db.spec.instances,
            revision: &revision,
            pods: &tick.observed.pods,
            reported_ready: &reported_ready,
            rw: tick.status.rw,
            ro: &tick.status.ro,
            primary: tick.memory.primary,
            busy,
            deleted: self.deleted.as_ref(),
        };
        let progress = |v: &View<'_>| {
            format!(
                "rolling update: {} of {} instances at revision {revision}",
                v.at_revision(),
                v.instances
            )
        };
        let decided = next(&view);
        let message = match &decided {
            Next::Done => {
                self.deleted = None;
                return None;
            }
            Next::Wait(why) => format!("{}; {why}", progress(&view)),
            Next::Delete(o) => format!("{}; deleting pod {}", progress(&view), view.pod(*o)),
            Next::Switchover(p) => format!(
                "{}; switching over from the primary {}",
                progress(&view),
                view.pod(*p)
            ),
        };
        match decided {
            Next::Done | Next::Wait(_) => {}
            Next::Delete(o) => {
                let Some(pod) = tick.observed.pods.get(&o) else {
                    return Some(message);
                };
                let (name, uid) = (pod.name.clone(), pod.uid.clone());
                let old = pod.revision.clone().unwrap_or_default();
                let note = format!(
                    "deleted pod {name} (revision {old}) to recreate it at revision {revision}: \
                     {} of {} instances at it",
                    view.at_revision(),
                    view.instances
                );
                if delete(client, db, &name, &uid).await {
                    self.deleted = Some((o, uid));
                    let pod = super::pod_ref(db.namespace(), &name);
                    super::publish(recorder, db, REASON, note, Some(pod)).await;
                }
            }
            Next::Switchover(p) => {
                let requested = tick
                    .desk
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .request(None);
                self.asked = Some((requested.id, Instant::now()));
                let note = format!(
                    "the primary {} is the last instance at revision {}: switchover requested \
                     (the core chooses the replica)",
                    view.pod(p),
                    tick.observed
                        .pods
                        .get(&p)
                        .and_then(|p| p.revision.clone())
                        .unwrap_or_default()
                );
                let pod = super::pod_ref(db.namespace(), &view.pod(p));
                super::publish(recorder, db, REASON, note, Some(pod)).await;
            }
        }
        Some(message)
    }
}

/// Deletes pod `name` if it is still the one seen (`uid`), with its grace period.
async fn delete(client: &Client, db: &Database, name: &str, uid: &str) -> bool {
    let pods: Api<Pod> = Api::namespaced(client.clone(), db.namespace());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(database = %db.name_any(), "deleting pod {name} to roll it: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "pg-new";

    fn pod(ordinal: u32, revision: &str) -> PodView {
        PodView {
            name: format!("pg-{ordinal}"),
            ip: Some(format!("127.0.0.{}", ordinal + 1)),
            role: None,
            uid: format!("uid-{ordinal}-{revision}"),
            revision: Some(revision.into()),
            ready: true,
            deleting: false,
        }
    }

    struct World {
        pods: BTreeMap<u32, PodView>,
        ready: BTreeSet<u32>,
        primary: u32,
        ro: Vec<u32>,
        busy: Option<String>,
        deleted: Option<(u32, String)>,
        instances: u32,
    }

    impl World {
        /// Three instances, primary 0, all ready and routed, at `revisions`.
        fn new(revisions: &[&str]) -> World {
            let n = revisions.len() as u32;
            World {
                pods: revisions
                    .iter()
                    .enumerate()
                    .map(|(o, r)| (o as u32, pod(o as u32, r)))
                    .collect(),
                ready: (0..n).collect(),
                primary: 0,
                ro: (1..n).collect(),
                busy: None,
                deleted: None,
                instances: n,
            }
        }

        fn next(&self) -> Next {
            next(&View {
                name: "pg",
                instances: self.instances,
                revision: NEW,
                pods: &self.pods,
                reported_ready: &self.ready,
                rw: Some(self.primary),
                ro: &self.ro,
                primary: Some(self.primary),
                busy: self.busy.clone(),
                deleted: self.deleted.as_ref(),
            })
        }
    }

    #[test]
    fn replicas_go_first_highest_ordinal_first_then_the_primary_by_switchover() {
        let mut w = World::new(&["old", "old", "old"]);
        assert_eq!(w.next(), Next::Delete(2));
        w.pods.insert(2, pod(2, NEW));
        assert_eq!(w.next(), Next::Delete(1));
        w.pods.insert(1, pod(1, NEW));
        assert_eq!(w.next(), Next::Switchover(0));
        // The core switched over to 2: the old primary is an outdated replica now.
        w.primary = 2;
        w.ro = vec![0, 1];
        assert_eq!(w.next(), Next::Delete(0));
        w.pods.insert(0, pod(0, NEW));
        assert_eq!(w.next(), Next::Done);
    }

    #[test]
    fn one_pod_at_a_time_each_back_ready_and_routed_before_the_next() {
        let mut w = World::new(&["old", "old", "old"]);
        // Pod 2 deleted: terminating, then gone, then recreated but not ready, then ready
        // but not routed yet: nothing else is deleted meanwhile.
        w.deleted = Some((2, w.pods[&2].uid.clone()));
        w.pods.get_mut(&2).unwrap().deleting = true;
        assert!(matches!(w.next(), Next::Wait(m) if m.contains("pg-2")));
        w.pods.remove(&2);
        assert!(matches!(w.next(), Next::Wait(m) if m.contains("pg-2")));
        let mut back = pod(2, NEW);
        back.ready = false;
        w.pods.insert(2, back);
        w.ready.remove(&2);
        w.ro = vec![1];
        assert!(matches!(w.next(), Next::Wait(m) if m.contains("pg-2 to be ready")));
        w.pods.get_mut(&2).unwrap().ready = true;
        assert!(matches!(w.next(), Next::Wait(m) if m.contains("pg-2 to be ready")));
        w.ready.insert(2);
        assert!(matches!(w.next(), Next::Wait(m) if m.contains("pg-2 to be routed")));
        w.ro = vec![1, 2];
        assert_eq!(w.next(), Next::Delete(1));
    }

    #[test]
    fn nothing_is_rolled_during_a_failover_or_with_an_instance_down() {
        let mut w = World::new(&["old", "old", "old"]);
        w.busy = Some("a failover is in progress".into());
        assert!(matches!(w.next(), Next::Wait(m) if m.contains("failover")));
        let mut w = World::new(&["old", "old", "old"]);
        w.ready.remove(&1);
        assert!(matches!(w.next(), Next::Wait(m) if m.contains("pg-1")));
        let mut w = World::new(&["old", "old", "old"]);
        w.pods.remove(&0);
        assert!(matches!(w.next(), Next::Wait(m) if m.contains("pg-0 to be created")));
    }

    #[test]
    fn a_primary_beyond_spec_instances_waits_for_the_scale_downs_switchover() {
        let mut w = World::new(&["old", "old", "old"]);
        w.instances = 2;
        w.primary = 2;
        w.ro = vec![0, 1];
        assert!(matches!(w.next(), Next::Wait(m) if m.contains("beyond spec.instances")));
    }

    #[test]
    fn a_single_instance_is_not_rolled_and_says_why() {
        let w = World::new(&["old"]);
        assert!(matches!(w.next(), Next::Wait(m) if m.contains("single instance")));
        assert_eq!(World::new(&[NEW]).next(), Next::Done);
    }
}
