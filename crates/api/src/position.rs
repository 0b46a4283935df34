//! Replication positions and their order, for every engine: a PostgreSQL WAL location (LSN,
//! `0/3000060`) on a timeline, a MariaDB GTID position (`0-1-100,1-2-50`: per replication domain
//! the last transaction) and a MySQL GTID set (`3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7-9`).
//!
//! WAL positions are totally ordered (newest timeline first, then highest LSN). GTID positions
//! and sets are only partially ordered: one holds another when it holds every transaction of it
//! ([`MysqlGtidSet::is_subset_of`]), and two sets can each hold a transaction the other lacks
//! (an *errant* transaction). The decision core compares replicas with these orders; nothing here
//! talks to a server.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::spec::Engine;

/// Text that is not a replication position of the expected kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not {what}: {problem} (expected {expected})")]
pub struct PositionError {
    /// The text as given.
    pub text: String,
    /// What it should have been, e.g. `a PostgreSQL LSN`.
    pub what: &'static str,
    /// What is wrong with it.
    pub problem: String,
    /// The valid form, with an example.
    pub expected: &'static str,
}

const LSN_WHAT: &str = "a PostgreSQL LSN";
const LSN_EXPECTED: &str =
    "two hexadecimal numbers of 1 to 8 digits separated by '/', e.g. 0/3000060";
const MARIADB_WHAT: &str = "a MariaDB GTID position";
const MARIADB_EXPECTED: &str =
    "comma-separated domain-server-sequence triples of decimal numbers, e.g. 0-1-100,1-2-50";
const MYSQL_WHAT: &str = "a MySQL GTID set";
const MYSQL_EXPECTED: &str = "comma-separated UUID:interval[:interval…] entries with intervals N or N-M, \
     e.g. 3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7-9";

fn position_error(
    text: &str,
    what: &'static str,
    expected: &'static str,
    problem: impl Into<String>,
) -> PositionError {
    PositionError {
        text: text.to_string(),
        what,
        problem: problem.into(),
        expected,
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A PostgreSQL WAL location (`pg_lsn`): a byte offset into the write-ahead log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes of WAL from `earlier` to `self`; 0 when `earlier` is not earlier.
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Bytes of WAL between the two locations, whichever comes first.
    pub fn distance(self, other: Lsn) -> u64 {
        self.0.abs_diff(other.0)
    }
}

impl FromStr for Lsn {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Lsn, PositionError> {
        let invalid = |problem: &str| position_error(text, LSN_WHAT, LSN_EXPECTED, problem);
        let (hi, lo) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| invalid("there is no '/'"))?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 {
                return Err(invalid("each half must be 1 to 8 hexadecimal digits"));
            }
            if !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("each half must be hexadecimal"));
            }
            u32::from_str_radix(part, 16).map_err(|_| invalid("each half must be hexadecimal"))
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl fmt::Display for Lsn {
    /// Prints like PostgreSQL does: upper-case hex halves without leading zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A WAL location on a timeline. Ordered by timeline first, then LSN: a promoted replica starts
/// a new, higher timeline, and everything on it is newer than anything on the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WalPosition {
    pub timeline: u32,
    pub lsn: Lsn,
}

impl fmt::Display for WalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on timeline {}", self.lsn, self.timeline)
    }
}

// ---------------------------------------------------------------------------------------------
// MariaDB

/// One MariaDB GTID: `domain-server-sequence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MariadbGtid {
    pub domain: u32,
    pub server: u32,
    pub sequence: u64,
}

/// A MariaDB GTID position (`@@gtid_current_pos`, `@@gtid_slave_pos`): per replication domain,
/// the last transaction applied. Within a domain transactions are applied in sequence order, so a
/// position holds every transaction of its domain up to that sequence number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MariadbGtidPosition {
    /// Domain → the last GTID of that domain.
    domains: BTreeMap<u32, MariadbGtid>,
}

impl MariadbGtidPosition {
    /// The empty position: no transaction at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// The position after `gtids`: per domain the one with the highest sequence number.
    pub fn from_gtids(gtids: impl IntoIterator<Item = MariadbGtid>) -> Self {
        let mut position = Self::new();
        for gtid in gtids {
            position.insert(gtid);
        }
        position
    }

    /// Records `gtid`, keeping per domain the highest sequence number.
    pub fn insert(&mut self, gtid: MariadbGtid) {
        let entry = self.domains.entry(gtid.domain).or_insert(gtid);
        if (gtid.sequence, gtid.server) > (entry.sequence, entry.server) {
            *entry = gtid;
        }
    }

    /// The last GTID per domain, by domain.
    pub fn gtids(&self) -> impl Iterator<Item = MariadbGtid> + '_ {
        self.domains.values().copied()
    }

    /// The sequence number reached in `domain` (0: none).
    pub fn sequence(&self, domain: u32) -> u64 {
        self.domains.get(&domain).map_or(0, |g| g.sequence)
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Every transaction of `self` is in `other`: in each domain, `other` reached at least the
    /// same sequence number.
    pub fn is_subset_of(&self, other: &MariadbGtidPosition) -> bool {
        self.domains
            .values()
            .all(|g| other.sequence(g.domain) >= g.sequence)
    }

    /// The position holding every transaction of both.
    pub fn union(&self, other: &MariadbGtidPosition) -> MariadbGtidPosition {
        let mut union = self.clone();
        for gtid in other.gtids() {
            union.insert(gtid);
        }
        union
    }

    /// How many transactions of `self` are missing from `other` (per domain, the sequence
    /// numbers `self` reached beyond `other`).
    pub fn missing_from(&self, other: &MariadbGtidPosition) -> u64 {
        self.domains
            .values()
            .map(|g| g.sequence.saturating_sub(other.sequence(g.domain)))
            .sum()
    }

    /// The partial order: `Less` when `self` is a strict subset, `None` when each holds a
    /// transaction the other lacks.
    pub fn compare(&self, other: &MariadbGtidPosition) -> Option<Ordering> {
        subset_order(self.is_subset_of(other), other.is_subset_of(self))
    }
}

impl FromStr for MariadbGtidPosition {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Self, PositionError> {
        let mut position = MariadbGtidPosition::new();
        if text.trim().is_empty() {
            return Ok(position);
        }
        for entry in text.split(',') {
            let entry = entry.trim();
            let invalid =
                |problem: String| position_error(text, MARIADB_WHAT, MARIADB_EXPECTED, problem);
            let parts: Vec<&str> = entry.split('-').collect();
            let [domain, server, sequence] = parts.as_slice() else {
                return Err(invalid(format!(
                    "entry {entry:?} is not three numbers joined by '-'"
                )));
            };
            let number = |part: &str, name: &str| {
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid(format!(
                        "the {name} of entry {entry:?} is not a decimal number"
                    )));
                }
                part.parse::<u64>()
                    .map_err(|_| invalid(format!("the {name} of entry {entry:?} is too large")))
            };
            let domain = u32::try_from(number(domain, "domain")?)
                .map_err(|_| invalid(format!("the domain of entry {entry:?} is too large")))?;
            let server = u32::try_from(number(server, "server id")?)
                .map_err(|_| invalid(format!("the server id of entry {entry:?} is too large")))?;
            let sequence = number(sequence, "sequence number")?;
            position.insert(MariadbGtid {
                domain,
                server,
                sequence,
            });
        }
        Ok(position)
    }
}

impl fmt::Display for MariadbGtidPosition {
    /// `domain-server-seq` per domain, by domain, joined by `,` (as MariaDB prints it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.domains.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}-{}-{}", g.domain, g.server, g.sequence)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// MySQL

/// A MySQL GTID set (`@@gtid_executed`, `Retrieved_Gtid_Set`): per source server UUID, a set of
/// transaction numbers kept as sorted, disjoint, non-adjacent inclusive intervals.
///
/// Tagged GTIDs (MySQL 8.3+, `uuid:tag:1-5`) are refused: Stator does not write them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MysqlGtidSet {
    /// Lower-case UUID → normalized intervals `(first, last)`, `1 <= first <= last`.
    sources: BTreeMap<String, Vec<(u64, u64)>>,
}

impl MysqlGtidSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds transactions `first..=last` of `uuid` (lower-cased). Empty or zero ranges add nothing.
    pub fn insert_range(&mut self, uuid: &str, first: u64, last: u64) {
        let first = first.max(1);
        if last < first {
            return;
        }
        let intervals = self.sources.entry(uuid.to_ascii_lowercase()).or_default();
        intervals.push((first, last));
        normalize(intervals);
    }

    /// Source UUIDs and their intervals.
    pub fn intervals(&self) -> impl Iterator<Item = (&str, &[(u64, u64)])> {
        self.sources.iter().map(|(u, i)| (u.as_str(), i.as_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Number of transactions in the set (saturating).
    pub fn len(&self) -> u64 {
        self.sources
            .values()
            .flatten()
            .fold(0u64, |n, (a, b)| n.saturating_add(b - a + 1))
    }

    /// Whether transaction `number` of `uuid` is in the set.
    pub fn contains(&self, uuid: &str, number: u64) -> bool {
        self.sources
            .get(&uuid.to_ascii_lowercase())
            .is_some_and(|iv| iv.iter().any(|&(a, b)| a <= number && number <= b))
    }

    /// Every transaction of `self` is in `other`.
    pub fn is_subset_of(&self, other: &MysqlGtidSet) -> bool {
        self.sources.iter().all(|(uuid, mine)| {
            let Some(theirs) = other.sources.get(uuid) else {
                return mine.is_empty();
            };
            mine.iter()
                .all(|&(a, b)| theirs.iter().any(|&(c, d)| c <= a && b <= d))
        })
    }

    /// The set of transactions in either.
    pub fn union(&self, other: &MysqlGtidSet) -> MysqlGtidSet {
        let mut union = self.clone();
        for (uuid, intervals) in &other.sources {
            let merged = union.sources.entry(uuid.clone()).or_default();
            merged.extend_from_slice(intervals);
            normalize(merged);
        }
        union
    }

    /// The transactions of `self` that `other` lacks.
    pub fn difference(&self, other: &MysqlGtidSet) -> MysqlGtidSet {
        let mut difference = MysqlGtidSet::new();
        for (uuid, mine) in &self.sources {
            let theirs = other.sources.get(uuid).map_or(&[][..], Vec::as_slice);
            let mut left: Vec<(u64, u64)> = Vec::new();
            for &(a, b) in mine {
                let mut start = a;
                let mut covered = false;
                for &(c, d) in theirs {
                    if d < start {
                        continue;
                    }
                    if c > b {
                        break;
                    }
                    if c > start {
                        left.push((start, c - 1));
                    }
                    if d >= b {
                        covered = true;
                        break;
                    }
                    start = d + 1;
                }
                if !covered {
                    left.push((start, b));
                }
            }
            if !left.is_empty() {
                normalize(&mut left);
                difference.sources.insert(uuid.clone(), left);
            }
        }
        difference
    }

    /// How many transactions of `self` are missing from `other`.
    pub fn missing_from(&self, other: &MysqlGtidSet) -> u64 {
        self.difference(other).len()
    }

    /// The partial order by inclusion; `None` when each holds a transaction the other lacks.
    pub fn compare(&self, other: &MysqlGtidSet) -> Option<Ordering> {
        subset_order(self.is_subset_of(other), other.is_subset_of(self))
    }
}

/// Sorts and merges overlapping or adjacent intervals.
fn normalize(intervals: &mut Vec<(u64, u64)>) {
    intervals.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
    for &(a, b) in intervals.iter() {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    *intervals = merged;
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl FromStr for MysqlGtidSet {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Self, PositionError> {
        let mut set = MysqlGtidSet::new();
        if text.trim().is_empty() {
            return Ok(set);
        }
        for entry in text.split(',') {
            let entry = entry.trim();
            let invalid =
                |problem: String| position_error(text, MYSQL_WHAT, MYSQL_EXPECTED, problem);
            let mut parts = entry.split(':');
            let uuid = parts.next().unwrap_or_default().trim();
            if !is_uuid(uuid) {
                return Err(invalid(format!(
                    "entry {entry:?} does not start with a server UUID"
                )));
            }
            let mut any = false;
            for interval in parts {
                any = true;
                let interval = interval.trim();
                let (first, last) = interval.split_once('-').unwrap_or((interval, interval));
                let number = |part: &str| {
                    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    part.parse::<u64>().ok()
                };
                let (Some(first), Some(last)) = (number(first), number(last)) else {
                    if interval.bytes().any(|b| b.is_ascii_alphabetic()) {
                        return Err(invalid(format!(
                            "{interval:?} in entry {entry:?} looks like a GTID tag; tagged GTIDs are not supported"
                        )));
                    }
                    return Err(invalid(format!(
                        "{interval:?} in entry {entry:?} is not an interval N or N-M"
                    )));
                };
                if first == 0 || last < first {
                    return Err(invalid(format!(
                        "interval {interval:?} in entry {entry:?} must satisfy 1 <= N <= M"
                    )));
                }
                set.insert_range(uuid, first, last);
            }
            if !any {
                return Err(invalid(format!("entry {entry:?} has no interval")));
            }
        }
        Ok(set)
    }
}

impl fmt::Display for MysqlGtidSet {
    /// `uuid:1-5:7,uuid2:1-3` with lower-case UUIDs in order, as MySQL prints it (without the
    /// newlines MySQL inserts after commas).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (uuid, intervals)) in self.sources.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(uuid)?;
            for &(a, b) in intervals {
                if a == b {
                    write!(f, ":{a}")?;
                } else {
                    write!(f, ":{a}-{b}")?;
                }
            }
        }
        Ok(())
    }
}

fn subset_order(self_in_other: bool, other_in_self: bool) -> Option<Ordering> {
    match (self_in_other, other_in_self) {
        (true, true) => Some(Ordering::Equal),
        (true, false) => Some(Ordering::Less),
        (false, true) => Some(Ordering::Greater),
        (false, false) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Any engine

/// A replication position of any engine. Positions of different kinds are never comparable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ReplicationPosition {
    /// PostgreSQL: a WAL location on a timeline.
    Wal(WalPosition),
    /// MariaDB: a GTID position.
    Mariadb { gtid: MariadbGtidPosition },
    /// MySQL 8: a GTID set.
    Mysql { gtid: MysqlGtidSet },
}

impl ReplicationPosition {
    /// Parses the position text an instance reports for `engine`. PostgreSQL positions need the
    /// `timeline` they are on; the MySQL family ignores it.
    pub fn parse(
        engine: Engine,
        text: &str,
        timeline: Option<u32>,
    ) -> Result<ReplicationPosition, PositionError> {
        match engine {
            Engine::Postgres => {
                let lsn: Lsn = text.parse()?;
                let timeline = timeline.ok_or_else(|| {
                    position_error(
                        text,
                        "a complete PostgreSQL position",
                        "an LSN together with the timeline it is on",
                        "the timeline is unknown",
                    )
                })?;
                Ok(ReplicationPosition::Wal(WalPosition { timeline, lsn }))
            }
            Engine::Mariadb => Ok(ReplicationPosition::Mariadb {
                gtid: text.parse()?,
            }),
            Engine::Mysql => Ok(ReplicationPosition::Mysql {
                gtid: text.parse()?,
            }),
        }
    }

    /// The order between two positions: WAL positions totally (timeline, then LSN), GTID
    /// positions by inclusion. `None` when neither holds the other, or the kinds differ.
    pub fn compare(&self, other: &ReplicationPosition) -> Option<Ordering> {
        match (self, other) {
            (ReplicationPosition::Wal(a), ReplicationPosition::Wal(b)) => Some(a.cmp(b)),
            (
                ReplicationPosition::Mariadb { gtid: a },
                ReplicationPosition::Mariadb { gtid: b },
            ) => a.compare(b),
            (ReplicationPosition::Mysql { gtid: a }, ReplicationPosition::Mysql { gtid: b }) => {
                a.compare(b)
            }
            _ => None,
        }
    }

    /// `self` holds everything `other` holds (`other <= self`).
    pub fn includes(&self, other: &ReplicationPosition) -> bool {
        matches!(
            self.compare(other),
            Some(Ordering::Greater | Ordering::Equal)
        )
    }

    /// How far `self` is ahead of `other`: WAL bytes (by LSN alone) or transactions `other`
    /// lacks. `None` when the kinds differ.
    pub fn ahead_of(&self, other: &ReplicationPosition) -> Option<u64> {
        match (self, other) {
            (ReplicationPosition::Wal(a), ReplicationPosition::Wal(b)) => {
                Some(a.lsn.bytes_after(b.lsn))
            }
            (
                ReplicationPosition::Mariadb { gtid: a },
                ReplicationPosition::Mariadb { gtid: b },
            ) => Some(a.missing_from(b)),
            (ReplicationPosition::Mysql { gtid: a }, ReplicationPosition::Mysql { gtid: b }) => {
                Some(a.missing_from(b))
            }
            _ => None,
        }
    }

    /// The PostgreSQL timeline, if this is a WAL position.
    pub fn timeline(&self) -> Option<u32> {
        match self {
            ReplicationPosition::Wal(w) => Some(w.timeline),
            _ => None,
        }
    }
}

impl fmt::Display for ReplicationPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicationPosition::Wal(w) => w.fmt(f),
            ReplicationPosition::Mariadb { gtid } => write!(f, "GTID {gtid}"),
            ReplicationPosition::Mysql { gtid } => write!(f, "GTID set {gtid}"),
        }
    }
}

// Text forms in serde, so positions read the same in JSON/YAML as in the servers' own output.

macro_rules! serde_as_text {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(Lsn);
serde_as_text!(MariadbGtidPosition);
serde_as_text!(MysqlGtidSet);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const B: &str = "8a94f357-aab4-11df-86ab-c80aa9429562";

    fn mysql(text: &str) -> MysqlGtidSet {
        text.parse().unwrap()
    }

    fn mariadb(text: &str) -> MariadbGtidPosition {
        text.parse().unwrap()
    }

    #[test]
    fn lsn_parses_and_prints_like_postgres() {
        let lsn: Lsn = "0/3000060".parse().unwrap();
        assert_eq!(lsn, Lsn(0x0300_0060));
        assert_eq!(lsn.to_string(), "0/3000060");
        let high: Lsn = "16/b374d848".parse().unwrap();
        assert_eq!(high.to_string(), "16/B374D848");
    }

    #[test]
    fn lsn_orders_by_high_half_first_and_measures_bytes() {
        let a: Lsn = "1/0".parse().unwrap();
        let b: Lsn = "0/FFFFFFFF".parse().unwrap();
        assert!(a > b);
        assert_eq!(a.bytes_after(b), 1);
        assert_eq!(b.bytes_after(a), 0);
        assert_eq!(b.distance(a), 1);
    }

    #[test]
    fn lsn_refuses_malformed_text_and_says_what_is_expected() {
        for bad in [
            "",
            "0",
            "/",
            "0/",
            "/0",
            "g/0",
            "0/123456789",
            "0/1/2",
            "-1/0",
            "0/ 1",
        ] {
            let error = bad.parse::<Lsn>().expect_err(bad);
            assert!(error.to_string().contains("e.g. 0/3000060"), "{error}");
        }
    }

    #[test]
    fn a_newer_timeline_is_ahead_of_a_higher_lsn() {
        let old = WalPosition {
            timeline: 1,
            lsn: Lsn(0x9000_0000),
        };
        let new = WalPosition {
            timeline: 2,
            lsn: Lsn(0x3000_0000),
        };
        assert!(new > old);
    }

    #[test]
    fn postgres_positions_need_their_timeline() {
        let error = ReplicationPosition::parse(Engine::Postgres, "0/1", None).unwrap_err();
        assert!(error.to_string().contains("timeline"), "{error}");
        let p = ReplicationPosition::parse(Engine::Postgres, "0/1", Some(3)).unwrap();
        assert_eq!(p.timeline(), Some(3));
    }

    #[test]
    fn mariadb_keeps_the_highest_sequence_per_domain() {
        let p = mariadb("0-1-100, 1-2-50,0-2-90");
        assert_eq!(p.to_string(), "0-1-100,1-2-50");
        assert_eq!(p.sequence(0), 100);
        assert_eq!(mariadb(""), MariadbGtidPosition::new());
    }

    #[test]
    fn mariadb_subset_and_missing_transactions() {
        let replica = mariadb("0-1-90,1-2-50");
        let primary = mariadb("0-1-100,1-2-50");
        assert!(replica.is_subset_of(&primary));
        assert!(!primary.is_subset_of(&replica));
        assert_eq!(primary.missing_from(&replica), 10);
        assert_eq!(replica.missing_from(&primary), 0);
        // An errant transaction in a domain the primary never used.
        let errant = mariadb("0-1-90,7-3-1");
        assert!(!errant.is_subset_of(&primary));
        assert_eq!(errant.missing_from(&primary), 1);
        assert_eq!(errant.compare(&primary), None);
        assert_eq!(replica.union(&errant).to_string(), "0-1-90,1-2-50,7-3-1");
    }

    #[test]
    fn mariadb_refuses_malformed_text_and_says_what_is_expected() {
        for bad in [
            "0-1",
            "0-1-2-3",
            "a-1-2",
            "0-1-",
            "0--1",
            "0-1-2,",
            "4294967296-1-1",
            "0-1-1.5",
        ] {
            let error = bad.parse::<MariadbGtidPosition>().expect_err(bad);
            assert!(
                error.to_string().contains("domain-server-sequence"),
                "{error}"
            );
        }
    }

    #[test]
    fn mysql_sets_normalize_and_print_like_mysql() {
        let set = mysql(&format!("{}:7-9:1-5:6, \n{B}:3", A.to_ascii_uppercase()));
        assert_eq!(set.to_string(), format!("{A}:1-9,{B}:3"));
        assert_eq!(set.len(), 10);
        assert!(set.contains(A, 9));
        assert!(!set.contains(B, 2));
        assert_eq!(mysql(" "), MysqlGtidSet::new());
    }

    #[test]
    fn mysql_subset_union_and_difference() {
        let replica = mysql(&format!("{A}:1-5"));
        let primary = mysql(&format!("{A}:1-9,{B}:1-2"));
        assert!(replica.is_subset_of(&primary));
        assert_eq!(primary.missing_from(&replica), 6);
        assert_eq!(
            primary.difference(&replica).to_string(),
            format!("{A}:6-9,{B}:1-2")
        );
        let errant = mysql(&format!("{A}:1-5:11"));
        assert_eq!(errant.compare(&primary), None);
        assert_eq!(errant.missing_from(&primary), 1);
        assert_eq!(
            errant.union(&primary).to_string(),
            format!("{A}:1-9:11,{B}:1-2")
        );
        let holes = mysql(&format!("{A}:1-3:5-7:9-12"));
        assert_eq!(
            holes.difference(&mysql(&format!("{A}:2-10"))).to_string(),
            format!("{A}:1:11-12")
        );
    }

    #[test]
    fn mysql_refuses_malformed_text_and_says_what_is_expected() {
        for bad in [
            "x:1-5".to_string(),
            A.to_string(),
            format!("{A}:"),
            format!("{A}:0-3"),
            format!("{A}:5-3"),
            format!("{A}:1-2,"),
            format!("{A}:a-b"),
            format!("{A}:tag:1-3"),
        ] {
            let error = bad.parse::<MysqlGtidSet>().expect_err(&bad);
            assert!(error.to_string().contains("UUID:interval"), "{error}");
        }
        let tagged = format!("{A}:tag:1-3").parse::<MysqlGtidSet>().unwrap_err();
        assert!(tagged.to_string().contains("tag"), "{tagged}");
    }

    #[test]
    fn positions_of_different_engines_are_not_comparable() {
        let wal = ReplicationPosition::parse(Engine::Postgres, "0/1", Some(1)).unwrap();
        let gtid = ReplicationPosition::parse(Engine::Mariadb, "0-1-1", None).unwrap();
        assert_eq!(wal.compare(&gtid), None);
        assert!(!wal.includes(&gtid));
        assert_eq!(wal.ahead_of(&gtid), None);
    }

    #[test]
    fn positions_serialize_as_the_servers_text() {
        let p = ReplicationPosition::parse(Engine::Postgres, "0/3000060", Some(2)).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"kind":"wal","timeline":2,"lsn":"0/3000060"}"#);
        assert_eq!(
            serde_json::from_str::<ReplicationPosition>(&json).unwrap(),
            p
        );
        let g = ReplicationPosition::parse(Engine::Mysql, &format!("{A}:1-5"), None).unwrap();
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(json, format!(r#"{{"kind":"mysql","gtid":"{A}:1-5"}}"#));
        assert_eq!(
            serde_json::from_str::<ReplicationPosition>(&json).unwrap(),
            g
        );
        assert!(
            serde_json::from_str::<ReplicationPosition>(r#"{"kind":"mariadb","gtid":"x"}"#)
                .is_err()
        );
    }

    fn uuid() -> impl Strategy<Value = String> {
        prop::sample::select(vec![A, B, "00000000-0000-0000-0000-000000000001"])
            .prop_map(str::to_string)
    }

    fn mysql_set() -> impl Strategy<Value = MysqlGtidSet> {
        prop::collection::vec((uuid(), 1u64..40, 0u64..6), 0..6).prop_map(|ranges| {
            let mut set = MysqlGtidSet::new();
            for (u, first, extra) in ranges {
                set.insert_range(&u, first, first + extra);
            }
            set
        })
    }

    fn mariadb_position() -> impl Strategy<Value = MariadbGtidPosition> {
        prop::collection::vec((0u32..3, 1u32..4, 0u64..20), 0..5).prop_map(|gtids| {
            MariadbGtidPosition::from_gtids(gtids.into_iter().map(|(domain, server, sequence)| {
                MariadbGtid {
                    domain,
                    server,
                    sequence,
                }
            }))
        })
    }

    proptest! {
        #[test]
        fn lsn_display_then_parse_is_identity(v: u64) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }

        #[test]
        fn mysql_display_then_parse_is_identity(set in mysql_set()) {
            prop_assert_eq!(set.to_string().parse::<MysqlGtidSet>().unwrap(), set);
        }

        #[test]
        fn mariadb_display_then_parse_is_identity(p in mariadb_position()) {
            prop_assert_eq!(p.to_string().parse::<MariadbGtidPosition>().unwrap(), p);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = s.parse::<Lsn>();
            let _ = s.parse::<MariadbGtidPosition>();
            let _ = s.parse::<MysqlGtidSet>();
        }

        #[test]
        fn mysql_subset_is_a_partial_order(a in mysql_set(), b in mysql_set(), c in mysql_set()) {
            prop_assert!(a.is_subset_of(&a));
            if a.is_subset_of(&b) && b.is_subset_of(&a) {
                prop_assert_eq!(&a, &b);
            }
            if a.is_subset_of(&b) && b.is_subset_of(&c) {
                prop_assert!(a.is_subset_of(&c));
            }
        }

        #[test]
        fn mysql_union_and_difference_agree_on_sizes(a in mysql_set(), b in mysql_set()) {
            let union = a.union(&b);
            prop_assert!(a.is_subset_of(&union) && b.is_subset_of(&union));
            prop_assert_eq!(union.len(), b.len() + a.missing_from(&b));
            prop_assert_eq!(a.missing_from(&b) == 0, a.is_subset_of(&b));
            prop_assert!(a.difference(&b).is_subset_of(&a));
            let diff = a.difference(&b);
            prop_assert!(diff.intervals().all(|(u, iv)| iv.iter().all(|&(x, y)| (x..=y).all(|n| !b.contains(u, n)))));
        }

        #[test]
        fn mariadb_subset_is_a_partial_order(a in mariadb_position(), b in mariadb_position(), c in mariadb_position()) {
            prop_assert!(a.is_subset_of(&a));
            if a.is_subset_of(&b) && b.is_subset_of(&a) {
                // Equal sequences per domain; the server ids may differ only in ties.
                prop_assert_eq!(a.missing_from(&b) + b.missing_from(&a), 0);
            }
            if a.is_subset_of(&b) && b.is_subset_of(&c) {
                prop_assert!(a.is_subset_of(&c));
            }
            let union = a.union(&b);
            prop_assert!(a.is_subset_of(&union) && b.is_subset_of(&union));
            prop_assert_eq!(a.missing_from(&b) == 0, a.is_subset_of(&b));
        }

        #[test]
        fn wal_positions_are_totally_ordered_by_timeline_then_lsn(t1 in 1u32..4, l1: u64, t2 in 1u32..4, l2: u64) {
            let a = WalPosition { timeline: t1, lsn: Lsn(l1) };
            let b = WalPosition { timeline: t2, lsn: Lsn(l2) };
            let expected = t1.cmp(&t2).then(l1.cmp(&l2));
            prop_assert_eq!(a.cmp(&b), expected);
        }
    }
}
