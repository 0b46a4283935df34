//! Never an empty primary: what an instance configured as a new primary
//! (`bootstrap: InitPrimary`) does with a data dir that is missing or empty, when it has peers
//! to ask (a pod: the other ordinals of its StatefulSet).
//!
//! A data dir is initialised empty only when the database never had data. A pod cannot see the
//! other pods' volumes, so before initialising it asks their instance managers
//! (`GET /status`, over the headless Service's names):
//! - a peer whose name does not resolve does not exist (the headless Service publishes every
//!   pod that has an address, ready or not);
//! - a peer that answers says whether its data dir holds data (`holdsData`; a manager that
//!   does not say yet is taken to hold data);
//! - a peer whose name resolves but that does not answer may hold data.
//!
//! The rule ([`plan_empty_data_dir`]): when exactly one peer holding data is a running
//! primary, clone from it (the data dir becomes its replica). When a peer holds data but none
//! is a primary, wait (the operator promotes one; then clone). When a peer does not answer,
//! wait: silence is never taken for "no data". Only when no peer exists, or every one that
//! answers has no data either, is the data dir initialised. Asked again every few seconds while
//! waiting; `/status` says why it waits.
//!
//! What it cannot see: the StatefulSet is `OrderedReady`, so after a restart of every pod, only
//! pod 0 exists until it is ready; a pod 0 whose volume was lost while every pod was down finds
//! no peer and initialises. Closing that needs a record outside the volumes (the operator
//! keeping the database's identity in its status and handing it to the pod); a database of one
//! instance has no one to ask at all. Locally the supervisor applies the rule itself, from
//! `database.json`, and gives its instance managers no peers.

use std::time::Duration;

use stator_api::Role;
use stator_api::instance::{Endpoint, InstanceReport, Peer, ServerState};
use stator_engine::manager_client;

/// How long one peer gets to answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait before asking again.
pub const ASK_AGAIN: Duration = Duration::from_secs(3);

/// What asking one peer gave.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerAnswer {
    /// Its name does not resolve: no such pod.
    Missing,
    /// It exists (its name resolves) but gave no usable answer; why, in words.
    Silent(String),
    /// Its `/status`.
    Report(Box<InstanceReport>),
}

/// What to do with the empty data dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmptyDataDir {
    /// No peer has data or may have it: the database is new.
    Initialise,
    /// Copy the data from this running primary and follow it.
    CloneFrom(Endpoint),
    /// Neither is safe yet; why, in words.
    Wait(String),
}

/// The rule of this module, on the peers' answers. Pure.
pub fn plan_empty_data_dir(answers: &[(Peer, PeerAnswer)]) -> EmptyDataDir {
    let holders: Vec<(&Peer, &InstanceReport)> = answers
        .iter()
        .filter_map(|(peer, answer)| match answer {
            PeerAnswer::Report(r) if r.holds_data != Some(false) => Some((peer, r.as_ref())),
            _ => None,
        })
        .collect();
    let primaries: Vec<&Peer> = holders
        .iter()
        .filter(|(_, r)| r.role == Some(Role::Primary) && r.state == ServerState::Running)
        .map(|(peer, _)| *peer)
        .collect();
    if let [primary] = primaries.as_slice() {
        return EmptyDataDir::CloneFrom(primary.server.clone());
    }
    let names = |peers: Vec<&Peer>| {
        peers
            .iter()
            .map(|p| p.server.instance.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !holders.is_empty() {
        let why = if primaries.is_empty() {
            "none of them is a running primary yet".to_string()
        } else {
            format!("{} all report being the primary", names(primaries))
        };
        return EmptyDataDir::Wait(format!(
            "the data dir is empty, but {} hold this database's data and {why}: waiting to clone from a primary, never initialising an empty one",
            names(holders.iter().map(|(p, _)| *p).collect())
        ));
    }
    let silent: Vec<String> = answers
        .iter()
        .filter_map(|(peer, answer)| match answer {
            PeerAnswer::Silent(why) => Some(format!("{} ({why})", peer.server.instance)),
            _ => None,
        })
        .collect();
    if !silent.is_empty() {
        return EmptyDataDir::Wait(format!(
            "the data dir is empty, and {} exist but do not answer: they may hold this database's data, so it is not initialised until they answer",
            silent.join(", ")
        ));
    }
    EmptyDataDir::Initialise
}

/// Asks every peer, all at once.
pub async fn ask_all(peers: &[Peer]) -> Vec<(Peer, PeerAnswer)> {
    let asks = peers.iter().map(|peer| async move {
        let answer = match tokio::time::timeout(ASK_TIMEOUT, ask(peer)).await {
            Ok(answer) => answer,
            Err(_) => PeerAnswer::Silent(format!("no answer within {ASK_TIMEOUT:?}")),
        };
        (peer.clone(), answer)
    });
    futures_util::future::join_all(asks).await
}

/// `GET /status` of one peer's instance manager (over TLS when the database has it).
pub async fn ask(peer: &Peer) -> PeerAnswer {
    let host = peer.server.host.as_str();
    let port = peer.http_port;
    let resolved = tokio::net::lookup_host((host, port))
        .await
        .map(|mut addresses| addresses.next().is_some());
    if !matches!(resolved, Ok(true)) {
        return PeerAnswer::Missing;
    }
    let silent = |why: String| PeerAnswer::Silent(format!("{host}:{port}: {why}"));
    // By its name: a TLS certificate is checked against the name dialled.
    match manager_client::get_json::<InstanceReport>(host, port, "/status", ASK_TIMEOUT).await {
        Ok(report) if report.name == peer.server.instance => PeerAnswer::Report(Box::new(report)),
        Ok(report) => silent(format!("answers as {}", report.name)),
        Err(e) => silent(e.detail()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ordinal: u32) -> Peer {
        Peer {
            server: Endpoint {
                instance: format!("db-{ordinal}"),
                host: format!("db-{ordinal}.db-headless.prod.svc"),
                port: 5432,
            },
            http_port: 8008,
        }
    }

    /// A peer's `/status` as it sends it.
    fn report(
        ordinal: u32,
        role: Option<Role>,
        state: ServerState,
        data: Option<bool>,
    ) -> PeerAnswer {
        let json = serde_json::json!({
            "name": format!("db-{ordinal}"),
            "state": state,
            "role": role,
            "ready": false,
            "managerPid": 1,
            "holdsData": data,
        });
        PeerAnswer::Report(Box::new(serde_json::from_value(json).unwrap()))
    }

    #[test]
    fn an_empty_data_dir_is_initialised_only_when_no_peer_may_hold_data() {
        use EmptyDataDir::*;
        let primary = || report(1, Some(Role::Primary), ServerState::Running, Some(true));
        let replica = || report(2, Some(Role::Replica), ServerState::Running, Some(true));
        let empty = || report(2, None, ServerState::Initializing, Some(false));
        type Row = (
            &'static str,
            Vec<(Peer, PeerAnswer)>,
            fn(&EmptyDataDir) -> bool,
        );
        let rows: Vec<Row> = vec![
            ("no peers at all (one instance)", vec![], |p| {
                *p == Initialise
            }),
            (
                "a new database: no other pod exists yet",
                vec![
                    (peer(1), PeerAnswer::Missing),
                    (peer(2), PeerAnswer::Missing),
                ],
                |p| *p == Initialise,
            ),
            (
                "every peer answers that it has no data either",
                vec![(peer(1), PeerAnswer::Missing), (peer(2), empty())],
                |p| *p == Initialise,
            ),
            (
                "a running primary holds the data: clone from it",
                vec![(peer(1), primary()), (peer(2), replica())],
                |p| matches!(p, CloneFrom(e) if e.instance == "db-1"),
            ),
            (
                "a replica holds the data, no primary yet: wait",
                vec![(peer(1), PeerAnswer::Missing), (peer(2), replica())],
                |p| matches!(p, Wait(w) if w.contains("db-2 hold")),
            ),
            (
                "a manager that does not say whether it holds data is taken to hold it",
                vec![(peer(2), report(2, None, ServerState::Initializing, None))],
                |p| matches!(p, Wait(_)),
            ),
            (
                "a peer that exists but does not answer may hold data: wait",
                vec![
                    (peer(1), PeerAnswer::Silent("connection refused".into())),
                    (peer(2), empty()),
                ],
                |p| matches!(p, Wait(w) if w.contains("db-1 (connection refused)")),
            ),
            (
                "two primaries: nobody to clone from safely",
                vec![
                    (peer(1), primary()),
                    (
                        peer(2),
                        report(2, Some(Role::Primary), ServerState::Running, Some(true)),
                    ),
                ],
                |p| matches!(p, Wait(w) if w.contains("all report being the primary")),
            ),
        ];
        let mut failed = Vec::new();
        for (name, answers, check) in rows {
            let plan = plan_empty_data_dir(&answers);
            if !check(&plan) {
                failed.push(format!("{name}: {plan:?}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }
}
