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
}

/// A directory: keys are files under it.
#[derive(Clone, Debug)]
pub struct DirStore {
    pub root: PathBuf,
}

impl ObjectStore for DirStore {
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<Put, String> {
        use std::io::Write;
        let path = self.root.join(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("{}: cannot create: {e}", parent.display()))?;
        }
        // Written whole under a temporary name, then linked: the key appears complete or not.
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .map_err(|e| format!("{}: cannot write: {e}", tmp.display()))?;
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
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), String> {
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
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(&self.root, &self.root.join(prefix), &mut out)?;
        out.sort();
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        let path = self.root.join(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: cannot remove: {e}", path.display())),
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
            keys.extend(
                page.contents
                    .into_iter()
                    .filter_map(|o| o.key.get(strip..).map(str::to_string)),
            );
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        keys.sort();
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
