//! Reading a MariaDB binary log file: the transactions it holds (their GTIDs and the second
//! each was logged in), so the binlog archive can index them without running `mariadb-binlog`.
//! Pure: bytes in, transactions out.
//!
//! Format (binlog v4): the magic `\xfebin`, then events, each with a 19-byte header:
//! timestamp (u32 LE, seconds), type (u8), server id (u32), event length (u32, header and any
//! checksum included), next position (u32), flags (u16). A MariaDB GTID event (type 162)
//! starts a transaction; its body begins with the sequence number (u64) and the domain (u32).

use std::io::Read;

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
    read_binlog_from(bytes)
}

/// [`read_binlog`] from a reader, an event at a time (a binary log may be a gigabyte).
pub fn read_binlog_from(mut input: impl Read) -> Result<BinlogContents, String> {
    let mut magic = [0u8; 4];
    input
        .read_exact(&mut magic)
        .map_err(|_| "not a binary log (no \\xfebin magic)".to_string())?;
    if &magic != MAGIC {
        return Err("not a binary log (no \\xfebin magic)".into());
    }
    let mut out = BinlogContents::default();
    let mut pos = MAGIC.len() as u64;
    loop {
        let mut header = [0u8; HEADER];
        let got = read_full(&mut input, &mut header)
            .map_err(|e| format!("reading the event at byte {pos}: {e}"))?;
        if got == 0 {
            return Ok(out);
        }
        if got < HEADER {
            return Err(format!("an event header is cut off at byte {pos}"));
        }
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let time = u32_at(&header, 0);
        let kind = header[4];
        let server = u32_at(&header, 5);
        let length = u64::from(u32_at(&header, 9));
        if length < HEADER as u64 {
            return Err(format!("the event at byte {pos} claims {length} bytes"));
        }
        let mut body = (&mut input).take(length - HEADER as u64);
        if kind == GTID_EVENT {
            let mut start = [0u8; 12];
            if read_full(&mut body, &mut start).map_err(|e| e.to_string())? < start.len() {
                return Err(format!("the GTID event at byte {pos} is cut off"));
            }
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&start[..8]);
            out.transactions.push(LoggedTransaction {
                gtid: MariadbGtid {
                    domain: u32_at(&start, 8),
                    server,
                    sequence: u64::from_le_bytes(seq),
                },
                time: i64::from(time),
            });
        }
        std::io::copy(&mut body, &mut std::io::sink()).map_err(|e| e.to_string())?;
        if body.limit() > 0 {
            return Err(format!(
                "the event at byte {pos} claims {length} bytes, past the end of the file"
            ));
        }
        out.closed = matches!(kind, ROTATE_EVENT | STOP_EVENT);
        pos += length;
    }
}

/// Reads until `buf` is full or the input ends: how many bytes were read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
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
