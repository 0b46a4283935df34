//! Full backups of a MariaDB database in its repository (`spec.backup`, a local directory or an
//! S3 bucket, both behind [`crate::object_store::ObjectStore`], so the same code runs on
//! either): the `mariadb-backup` stream an instance manager serves on `GET /backup` is stored
//! in one pass, compressed with the `zstd` program and hashed with SHA-256, under
//! `PATH/NAMESPACE/NAME/full/ID/full.xbstream.zst`. A large object is stored in parts of
//! [`crate::object_store::PART_SIZE`] (part N > 0 under `full.xbstream.zst.part-NNNNN`), each
//! an ordinary put-if-absent, so at most one part is in memory: a backup of gigabytes streams.
//! Its manifest (GTID position from `mariadb_backup_binlog_info`, times, size, hash, parts) is
//! written LAST, so a backup without one is incomplete and never listed. Verify re-hashes every
//! object; a restore refuses a backup whose object is missing, truncated or altered, naming the
//! file (or `s3://BUCKET/KEY`), and never falls back to another.
//!
//! The repository marker (`stator-repository.json`) ties the path to one database, as for
//! PostgreSQL ([`crate::postgres::backrest::RepositoryMarker`]).

use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use stator_api::position::MariadbGtidPosition;

use crate::error::EngineError;
use crate::mysql_family::MysqlFamily;
use crate::mysql_family::backup::{BACKUP_PATH, COMPRESSED_QUERY, GTID_TRAILER, fetch_backup};
use crate::object_store::{
    ObjectStore, Put, Store, delete_under, get_stream, put_stream_if_absent,
};

/// The directory of the full backups inside a repository path.
pub const FULL_DIR: &str = "full";
/// A backup's manifest: written last.
pub const MANIFEST: &str = "manifest.json";
/// A backup's stored stream.
pub const OBJECT: &str = "full.xbstream.zst";
/// The in-memory pipe between a compressed backup arriving and the store it goes into.
const PIPE_BUFFER: usize = 1 << 20;
/// Where Debian's `zstd` package installs the compressor.
pub const ZSTD: &str = "/usr/bin/zstd";

/// `zstd ARGS` with a cleared environment, its output piped, killed when dropped; the caller
/// sets its input and error stream.
pub fn zstd(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(ZSTD);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn one() -> u32 {
    1
}

/// What a finished full backup is: everything `list`, `verify` and a restore need.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub id: String,
    /// The instance the copy was taken from.
    pub source: String,
    /// The GTID position the copy holds (`mariadb_backup_binlog_info`).
    pub gtid: String,
    /// Seconds since the epoch.
    pub started: f64,
    pub stopped: f64,
    /// Bytes of the stored object.
    pub size: u64,
    /// SHA-256 of the stored object, lowercase hex.
    pub sha256: String,
    pub object: String,
    /// The parts the object is stored in ([`crate::object_store::PART_SIZE`] each; part 0
    /// under the object's key, part N under `KEY.part-NNNNN`).
    #[serde(default = "one")]
    pub parts: u32,
}

impl Manifest {
    /// The object's key in the repository.
    pub fn object_key(&self) -> String {
        format!("{}/{}", backup_key(&self.id), self.object)
    }
}

/// The key prefix of backup `id`: `full/ID`.
pub fn backup_key(id: &str) -> String {
    format!("{FULL_DIR}/{id}")
}

/// The directory of backup `id` in a local repository.
pub fn backup_dir(repository: &Path, id: &str) -> PathBuf {
    repository.join(FULL_DIR).join(id)
}

/// The backup ID of a backup started at `seconds` since the epoch: `20261126T120000Z`.
pub fn backup_id(seconds: f64) -> String {
    jiff::Timestamp::from_second(seconds as i64)
        .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|_| format!("{}", seconds as i64))
}

/// Seconds since the epoch, now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The backups of a repository: ID, whether it has a manifest, when its newest key was written.
async fn backup_ids(store: &impl ObjectStore) -> Result<Vec<(String, bool, f64)>, String> {
    let mut out: Vec<(String, bool, f64)> = Vec::new();
    for (key, modified) in store.list_modified(&format!("{FULL_DIR}/")).await? {
        let Some((id, name)) = key
            .strip_prefix(&format!("{FULL_DIR}/"))
            .and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        match out.last_mut() {
            Some(last) if last.0 == id => {
                last.1 |= name == MANIFEST;
                last.2 = last.2.max(modified);
            }
            _ => out.push((id.to_string(), name == MANIFEST, modified)),
        }
    }
    Ok(out)
}

/// The complete backups of a repository (those with a manifest), oldest first. A backup
/// without a manifest is incomplete and is left out; an unreadable manifest is an error naming
/// it.
pub async fn list(store: &impl ObjectStore) -> Result<Vec<Manifest>, String> {
    let mut out = Vec::new();
    for (id, complete, _) in backup_ids(store).await? {
        if complete {
            out.push(read_manifest(store, &id).await?);
        }
    }
    out.sort_by(|a, b| a.stopped.total_cmp(&b.stopped));
    Ok(out)
}

/// When the unfinished backups (without a manifest: being written, or abandoned) were last
/// written to, seconds since the epoch.
pub async fn unfinished(store: &impl ObjectStore) -> Vec<f64> {
    backup_ids(store)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, complete, _)| !complete)
        .map(|(_, _, modified)| modified)
        .collect()
}

/// The manifest of backup `id`; an error naming it when it is absent or unreadable.
pub async fn read_manifest(store: &impl ObjectStore, id: &str) -> Result<Manifest, String> {
    let key = format!("{}/{MANIFEST}", backup_key(id));
    let bytes = store.get(&key).await?.ok_or_else(|| {
        format!(
            "{}: missing: backup {id} is incomplete",
            store.location(&key)
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: is not a backup manifest: {e}", store.location(&key)))
}

/// Checks one backup's object against its manifest: present, of the recorded size, of the
/// recorded SHA-256. The error names the object.
pub async fn check_object(store: &impl ObjectStore, m: &Manifest) -> Result<(), String> {
    let key = m.object_key();
    let here = store.location(&key);
    let (len, sum) = get_stream(store, &key, m.parts, tokio::io::sink())
        .await
        .map_err(|e| format!("{here}: backup {} is incomplete: {e}", m.id))?;
    check_read(store, m, len, &sum)
}

/// Whether `len` bytes hashing to `sum`, as read from backup `m`'s object, are what its
/// manifest says; the error names the object.
fn check_read(store: &impl ObjectStore, m: &Manifest, len: u64, sum: &str) -> Result<(), String> {
    let here = store.location(&m.object_key());
    if len != m.size {
        return Err(format!(
            "{here}: backup {} is truncated or altered: {len} bytes, its manifest says {}",
            m.id, m.size
        ));
    }
    if sum != m.sha256 {
        return Err(format!(
            "{here}: backup {} is corrupt: SHA-256 {sum}, its manifest says {}",
            m.id, m.sha256
        ));
    }
    Ok(())
}

/// Re-hashes every object of the repository and checks the GTID positions of the backups:
/// Ok with one line per backup, or every problem found, each naming its object.
pub async fn verify(store: &impl ObjectStore) -> Result<String, String> {
    let mut report = String::new();
    let mut problems = Vec::new();
    let mut previous: Option<(String, MariadbGtidPosition)> = None;
    for (id, complete, _) in backup_ids(store).await? {
        if !complete {
            problems.push(format!(
                "{}: missing: the backup in {} is incomplete",
                store.location(&format!("{}/{MANIFEST}", backup_key(&id))),
                store.location(&backup_key(&id))
            ));
            continue;
        }
        let m = match read_manifest(store, &id).await {
            Ok(m) => m,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        if let Err(e) = check_object(store, &m).await {
            problems.push(e);
            continue;
        }
        match m.gtid.parse::<MariadbGtidPosition>() {
            Ok(g) => {
                if let Some((id, before)) = &previous
                    && !before.is_subset_of(&g)
                {
                    report.push_str(&format!(
                        "note: backup {} ({g}) does not contain backup {id}'s GTIDs ({before}): a new history (restore or failover)\n",
                        m.id
                    ));
                }
                previous = Some((m.id.clone(), g));
            }
            Err(e) => problems.push(format!(
                "{}: gtid {:?}: {e}",
                store.location(&format!("{}/{MANIFEST}", backup_key(&id))),
                m.gtid
            )),
        }
        report.push_str(&format!(
            "backup {}: {} bytes, SHA-256 ok, GTID {}\n",
            m.id, m.size, m.gtid
        ));
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(problems.join("\n"))
    }
}

/// Keeps the newest `full` complete backups and removes the older ones (each one's manifest
/// first, so a half-removed backup is never listed). The IDs removed.
pub async fn apply_retention(store: &impl ObjectStore, full: u32) -> Result<Vec<String>, String> {
    let backups = list(store).await?;
    let excess = backups.len().saturating_sub(full.max(1) as usize);
    let mut removed = Vec::new();
    for m in &backups[..excess] {
        store
            .delete(&format!("{}/{MANIFEST}", backup_key(&m.id)))
            .await?;
        delete_under(store, &format!("{}/", backup_key(&m.id))).await?;
        removed.push(m.id.clone());
    }
    Ok(removed)
}

/// Finds, in an xbstream as it passes, the payload of one file (`mariadb_backup_binlog_info`),
/// so the stored stream is read only once. Chunk layout (MariaDB `xbstream`): magic
/// `XBSTCK01`, flags (1), type (1: `P` payload, `E` end of file), path length (u32 LE), path;
/// then for `P`: payload length (u64 LE), offset (u64 LE), checksum (u32 LE), payload.
#[derive(Debug, Default)]
pub struct XbstreamScanner {
    buf: Vec<u8>,
    skip: u64,
    capturing: bool,
    broken: bool,
    /// The payloads of the files whose name is one of `BACKUP_BINLOG_INFO`.
    pub found: Vec<u8>,
}

const XB_MAGIC: &[u8; 8] = b"XBSTCK01";

impl XbstreamScanner {
    pub fn feed(&mut self, input: &[u8]) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(input);
        let mut pos = 0usize;
        loop {
            if self.skip > 0 {
                let n = (self.buf.len() - pos).min(self.skip as usize);
                if self.capturing {
                    self.found.extend_from_slice(&self.buf[pos..pos + n]);
                }
                pos += n;
                self.skip -= n as u64;
                if self.skip > 0 {
                    break;
                }
                continue;
            }
            let rest = &self.buf[pos..];
            if rest.len() < 14 {
                break;
            }
            if &rest[..8] != XB_MAGIC {
                self.broken = true;
                break;
            }
            let kind = rest[9];
            let path_len = u32::from_le_bytes([rest[10], rest[11], rest[12], rest[13]]) as usize;
            let head = 14 + path_len;
            if kind == b'E' {
                if rest.len() < head {
                    break;
                }
                pos += head;
                continue;
            }
            if kind != b'P' {
                self.broken = true;
                break;
            }
            if rest.len() < head + 20 {
                break;
            }
            let path = String::from_utf8_lossy(&rest[14..head]).into_owned();
            let mut len = [0u8; 8];
            len.copy_from_slice(&rest[head..head + 8]);
            self.skip = u64::from_le_bytes(len);
            self.capturing = crate::mariadb::BACKUP_BINLOG_INFO
                .iter()
                .any(|n| path == *n || path.ends_with(&format!("/{n}")));
            pos += head + 20;
        }
        self.buf.drain(..pos);
    }

    /// The GTID position of the copy.
    pub fn gtid(&self) -> Option<String> {
        (!self.found.is_empty())
            .then(|| crate::mariadb::gtid_of_backup(&String::from_utf8_lossy(&self.found)))
    }
}

/// Takes a full backup: `GET /backup` of the instance manager at `host:port` (instance
/// `source`), compressed by `zstd` into the repository's store and hashed as it is written
/// (in parts of [`crate::object_store::PART_SIZE`], one in memory at a time), then the
/// manifest. A failure leaves no manifest (and removes what was stored).
pub async fn store_full_backup(
    host: &str,
    port: u16,
    token: &str,
    source: &str,
    store: &Store,
) -> Result<Manifest, EngineError> {
    let started = now();
    let id = backup_id(started);
    let prefix = format!("{}/", backup_key(&id));
    let existing = store.list(&prefix).await.map_err(EngineError::State)?;
    if !existing.is_empty() {
        return Err(EngineError::State(format!(
            "{}: a backup with this ID exists already; try again in a second",
            store.location(&backup_key(&id))
        )));
    }
    let result = store_into(host, port, token, source, store, &id, started).await;
    if result.is_err() {
        let _ = delete_under(store, &prefix).await;
    }
    result
}

async fn store_into(
    host: &str,
    port: u16,
    token: &str,
    source: &str,
    store: &Store,
    id: &str,
    started: f64,
) -> Result<Manifest, EngineError> {
    let failed = |message: String| {
        EngineError::Connect(format!(
            "backup stream from {source} ({host}:{port}{BACKUP_PATH}): {message}"
        ))
    };
    let key = format!("{}/{OBJECT}", backup_key(id));
    // Compressed where it is taken (`?compression=zstd`): an eighth of the bytes cross the
    // network, and the GTID position comes in the answer's trailer.
    let path = format!("{BACKUP_PATH}?{COMPRESSED_QUERY}");
    // The answer is hashed and stored as it arrives, through a pipe in memory. When the store
    // stops reading (it failed, or part 0 exists), its own outcome says why.
    let (sink, compressed) = tokio::io::duplex(PIPE_BUFFER);
    let (fetched, stored) = tokio::join!(
        fetch_backup(host, port, &path, token, sink, "the repository"),
        put_stream_if_absent(store, &key, compressed)
    );
    let stored = stored.map_err(|e| EngineError::State(format!("storing the backup: {e}")))?;
    if stored.put == Put::Exists {
        return Err(EngineError::State(format!(
            "{}: exists already; try again in a second",
            store.location(&key)
        )));
    }
    let (received, answer) = fetched?;
    let gtid = answer.trailer(GTID_TRAILER).ok_or_else(|| {
        failed(format!(
            "the stream ({received} bytes) ended without the copy's GTID position: incomplete"
        ))
    })?;
    let gtid: MariadbGtidPosition = gtid.parse()?;
    let manifest = Manifest {
        id: id.to_string(),
        source: source.to_string(),
        gtid: gtid.to_string(),
        started,
        stopped: now(),
        size: stored.size,
        sha256: stored.sha256,
        object: OBJECT.into(),
        parts: stored.parts,
    };
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| EngineError::State(format!("the manifest: {e}")))?;
    let manifest_key = format!("{}/{MANIFEST}", backup_key(id));
    match store
        .put_if_absent(&manifest_key, text)
        .await
        .map_err(EngineError::State)?
    {
        Put::Written => {}
        Put::Exists => {
            return Err(EngineError::State(format!(
                "{}: exists already; refusing to overwrite it",
                store.location(&manifest_key)
            )));
        }
    }
    tracing::info!(id, bytes = manifest.size, parts = manifest.parts, gtid = %manifest.gtid, "full backup stored");
    Ok(manifest)
}

impl MysqlFamily {
    /// Fills the empty data dir from full backup `id` of `repository` (refused, naming the
    /// file, when its object does not match its manifest): `zstd -d | mbstream -x` into a
    /// staging dir, `mariadb-backup --prepare`; the copy's GTID position becomes this new
    /// primary's binlog state, the archived binary logs of `replay` are replayed on top (on the
    /// socket only), and users are then made as for a new primary at its first start.
    pub(crate) async fn restore_full_backup(
        &self,
        store: &Store,
        id: &str,
        replay: &[crate::mysql_family::binlog_archive::ReplayRun],
    ) -> Result<(), EngineError> {
        let manifest = read_manifest(store, id)
            .await
            .map_err(|message| EngineError::Config {
                field: "spec.bootstrap.restoreFrom.backup".into(),
                message,
            })?;
        self.prepare_dirs()?;
        let staging = crate::data_dir::staging_dir(&self.data_dir, &self.user)?;
        let result = async {
            let mut target = OsString::from("--directory=");
            target.push(&staging);
            // `zstd -d | mbstream -x`, one pipe between the two tools as in a shell: the
            // unpacked copy (eight times the object or more) passes through nothing here.
            let mut unzip = self
                .invocation(
                    PathBuf::from(ZSTD),
                    vec!["-q".into(), "-d".into(), "-c".into()],
                )
                .spawn_piped(true, true)?;
            let unzipped: Stdio = unzip
                .child
                .stdout
                .take()
                .ok_or_else(|| EngineError::State("zstd has no output pipe".into()))?
                .try_into()
                .map_err(|e| EngineError::io(ZSTD, "pass on the output of", e))?;
            let unpack = self
                .invocation(self.binaries.tool("mbstream")?, vec!["-x".into(), target])
                .spawn_reading(unzipped, false)?;
            // The object is read here, a part at a time, and fed to zstd. When mbstream stops
            // reading (a damaged stream), zstd's writes fail and it exits, and so does the
            // feed: nothing waits on a full pipe.
            let (key, parts) = (manifest.object_key(), manifest.parts);
            let mut feed = unzip
                .child
                .stdin
                .take()
                .ok_or_else(|| EngineError::State("zstd has no input pipe".into()))?;
            let fed = get_stream(store, &key, parts, &mut feed).await;
            drop(feed);
            let unzipped = unzip.finish().await;
            let unpacked = unpack.finish().await;
            // The object is checked as it is unpacked (one read, not a check and then a
            // restore): the staging dir is discarded unless its length and SHA-256 are the
            // manifest's. When the feed stopped (a read that failed, or zstd or mbstream that
            // stopped on a damaged stream), the object is read once more to tell damage from
            // the tools' or the store's failure.
            let damage = match &fed {
                Ok((len, sum)) => check_read(store, &manifest, *len, sum).err(),
                Err(_) => check_object(store, &manifest).await.err(),
            };
            let refuse = |message: String| EngineError::Config {
                field: "spec.bootstrap.restoreFrom.backup".into(),
                message: format!("refusing to restore: {message}"),
            };
            if let Some(message) = damage {
                return Err(refuse(message));
            }
            unzipped?;
            unpacked?;
            fed.map_err(refuse)?;
            let mut target = OsString::from("--target-dir=");
            target.push(&staging);
            self.invocation(
                self.binaries.tool("mariadb-backup")?,
                vec!["--no-defaults".into(), "--prepare".into(), target],
            )
            .run()
            .await?;
            let gtid: MariadbGtidPosition = manifest.gtid.parse()?;
            self.set_binlog_state(&staging, &gtid, store, replay)
                .await?;
            crate::data_dir::write_marker(&staging, &self.marker(None), &self.user)?;
            crate::data_dir::install_staging(&staging, &self.data_dir, &self.user)
        }
        .await;
        if result.is_err() {
            crate::data_dir::discard_staging(&staging, &self.data_dir);
        }
        if result.is_ok() {
            tracing::info!(id, gtid = %manifest.gtid, replays = replay.len(), "restored from a full backup");
        }
        result
    }
}

impl MysqlFamily {
    /// Starts the restored copy in `dir` on the socket only (no TCP, no users but the socket's
    /// root), empties its binary log and sets its GTID state to the copy's `gtid`, so the
    /// restored primary's transactions continue that history; then replays the archived binary
    /// logs of `replay` and checks that `@@gtid_binlog_pos` is the last one's stop GTID; stops
    /// it again. Users are made afterwards, at its first start as a primary.
    async fn set_binlog_state(
        &self,
        dir: &Path,
        gtid: &MariadbGtidPosition,
        store: &Store,
        replay: &[crate::mysql_family::binlog_archive::ReplayRun],
    ) -> Result<(), EngineError> {
        let mut datadir = OsString::from("--datadir=");
        datadir.push(dir);
        let mut socket = OsString::from("--socket=");
        socket.push(self.socket());
        let mut tmpdir = OsString::from("--tmpdir=");
        tmpdir.push(&self.run_dir);
        let mut pid = OsString::from("--pid-file=");
        pid.push(self.run_dir.join("restore.pid"));
        let args: Vec<OsString> = vec![
            "--no-defaults".into(),
            datadir,
            socket,
            tmpdir,
            pid,
            "--skip-networking".into(),
            "--log-bin=binlog".into(),
            "--server-id=1".into(),
        ];
        let statements = [
            "RESET MASTER".to_string(),
            format!(
                "SET GLOBAL gtid_binlog_state = {}",
                crate::mysql_family::config::quote_literal(&gtid.to_string())
            ),
        ];
        self.with_socket_server(args, dir, async |c: &mut mysql_async::Conn| {
            for statement in &statements {
                Self::exec(c, "setting the restored GTID state", statement).await?;
            }
            for run in replay {
                self.replay_binlogs(store, run).await?;
            }
            if let Some(last) = replay.last() {
                use mysql_async::prelude::Queryable;
                let reached: Option<String> = c
                    .query_first("SELECT @@GLOBAL.gtid_binlog_pos")
                    .await
                    .map_err(|e| EngineError::mysql("reading the replayed position", e))?;
                let reached = reached.unwrap_or_default();
                if reached != last.stop {
                    return Err(EngineError::State(format!(
                        "the binlog replay ended at GTID {reached:?}, not at the target {}: the restore is incomplete and was discarded",
                        last.stop
                    )));
                }
                tracing::info!(gtid = %reached, "archived binary logs replayed");
            }
            Ok(())
        })
        .await
    }
}

impl MysqlFamily {
    /// `TZ=UTC mariadb-binlog --start-position=AFTER --stop-position=STOP LOGS… | mariadb`,
    /// both as the manager's own user (the client over the socket, no password anywhere): the
    /// archived logs decompressed (and re-checked) into a private dir of the run dir first.
    async fn replay_binlogs(
        &self,
        store: &Store,
        run: &crate::mysql_family::binlog_archive::ReplayRun,
    ) -> Result<(), EngineError> {
        let dir = self.run_dir.join("replay");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| EngineError::io(&dir, "create", e))?;
        let result = self.replay_in(store, run, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn replay_in(
        &self,
        store: &Store,
        run: &crate::mysql_family::binlog_archive::ReplayRun,
        dir: &Path,
    ) -> Result<(), EngineError> {
        let mut files = Vec::new();
        for (i, log) in run.logs.iter().enumerate() {
            let path = dir.join(format!("{i:04}-{}", log.file));
            crate::mysql_family::binlog_archive::read_archived_log(store, log, &path)
                .await
                .map_err(|message| EngineError::Config {
                    field: "spec.bootstrap.restoreFrom".into(),
                    message: format!("refusing to restore: {message}"),
                })?;
            files.push(path);
        }
        let decoder = self.binaries.tool("mariadb-binlog")?;
        let client = self.binaries.tool("mariadb")?;
        let mut args: Vec<OsString> = vec!["--no-defaults".into()];
        if !run.after.is_empty() {
            args.push(format!("--start-position={}", run.after).into());
        }
        args.push(format!("--stop-position={}", run.stop).into());
        args.push("--skip-gtid-strict-mode".into());
        args.extend(files.iter().map(|f| f.as_os_str().to_owned()));
        let mut decode = tokio::process::Command::new(&decoder)
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| EngineError::io(&decoder, "run", e))?;
        let events = decode
            .stdout
            .take()
            .ok_or_else(|| EngineError::State("mariadb-binlog has no output pipe".into()))?;
        let events: Stdio = events
            .try_into()
            .map_err(|e| EngineError::io(&decoder, "pipe the output of", e))?;
        let mut socket = OsString::from("--socket=");
        socket.push(self.socket());
        let apply = tokio::process::Command::new(&client)
            .arg("--no-defaults")
            .arg(socket)
            .arg(format!("--user={}", self.admin))
            .arg("--batch")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("TZ", "UTC")
            .stdin(events)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| EngineError::io(&client, "run", e))?;
        let applied = apply
            .wait_with_output()
            .await
            .map_err(|e| EngineError::io(&client, "run", e))?;
        let decoded = decode
            .wait_with_output()
            .await
            .map_err(|e| EngineError::io(&decoder, "run", e))?;
        if !decoded.status.success() || !applied.status.success() {
            return Err(EngineError::State(format!(
                "replaying the archived binary logs {} (after {:?}, up to {}) failed: mariadb-binlog {}: {}; mariadb {}: {}",
                run.logs
                    .iter()
                    .map(|l| l.key())
                    .collect::<Vec<_>>()
                    .join(", "),
                run.after,
                run.stop,
                decoded.status,
                String::from_utf8_lossy(&decoded.stderr).trim(),
                applied.status,
                String::from_utf8_lossy(&applied.stderr).trim()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: u8, path: &str, payload: &[u8]) -> Vec<u8> {
        let mut c = XB_MAGIC.to_vec();
        c.push(0);
        c.push(kind);
        c.extend_from_slice(&(path.len() as u32).to_le_bytes());
        c.extend_from_slice(path.as_bytes());
        if kind == b'P' {
            c.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            c.extend_from_slice(&0u64.to_le_bytes());
            c.extend_from_slice(&0u32.to_le_bytes());
            c.extend_from_slice(payload);
        }
        c
    }

    #[test]
    fn the_scanner_finds_the_binlog_info_across_any_split() {
        let mut stream = chunk(b'P', "ibdata1", &[7u8; 300]);
        stream.extend(chunk(b'E', "ibdata1", b""));
        stream.extend(chunk(
            b'P',
            "mariadb_backup_binlog_info",
            b"mysql-bin.000002\t342\t0-1-7\n",
        ));
        stream.extend(chunk(b'E', "mariadb_backup_binlog_info", b""));
        for split in [1, 3, 13, 64, 1000] {
            let mut s = XbstreamScanner::default();
            for piece in stream.chunks(split) {
                s.feed(piece);
            }
            assert_eq!(s.gtid().as_deref(), Some("0-1-7"), "split {split}");
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn sha(bytes: &[u8]) -> String {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(bytes))
    }

    #[test]
    fn verify_names_the_missing_manifest_and_the_altered_object() {
        let repo = tempfile::tempdir().unwrap();
        let store = crate::object_store::DirStore {
            root: repo.path().to_path_buf(),
        };
        let id = "20261126T120000Z";
        let dir = backup_dir(repo.path(), id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(OBJECT), b"abc").unwrap();
        run(async {
            let err = verify(&store).await.unwrap_err();
            assert!(
                err.contains(&dir.join(MANIFEST).display().to_string()),
                "{err}"
            );
            assert!(list(&store).await.unwrap().is_empty());
            let m = Manifest {
                id: id.into(),
                source: "db-1".into(),
                gtid: "0-1-7".into(),
                started: 1.0,
                stopped: 2.0,
                size: 3,
                sha256: sha(b"abc"),
                object: OBJECT.into(),
                parts: 1,
            };
            std::fs::write(dir.join(MANIFEST), serde_json::to_string(&m).unwrap()).unwrap();
            assert!(verify(&store).await.is_ok());
            std::fs::write(dir.join(OBJECT), b"abd").unwrap();
            let err = verify(&store).await.unwrap_err();
            assert!(
                err.contains(&dir.join(OBJECT).display().to_string()) && err.contains("corrupt")
            );
            std::fs::write(dir.join(OBJECT), b"ab").unwrap();
            let err = verify(&store).await.unwrap_err();
            assert!(err.contains("truncated"), "{err}");
        });
    }

    #[test]
    fn a_large_object_is_stored_in_parts_and_read_back_whole() {
        use crate::object_store::{PART_SIZE, get_stream, part_key, put_stream_if_absent};
        let repo = tempfile::tempdir().unwrap();
        let store = crate::object_store::DirStore {
            root: repo.path().to_path_buf(),
        };
        let data: Vec<u8> = (0..PART_SIZE * 2 + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        run(async {
            let stored = put_stream_if_absent(&store, "full/X/o", &data[..])
                .await
                .unwrap();
            assert_eq!((stored.parts, stored.size), (3, data.len() as u64));
            assert_eq!(stored.sha256, sha(&data));
            assert_eq!(
                std::fs::metadata(repo.path().join(part_key("full/X/o", 2)))
                    .unwrap()
                    .len(),
                12345
            );
            let mut back = Vec::new();
            let (size, sum) = get_stream(&store, "full/X/o", 3, &mut back).await.unwrap();
            assert_eq!((size, sum), (data.len() as u64, sha(&data)));
            assert!(back == data);
            // Again under the same key: nothing written.
            let again = put_stream_if_absent(&store, "full/X/o", &b"other"[..])
                .await
                .unwrap();
            assert_eq!(again.put, crate::object_store::Put::Exists);
            // A missing part is named.
            std::fs::remove_file(repo.path().join(part_key("full/X/o", 1))).unwrap();
            let err = get_stream(&store, "full/X/o", 3, tokio::io::sink())
                .await
                .unwrap_err();
            assert!(err.contains("o.part-00001: missing"), "{err}");
            // Exactly one part's worth: one part.
            let exact = vec![1u8; PART_SIZE];
            let stored = put_stream_if_absent(&store, "full/Y/o", &exact[..])
                .await
                .unwrap();
            assert_eq!(stored.parts, 1);
        });
    }

    #[test]
    fn retention_keeps_the_newest_complete_backups() {
        let repo = tempfile::tempdir().unwrap();
        let store = crate::object_store::DirStore {
            root: repo.path().to_path_buf(),
        };
        for (i, id) in ["A", "B", "C"].iter().enumerate() {
            let dir = backup_dir(repo.path(), id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(OBJECT), b"").unwrap();
            let m = Manifest {
                id: id.to_string(),
                source: "db-1".into(),
                gtid: format!("0-1-{i}"),
                started: i as f64,
                stopped: i as f64 + 0.5,
                size: 0,
                sha256: String::new(),
                object: OBJECT.into(),
                parts: 1,
            };
            std::fs::write(dir.join(MANIFEST), serde_json::to_string(&m).unwrap()).unwrap();
        }
        // An incomplete one (no manifest) is neither counted nor removed.
        std::fs::create_dir_all(backup_dir(repo.path(), "D")).unwrap();
        std::fs::write(backup_dir(repo.path(), "D").join(OBJECT), b"x").unwrap();
        run(async {
            assert_eq!(
                apply_retention(&store, 2).await.unwrap(),
                vec!["A".to_string()]
            );
            let left: Vec<String> = list(&store)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.id)
                .collect();
            assert_eq!(left, ["B", "C"]);
            assert_eq!(unfinished(&store).await.len(), 1);
        });
        assert!(backup_dir(repo.path(), "D").exists());
        assert!(!backup_dir(repo.path(), "A").exists());
    }
}
