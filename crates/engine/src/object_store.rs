//! Where a MariaDB repository's objects live: a local directory or an S3 bucket, behind one
//! small trait ([`ObjectStore`]) with the four operations the repository needs: put a key only
//! if it is absent (a key is never overwritten: different content under it is ArchiveFailing),
//! get, list under a prefix, delete. The S3 store signs its requests with SigV4 (`rusty-s3`:
//! pure signing, no HTTP stack of its own) and sends them with the hyper/rustls client the
//! instance-manager client already uses, over TLS only, verified against the `caSecretName` CA.
//! Its keys stay in memory, redacted in `Debug`; nothing here logs a URL (a presigned URL
//! carries a signature).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::credentials::Secret;

/// What became of a put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// The key was absent; it holds the bytes now.
    Written,
    /// The key existed already; nothing was changed.
    Exists,
}

/// The storage of a repository: keys are `/`-separated paths relative to its root.
#[allow(async_fn_in_trait)]
pub trait ObjectStore {
    /// Stores `bytes` under `key` unless the key exists.
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<Put, String>;
    /// The bytes under `key`; `None` when it is absent.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Every key under `prefix` (recursively), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, String>;
    /// Removes `key` (absent is fine).
    async fn delete(&self, key: &str) -> Result<(), String>;
    /// Every key under `prefix` with when it was last written (seconds since the epoch).
    async fn list_modified(&self, prefix: &str) -> Result<Vec<(String, f64)>, String>;
    /// Where `key` is, for messages: a file's path, or `s3://BUCKET/PREFIX/KEY`. Never a URL
    /// with a signature.
    fn location(&self, key: &str) -> String;
}

/// The size of the parts a large object is stored in ([`put_stream_if_absent`]): part 0 under
/// the key itself, part N under `KEY.part-NNNNN`. One part at a time is held in memory, so a
/// backup of gigabytes streams through a fixed buffer, and every part is an ordinary
/// put-if-absent `PUT` (no multipart upload, whose completion SeaweedFS does not make
/// conditional). An object that fits one part is stored exactly as a single object.
pub const PART_SIZE: usize = 32 << 20;

/// The key of part `index` of the object stored under `key`.
pub fn part_key(key: &str, index: u32) -> String {
    if index == 0 {
        key.to_string()
    } else {
        format!("{key}.part-{index:05}")
    }
}

/// What [`put_stream_if_absent`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// `Exists`: part 0 was there already and nothing was written.
    pub put: Put,
    pub size: u64,
    /// SHA-256 of the whole stream, lowercase hex.
    pub sha256: String,
    pub parts: u32,
}

/// Stores what `reader` yields under `key`, in parts of [`PART_SIZE`], each written only if
/// absent, hashing it as it passes. When part 0 exists nothing is written (`Put::Exists`, the
/// rest of the stream is not read). A later part that exists already is an error (a damaged or
/// concurrent object), never overwritten.
pub async fn put_stream_if_absent<S: ObjectStore + ?Sized>(
    store: &S,
    key: &str,
    mut reader: impl tokio::io::AsyncRead + Unpin,
) -> Result<Stored, String> {
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let mut hasher = sha2::Sha256::new();
    let (mut size, mut parts) = (0u64, 0u32);
    loop {
        let mut part = Vec::with_capacity(PART_SIZE.min(1 << 20));
        let mut limited = (&mut reader).take(PART_SIZE as u64);
        limited
            .read_to_end(&mut part)
            .await
            .map_err(|e| format!("{}: cannot read what is stored: {e}", store.location(key)))?;
        if part.is_empty() && parts > 0 {
            break;
        }
        let full = part.len() == PART_SIZE;
        hasher.update(&part);
        size += part.len() as u64;
        let name = part_key(key, parts);
        match store.put_if_absent(&name, part).await? {
            Put::Written => {}
            Put::Exists if parts == 0 => {
                return Ok(Stored {
                    put: Put::Exists,
                    size: 0,
                    sha256: String::new(),
                    parts: 0,
                });
            }
            Put::Exists => {
                return Err(format!(
                    "{}: exists already; refusing to overwrite it",
                    store.location(&name)
                ));
            }
        }
        parts += 1;
        if !full {
            break;
        }
    }
    Ok(Stored {
        put: Put::Written,
        size,
        sha256: crate::mysql_family::repository::hex(&hasher.finalize()),
        parts,
    })
}

/// Reads the `parts` parts of the object under `key` into `sink` in order (one part in memory
/// at a time): its size and SHA-256. A missing part is an error naming it.
pub async fn get_stream<S: ObjectStore + ?Sized>(
    store: &S,
    key: &str,
    parts: u32,
    mut sink: impl tokio::io::AsyncWrite + Unpin,
) -> Result<(u64, String), String> {
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    for index in 0..parts.max(1) {
        let name = part_key(key, index);
        let Some(bytes) = store.get(&name).await? else {
            return Err(format!("{}: missing", store.location(&name)));
        };
        hasher.update(&bytes);
        size += bytes.len() as u64;
        sink.write_all(&bytes)
            .await
            .map_err(|e| format!("{}: cannot pass it on: {e}", store.location(&name)))?;
    }
    sink.flush()
        .await
        .map_err(|e| format!("{}: cannot pass it on: {e}", store.location(key)))?;
    Ok((
        size,
        crate::mysql_family::repository::hex(&hasher.finalize()),
    ))
}

/// Removes every key under `prefix`.
pub async fn delete_under<S: ObjectStore + ?Sized>(store: &S, prefix: &str) -> Result<(), String> {
    for key in store.list(prefix).await? {
        store.delete(&key).await?;
    }
    Ok(())
}

/// A repository's storage: a directory (`repository.local`) or an S3 bucket (`repository.s3`).
#[derive(Debug)]
pub enum Store {
    Dir(DirStore),
    S3(Box<S3Store>),
}

impl Store {
    /// The store of the repository at `path`: a directory, or with `s3` the path inside the
    /// bucket. The S3 keys come from the `credentialsSecretName` Secret's files and the
    /// endpoint is verified against `caSecretName`'s `ca.crt`, which an S3 repository of
    /// MariaDB requires (this client carries no public CA list).
    pub fn open(
        path: &Path,
        s3: Option<&crate::postgres::backrest::S3Settings>,
    ) -> Result<Store, String> {
        let Some(settings) = s3 else {
            return Ok(Store::Dir(DirStore {
                root: path.to_path_buf(),
            }));
        };
        let field = "spec.backup.repository.s3.caSecretName";
        let ca = settings.ca_file.as_ref().ok_or_else(|| {
            format!(
                "{field}: required for an S3 repository of MariaDB: the Secret's {} is the CA the endpoint's certificate is verified against",
                crate::tls::CA_CERT
            )
        })?;
        let dir = ca.parent().unwrap_or(Path::new("/"));
        let tls = crate::tls::TlsFiles::new(dir)
            .client_config()
            .map_err(|e| format!("{field}: {e}"))?;
        Ok(Store::S3(Box::new(S3Store::new(settings, path, tls)?)))
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Store::S3(_))
    }
}

impl ObjectStore for Store {
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<Put, String> {
        match self {
            Store::Dir(s) => s.put_if_absent(key, bytes).await,
            Store::S3(s) => s.put_if_absent(key, bytes).await,
        }
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            Store::Dir(s) => s.get(key).await,
            Store::S3(s) => s.get(key).await,
        }
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        match self {
            Store::Dir(s) => s.list(prefix).await,
            Store::S3(s) => s.list(prefix).await,
        }
    }
    async fn delete(&self, key: &str) -> Result<(), String> {
        match self {
            Store::Dir(s) => s.delete(key).await,
            Store::S3(s) => s.delete(key).await,
        }
    }
    async fn list_modified(&self, prefix: &str) -> Result<Vec<(String, f64)>, String> {
        match self {
            Store::Dir(s) => s.list_modified(prefix).await,
            Store::S3(s) => s.list_modified(prefix).await,
        }
    }
    fn location(&self, key: &str) -> String {
        match self {
            Store::Dir(s) => s.location(key),
            Store::S3(s) => s.location(key),
        }
    }
}

/// What marks a [`DirStore`]'s temporary file (never listed).
const TMP_MARK: &str = ".stator-tmp-";
static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A directory: keys are files under it.
#[derive(Clone, Debug)]
pub struct DirStore {
    pub root: PathBuf,
}

impl ObjectStore for DirStore {
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<Put, String> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = self.root.join(key);
        if let Some(parent) = path.parent() {
            // A repository holds copies of every table and the password hashes: its owner's.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| format!("{}: cannot create: {e}", parent.display()))?;
        }
        // Written whole under a temporary name, then linked: the key appears complete or not.
        let tmp = PathBuf::from(format!(
            "{}{TMP_MARK}{}-{}",
            path.display(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("{}: cannot write: {e}", tmp.display())
            })?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Put::Written),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Put::Exists),
            Err(e) => Err(format!("{}: cannot write: {e}", path.display())),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.root.join(key);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        Ok(self
            .list_modified(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        let path = self.root.join(key);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                // Empty directories left behind go too (a removed backup's).
                let mut dir = path.parent();
                while let Some(d) = dir {
                    if d == self.root || std::fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: cannot remove: {e}", path.display())),
        }
    }

    async fn list_modified(&self, prefix: &str) -> Result<Vec<(String, f64)>, String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, f64)>) -> Result<(), String> {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(format!("{}: cannot read: {e}", dir.display())),
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(root, &path, out)?;
                } else if let Ok(rel) = path.strip_prefix(root) {
                    let rel = rel.to_string_lossy().into_owned();
                    if rel.contains(TMP_MARK) {
                        continue;
                    }
                    let modified = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0.0, |d| d.as_secs_f64());
                    out.push((rel, modified));
                }
            }
            Ok(())
        }
        // As S3: every key that starts with `prefix`; the walk starts at its directory part.
        let dir = match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        };
        let mut out = Vec::new();
        walk(&self.root, &dir, &mut out)?;
        out.retain(|(k, _)| k.starts_with(prefix));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn location(&self, key: &str) -> String {
        if key.is_empty() {
            self.root.display().to_string()
        } else {
            self.root.join(key).display().to_string()
        }
    }
}

/// How long a signed request stays valid.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(300);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// An S3 bucket, under `prefix` (`PATH/NAMESPACE/NAME`, without the leading `/`).
pub struct S3Store {
    host: String,
    port: u16,
    bucket: Bucket,
    prefix: String,
    access_key: String,
    secret_key: Secret,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S3Store(https://{}:{}/{}/{})",
            self.host,
            self.port,
            self.bucket.name(),
            self.prefix
        )
    }
}

impl S3Store {
    /// The store at `https://host:port/bucket/prefix` (path-style), trusting `tls`.
    pub fn new(
        settings: &crate::postgres::backrest::S3Settings,
        prefix: &Path,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<S3Store, String> {
        let field = "spec.backup.repository.s3.credentialsSecretName";
        let read = |key: &str| {
            crate::credentials::read_secret(&settings.credentials_dir, key)
                .map_err(|e| format!("{field}: {e}"))
        };
        let access_key = read(crate::postgres::backrest::S3_ACCESS_KEY_ID)?
            .expose()
            .to_string();
        let secret_key = read(crate::postgres::backrest::S3_SECRET_ACCESS_KEY)?;
        let url = format!("https://{}:{}", settings.host, settings.port)
            .parse()
            .map_err(|e| format!("spec.backup.repository.s3.endpoint: {e}"))?;
        let bucket = Bucket::new(
            url,
            UrlStyle::Path,
            settings.bucket.clone(),
            settings.region.clone(),
        )
        .map_err(|e| format!("spec.backup.repository.s3.bucket: {e}"))?;
        Ok(S3Store {
            host: settings.host.clone(),
            port: settings.port,
            bucket,
            prefix: prefix.to_string_lossy().trim_matches('/').to_string(),
            access_key,
            secret_key,
            tls,
        })
    }

    fn credentials(&self) -> Credentials {
        Credentials::new(
            self.access_key.clone(),
            self.secret_key.expose().to_string(),
        )
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// A TLS connection to the endpoint, its certificate verified for the endpoint's host.
    async fn connect(
        &self,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
    }

    /// Sends one request to a signed URL; the status and the body. Errors name the bucket and
    /// the key, never the URL.
    async fn send(
        &self,
        method: &str,
        url: url::Url,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        what: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        let target = format!("s3://{}/{what}", self.bucket.name());
        let exchange = async {
            let tcp = self.connect().await.map_err(|e| {
                format!(
                    "{target}: cannot connect to {}:{}: {e}",
                    self.host, self.port
                )
            })?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("{target}: {e}"))?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            let mut builder = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, format!("{}:{}", self.host, self.port));
            for (k, v) in headers {
                builder = builder.header(*k, *v);
            }
            let request = builder
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| format!("{target}: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("{target}: {e}"))?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{target}: {e}"))?
                .to_bytes()
                .to_vec();
            driver.abort();
            Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{target}: no answer within {REQUEST_TIMEOUT:?}"))?
    }

    /// An error for an unexpected answer: the status and the S3 error code.
    fn refused(&self, what: &str, status: u16, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let code = text
            .split_once("<Code>")
            .and_then(|(_, r)| r.split_once("</Code>"))
            .map(|(c, _)| format!(" ({c})"))
            .unwrap_or_default();
        let hint = if status == 403 {
            "; check the keys of spec.backup.repository.s3.credentialsSecretName"
        } else {
            ""
        };
        format!(
            "s3://{}/{what}: HTTP {status}{code}{hint}",
            self.bucket.name()
        )
    }
}

impl ObjectStore for S3Store {
    /// `PUT` with `If-None-Match: *`: the store writes the key only when it is absent (412
    /// otherwise), in one request, so two writers never both succeed.
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<Put, String> {
        let key = self.full_key(key);
        let creds = self.credentials();
        let url = self
            .bucket
            .put_object(Some(&creds), &key)
            .sign(SIGNATURE_LIFETIME);
        let (status, body) = self
            .send("PUT", url, &[("if-none-match", "*")], bytes, &key)
            .await?;
        match status {
            200..=299 => Ok(Put::Written),
            412 => Ok(Put::Exists),
            _ => Err(self.refused(&key, status, &body)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let key = self.full_key(key);
        let creds = self.credentials();
        let url = self
            .bucket
            .get_object(Some(&creds), &key)
            .sign(SIGNATURE_LIFETIME);
        let (status, body) = self.send("GET", url, &[], Vec::new(), &key).await?;
        match status {
            200..=299 => Ok(Some(body)),
            404 => Ok(None),
            _ => Err(self.refused(&key, status, &body)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        Ok(self
            .list_modified(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket.name(), self.full_key(key))
    }

    async fn list_modified(&self, prefix: &str) -> Result<Vec<(String, f64)>, String> {
        let full = self.full_key(prefix);
        let creds = self.credentials();
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&creds));
            action.with_prefix(full.clone());
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGNATURE_LIFETIME);
            let (status, body) = self.send("GET", url, &[], Vec::new(), &full).await?;
            if !(200..=299).contains(&status) {
                return Err(self.refused(&full, status, &body));
            }
            let page =
                rusty_s3::actions::ListObjectsV2::parse_response(&String::from_utf8_lossy(&body))
                    .map_err(|e| {
                    format!(
                        "s3://{}/{full}: the listing cannot be read: {e}",
                        self.bucket.name()
                    )
                })?;
            let strip = if self.prefix.is_empty() {
                0
            } else {
                self.prefix.len() + 1
            };
            keys.extend(page.contents.into_iter().filter_map(|o| {
                let modified = o
                    .last_modified
                    .as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map_or(0.0, |t| t.as_millisecond() as f64 / 1000.0);
                o.key.get(strip..).map(|k| (k.to_string(), modified))
            }));
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        let key = self.full_key(key);
        let creds = self.credentials();
        let url = self
            .bucket
            .delete_object(Some(&creds), &key)
            .sign(SIGNATURE_LIFETIME);
        let (status, body) = self.send("DELETE", url, &[], Vec::new(), &key).await?;
        match status {
            200..=299 | 404 => Ok(()),
            _ => Err(self.refused(&key, status, &body)),
        }
    }
}
