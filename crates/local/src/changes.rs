//! Long polls of every instance manager's `GET /changes`, which wake the supervisor's loop
//! when an instance's state, role or readiness changes. Without them the supervisor learns of
//! a change at its next tick (up to 100 ms while something starts): `up` and `restore` would
//! report ready that much later, and each step of an ordered start would wait that much more.
//! The ticks still run as before; a wake only brings the next one forward.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use stator_failover::client;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// How long one long poll waits for a change (the manager caps it at
/// `stator_instance::http::MAX_CHANGES_WAIT`).
const WAIT: Duration = Duration::from_secs(20);
/// The pause after a failed poll (a manager not listening yet, or gone): the ticks cover it.
const RETRY: Duration = Duration::from_millis(250);

/// The answer of `GET /changes`.
#[derive(serde::Deserialize)]
struct Changes {
    changes: u64,
}

/// One long poll per running instance manager.
pub(crate) struct Watchers {
    wake: Arc<Notify>,
    running: BTreeMap<u32, (u16, AbortHandle)>,
}

impl Watchers {
    pub(crate) fn new() -> Watchers {
        Watchers {
            wake: Arc::new(Notify::new()),
            running: BTreeMap::new(),
        }
    }

    /// Resolves when a watched manager reported a change (at once if one came since the last
    /// call).
    pub(crate) async fn changed(&self) {
        self.wake.notified().await
    }

    /// Watches exactly the managers in `wanted` (ordinal → port, on `address`).
    pub(crate) fn watch(&mut self, address: &str, wanted: &BTreeMap<u32, u16>) {
        self.running.retain(|ordinal, (port, task)| {
            let keep = wanted.get(ordinal) == Some(port) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (&ordinal, &port) in wanted {
            self.running.entry(ordinal).or_insert_with(|| {
                let task = tokio::spawn(poll(address.to_string(), port, self.wake.clone()));
                (port, task.abort_handle())
            });
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

/// Long-polls one manager for ever; wakes the loop when its count of changes moves. The count
/// is kept across failed polls: a manager that restarted counts from zero again, so its first
/// answer differs and wakes the loop, as a restart should.
async fn poll(address: String, port: u16, wake: Arc<Notify>) {
    let mut since: Option<u64> = None;
    loop {
        let path = match since {
            Some(n) => format!("/changes?since={n}&wait={}", WAIT.as_secs()),
            None => "/changes".to_string(),
        };
        match client::get_json::<Changes>(&address, port, &path, WAIT + RETRY).await {
            Ok(answer) => {
                if since.is_some_and(|n| n != answer.changes) {
                    wake.notify_one();
                }
                since = Some(answer.changes);
            }
            Err(e) => {
                tracing::debug!("long poll of port {port}: {e}");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{RawQuery, State};
    use tokio::sync::watch;

    /// A stand-in manager's `GET /changes`, answering as the real one does from `count`.
    async fn changes(
        State(count): State<watch::Sender<u64>>,
        RawQuery(query): RawQuery,
    ) -> axum::Json<serde_json::Value> {
        let since = query
            .unwrap_or_default()
            .split('&')
            .find_map(|p| p.strip_prefix("since=")?.parse::<u64>().ok());
        let mut rx = count.subscribe();
        if let Some(since) = since {
            let _ = tokio::time::timeout(WAIT, rx.wait_for(|c| *c != since)).await;
        }
        let now = *rx.borrow();
        axum::Json(serde_json::json!({ "changes": now }))
    }

    #[tokio::test]
    async fn a_change_at_a_watched_manager_wakes_the_loop_and_nothing_else_does() {
        let count = watch::Sender::new(0u64);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/changes", axum::routing::get(changes))
            .with_state(count.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let mut watchers = Watchers::new();
        watchers.watch("127.0.0.1", &BTreeMap::from([(0, port)]));
        let quiet = tokio::time::timeout(Duration::from_millis(500), watchers.changed()).await;
        assert!(quiet.is_err(), "woke without a change");

        count.send_modify(|c| *c += 1);
        tokio::time::timeout(Duration::from_secs(5), watchers.changed())
            .await
            .expect("a change wakes the loop");

        // A manager no longer watched wakes nothing.
        watchers.watch("127.0.0.1", &BTreeMap::new());
        count.send_modify(|c| *c += 1);
        let quiet = tokio::time::timeout(Duration::from_millis(500), watchers.changed()).await;
        assert!(quiet.is_err(), "an unwatched manager woke the loop");
        server.abort();
    }
}
