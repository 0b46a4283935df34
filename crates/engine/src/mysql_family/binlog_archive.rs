//! The binary log archive of a MariaDB database in its local repository (`spec.backup`), next
//! to the full backups of [`crate::mysql_family::repository`]:
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

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stator_api::position::{MariadbGtid, MariadbGtidPosition};

use crate::error::EngineError;
use crate::mysql_family::binlog::{LoggedTransaction, read_binlog_from};
use crate::mysql_family::binlog_path::{ArchivedLog, Term};
use crate::mysql_family::repository::{ZSTD, hex, now};

/// The archive's directory inside a repository path.
pub const BINLOG_DIR: &str = "binlog";
const TERMS_DIR: &str = "terms";

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
}

impl LogRecord {
    /// `TERM-SERVERID/FILE`: the archive key.
    pub fn key(&self) -> String {
        format!("{}/{}", term_dir_name(self.term, self.server_id), self.file)
    }

    pub fn object_path(&self, repository: &Path) -> PathBuf {
        repository
            .join(BINLOG_DIR)
            .join(term_dir_name(self.term, self.server_id))
            .join(format!("{}.zst", self.file))
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

fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: cannot create: {e}", dir.display()))
}

/// Writes `bytes` to `path` only if nothing is there: a temporary file, synced, then linked
/// into place (a link fails on an existing name). False when the name existed.
fn write_if_absent(path: &Path, bytes: &[u8]) -> Result<bool, String> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: cannot create: {e}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: cannot write: {e}", tmp.display()))?;
    link_if_absent(&tmp, path)
}

fn read_json<T: serde::de::DeserializeOwned>(file: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: unreadable: {e}", file.display()))
}

/// The term records, by term.
pub fn read_terms(repository: &Path) -> Result<Vec<TermRecord>, String> {
    let dir = repository.join(BINLOG_DIR).join(TERMS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: cannot read: {e}", dir.display())),
    };
    let mut terms = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            terms.push(read_json::<TermRecord>(&path)?);
        }
    }
    terms.sort_by_key(|t| t.term);
    Ok(terms)
}

/// The term a primary (`server_id`, `instance`, whose `gtid_slave_pos` is `replicated`)
/// archives in: the newest one if it is this server's and began at this position, else a new
/// one recorded now.
pub fn ensure_term(
    repository: &Path,
    server_id: u32,
    instance: &str,
    replicated: &str,
) -> Result<u64, String> {
    let dir = repository.join(BINLOG_DIR).join(TERMS_DIR);
    private_dir(&dir)?;
    loop {
        let terms = read_terms(repository)?;
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
        if write_if_absent(&dir.join(format!("{:06}.json", record.term)), &text)? {
            tracing::info!(term = record.term, start = %record.start, "a new term of the binlog archive");
            return Ok(record.term);
        }
    }
}

/// The archived binary logs (those with a record), by term then file name.
pub fn read_logs(repository: &Path) -> Result<Vec<LogRecord>, String> {
    let root = repository.join(BINLOG_DIR);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: cannot read: {e}", root.display())),
    };
    let mut logs = Vec::new();
    for dir in entries.flatten().map(|e| e.path()) {
        if !dir.is_dir() || dir.file_name().is_some_and(|n| n == TERMS_DIR) {
            continue;
        }
        let files =
            std::fs::read_dir(&dir).map_err(|e| format!("{}: cannot read: {e}", dir.display()))?;
        for path in files.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|e| e == "json") {
                logs.push(read_json::<LogRecord>(&path)?);
            }
        }
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

/// Size and SHA-256 of what `reader` yields, read in chunks.
fn hash_reader(mut reader: impl Read) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hex(&hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

fn hash_file(path: &Path) -> Result<(u64, String), String> {
    std::fs::File::open(path)
        .and_then(hash_reader)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))
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
/// The error names the file.
pub fn check_log(repository: &Path, log: &LogRecord) -> Result<(), String> {
    let path = log.object_path(repository);
    let (size, sum) = std::fs::File::open(&path)
        .and_then(hash_reader)
        .map_err(|e| {
            format!(
                "{}: archived binary log {} is missing or unreadable: {e}",
                path.display(),
                log.key()
            )
        })?;
    if size != log.size {
        return Err(format!(
            "{}: archived binary log {} is truncated or altered: {size} bytes, its record says {}",
            path.display(),
            log.key(),
            log.size
        ));
    }
    if sum != log.sha256 {
        return Err(format!(
            "{}: archived binary log {} is corrupt: SHA-256 {sum}, its record says {}",
            path.display(),
            log.key(),
            log.sha256
        ));
    }
    Ok(())
}

/// `zstd ARGS < input`, its output into the new file `output` (0600) or, without one, hashed
/// as it comes: the size and SHA-256 of the output. Nothing is held in memory.
fn zstd(args: &[&str], input: &Path, output: Option<&Path>) -> Result<(u64, String), String> {
    let source =
        std::fs::File::open(input).map_err(|e| format!("{}: cannot read: {e}", input.display()))?;
    let sink = match output {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{}: cannot create: {e}", path.display()))?,
        ),
        None => Stdio::piped(),
    };
    let mut child = Command::new(ZSTD)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::from(source))
        .stdout(sink)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{ZSTD}: cannot run: {e}"))?;
    let hashed = child.stdout.take().map(hash_reader);
    let result = child
        .wait_with_output()
        .map_err(|e| format!("{ZSTD}: {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "{ZSTD} {} < {}: {}: {}",
            args.join(" "),
            input.display(),
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        ));
    }
    match (hashed, output) {
        (Some(h), _) => h.map_err(|e| format!("{ZSTD}: cannot read its output: {e}")),
        (None, Some(path)) => {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("{}: cannot sync: {e}", path.display()))?;
            hash_file(path)
        }
        (None, None) => Err("zstd has no output".into()),
    }
}

/// Decompresses an archived binary log into the new file `dest`, checking the object against
/// its record first and the result against the logged file's SHA-256.
pub fn read_archived_log(repository: &Path, log: &LogRecord, dest: &Path) -> Result<(), String> {
    check_log(repository, log)?;
    let path = log.object_path(repository);
    let (_, sum) = zstd(&["-q", "-d", "-c"], &path, Some(dest))?;
    if sum != log.source_sha256 {
        return Err(format!(
            "{}: archived binary log {} does not decompress to the logged file",
            path.display(),
            log.key()
        ));
    }
    Ok(())
}

/// Links the complete file `tmp` to `path` only if nothing is there (then removes `tmp`).
/// False when the name existed.
fn link_if_absent(tmp: &Path, path: &Path) -> Result<bool, String> {
    let linked = std::fs::hard_link(tmp, path);
    let _ = std::fs::remove_file(tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(format!("{}: cannot write: {e}", path.display())),
    }
}

/// Archives the closed binary log `source` under term `term` of server `server_id`: compressed,
/// hashed, written only if absent, its record last. `Ok(None)` when it was archived already
/// (the same content under its key). Read in chunks and streamed through `zstd`.
pub fn archive_log(
    repository: &Path,
    term: u64,
    server_id: u32,
    source: &Path,
) -> Result<Option<LogRecord>, ArchiveError> {
    let failed = ArchiveError::Failed;
    let file = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| failed(format!("{}: not a file", source.display())))?;
    let dir = repository
        .join(BINLOG_DIR)
        .join(term_dir_name(term, server_id));
    let record_path = dir.join(format!("{file}.json"));
    let opened = std::fs::File::open(source)
        .map_err(|e| failed(format!("{}: cannot read: {e}", source.display())))?;
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
        read_binlog_from(&mut reader).map_err(|e| failed(format!("{}: {e}", source.display())))?;
    let source_size = reader.size;
    let source_sha256 = hex(&reader.hasher.finalize());
    let conflict = |what: String| {
        ArchiveError::Conflict(format!(
            "{}: the archive key {}/{file} holds {what}; refusing to overwrite it (ArchiveFailing: the binary logs stay on the server)",
            dir.display(),
            term_dir_name(term, server_id)
        ))
    };
    if record_path.exists() {
        let record: LogRecord = read_json(&record_path).map_err(failed)?;
        return if record.source_sha256 == source_sha256 {
            Ok(None)
        } else {
            Err(conflict(format!(
                "another binary log (SHA-256 {}, this one {source_sha256})",
                record.source_sha256
            )))
        };
    }
    private_dir(&dir).map_err(failed)?;
    let object_path = dir.join(format!("{file}.zst"));
    let tmp = dir.join(format!("{file}.zst.tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let stored = zstd(&["-q", "-c", "-3"], source, Some(&tmp));
    let (size, sha256) = match stored {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(failed(e));
        }
    };
    let (size, sha256) = if link_if_absent(&tmp, &object_path).map_err(failed)? {
        (size, sha256)
    } else {
        // A stored object without a record: the same binary log (an archiver stopped between
        // the two), or a conflict.
        let same = zstd(&["-q", "-d", "-c"], &object_path, None)
            .is_ok_and(|(_, sum)| sum == source_sha256);
        if !same {
            return Err(conflict("another (or a damaged) object".into()));
        }
        hash_file(&object_path).map_err(failed)?
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
    };
    let text = serde_json::to_vec_pretty(&record).map_err(|e| failed(e.to_string()))?;
    if !write_if_absent(&record_path, &text).map_err(failed)? {
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

    #[test]
    fn a_key_is_written_once_and_other_content_under_it_is_archive_failing() {
        let repo = tempfile::tempdir().unwrap();
        let server = tempfile::tempdir().unwrap();
        let source = server.path().join("binlog.000001");
        std::fs::write(&source, binlog(1)).unwrap();
        let record = archive_log(repo.path(), 1, 7, &source).unwrap().unwrap();
        assert_eq!(record.transactions, [(0, 7, 1, 100)]);
        assert!(check_log(repo.path(), &record).is_ok());
        let plain = server.path().join("plain");
        read_archived_log(repo.path(), &record, &plain).unwrap();
        assert_eq!(std::fs::read(&plain).unwrap(), binlog(1));
        // Again: already there.
        assert_eq!(archive_log(repo.path(), 1, 7, &source).unwrap(), None);
        // An archiver stopped between object and record: the same object gets its record.
        let record_file = repo.path().join("binlog/000001-7/binlog.000001.json");
        std::fs::remove_file(&record_file).unwrap();
        let again = archive_log(repo.path(), 1, 7, &source).unwrap().unwrap();
        assert_eq!(again.sha256, record.sha256);
        // A reused name with other content (a rebuilt server's binlog.000001): refused...
        std::fs::write(&source, binlog(2)).unwrap();
        assert!(matches!(
            archive_log(repo.path(), 1, 7, &source),
            Err(ArchiveError::Conflict(_))
        ));
        // ...but under another term it is another key.
        assert!(archive_log(repo.path(), 2, 7, &source).unwrap().is_some());
        assert_eq!(read_logs(repo.path()).unwrap().len(), 2);
        // A flipped byte is named.
        let object = record.object_path(repo.path());
        let mut bytes = std::fs::read(&object).unwrap();
        bytes[5] ^= 0xff;
        std::fs::write(&object, bytes).unwrap();
        let err = check_log(repo.path(), &record).unwrap_err();
        assert!(err.contains(&object.display().to_string()), "{err}");
    }

    #[test]
    fn a_primary_keeps_its_term_until_another_server_or_another_position_opens_one() {
        let repo = tempfile::tempdir().unwrap();
        assert_eq!(ensure_term(repo.path(), 1000, "db-0", "").unwrap(), 1);
        assert_eq!(ensure_term(repo.path(), 1000, "db-0", "").unwrap(), 1);
        assert_eq!(
            ensure_term(repo.path(), 1001, "db-1", "0-1000-5").unwrap(),
            2
        );
        // db-0 back in office after replicating from db-1.
        assert_eq!(
            ensure_term(repo.path(), 1000, "db-0", "0-1001-9").unwrap(),
            3
        );
        let terms = read_terms(repo.path()).unwrap();
        assert_eq!(terms[1].start, "0-1000-5");
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
        self.with_session(async |c: &mut mysql_async::Conn| {
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
        self.with_session(async |c: &mut mysql_async::Conn| {
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
        self.with_session(async |c: &mut mysql_async::Conn| {
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
pub fn read_archive(repository: &Path) -> Result<ArchiveIndex, String> {
    let terms = read_terms(repository)?;
    let logs = read_logs(repository)?;
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
    pub fn plan(
        &self,
        repository: &Path,
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
            let runs = replay_runs(&reach.history, &self.path_logs, &from, length)
                .into_iter()
                .map(|run| {
                    let logs: Vec<LogRecord> =
                        run.logs.iter().map(|&i| self.logs[i].clone()).collect();
                    for log in &logs {
                        check_log(repository, log)
                            .map_err(|e| format!("refusing to restore: {e}"))?;
                    }
                    Ok(ReplayRun {
                        logs,
                        after: run.after.to_string(),
                        stop: crate::mysql_family::binlog_path::gtid_text(&run.stop),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
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

/// The plan of restore `source` (backup `set`, its target) from its repository.
pub fn plan_for(source: &stator_api::instance::RestoreSource) -> Result<RestorePlan, String> {
    let backups = crate::mysql_family::repository::list(&source.repository)?;
    let index = read_archive(&source.repository)?;
    index.plan(
        &source.repository,
        &source.stanza,
        &backups,
        Some(&source.set),
        &path_target(&source.target)?,
    )
}

/// Re-hashes every archived binary log and checks the GTID chain after each backup: the report
/// (one line per term and a summary), and every problem found, each naming its file.
pub fn verify_archive(
    repository: &Path,
    backups: &[crate::mysql_family::repository::Manifest],
) -> (String, Vec<String>) {
    let mut report = String::new();
    let mut problems = Vec::new();
    let index = match read_archive(repository) {
        Ok(i) => i,
        Err(e) => return (report, vec![e]),
    };
    for log in &index.logs {
        if let Err(e) = check_log(repository, log) {
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
                        repository.join(BINLOG_DIR).display(),
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

/// Ties `repository` to database `namespace/name`: writes the marker when absent, refuses
/// another database's (no database ever writes into another's path).
pub fn claim_repository(repository: &Path, namespace: &str, name: &str) -> Result<(), String> {
    use crate::postgres::backrest::{
        REPOSITORY_MARKER, RepositoryMarker, marker_conflict, read_repository_marker,
    };
    let wanted = RepositoryMarker {
        namespace: namespace.into(),
        name: name.into(),
        system_identifier: None,
    };
    match read_repository_marker(repository).map_err(|e| e.to_string())? {
        Some(found) => match marker_conflict(repository, &found, &wanted) {
            Some(why) => Err(why),
            None => Ok(()),
        },
        None => {
            private_dir(repository)?;
            let text = serde_json::to_vec_pretty(&wanted).map_err(|e| e.to_string())?;
            write_if_absent(&repository.join(REPOSITORY_MARKER), &text).map(|_| ())
        }
    }
}
