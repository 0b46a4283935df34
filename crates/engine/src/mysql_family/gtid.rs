//! Errant transactions: what a replica holds that its upstream does not. A replica reads its own
//! logged GTIDs and its upstream's (as the monitoring user, over TCP) and compares them here.
//!
//! MariaDB: `@@gtid_binlog_state` lists, per replication domain *and server id*, the last GTID
//! written to the binary log. A replica's entry is contained in the upstream when the upstream
//! logged that server id in that domain at least as far, or when the upstream's own history
//! (its `gtid_slave_pos`, the point it was cloned or last replicated from) already passed that
//! sequence number in the domain — strict mode orders sequence numbers within a domain, so an
//! upstream cloned after those transactions holds them without having logged them itself.
//! Anything else (an insert on a replica with the binary log on, a former primary's
//! unreplicated tail) is errant.
//!
//! MySQL: `@@gtid_executed` sets compare by inclusion.

use std::collections::BTreeMap;

use stator_api::position::{MariadbGtid, MariadbGtidPosition, MysqlGtidSet, PositionError};

/// The GTIDs of a MariaDB `gtid_binlog_state` (one per domain and server id).
pub fn parse_binlog_state(text: &str) -> Result<Vec<MariadbGtid>, PositionError> {
    let mut gtids = Vec::new();
    for entry in text.split(',').filter(|e| !e.trim().is_empty()) {
        // Each entry alone is a valid one-domain position: reuse its parser.
        let one: MariadbGtidPosition = entry.trim().parse()?;
        gtids.extend(one.gtids());
    }
    Ok(gtids)
}

/// The GTIDs of `replica_state` (a replica's `gtid_binlog_state`) its upstream lacks, given
/// the upstream's `gtid_binlog_state` and `gtid_slave_pos`. Empty when none.
pub fn mariadb_errant(
    replica_state: &str,
    upstream_state: &str,
    upstream_slave_pos: &str,
) -> Result<Vec<MariadbGtid>, PositionError> {
    let logged: BTreeMap<(u32, u32), u64> = parse_binlog_state(upstream_state)?
        .into_iter()
        .map(|g| ((g.domain, g.server), g.sequence))
        .collect();
    let floor: MariadbGtidPosition = upstream_slave_pos.parse()?;
    Ok(parse_binlog_state(replica_state)?
        .into_iter()
        .filter(|g| {
            let has_logged = logged
                .get(&(g.domain, g.server))
                .is_some_and(|&seq| seq >= g.sequence);
            !has_logged && g.sequence > floor.sequence(g.domain)
        })
        .collect())
}

/// The transactions of the replica's `gtid_executed` missing from the upstream's.
pub fn mysql_errant(replica: &str, upstream: &str) -> Result<MysqlGtidSet, PositionError> {
    let replica: MysqlGtidSet = replica.parse()?;
    let upstream: MysqlGtidSet = upstream.parse()?;
    Ok(replica.difference(&upstream))
}

/// How an errant set is reported: the GTIDs and what to do.
pub fn describe_errant(gtids: &str, upstream: &str) -> String {
    format!(
        "{gtids} (not in {upstream}'s binary log: transactions written on this instance; rebuild it from {upstream})"
    )
}

/// The MariaDB GTIDs joined as the server prints them.
pub fn join_gtids(gtids: &[MariadbGtid]) -> String {
    gtids
        .iter()
        .map(|g| format!("{}-{}-{}", g.domain, g.server, g.sequence))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_that_only_replicated_holds_nothing_errant() {
        let e = mariadb_errant("0-1000-7", "0-1000-9", "").unwrap();
        assert!(e.is_empty(), "{e:?}");
        let e = mariadb_errant("", "0-1000-9", "").unwrap();
        assert!(e.is_empty());
    }

    #[test]
    fn a_write_on_the_replica_is_errant_even_once_the_upstream_passed_its_sequence() {
        let e = mariadb_errant("0-1000-5,0-1002-6", "0-1000-5", "").unwrap();
        assert_eq!(join_gtids(&e), "0-1002-6");
        // The upstream wrote on: its sequence numbers pass 6, but 1002 never logged there.
        let e = mariadb_errant("0-1000-5,0-1002-6", "0-1000-9", "").unwrap();
        assert_eq!(join_gtids(&e), "0-1002-6");
    }

    #[test]
    fn a_former_primarys_unreplicated_tail_is_errant() {
        // db-1 (1001) was promoted after receiving 0-1000-10; db-0 had written up to 12.
        let e = mariadb_errant("0-1000-12", "0-1000-10,0-1001-15", "0-1000-10").unwrap();
        assert_eq!(join_gtids(&e), "0-1000-12");
        let e = mariadb_errant("0-1000-10", "0-1000-10,0-1001-15", "0-1000-10").unwrap();
        assert!(e.is_empty());
    }

    #[test]
    fn history_from_before_the_upstream_was_cloned_is_not_errant() {
        // The upstream was cloned at 0-1000-20 and only logged what came after.
        let e = mariadb_errant("0-1003-3,0-1000-25", "0-1000-25", "0-1000-20").unwrap();
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn a_garbled_state_is_an_error_not_a_panic() {
        assert!(mariadb_errant("0-x-1", "", "").is_err());
        assert!(mariadb_errant("", "1-2", "").is_err());
    }

    #[test]
    fn mysql_errant_transactions_are_the_set_difference() {
        let a = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-10";
        let b =
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-12,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:1";
        assert!(mysql_errant(a, b).unwrap().is_empty());
        let e = mysql_errant(b, a).unwrap();
        assert_eq!(e.len(), 3);
    }
}
