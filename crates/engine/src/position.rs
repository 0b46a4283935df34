//! Replication positions and their order. PostgreSQL's is a WAL location (LSN, `0/3000060`) on a
//! timeline; the MySQL family's will be a GTID set, which is only partially ordered.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::error::EngineError;

/// A PostgreSQL WAL location: 64 bits written as two hex halves, `HI/LO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `earlier` to `self`; 0 when `earlier` is ahead.
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl FromStr for Lsn {
    type Err = EngineError;

    fn from_str(text: &str) -> Result<Lsn, EngineError> {
        let invalid = |message: &str| EngineError::Position {
            text: text.to_string(),
            message: message.to_string(),
        };
        let (hi, lo) = text.trim().split_once('/').ok_or_else(|| {
            invalid("expected an LSN such as 0/3000060 (two hex numbers and a '/')")
        })?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 {
                return Err(invalid("each half of an LSN is 1 to 8 hex digits"));
            }
            u32::from_str_radix(part, 16).map_err(|_| invalid("each half of an LSN is hexadecimal"))
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A position an engine reports, with enough context to order two of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// PostgreSQL: a WAL location on a timeline (the timeline when known).
    Wal { timeline: Option<u32>, lsn: Lsn },
    /// MySQL family: a GTID set, kept as text until that engine lands.
    GtidSet(String),
}

/// Orders two PostgreSQL positions: the higher timeline wins (it saw a promotion the other did
/// not), then the higher LSN. Unknown timelines compare by LSN only.
pub fn compare_wal(a: (Option<u32>, Lsn), b: (Option<u32>, Lsn)) -> Ordering {
    match (a.0, b.0) {
        (Some(ta), Some(tb)) if ta != tb => ta.cmp(&tb),
        _ => a.1.cmp(&b.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parses_and_prints_like_postgres() {
        let lsn: Lsn = "0/3000060".parse().unwrap();
        assert_eq!(lsn, Lsn(0x0300_0060));
        assert_eq!(lsn.to_string(), "0/3000060");
        let high: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(high.0, (0x16 << 32) | 0xB374_D848);
        assert_eq!(high.to_string(), "16/B374D848");
    }

    #[test]
    fn lsn_orders_by_high_half_first() {
        let a: Lsn = "1/0".parse().unwrap();
        let b: Lsn = "0/FFFFFFFF".parse().unwrap();
        assert!(a > b);
        assert_eq!(a.bytes_after(b), 1);
        assert_eq!(b.bytes_after(a), 0);
    }

    #[test]
    fn lsn_refuses_malformed_text() {
        for bad in ["", "0", "0/", "/1", "g/1", "0/123456789", "1/2/3", "-1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_higher_timeline_wins_over_a_higher_lsn() {
        let old = (Some(1), Lsn(0x9000_0000));
        let new = (Some(2), Lsn(0x3000_0000));
        assert_eq!(compare_wal(new, old), Ordering::Greater);
        assert_eq!(
            compare_wal((None, Lsn(5)), (Some(3), Lsn(4))),
            Ordering::Greater
        );
    }

    proptest::proptest! {
        #[test]
        fn lsn_display_roundtrips(v: u64) {
            let lsn = Lsn(v);
            proptest::prop_assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
        }

        #[test]
        fn lsn_parse_never_panics(s in "\\PC*") {
            let _ = s.parse::<Lsn>();
        }
    }
}
