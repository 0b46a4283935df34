//! Reading a MariaDB binary log file: the transactions it holds (their GTIDs and the second
//! each was logged in), so the binlog archive can index them without running `mariadb-binlog`.
//! Pure: bytes in, transactions out.
//!
//! Format (binlog v4): the magic `\xfebin`, then events, each with a 19-byte header:
//! timestamp (u32 LE, seconds), type (u8), server id (u32), event length (u32, header and any
//! checksum included), next position (u32), flags (u16). A MariaDB GTID event (type 162)
//! starts a transaction; its body begins with the sequence number (u64) and the domain (u32).

use stator_api::position::MariadbGtid;

/// The first bytes of every binary log file.
pub const MAGIC: &[u8; 4] = b"\xfebin";
const HEADER: usize = 19;
const GTID_EVENT: u8 = 162;
const ROTATE_EVENT: u8 = 4;
const STOP_EVENT: u8 = 3;

/// One transaction of a binary log: its GTID and the second it was logged in (seconds since
/// the epoch, the server's 1 s resolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedTransaction {
    pub gtid: MariadbGtid,
    pub time: i64,
}

/// What a binary log file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinlogContents {
    pub transactions: Vec<LoggedTransaction>,
    /// Ends with a rotate or stop event: the server closed it.
    pub closed: bool,
}

/// Reads the transactions of a binary log file. An error (in words) when it is not one or an
/// event runs past its end.
pub fn read_binlog(bytes: &[u8]) -> Result<BinlogContents, String> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a binary log (no \\xfebin magic)".into());
    }
    let mut out = BinlogContents::default();
    let mut pos = MAGIC.len();
    while pos < bytes.len() {
        let header = bytes
            .get(pos..pos + HEADER)
            .ok_or_else(|| format!("an event header is cut off at byte {pos}"))?;
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let time = u32_at(header, 0);
        let kind = header[4];
        let server = u32_at(header, 5);
        let length = u32_at(header, 9) as usize;
        if length < HEADER || pos + length > bytes.len() {
            return Err(format!(
                "the event at byte {pos} claims {length} bytes; the file has {}",
                bytes.len()
            ));
        }
        if kind == GTID_EVENT {
            let body = &bytes[pos + HEADER..pos + length];
            if body.len() < 12 {
                return Err(format!("the GTID event at byte {pos} is too short"));
            }
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&body[..8]);
            out.transactions.push(LoggedTransaction {
                gtid: MariadbGtid {
                    domain: u32_at(body, 8),
                    server,
                    sequence: u64::from_le_bytes(seq),
                },
                time: i64::from(time),
            });
        }
        out.closed = matches!(kind, ROTATE_EVENT | STOP_EVENT);
        pos += length;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u8, time: u32, server: u32, body: &[u8]) -> Vec<u8> {
        let mut e = time.to_le_bytes().to_vec();
        e.push(kind);
        e.extend_from_slice(&server.to_le_bytes());
        e.extend_from_slice(&((HEADER + body.len()) as u32).to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        e.extend_from_slice(body);
        e
    }

    fn gtid_body(seq: u64, domain: u32) -> Vec<u8> {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&domain.to_le_bytes());
        b.extend_from_slice(&[0u8; 5]);
        b
    }

    #[test]
    fn transactions_come_with_their_gtid_and_second_and_a_rotate_closes_the_file() {
        let mut file = MAGIC.to_vec();
        file.extend(event(15, 100, 7, &[0u8; 90])); // format description
        file.extend(event(GTID_EVENT, 101, 7, &gtid_body(3, 0)));
        file.extend(event(2, 101, 7, b"insert")); // query
        file.extend(event(16, 101, 7, &[0u8; 8])); // xid
        file.extend(event(GTID_EVENT, 105, 9, &gtid_body(4, 0)));
        let open = read_binlog(&file).unwrap();
        assert!(!open.closed);
        let gtids: Vec<(u32, u64, i64)> = open
            .transactions
            .iter()
            .map(|t| (t.gtid.server, t.gtid.sequence, t.time))
            .collect();
        assert_eq!(gtids, [(7, 3, 101), (9, 4, 105)]);
        file.extend(event(
            ROTATE_EVENT,
            106,
            9,
            b"\x04\0\0\0\0\0\0\0binlog.000002",
        ));
        assert!(read_binlog(&file).unwrap().closed);
    }

    #[test]
    fn a_cut_or_foreign_file_is_an_error_not_an_empty_log() {
        let mut file = MAGIC.to_vec();
        file.extend(event(GTID_EVENT, 101, 7, &gtid_body(3, 0)));
        assert!(read_binlog(&file[..file.len() - 3]).is_err());
        assert!(read_binlog(b"hello").is_err());
    }
}
