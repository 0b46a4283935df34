//! The binary log archive of a MariaDB database in its repository (`spec.backup`: a directory
//! or an S3 bucket, through [`crate::object_store`]), next to the full backups of
//! [`crate::mysql_family::repository`]:
//!
//! - `binlog/terms/TERM.json`: one record per term, written once: the primary that archives in
//!   it (server id, instance) and its promotion GTID (its `gtid_slave_pos` when it began: what it
//!   had replicated). A primary opens a new term when the newest one is another server's or
//!   began at another position (it has replicated since: it was a replica in between).
//! - `binlog/TERM-SERVERID/FILE.zst`: a closed binary log, compressed with `zstd`, written only
//!   if absent; `FILE.json` next to it, written last: SHA-256 and size of the stored object and
//!   of the original, the time the file was closed, and every transaction's GTID with the second
//!   it was logged in (the index). The term and server id in the key keep a reused binlog name
//!   (a rebuilt or another server's `binlog.000001`) from meeting an archived one; the same key
//!   with different content is `ArchiveFailing`, never overwritten.
//!
//! A point-in-time restore reads the index ([`read_archive`]) and takes the GTID path of
//! [`crate::mysql_family::binlog_path`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stator_api::position::{MariadbGtid, MariadbGtidPosition};

use crate::error::EngineError;
use crate::mysql_family::binlog::{LoggedTransaction, read_binlog_from};
use crate::mysql_family::binlog_path::{ArchivedLog, Term};
use crate::mysql_family::repository::{ZSTD, hex, now, zstd};
use crate::object_store::{ObjectStore, Put, get_stream, put_stream_if_absent};

/// The archive's directory inside a repository path.
pub const BINLOG_DIR: &str = "binlog";
const TERMS_DIR: &str = "terms";

fn one() -> u32 {
    1
}

/// A term: one primary's time in office, as the archive knows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TermRecord {
    pub term: u64,
    pub server_id: u32,
    pub instance: String,
    /// The promotion GTID position (empty for the first primary).
    pub start: String,
    /// Seconds since the epoch.
    pub started: f64,
}

/// An archived binary log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogRecord {
    pub term: u64,
    pub server_id: u32,
    /// The server's name for it (`binlog.000003`).
    pub file: String,
    /// Size and SHA-256 of the stored (compressed) object.
    pub size: u64,
    pub sha256: String,
    /// Size and SHA-256 of the binary log itself.
    pub source_size: u64,
    pub source_sha256: String,
    /// When the server closed it (its modification time), seconds since the epoch.
    pub closed: f64,
    /// `[domain, server, sequence, second]` of each transaction, in log order.
    pub transactions: Vec<(u32, u32, u64, i64)>,
    /// The parts the object is stored in ([`crate::object_store::put_stream_if_absent`]).
    #[serde(default = "one")]
    pub parts: u32,
}

impl LogRecord {
    /// `TERM-SERVERID/FILE`: the archive key.
    pub fn key(&self) -> String {
        format!("{}/{}", term_dir_name(self.term, self.server_id), self.file)
    }

    /// The stored object's key in the repository: `binlog/TERM-SERVERID/FILE.zst`.
    pub fn object_key(&self) -> String {
        log_key(self.term, self.server_id, &format!("{}.zst", self.file))
    }

    pub fn logged(&self) -> Vec<LoggedTransaction> {
        self.transactions
            .iter()
            .map(|&(domain, server, sequence, time)| LoggedTransaction {
                gtid: MariadbGtid {
                    domain,
                    server,
                    sequence,
                },
                time,
            })
            .collect()
    }
}

fn term_dir_name(term: u64, server_id: u32) -> String {
    format!("{term:06}-{server_id}")
}

fn log_key(term: u64, server_id: u32, name: &str) -> String {
    format!("{BINLOG_DIR}/{}/{name}", term_dir_name(term, server_id))
}

/// The archive as the primary's instance manager reports it (`/status` under `backup.archive`):
/// the engine-neutral state PostgreSQL's WAL archive reports into too.
pub use stator_api::backup_report::ArchiveState;

/// Why a binary log was not archived.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchiveError {
    /// The key exists with different content: ArchiveFailing.
    Conflict(String),
    /// Anything else (unreadable, repository unwritable): retried.
    Failed(String),
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveError::Conflict(m) | ArchiveError::Failed(m) => f.write_str(m),
        }
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    store: &impl ObjectStore,
    key: &str,
) -> Result<T, String> {
    let bytes = store
        .get(key)
        .await?
        .ok_or_else(|| format!("{}: missing", store.location(key)))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: unreadable: {e}", store.location(key)))
}

/// The term records, by term.
pub async fn read_terms(store: &impl ObjectStore) -> Result<Vec<TermRecord>, String> {
    let mut terms = Vec::new();
    for key in store.list(&format!("{BINLOG_DIR}/{TERMS_DIR}/")).await? {
        if key.ends_with(".json") {
            terms.push(read_json::<TermRecord>(store, &key).await?);
        }
    }
    terms.sort_by_key(|t| t.term);
    Ok(terms)
}

/// The term a primary (`server_id`, `instance`, whose `gtid_slave_pos` is `replicated`)
/// archives in: the newest one if it is this server's and began at this position, else a new
/// one recorded now.
pub async fn ensure_term(
    store: &impl ObjectStore,
    server_id: u32,
    instance: &str,
    replicated: &str,
) -> Result<u64, String> {
    loop {
        let terms = read_terms(store).await?;
        if let Some(last) = terms.last()
            && last.server_id == server_id
            && last.start == replicated
        {
            return Ok(last.term);
        }
        let record = TermRecord {
            term: terms.last().map_or(1, |t| t.term + 1),
            server_id,
            instance: instance.to_string(),
            start: replicated.to_string(),
            started: now(),
        };
        let text = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
        // Another writer taking the same number wins; read again.
        let key = format!("{BINLOG_DIR}/{TERMS_DIR}/{:06}.json", record.term);
        if store.put_if_absent(&key, text).await? == Put::Written {
            tracing::info!(term = record.term, start = %record.start, "a new term of the binlog archive");
            return Ok(record.term);
        }
    }
}

/// The archived binary logs (those with a record), by term then file name.
pub async fn read_logs(store: &impl ObjectStore) -> Result<Vec<LogRecord>, String> {
    let terms = format!("{BINLOG_DIR}/{TERMS_DIR}/");
    let mut logs = Vec::new();
    for key in store.list(&format!("{BINLOG_DIR}/")).await? {
        if key.starts_with(&terms) || !key.ends_with(".json") {
            continue;
        }
        logs.push(read_json::<LogRecord>(store, &key).await?);
    }
    logs.sort_by(|a, b| (a.term, &a.file).cmp(&(b.term, &b.file)));
    Ok(logs)
}

/// The archive's index in the form the path selection reads.
pub fn path_inputs(
    terms: &[TermRecord],
    logs: &[LogRecord],
) -> Result<(Vec<Term>, Vec<ArchivedLog>), String> {
    let terms = terms
        .iter()
        .map(|t| {
            Ok(Term {
                term: t.term,
                start: t
                    .start
                    .parse::<MariadbGtidPosition>()
                    .map_err(|e| format!("term {}: promotion GTID {:?}: {e}", t.term, t.start))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let logs = logs
        .iter()
        .map(|l| ArchivedLog {
            term: l.term,
            key: l.key(),
            transactions: l.logged(),
        })
        .collect();
    Ok((terms, logs))
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Checks one archived object against its record: present, of the recorded size and SHA-256.
/// The error names the object.
pub async fn check_log(store: &impl ObjectStore, log: &LogRecord) -> Result<(), String> {
    let key = log.object_key();
    let here = store.location(&key);
    let (size, sum) = get_stream(store, &key, log.parts, tokio::io::sink())
        .await
        .map_err(|e| {
            format!(
                "{here}: archived binary log {} is missing or unreadable: {e}",
                log.key()
            )
        })?;
    if size != log.size {
        return Err(format!(
            "{here}: archived binary log {} is truncated or altered: {size} bytes, its record says {}",
            log.key(),
            log.size
        ));
    }
    if sum != log.sha256 {
        return Err(format!(
            "{here}: archived binary log {} is corrupt: SHA-256 {sum}, its record says {}",
            log.key(),
            log.sha256
        ));
    }
    Ok(())
}

/// The object under `key` (`parts` parts) through `zstd -d`: the size and SHA-256 of what it
/// decompresses to, written into the new file `dest` (0600) when one is given.
async fn decompress(
    store: &impl ObjectStore,
    key: &str,
    parts: u32,
    dest: Option<&Path>,
) -> Result<(u64, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut child = zstd(&["-q", "-d", "-c"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{ZSTD}: cannot run: {e}"))?;
    let input = child.stdin.take().ok_or("zstd has no input pipe")?;
    let mut output = child.stdout.take().ok_or("zstd has no output pipe")?;
    let mut file = match dest {
        Some(path) => Some(
            tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .await
                .map_err(|e| format!("{}: cannot create: {e}", path.display()))?,
        ),
        None => None,
    };
    let feed = async move {
        let mut input = input;
        let r = get_stream(store, key, parts, &mut input).await;
        drop(input);
        r
    };
    let drain = async {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = output
                .read(&mut buf)
                .await
                .map_err(|e| format!("{ZSTD}: cannot read its output: {e}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            if let (Some(f), Some(path)) = (file.as_mut(), dest) {
                f.write_all(&buf[..n])
                    .await
                    .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
            }
        }
        if let (Some(f), Some(path)) = (file.as_mut(), dest) {
            f.sync_all()
                .await
                .map_err(|e| format!("{}: cannot sync: {e}", path.display()))?;
        }
        Ok::<_, String>((size, hex(&hasher.finalize())))
    };
    let (fed, drained) = tokio::join!(feed, drain);
    let result = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{ZSTD}: {e}"))?;
    fed?;
    let drained = drained?;
    if !result.status.success() {
        return Err(format!(
            "{}: {ZSTD} -d: {}: {}",
            store.location(key),
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        ));
    }
    Ok(drained)
}

/// Decompresses an archived binary log into the new file `dest`, checking the object against
/// its record first and the result against the logged file's SHA-256.
pub async fn read_archived_log(
    store: &impl ObjectStore,
    log: &LogRecord,
    dest: &Path,
) -> Result<(), String> {
    check_log(store, log).await?;
    let key = log.object_key();
    let (_, sum) = decompress(store, &key, log.parts, Some(dest)).await?;
    if sum != log.source_sha256 {
        return Err(format!(
            "{}: archived binary log {} does not decompress to the logged file",
            store.location(&key),
            log.key()
        ));
    }
    Ok(())
}

/// Archives the closed binary log `source` under term `term` of server `server_id`: compressed
/// by `zstd` straight from the file into the store (in parts, hashed as it passes), written
/// only if absent, its record last. `Ok(None)` when it was archived already (the same content
/// under its key). The file is read in chunks; nothing of it is held whole in memory.
pub async fn archive_log(
    store: &impl ObjectStore,
    term: u64,
    server_id: u32,
    source: &Path,
) -> Result<Option<LogRecord>, ArchiveError> {
    let failed = ArchiveError::Failed;
    let file = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| failed(format!("{}: not a file", source.display())))?;
    let record_key = log_key(term, server_id, &format!("{file}.json"));
    let object_key = log_key(term, server_id, &format!("{file}.zst"));
    let read_from = source.to_path_buf();
    let (closed, contents, source_size, source_sha256) = tokio::task::spawn_blocking(move || {
        let opened = std::fs::File::open(&read_from)
            .map_err(|e| format!("{}: cannot read: {e}", read_from.display()))?;
        let closed = opened
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(now, |d| d.as_secs_f64());
        let mut reader = Hashing {
            inner: std::io::BufReader::new(opened),
            hasher: Sha256::new(),
            size: 0,
        };
        let contents =
            read_binlog_from(&mut reader).map_err(|e| format!("{}: {e}", read_from.display()))?;
        Ok::<_, String>((
            closed,
            contents,
            reader.size,
            hex(&reader.hasher.finalize()),
        ))
    })
    .await
    .map_err(|e| failed(e.to_string()))?
    .map_err(failed)?;
    let conflict = |what: String| {
        ArchiveError::Conflict(format!(
            "{}: the archive key {}/{file} holds {what}; refusing to overwrite it (ArchiveFailing: the binary logs stay on the server)",
            store.location(&format!("{BINLOG_DIR}/{}", term_dir_name(term, server_id))),
            term_dir_name(term, server_id)
        ))
    };
    if let Some(bytes) = store.get(&record_key).await.map_err(failed)? {
        let record: LogRecord = serde_json::from_slice(&bytes)
            .map_err(|e| failed(format!("{}: unreadable: {e}", store.location(&record_key))))?;
        return if record.source_sha256 == source_sha256 {
            Ok(None)
        } else {
            Err(conflict(format!(
                "another binary log (SHA-256 {}, this one {source_sha256})",
                record.source_sha256
            )))
        };
    }
    let input = std::fs::File::open(source)
        .map_err(|e| failed(format!("{}: cannot read: {e}", source.display())))?;
    let mut zstd = zstd(&["-q", "-c", "-3"])
        .stdin(Stdio::from(input))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("{ZSTD}: cannot run: {e}")))?;
    let compressed = zstd
        .stdout
        .take()
        .ok_or_else(|| failed("zstd has no output pipe".into()))?;
    let stored = put_stream_if_absent(store, &object_key, compressed).await;
    let status = zstd
        .wait_with_output()
        .await
        .map_err(|e| failed(format!("{ZSTD}: {e}")))?;
    let stored = stored.map_err(failed)?;
    let (size, sha256, parts) = if stored.put == Put::Written {
        if !status.status.success() {
            let _ = crate::object_store::delete_under(store, &object_key).await;
            return Err(failed(format!(
                "{ZSTD} < {}: {}: {}",
                source.display(),
                status.status,
                String::from_utf8_lossy(&status.stderr).trim()
            )));
        }
        (stored.size, stored.sha256, stored.parts)
    } else {
        // A stored object without a record: the same binary log (an archiver stopped between
        // the two), or a conflict.
        let parts = 1 + store
            .list(&format!("{object_key}.part-"))
            .await
            .map_err(failed)?
            .len() as u32;
        let same = decompress(store, &object_key, parts, None)
            .await
            .is_ok_and(|(_, sum)| sum == source_sha256);
        if !same {
            return Err(conflict("another (or a damaged) object".into()));
        }
        let (size, sum) = get_stream(store, &object_key, parts, tokio::io::sink())
            .await
            .map_err(failed)?;
        (size, sum, parts)
    };
    let record = LogRecord {
        term,
        server_id,
        file: file.clone(),
        size,
        sha256,
        source_size,
        source_sha256,
        closed,
        transactions: index_of(&contents),
        parts,
    };
    let text = serde_json::to_vec_pretty(&record).map_err(|e| failed(e.to_string()))?;
    if store
        .put_if_absent(&record_key, text)
        .await
        .map_err(failed)?
        == Put::Exists
    {
        return Err(conflict(
            "a record written meanwhile by another archiver".into(),
        ));
    }
    Ok(Some(record))
}

fn index_of(contents: &crate::mysql_family::binlog::BinlogContents) -> Vec<(u32, u32, u64, i64)> {
    contents
        .transactions
        .iter()
        .map(|t| (t.gtid.domain, t.gtid.server, t.gtid.sequence, t.time))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binlog(seq: u64) -> Vec<u8> {
        let mut f = crate::mysql_family::binlog::MAGIC.to_vec();
        let mut body = seq.to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        body.push(0);
        f.extend_from_slice(&100u32.to_le_bytes());
        f.push(162);
        f.extend_from_slice(&7u32.to_le_bytes());
        f.extend_from_slice(&((19 + body.len()) as u32).to_le_bytes());
        f.extend_from_slice(&[0u8; 6]);
        f.extend(body);
        f
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_key_is_written_once_and_other_content_under_it_is_archive_failing() {
        let repo = tempfile::tempdir().unwrap();
        let store = crate::object_store::DirStore {
            root: repo.path().to_path_buf(),
        };
        let server = tempfile::tempdir().unwrap();
        let source = server.path().join("binlog.000001");
        std::fs::write(&source, binlog(1)).unwrap();
        run(async {
            let record = archive_log(&store, 1, 7, &source).await.unwrap().unwrap();
            assert_eq!(record.transactions, [(0, 7, 1, 100)]);
            assert_eq!(record.parts, 1);
            assert!(check_log(&store, &record).await.is_ok());
            let plain = server.path().join("plain");
            read_archived_log(&store, &record, &plain).await.unwrap();
            assert_eq!(std::fs::read(&plain).unwrap(), binlog(1));
            // Again: already there.
            assert_eq!(archive_log(&store, 1, 7, &source).await.unwrap(), None);
            // An archiver stopped between object and record: the same object gets its record.
            let record_file = repo.path().join("binlog/000001-7/binlog.000001.json");
            std::fs::remove_file(&record_file).unwrap();
            let again = archive_log(&store, 1, 7, &source).await.unwrap().unwrap();
            assert_eq!(again.sha256, record.sha256);
            // A reused name with other content (a rebuilt server's binlog.000001): refused...
            std::fs::write(&source, binlog(2)).unwrap();
            assert!(matches!(
                archive_log(&store, 1, 7, &source).await,
                Err(ArchiveError::Conflict(_))
            ));
            // ...also when only the object is there (no record yet).
            std::fs::remove_file(&record_file).unwrap();
            assert!(matches!(
                archive_log(&store, 1, 7, &source).await,
                Err(ArchiveError::Conflict(_))
            ));
            // ...but under another term it is another key.
            assert!(archive_log(&store, 2, 7, &source).await.unwrap().is_some());
            assert_eq!(read_logs(&store).await.unwrap().len(), 1);
            // A flipped byte is named.
            let object = repo.path().join(record.object_key());
            let mut bytes = std::fs::read(&object).unwrap();
            bytes[5] ^= 0xff;
            std::fs::write(&object, bytes).unwrap();
            let err = check_log(&store, &record).await.unwrap_err();
            assert!(err.contains(&object.display().to_string()), "{err}");
            // A repository that is a file now: an error, never a silent success.
            let broken = crate::object_store::DirStore {
                root: source.clone(),
            };
            assert!(matches!(
                archive_log(&broken, 3, 7, &source).await,
                Err(ArchiveError::Failed(_))
            ));
        });
    }

    #[test]
    fn a_primary_keeps_its_term_until_another_server_or_another_position_opens_one() {
        let repo = tempfile::tempdir().unwrap();
        let store = crate::object_store::DirStore {
            root: repo.path().to_path_buf(),
        };
        run(async {
            assert_eq!(ensure_term(&store, 1000, "db-0", "").await.unwrap(), 1);
            assert_eq!(ensure_term(&store, 1000, "db-0", "").await.unwrap(), 1);
            assert_eq!(
                ensure_term(&store, 1001, "db-1", "0-1000-5").await.unwrap(),
                2
            );
            // db-0 back in office after replicating from db-1.
            assert_eq!(
                ensure_term(&store, 1000, "db-0", "0-1001-9").await.unwrap(),
                3
            );
            let terms = read_terms(&store).await.unwrap();
            assert_eq!(terms[1].start, "0-1000-5");
        });
    }

    #[test]
    fn a_repository_marker_ties_the_store_to_one_database() {
        let repo = tempfile::tempdir().unwrap();
        let store = crate::object_store::DirStore {
            root: repo.path().to_path_buf(),
        };
        run(async {
            claim_repository(&store, "default", "a").await.unwrap();
            claim_repository(&store, "default", "a").await.unwrap();
            let err = claim_repository(&store, "default", "b").await.unwrap_err();
            assert!(
                err.contains("default/a") && err.contains("default/b"),
                "{err}"
            );
        });
    }
}

/// What the primary's server says of its binary logs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerBinlogs {
    /// `@@gtid_binlog_pos`.
    pub logged: String,
    /// `@@gtid_slave_pos`: what it had replicated (its promotion GTID once it is primary).
    pub replicated: String,
    /// `SHOW BINARY LOGS`: name and size, oldest first; the last one is being written.
    pub files: Vec<(String, u64)>,
}

impl crate::mysql_family::MysqlFamily {
    /// The server's binary logs and GTID positions.
    pub async fn server_binlogs(&self) -> Result<ServerBinlogs, EngineError> {
        use mysql_async::prelude::Queryable;
        self.with_archive_session(async |c: &mut mysql_async::Conn| {
            let row: Option<(Option<String>, Option<String>)> = c
                .query_first("SELECT @@GLOBAL.gtid_binlog_pos, @@GLOBAL.gtid_slave_pos")
                .await
                .map_err(|e| EngineError::mysql("reading the GTID positions", e))?;
            let (logged, replicated) = row.unwrap_or_default();
            let rows: Vec<mysql_async::Row> = c
                .query("SHOW BINARY LOGS")
                .await
                .map_err(|e| EngineError::mysql("listing the binary logs", e))?;
            let files = rows
                .iter()
                .map(|r| {
                    (
                        super::column(r, "Log_name"),
                        super::column(r, "File_size").parse().unwrap_or(0),
                    )
                })
                .collect();
            Ok(ServerBinlogs {
                logged: logged.unwrap_or_default(),
                replicated: replicated.unwrap_or_default(),
                files,
            })
        })
        .await
    }

    /// Closes the binary log being written and opens the next (`FLUSH LOCAL BINARY LOGS`: not
    /// written to the binary log itself, so it is no transaction on a replica).
    pub async fn flush_binlogs(&self) -> Result<(), EngineError> {
        self.with_archive_session(async |c: &mut mysql_async::Conn| {
            Self::exec(c, "flushing the binary logs", "FLUSH LOCAL BINARY LOGS").await
        })
        .await
    }

    /// Deletes the binary logs before `name` (`PURGE BINARY LOGS TO`). The server itself
    /// keeps a log a connected replica is still reading, and every log after it.
    pub async fn purge_binlogs_to(&self, name: &str) -> Result<(), EngineError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(EngineError::State(format!(
                "binary log name {name:?}: expected letters, digits, '.', '_' or '-'"
            )));
        }
        let sql = format!("PURGE BINARY LOGS TO '{name}'");
        self.with_archive_session(async |c: &mut mysql_async::Conn| {
            Self::exec(c, "purging the archived binary logs", &sql).await
        })
        .await
    }

    /// `NAME-N`.
    pub fn instance_name(&self) -> &str {
        &self.instance
    }

    /// Where binary log `name` is (`log_bin = binlog`: in the data dir).
    pub fn binlog_path(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }
}

/// What a repository can restore: from the end of its oldest backup to the end of the archive.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecoverableRange {
    pub earliest_time: f64,
    pub earliest_gtid: String,
    pub earliest_backup: String,
    /// The newest time the archive covers: the close of the last archived binary log on the
    /// history (or the end of the newest backup).
    pub latest_time: f64,
    pub latest_gtid: String,
    /// The first sequence number missing from the archive while later ones are there.
    pub gap: Option<u64>,
}

impl RecoverableRange {
    pub fn describe(&self) -> String {
        let time = |t: f64| crate::postgres::backrest::format_time(t.floor());
        format!(
            "{} (GTID {}, end of backup {}) .. {} (GTID {}){}",
            time(self.earliest_time),
            show(&self.earliest_gtid),
            self.earliest_backup,
            time(self.latest_time),
            show(&self.latest_gtid),
            self.gap
                .map(|s| format!(
                    "; the archive lacks sequence number {s} (a missing binary log): nothing past it is recoverable"
                ))
                .unwrap_or_default()
        )
    }
}

fn show(gtid: &str) -> &str {
    if gtid.is_empty() { "none" } else { gtid }
}

/// The archive's index, read once.
pub struct ArchiveIndex {
    pub terms: Vec<TermRecord>,
    pub logs: Vec<LogRecord>,
    path_terms: Vec<Term>,
    path_logs: Vec<ArchivedLog>,
}

/// Reads the terms and the records of the archived binary logs.
pub async fn read_archive(store: &impl ObjectStore) -> Result<ArchiveIndex, String> {
    let terms = read_terms(store).await?;
    let logs = read_logs(store).await?;
    let (path_terms, path_logs) = path_inputs(&terms, &logs)?;
    Ok(ArchiveIndex {
        terms,
        logs,
        path_terms,
        path_logs,
    })
}

/// One backup's reach: the history after it and the time its last archived log closed.
struct Reach {
    history: crate::mysql_family::binlog_path::History,
    end_time: f64,
    end_gtid: String,
}

impl ArchiveIndex {
    fn history(&self, backup: &crate::mysql_family::repository::Manifest) -> Result<Reach, String> {
        let from: MariadbGtidPosition = backup
            .gtid
            .parse()
            .map_err(|e| format!("backup {}: GTID {:?}: {e}", backup.id, backup.gtid))?;
        let history = crate::mysql_family::binlog_path::history_after(
            &self.path_terms,
            &self.path_logs,
            &from,
        )
        .map_err(|e| format!("backup {}: {e}", backup.id))?;
        let end_time = history
            .path
            .iter()
            .map(|s| self.logs[s.log].closed)
            .fold(backup.stopped, f64::max);
        let end_gtid = history
            .path
            .last()
            .map(|s| crate::mysql_family::binlog_path::gtid_text(&s.gtid))
            .unwrap_or_else(|| backup.gtid.clone());
        Ok(Reach {
            history,
            end_time,
            end_gtid,
        })
    }

    /// The recoverable range over `backups` (oldest first); `None` without a usable backup.
    pub fn range(
        &self,
        backups: &[crate::mysql_family::repository::Manifest],
    ) -> Option<RecoverableRange> {
        let reaches: Vec<(&crate::mysql_family::repository::Manifest, Reach)> = backups
            .iter()
            .filter_map(|b| self.history(b).ok().map(|r| (b, r)))
            .collect();
        let (first, _) = reaches.first()?;
        let (_, last) = reaches
            .iter()
            .max_by(|a, b| a.1.end_time.total_cmp(&b.1.end_time))?;
        Some(RecoverableRange {
            earliest_time: first.stopped,
            earliest_gtid: first.gtid.clone(),
            earliest_backup: first.id.clone(),
            latest_time: last.end_time,
            latest_gtid: last.end_gtid.clone(),
            gap: last.history.gap,
        })
    }

    /// Plans a restore of `database`'s repository to `target`: the backup (`chosen`, else the
    /// newest one that ends before the target and leads to it) and the replay runs. Refused,
    /// naming the range, when the target lies outside it; refused, naming the file, when an
    /// archived log the replay needs does not match its record.
    pub async fn plan(
        &self,
        store: &impl ObjectStore,
        database: &str,
        backups: &[crate::mysql_family::repository::Manifest],
        chosen: Option<&str>,
        target: &crate::mysql_family::binlog_path::PathTarget,
    ) -> Result<RestorePlan, String> {
        use crate::mysql_family::binlog_path::{PathTarget, replay_length, replay_runs};
        let range = self.range(backups);
        let outside = |what: String| match &range {
            Some(r) => format!(
                "{what} is outside the recoverable range of {database}: {}",
                r.describe()
            ),
            None => format!("{what}: the repository of {database} holds no backup yet"),
        };
        let what = match target {
            PathTarget::Latest => "the latest point".to_string(),
            PathTarget::Gtid(g) => {
                format!("GTID {}", crate::mysql_family::binlog_path::gtid_text(g))
            }
            PathTarget::Time(t) => {
                format!("time {}", crate::postgres::backrest::format_time(*t))
            }
        };
        let candidates: Vec<&crate::mysql_family::repository::Manifest> = match chosen {
            Some(id) => backups.iter().filter(|b| b.id == id).collect(),
            None => backups.iter().rev().collect(),
        };
        if candidates.is_empty() {
            return Err(match chosen {
                Some(id) => format!(
                    "backup {id} is not in the repository of {database} (see `stator backup list`)"
                ),
                None => outside(what),
            });
        }
        for backup in candidates {
            let Ok(reach) = self.history(backup) else {
                continue;
            };
            let length = match target {
                PathTarget::Time(t) if *t < backup.stopped || *t > reach.end_time => continue,
                PathTarget::Gtid(g) => {
                    let at: MariadbGtidPosition = backup.gtid.parse().unwrap_or_default();
                    if at.gtids().any(|b| b == *g) {
                        Some(0)
                    } else {
                        replay_length(&reach.history, target)
                    }
                }
                _ => replay_length(&reach.history, target),
            };
            let Some(length) = length else {
                continue;
            };
            let from: MariadbGtidPosition = backup.gtid.parse().unwrap_or_default();
            let mut runs = Vec::new();
            for run in replay_runs(&reach.history, &self.path_logs, &from, length) {
                let logs: Vec<LogRecord> = run.logs.iter().map(|&i| self.logs[i].clone()).collect();
                for log in &logs {
                    check_log(store, log)
                        .await
                        .map_err(|e| format!("refusing to restore: {e}"))?;
                }
                runs.push(ReplayRun {
                    logs,
                    after: run.after.to_string(),
                    stop: crate::mysql_family::binlog_path::gtid_text(&run.stop),
                });
            }
            let stop = runs
                .last()
                .map(|r| r.stop.clone())
                .unwrap_or_else(|| backup.gtid.clone());
            return Ok(RestorePlan {
                backup: backup.clone(),
                runs,
                stop,
            });
        }
        Err(outside(what))
    }
}

/// One replay: these archived logs, after position `after` up to and including `stop`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayRun {
    pub logs: Vec<LogRecord>,
    pub after: String,
    pub stop: String,
}

/// A planned restore: the full backup, then the replays; `stop` is the GTID the restored
/// server ends at (`@@gtid_binlog_pos`).
#[derive(Clone, Debug, PartialEq)]
pub struct RestorePlan {
    pub backup: crate::mysql_family::repository::Manifest,
    pub runs: Vec<ReplayRun>,
    pub stop: String,
}

/// The target of a restore source as the path selection reads it.
pub fn path_target(
    target: &stator_api::instance::RestoreTarget,
) -> Result<crate::mysql_family::binlog_path::PathTarget, String> {
    use crate::mysql_family::binlog_path::PathTarget;
    use stator_api::instance::RestoreTarget;
    Ok(match target {
        RestoreTarget::Latest | RestoreTarget::Immediate => PathTarget::Latest,
        RestoreTarget::Time(t) => {
            PathTarget::Time(crate::postgres::backrest::parse_time(t).ok_or_else(|| {
                format!("targetTime {t:?} is not a time (e.g. 2026-11-26T12:00:00Z)")
            })?)
        }
        RestoreTarget::Gtid(g) => {
            let position: MariadbGtidPosition = g
                .parse()
                .map_err(|e| format!("targetGtid {g:?} is not a GTID (e.g. 0-1000-42): {e}"))?;
            let mut gtids = position.gtids();
            match (gtids.next(), gtids.next()) {
                (Some(one), None) => PathTarget::Gtid(one),
                _ => return Err(format!("targetGtid {g:?}: give one GTID (e.g. 0-1000-42)")),
            }
        }
        RestoreTarget::Lsn(_) => {
            return Err(
                "targetLsn is PostgreSQL's; a MariaDB database restores to a time or a GTID".into(),
            );
        }
    })
}

/// The plan of restore `source` (backup `set`, its target) from its repository's `store`.
pub async fn plan_for(
    store: &impl ObjectStore,
    source: &stator_api::instance::RestoreSource,
) -> Result<RestorePlan, String> {
    let backups = crate::mysql_family::repository::list(store).await?;
    let index = read_archive(store).await?;
    index
        .plan(
            store,
            &source.stanza,
            &backups,
            Some(&source.set),
            &path_target(&source.target)?,
        )
        .await
}

/// Re-hashes every archived binary log and checks the GTID chain after each backup: the report
/// (one line per term and a summary), and every problem found, each naming its file.
pub async fn verify_archive(
    store: &impl ObjectStore,
    backups: &[crate::mysql_family::repository::Manifest],
) -> (String, Vec<String>) {
    let mut report = String::new();
    let mut problems = Vec::new();
    let index = match read_archive(store).await {
        Ok(i) => i,
        Err(e) => return (report, vec![e]),
    };
    for log in &index.logs {
        if let Err(e) = check_log(store, log).await {
            problems.push(e);
        }
    }
    for t in &index.terms {
        report.push_str(&format!(
            "binlog term {}: {} (server id {}), promotion GTID {}\n",
            t.term,
            t.instance,
            t.server_id,
            show(&t.start)
        ));
    }
    for b in backups {
        match index.history(b) {
            Ok(reach) => {
                if let Some(seq) = reach.history.gap {
                    problems.push(format!(
                        "{}: the GTID chain after backup {} breaks at sequence number {seq}: no archived binary log holds it, though later ones are archived",
                        store.location(BINLOG_DIR),
                        b.id
                    ));
                }
                report.push_str(&format!(
                    "backup {}: GTID chain {} .. {} ({} transactions archived after it)\n",
                    b.id,
                    show(&b.gtid),
                    show(&reach.end_gtid),
                    reach.history.path.len()
                ));
            }
            Err(e) => report.push_str(&format!("note: {e}\n")),
        }
    }
    report.push_str(&format!(
        "binlog archive: {} binary logs, SHA-256 {}\n",
        index.logs.len(),
        if problems.is_empty() { "ok" } else { "NOT ok" }
    ));
    (report, problems)
}

/// Ties the repository in `store` to database `namespace/name`: writes the marker when
/// absent, refuses another database's (no database ever writes into another's path).
pub async fn claim_repository(
    store: &impl ObjectStore,
    namespace: &str,
    name: &str,
) -> Result<(), String> {
    use crate::postgres::backrest::{REPOSITORY_MARKER, RepositoryMarker, marker_conflict};
    let wanted = RepositoryMarker {
        namespace: namespace.into(),
        name: name.into(),
        system_identifier: None,
    };
    let here = store.location("");
    let found = match store.get(REPOSITORY_MARKER).await? {
        Some(bytes) => Some(
            serde_json::from_slice::<RepositoryMarker>(&bytes).map_err(|e| {
                format!(
                    "{}: is not a Stator repository marker: {e}",
                    store.location(REPOSITORY_MARKER)
                )
            })?,
        ),
        None => None,
    };
    let found = match found {
        Some(found) => found,
        None => {
            let text = serde_json::to_vec_pretty(&wanted).map_err(|e| e.to_string())?;
            if store.put_if_absent(REPOSITORY_MARKER, text).await? == Put::Written {
                return Ok(());
            }
            // Another writer claimed it meanwhile: it must be this database too.
            read_json(store, REPOSITORY_MARKER).await?
        }
    };
    match marker_conflict(Path::new(&here), &found, &wanted) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}
