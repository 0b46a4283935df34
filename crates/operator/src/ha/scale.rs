//! Scaling down past the primary. The StatefulSet controller removes the highest ordinals at
//! once when `replicas` drops, the primary among them if it sits there, long before the
//! decision core could switch over ("is beyond spec.instances: switching over before removing
//! it"). So the controller applies `replicas` held at `max(spec.instances, kept + 1)`, where
//! `kept` is the highest ordinal the core still needs (its primary, and the one a failover or
//! switchover is moving away from), and lowers it only once the core moved the primary below
//! `spec.instances`.
//!
//! The loops know `kept` first: each tick they tell [`Holds`], which wakes the controller when
//! the held count may change (status-only changes never wake it). Before a loop has run (an
//! operator just started), the primary recorded in the status stands in: replicas are never
//! lowered below the recorded primary + 1.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::channel::mpsc;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use stator_api::Database;
use stator_control::Memory;

/// The replicas to apply: `instances`, held up to `kept + 1` while the core still needs
/// ordinal `kept`.
pub fn held_replicas(instances: u32, kept: Option<u32>) -> u32 {
    instances.max(kept.map_or(0, |k| k.saturating_add(1)))
}

/// The highest ordinal the core still needs: its primary, and the primary a transition is
/// moving away from (its pod stays until the transition ended).
pub fn kept(memory: &Memory) -> Option<u32> {
    let from = memory.transition.as_ref().and_then(|t| t.from);
    memory.primary.max(from)
}

/// What the status records, for an operator whose loop has not run yet: the saved failover
/// memory, else `status.currentPrimary`.
pub fn recorded(db: &Database) -> Option<u32> {
    let saved = super::saved_state(db).and_then(|s| kept(&s.memory));
    let current = db
        .status
        .as_ref()
        .and_then(|s| s.current_primary.as_deref())
        .and_then(|p| super::ordinal_of(db, p));
    saved.max(current)
}

/// What the loops know of each Database's kept ordinal, shared with the controller, and the
/// channel that wakes the controller for one Database.
pub struct Holds {
    kept: Mutex<HashMap<(String, String), Option<u32>>>,
    wake: mpsc::UnboundedSender<ObjectRef<Database>>,
}

impl Holds {
    /// The holds, and the stream of Databases to reconcile again (for
    /// `Controller::reconcile_on`).
    pub fn new() -> (Holds, mpsc::UnboundedReceiver<ObjectRef<Database>>) {
        let (wake, woken) = mpsc::unbounded();
        (
            Holds {
                kept: Mutex::new(HashMap::new()),
                wake,
            },
            woken,
        )
    }

    /// The replicas the controller applies for `db` now.
    pub fn replicas(&self, db: &Database) -> u32 {
        let known = self
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&super::key(db))
            .copied();
        // The loop's knowledge when it has any (fresher than the status the controller read),
        // else the status's record.
        let kept = known.unwrap_or_else(|| recorded(db));
        held_replicas(db.spec.instances, kept)
    }

    /// A loop's tick: `kept` is what the core needs now. The controller is woken when it
    /// changed (from the loop's last word, or from the status's record at its first), so a
    /// held count is lowered as soon as the switchover finished.
    pub fn update(&self, db: &Database, kept: Option<u32>) {
        let previous = self
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(super::key(db), kept);
        let before = previous.unwrap_or_else(|| recorded(db));
        // Only a change of the held count needs the controller: a failover at a constant
        // count changes `kept` and not the StatefulSet.
        let instances = db.spec.instances;
        if held_replicas(instances, before) != held_replicas(instances, kept) {
            tracing::info!(
                database = %db.name_any(),
                "the primary the core keeps changed: {before:?} -> {kept:?}; reconciling the replicas"
            );
            let _ = self.wake.unbounded_send(ObjectRef::from_obj(db));
        }
    }

    /// The loop of `db` stopped: its word no longer stands.
    pub fn forget(&self, db: &Database) {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&super::key(db));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use stator_control::{Transition, TransitionKind, TransitionPhase};

    use crate::fixtures::DatabaseBuilder;

    #[test]
    fn replicas_are_held_over_the_primary_until_it_moved_below_spec_instances() {
        // 5 -> 2 with the primary on ordinal 4: all five kept.
        assert_eq!(held_replicas(2, Some(4)), 5);
        // Switched over to ordinal 1: lowered to 2.
        assert_eq!(held_replicas(2, Some(1)), 2);
        // No primary yet, or one below: spec.instances.
        assert_eq!(held_replicas(3, None), 3);
        assert_eq!(held_replicas(3, Some(0)), 3);
        // Scaling up is never held back.
        assert_eq!(held_replicas(5, Some(2)), 5);
    }

    #[test]
    fn a_transition_keeps_the_primary_it_moves_away_from() {
        let mut memory = Memory {
            primary: Some(1),
            ..Memory::default()
        };
        assert_eq!(kept(&memory), Some(1));
        memory.transition = Some(Transition {
            kind: TransitionKind::Switchover,
            from: Some(4),
            target: Some(1),
            started_ms: 0,
            phase: TransitionPhase::CatchingUp,
        });
        assert_eq!(kept(&memory), Some(4));
        assert_eq!(kept(&Memory::default()), None);
    }

    fn scaled_to_2_with_primary(primary: Option<&str>) -> Database {
        let mut db = DatabaseBuilder::test().build();
        db.spec.instances = 2;
        db.status = Some(stator_api::DatabaseStatus {
            current_primary: primary.map(str::to_string),
            ..Default::default()
        });
        db
    }

    #[test]
    fn before_the_loop_ran_the_recorded_primary_holds_the_replicas() {
        let (holds, _woken) = Holds::new();
        let db = scaled_to_2_with_primary(Some("db-4"));
        assert_eq!(holds.replicas(&db), 5);
        assert_eq!(holds.replicas(&scaled_to_2_with_primary(None)), 2);
    }

    #[tokio::test]
    async fn the_controller_is_woken_when_the_held_count_changes_and_only_then() {
        let (holds, mut woken) = Holds::new();
        let db = scaled_to_2_with_primary(Some("db-4"));
        // The loop's first word agrees with the status: nothing to do.
        holds.update(&db, Some(4));
        assert_eq!(holds.replicas(&db), 5);
        // Switched over to db-0: the loop knows before the status the controller reads.
        holds.update(&db, Some(0));
        assert_eq!(holds.replicas(&db), 2);
        holds.update(&db, Some(0));
        // A failover to db-1 at 2 instances: the count stays 2, the controller sleeps.
        holds.update(&db, Some(1));
        assert_eq!(holds.replicas(&db), 2);
        drop(holds);
        let refs: Vec<ObjectRef<Database>> = woken.by_ref().collect().await;
        assert_eq!(refs, vec![ObjectRef::from_obj(&db)]);
    }
}
