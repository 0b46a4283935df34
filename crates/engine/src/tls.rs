//! TLS of one database: its certificate files, in the cert-manager layout (`ca.crt`, `tls.crt`,
//! `tls.key`), plus what Stator adds when it issues them itself (`ca.key`, the replication
//! user's `client.crt`/`client.key`, and `issued.json` with the leaves' validity), and the
//! rustls configurations built from them: the instance manager's HTTPS server, and every client
//! (instance-manager HTTP, PostgreSQL, MariaDB) verifying the server against the database's CA.
//! Which endpoints speak TLS is recorded once per process ([`trust_endpoints`],
//! [`trust_by_default`]); every client connects through [`connect_http`], [`postgres_tls`] or
//! [`mysql_tls`], which verify there and stay plain elsewhere.
//!
//! Every file is written 0600 (keys are secret; the rest lives in a state dir no one else may
//! read) and no key is ever logged. Renewal issues new leaves from the same CA, so a
//! client that trusts `ca.crt` keeps trusting the server; servers re-read the files on a reload
//! (`pg_reload_conf()`, `FLUSH SSL`) and the HTTPS server on the next handshake after the file
//! changed, so renewal needs no restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::EngineError;

/// The CA certificate every client trusts.
pub const CA_CERT: &str = "ca.crt";
/// The CA's key: present only when Stator issued the CA (and so can renew the leaves).
pub const CA_KEY: &str = "ca.key";
/// The server certificate (with the chain up to, not including, the CA).
pub const SERVER_CERT: &str = "tls.crt";
pub const SERVER_KEY: &str = "tls.key";
/// The replication user's client certificate.
pub const CLIENT_CERT: &str = "client.crt";
pub const CLIENT_KEY: &str = "client.key";
/// When the leaves Stator issued were made and expire.
pub const ISSUED: &str = "issued.json";

/// How long a CA Stator generates lives.
pub const CA_LIFETIME_DAYS: i64 = 3650;
/// How long the server and client certificates live; renewed when a third is left.
pub const LEAF_LIFETIME_DAYS: i64 = 90;

/// The validity of the leaves Stator issued (`issued.json`), in seconds since the epoch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// True when less than a third of the lifetime is left at `now` (seconds since the epoch).
    pub fn renewal_due(&self, now: i64) -> bool {
        let lifetime = (self.not_after - self.not_before).max(1);
        (self.not_after - now) * 3 < lifetime
    }
}

/// A directory of certificate files in the cert-manager layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    dir: PathBuf,
}

fn tls_error(path: &Path, message: impl std::fmt::Display) -> EngineError {
    EngineError::Tls {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn rcgen_error(path: &Path) -> impl Fn(rcgen::Error) -> EngineError + '_ {
    move |e| tls_error(path, format!("cannot issue the certificate: {e}"))
}

/// Writes `text` atomically with `mode` (a key: 0600).
fn write_private(path: &Path, text: &str, mode: u32) -> Result<(), EngineError> {
    crate::server_user::write_atomic(path, text, mode, None)
}

/// The CA's parameters; the same every time, so a renewal can sign with the stored key.
fn ca_params(database: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Stator CA for {database}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn now_utc() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl TlsFiles {
    pub fn new(dir: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.path(CA_CERT)
    }

    /// Reads one file of the set, naming it when it cannot be read.
    pub fn read(&self, name: &str) -> Result<String, EngineError> {
        let path = self.path(name);
        std::fs::read_to_string(&path).map_err(|e| {
            tls_error(
                &path,
                format!(
                    "cannot read it ({e}); the TLS directory holds ca.crt, tls.crt and tls.key"
                ),
            )
        })
    }

    /// The replication client certificate and key, when the set has them.
    pub fn client_pair(&self) -> Option<(PathBuf, PathBuf)> {
        let (c, k) = (self.path(CLIENT_CERT), self.path(CLIENT_KEY));
        (c.is_file() && k.is_file()).then_some((c, k))
    }

    /// Checks that the files a server needs are there and parse.
    pub fn check(&self) -> Result<(), EngineError> {
        self.server_config().map(|_| ())
    }

    /// Issues a CA (when the directory has none yet), then a server certificate valid for
    /// `sans` (host names and IP addresses) and a client certificate for `client_user`.
    pub fn issue(
        &self,
        database: &str,
        sans: &[String],
        client_user: &str,
    ) -> Result<Validity, EngineError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| EngineError::io(&self.dir, "create", e))?;
        let ca_key_path = self.path(CA_KEY);
        let now = now_utc();
        if !self.ca_cert().exists() {
            let key = KeyPair::generate().map_err(rcgen_error(&ca_key_path))?;
            let mut params = ca_params(database);
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(CA_LIFETIME_DAYS);
            let cert = params
                .self_signed(&key)
                .map_err(rcgen_error(&self.ca_cert()))?;
            write_private(&ca_key_path, &key.serialize_pem(), 0o600)?;
            write_private(&self.ca_cert(), &cert.pem(), 0o600)?;
        }
        self.issue_leaves(database, sans, client_user)
    }

    /// New server and client certificates from the stored CA key. Refused when the CA is not
    /// Stator's (no `ca.key`: whoever provided the files renews them).
    pub fn issue_leaves(
        &self,
        database: &str,
        sans: &[String],
        client_user: &str,
    ) -> Result<Validity, EngineError> {
        let ca_key_path = self.path(CA_KEY);
        let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|e| {
            tls_error(
                &ca_key_path,
                format!("cannot read it ({e}); only certificates Stator issued are renewed by Stator (a provided set is renewed by its issuer)"),
            )
        })?;
        let ca_key = KeyPair::from_pem(&ca_key_pem)
            .map_err(|e| tls_error(&ca_key_path, format!("is not a private key: {e}")))?;
        let issuer = Issuer::new(ca_params(database), ca_key);
        let now = now_utc();
        let not_before = now - time::Duration::hours(1);
        let not_after = now + time::Duration::days(LEAF_LIFETIME_DAYS);

        let server_path = self.path(SERVER_CERT);
        let mut server = CertificateParams::new(sans.to_vec()).map_err(|e| {
            tls_error(
                &server_path,
                format!("a subject alternative name is neither a host name nor an IP address: {e}"),
            )
        })?;
        server
            .distinguished_name
            .push(DnType::CommonName, database.to_string());
        server.not_before = not_before;
        server.not_after = not_after;
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        let server_key = KeyPair::generate().map_err(rcgen_error(&server_path))?;
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .map_err(rcgen_error(&server_path))?;

        let client_path = self.path(CLIENT_CERT);
        let mut client = CertificateParams::default();
        client.distinguished_name = rcgen::DistinguishedName::new();
        client
            .distinguished_name
            .push(DnType::CommonName, client_user.to_string());
        client.not_before = not_before;
        client.not_after = not_after;
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.use_authority_key_identifier_extension = true;
        let client_key = KeyPair::generate().map_err(rcgen_error(&client_path))?;
        let client_cert = client
            .signed_by(&client_key, &issuer)
            .map_err(rcgen_error(&client_path))?;

        // The server certificate last: its change is what the instance managers act on (and a
        // key is always written before its certificate), so whoever sees it finds the whole new
        // set in place.
        write_private(&self.path(CLIENT_KEY), &client_key.serialize_pem(), 0o600)?;
        write_private(&client_path, &client_cert.pem(), 0o600)?;
        write_private(&self.path(SERVER_KEY), &server_key.serialize_pem(), 0o600)?;
        write_private(&server_path, &server_cert.pem(), 0o600)?;
        let validity = Validity {
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
        };
        let json = serde_json::to_string_pretty(&validity).unwrap_or_default();
        write_private(&self.path(ISSUED), &json, 0o600)?;
        Ok(validity)
    }

    /// The validity of the leaves Stator issued; `None` for a provided set.
    pub fn validity(&self) -> Option<Validity> {
        let text = std::fs::read_to_string(self.path(ISSUED)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn certificates(&self, name: &str) -> Result<Vec<CertificateDer<'static>>, EngineError> {
        let path = self.path(name);
        let text = self.read(name)?;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| tls_error(&path, format!("is not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(tls_error(&path, "holds no PEM certificate"));
        }
        Ok(certs)
    }

    fn private_key(&self, name: &str) -> Result<PrivateKeyDer<'static>, EngineError> {
        let path = self.path(name);
        let text = self.read(name)?;
        PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|e| tls_error(&path, format!("is not a PEM private key: {e}")))
    }

    /// The server's certificate chain and key, as rustls signs with them.
    fn certified_key(&self) -> Result<Arc<CertifiedKey>, EngineError> {
        let certs = self.certificates(SERVER_CERT)?;
        let key = self.private_key(SERVER_KEY)?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| tls_error(&self.path(SERVER_KEY), e))?;
        Ok(Arc::new(CertifiedKey::new(certs, signing)))
    }

    /// The roots a client trusts: the database's CA only.
    pub fn roots(&self) -> Result<RootCertStore, EngineError> {
        let mut roots = RootCertStore::empty();
        for cert in self.certificates(CA_CERT)? {
            roots
                .add(cert)
                .map_err(|e| tls_error(&self.ca_cert(), format!("is not a usable CA: {e}")))?;
        }
        Ok(roots)
    }

    /// The HTTPS server's configuration (TLS 1.2 and 1.3); it picks up a renewed certificate
    /// at the first handshake after `tls.crt` changed.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, EngineError> {
        let resolver = ReloadingCertificate::new(self.clone())?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(&self.dir, e))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration that trusts only this database's CA and checks the host name.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, EngineError> {
        let roots = self.roots()?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(&self.dir, e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A tokio-postgres connector verifying the server against this CA (sslmode=verify-full).
    pub fn postgres_connector(
        &self,
    ) -> Result<tokio_postgres_rustls::MakeRustlsConnect, EngineError> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
            (*self.client_config()?).clone(),
        ))
    }

    /// mysql_async's TLS options: the server verified against this CA, host name included.
    pub fn mysql_ssl_opts(&self) -> mysql_async::SslOpts {
        mysql_async::SslOpts::default().with_root_certs(vec![self.ca_cert().into()])
    }
}

/// rustls with ring, the one crypto provider in the tree.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves `tls.crt`/`tls.key`, read again when `tls.crt` changes on disk.
#[derive(Debug)]
struct ReloadingCertificate {
    files: TlsFiles,
    current: Mutex<(Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl ReloadingCertificate {
    fn new(files: TlsFiles) -> Result<ReloadingCertificate, EngineError> {
        let modified = Self::modified(&files);
        let key = files.certified_key()?;
        Ok(ReloadingCertificate {
            files,
            current: Mutex::new((modified, key)),
        })
    }

    fn modified(files: &TlsFiles) -> Option<SystemTime> {
        std::fs::metadata(files.path(SERVER_CERT))
            .and_then(|m| m.modified())
            .ok()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().ok()?;
        let modified = Self::modified(&self.files);
        if modified != current.0 {
            match self.files.certified_key() {
                Ok(key) => *current = (modified, key),
                Err(e) => tracing::warn!(error = %e, "keeping the previous certificate"),
            }
        }
        Some(current.1.clone())
    }
}

/// A byte stream to an instance manager, TLS or not.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Server names whose TLS sessions a [`CaTrust`] keeps for resumption: a database's instances
/// (`spec.instances` is at most 16).
const TRUST_SESSION_NAMES: usize = 16;

/// Trust in one database's CA, held in memory: what a client needs that reaches many
/// databases, each with its own CA (the operator reads it from each Database's Secret
/// `NAME-tls`). No key: only the CA certificate.
#[derive(Clone)]
pub struct CaTrust {
    config: Arc<ClientConfig>,
    ca_pem: Arc<[u8]>,
}

impl std::fmt::Debug for CaTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaTrust").finish_non_exhaustive()
    }
}

impl CaTrust {
    /// Trust in the CA certificate(s) of `pem`; `source` names where it came from, for errors
    /// (`Secret shop/orders-tls, key ca.crt`).
    pub fn from_pem(pem: &[u8], source: &str) -> Result<CaTrust, EngineError> {
        let path = Path::new(source);
        let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| tls_error(path, format!("is not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(tls_error(path, "holds no PEM certificate"));
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| tls_error(path, format!("is not a usable CA: {e}")))?;
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(path, e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Session tickets are kept per server name, and one CA's servers are one database's
        // instances (at most 16). rustls' default cache is sized for 256 names and allocated
        // whole up front: about 14 KiB per trust, which the operator holds once per Database.
        config.resumption = Resumption::in_memory_sessions(TRUST_SESSION_NAMES);
        Ok(CaTrust {
            config: Arc::new(config),
            ca_pem: pem.into(),
        })
    }
}

/// How a client trusts one endpoint.
#[derive(Clone, Debug, Default)]
pub enum Trust {
    /// As this process registered the endpoint ([`trust_endpoints`], [`trust_by_default`]);
    /// plaintext where nothing is registered. The local runtime and the instance managers.
    #[default]
    Registered,
    /// Plaintext (a database with `spec.tls.enabled: false`).
    Plain,
    /// TLS verified against `ca`, the certificate checked for `server_name` rather than the
    /// address dialled: a pod is dialled by its IP, which changes when the pod is recreated and
    /// is in no certificate, and verified as its stable DNS name, which is.
    Verified { ca: CaTrust, server_name: String },
}

/// Where a client connects and how it trusts what answers there.
#[derive(Clone, Debug)]
pub struct Dial {
    pub host: String,
    pub port: u16,
    pub trust: Trust,
}

impl Dial {
    /// `host:port` as this process registered it ([`Trust::Registered`]).
    pub fn registered(host: impl Into<String>, port: u16) -> Dial {
        Dial {
            host: host.into(),
            port,
            trust: Trust::Registered,
        }
    }

    /// What the client does: plaintext, or TLS with a client configuration and the name the
    /// certificate must carry.
    fn resolve(&self) -> Resolved {
        match &self.trust {
            Trust::Plain => Resolved::Plain,
            Trust::Registered => match trusted_for(&self.host, self.port) {
                Some(t) => Resolved::Tls {
                    config: t.config,
                    ca: CaSource::File(t.files.ca_cert()),
                    server_name: self.host.clone(),
                },
                None => Resolved::Plain,
            },
            Trust::Verified { ca, server_name } => Resolved::Tls {
                config: ca.config.clone(),
                ca: CaSource::Pem(ca.ca_pem.clone()),
                server_name: server_name.clone(),
            },
        }
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        match self.resolve() {
            Resolved::Plain => "http",
            Resolved::Tls { .. } => "https",
        }
    }

    /// An HTTP connection: TLS verified against the trusted CA, or plaintext.
    pub async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = tcp.set_nodelay(true);
        match self.resolve() {
            Resolved::Plain => Ok(Box::new(tcp)),
            Resolved::Tls {
                config,
                server_name,
                ..
            } => {
                let name = ServerName::try_from(server_name)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                Ok(Box::new(stream))
            }
        }
    }

    /// Sets where `config` connects (host, and the address when the verified name is not the
    /// one dialled) and whether it requires TLS; the connector that verifies the chain and the
    /// name (sslmode=verify-full) or uses none.
    pub fn postgres(
        &self,
        config: &mut tokio_postgres::Config,
    ) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        config.port(self.port);
        match self.resolve() {
            Resolved::Plain => {
                config.host(&self.host);
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let tls = ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth();
                Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            }
            Resolved::Tls {
                config: tls,
                server_name,
                ..
            } => {
                // tokio-postgres verifies the certificate for `host` and dials `hostaddr`
                // when it is set.
                config.host(&server_name);
                if server_name != self.host {
                    let ip: std::net::IpAddr = self.host.parse().map_err(|_| {
                        format!(
                            "{}: a server verified as {server_name:?} must be dialled by IP address",
                            self.host
                        )
                    })?;
                    config.hostaddr(ip);
                }
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
                    (*tls).clone(),
                ))
            }
        }
    }

    /// mysql_async's TLS options: the server verified against the trusted CA, for the name
    /// trusted; `None` for plaintext.
    pub fn mysql(&self) -> Option<mysql_async::SslOpts> {
        match self.resolve() {
            Resolved::Plain => None,
            Resolved::Tls {
                ca, server_name, ..
            } => {
                let opts = mysql_async::SslOpts::default();
                let opts = match ca {
                    CaSource::File(path) => opts.with_root_certs(vec![path.into()]),
                    CaSource::Pem(pem) => opts.with_root_certs(vec![pem.to_vec().into()]),
                };
                Some(if server_name != self.host {
                    opts.with_danger_tls_hostname_override(Some(server_name))
                } else {
                    opts
                })
            }
        }
    }
}

/// Where a client's CA comes from (mysql_async takes a file or the PEM).
enum CaSource {
    File(PathBuf),
    Pem(Arc<[u8]>),
}

enum Resolved {
    Plain,
    Tls {
        config: Arc<ClientConfig>,
        ca: CaSource,
        server_name: String,
    },
}

/// Which endpoints speak TLS, for the clients of this process: a port registered with a
/// certificate set ([`trust_endpoints`]; the local runtime registers every port of a database)
/// or, for any other, the process's default set ([`trust_by_default`]; an instance manager's
/// own database, whose peers and upstream it talks to). Neither: plaintext.
#[derive(Default)]
struct Registry {
    by_endpoint: HashMap<(String, u16), Trusted>,
    default: Option<Trusted>,
}

#[derive(Clone)]
struct Trusted {
    files: TlsFiles,
    config: Arc<ClientConfig>,
}

static TRUST: LazyLock<RwLock<Registry>> = LazyLock::new(|| RwLock::new(Registry::default()));

fn trusted(files: &TlsFiles) -> Result<Trusted, EngineError> {
    Ok(Trusted {
        files: files.clone(),
        config: files.client_config()?,
    })
}

/// `host:port` for each of `ports` speaks TLS verified against the CA of `files`.
pub fn trust_endpoints(
    host: &str,
    ports: impl IntoIterator<Item = u16>,
    files: &TlsFiles,
) -> Result<(), EngineError> {
    let entry = trusted(files)?;
    if let Ok(mut trust) = TRUST.write() {
        for port in ports {
            trust
                .by_endpoint
                .insert((host.to_string(), port), entry.clone());
        }
    }
    Ok(())
}

/// Every endpoint not registered otherwise speaks TLS verified against the CA of `files`.
pub fn trust_by_default(files: &TlsFiles) -> Result<(), EngineError> {
    let entry = trusted(files)?;
    if let Ok(mut trust) = TRUST.write() {
        trust.default = Some(entry);
    }
    Ok(())
}

fn trusted_for(host: &str, port: u16) -> Option<Trusted> {
    let trust = TRUST.read().ok()?;
    trust
        .by_endpoint
        .get(&(host.to_string(), port))
        .or(trust.default.as_ref())
        .cloned()
}

/// `https` or `http` for `host:port`, as registered.
pub fn http_scheme(host: &str, port: u16) -> &'static str {
    Dial::registered(host, port).scheme()
}

/// An HTTP connection to `host:port`: TLS verified against its database's CA when registered.
pub async fn connect_http(host: &str, port: u16) -> std::io::Result<Box<dyn Stream>> {
    Dial::registered(host, port).connect().await
}

/// The tokio-postgres connector for `host:port` as registered, with `config` set to dial it
/// and to require TLS there (rustls verifies the chain and the host name: sslmode=verify-full)
/// or to use none.
pub fn postgres_tls(
    config: &mut tokio_postgres::Config,
    host: &str,
    port: u16,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    Dial::registered(host, port).postgres(config)
}

/// mysql_async's TLS options for `host:port` as registered: its database's CA, host name
/// verified.
pub fn mysql_tls(host: &str, port: u16) -> Option<mysql_async::SslOpts> {
    Dial::registered(host, port).mysql()
}

/// The names a server certificate covers for a server reachable at `addresses`: each of them,
/// plus `localhost` and the loopback addresses.
pub fn local_sans(addresses: &[&str]) -> Vec<String> {
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for a in addresses {
        if !sans.iter().any(|s| s == a) {
            sans.push((*a).to_string());
        }
    }
    sans
}

/// Where a server reads its TLS files: copies in its run directory, owned by the server user
/// (PostgreSQL refuses a key others can read or that another user owns), refreshed when the
/// source's `tls.crt` changes (a renewal; a cert-manager update of a mounted Secret).
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    run_dir: PathBuf,
    installed: Mutex<Option<SystemTime>>,
}

/// The paths of the copies, as a server's configuration names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsPaths {
    pub ca: String,
    pub cert: String,
    pub key: String,
    /// The replication user's certificate and key, when the set has them.
    pub client: Option<(String, String)>,
}

impl ServerTlsPaths {
    /// Paths under `/r`, for the configuration renderers' tests.
    #[cfg(test)]
    pub(crate) fn example() -> ServerTlsPaths {
        ServerTlsPaths {
            ca: "/r/tls-ca.crt".into(),
            cert: "/r/tls-tls.crt".into(),
            key: "/r/tls-tls.key".into(),
            client: Some(("/r/tls-client.crt".into(), "/r/tls-client.key".into())),
        }
    }
}

impl ServerTls {
    /// The TLS of an instance's server, when its config names a TLS directory.
    pub fn for_config(config: &stator_api::instance::InstanceConfig) -> Option<ServerTls> {
        config
            .tls_dir
            .as_ref()
            .map(|dir| ServerTls::new(TlsFiles::new(dir), &config.run_dir))
    }

    pub fn new(files: TlsFiles, run_dir: &Path) -> ServerTls {
        ServerTls {
            files,
            run_dir: run_dir.to_path_buf(),
            installed: Mutex::new(None),
        }
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn copy_path(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("tls-{name}"))
    }

    pub fn paths(&self) -> ServerTlsPaths {
        let s = |name: &str| self.copy_path(name).to_string_lossy().into_owned();
        ServerTlsPaths {
            ca: s(CA_CERT),
            cert: s(SERVER_CERT),
            key: s(SERVER_KEY),
            client: self
                .files
                .client_pair()
                .map(|_| (s(CLIENT_CERT), s(CLIENT_KEY))),
        }
    }

    /// Copies the files into the run directory as `user`, keys 0600, after checking they parse.
    pub fn install(&self, user: &crate::ServerUser) -> Result<(), EngineError> {
        let modified = ReloadingCertificate::modified(&self.files);
        self.files.check()?;
        let mut names = vec![CA_CERT, SERVER_CERT, SERVER_KEY];
        if self.files.client_pair().is_some() {
            names.extend([CLIENT_CERT, CLIENT_KEY]);
        }
        // Keys before certificates, as the issuer writes them.
        names.sort_by_key(|n| !n.ends_with(".key"));
        for name in names {
            let text = self.files.read(name)?;
            user.write_file(&self.copy_path(name), &text, 0o600)?;
        }
        if let Ok(mut installed) = self.installed.lock() {
            *installed = modified;
        }
        Ok(())
    }

    /// True when the source changed since the last [`ServerTls::install`].
    pub fn changed(&self) -> bool {
        let now = ReloadingCertificate::modified(&self.files);
        self.installed.lock().map(|i| *i != now).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn issued_keys_are_private_and_the_configs_load() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::new(dir.path().join("tls"));
        let v = files
            .issue("db", &local_sans(&["127.0.0.2"]), "stator_replication")
            .unwrap();
        assert!(v.not_after > v.not_before);
        for key in [CA_KEY, SERVER_KEY, CLIENT_KEY] {
            let mode = std::fs::metadata(files.path(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        files.server_config().unwrap();
        files.client_config().unwrap();
        assert!(files.client_pair().is_some());
    }

    #[test]
    fn renewal_keeps_the_ca_and_changes_the_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::new(dir.path());
        files.issue("db", &local_sans(&[]), "r").unwrap();
        let (ca, leaf) = (
            files.read(CA_CERT).unwrap(),
            files.read(SERVER_CERT).unwrap(),
        );
        files.issue("db", &local_sans(&[]), "r").unwrap();
        assert_eq!(files.read(CA_CERT).unwrap(), ca);
        assert_ne!(files.read(SERVER_CERT).unwrap(), leaf);
    }

    #[test]
    fn renewal_is_due_when_a_third_is_left() {
        let v = Validity {
            not_before: 0,
            not_after: 90,
        };
        assert!(!v.renewal_due(0));
        assert!(!v.renewal_due(59));
        assert!(v.renewal_due(61));
    }

    /// Serves one TLS handshake with `files` on a free port and writes `ok`; the port.
    async fn serve_once(files: &TlsFiles) -> u16 {
        let acceptor = tokio_rustls::TlsAcceptor::from(files.server_config().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            }
        });
        port
    }

    async fn read_through(dial: &Dial) -> std::io::Result<String> {
        use tokio::io::AsyncReadExt;
        let mut stream = dial.connect().await?;
        let mut got = String::new();
        stream.read_to_string(&mut got).await?;
        Ok(got)
    }

    /// A pod added by scaling after the certificate was issued: covered by the wildcard of
    /// the headless Service, which names exactly one label (not a deeper name).
    #[tokio::test]
    async fn a_wildcard_of_the_headless_service_covers_a_pod_added_later() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::new(dir.path().join("tls"));
        let sans = ["pg-0.pg-headless.apps.svc", "*.pg-headless.apps.svc"].map(String::from);
        files.issue("pg", &sans, "r").unwrap();
        let pem = files.read(CA_CERT).unwrap();
        let ca = CaTrust::from_pem(pem.as_bytes(), "ca.crt").unwrap();
        for (name, accepted) in [
            ("pg-4.pg-headless.apps.svc", true),
            ("a.pg-4.pg-headless.apps.svc", false),
            ("pg-4.other-headless.apps.svc", false),
        ] {
            let port = serve_once(&files).await;
            let dial = Dial {
                host: "127.0.0.1".into(),
                port,
                trust: Trust::Verified {
                    ca: ca.clone(),
                    server_name: name.into(),
                },
            };
            assert_eq!(read_through(&dial).await.is_ok(), accepted, "{name}");
        }
    }

    /// The operator's case: a pod dialled by its IP, which no certificate names, verified as
    /// its DNS name against a CA held in memory (nothing registered process-wide).
    #[tokio::test]
    async fn a_dial_verifies_the_name_it_carries_against_its_own_ca() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::new(dir.path().join("tls"));
        let name = "pg-0.pg-headless.apps.svc";
        files.issue("pg", &[name.to_string()], "r").unwrap();
        let port = serve_once(&files).await;
        let pem = files.read(CA_CERT).unwrap();
        let ca = CaTrust::from_pem(pem.as_bytes(), "ca.crt").unwrap();
        let dial = |server_name: &str, ca: &CaTrust| Dial {
            host: "127.0.0.1".into(),
            port,
            trust: Trust::Verified {
                ca: ca.clone(),
                server_name: server_name.into(),
            },
        };
        assert_eq!(read_through(&dial(name, &ca)).await.unwrap(), "ok");
        assert_eq!(dial(name, &ca).scheme(), "https");
        // The address itself is in no certificate: refused.
        assert!(read_through(&dial("127.0.0.1", &ca)).await.is_err());
        // Another database's CA: refused.
        let other = TlsFiles::new(dir.path().join("other"));
        other.issue("other", &[name.to_string()], "r").unwrap();
        let other_pem = other.read(CA_CERT).unwrap();
        let other_ca = CaTrust::from_pem(other_pem.as_bytes(), "other ca.crt").unwrap();
        assert!(read_through(&dial(name, &other_ca)).await.is_err());
        // Not a certificate: named.
        let e = CaTrust::from_pem(b"nonsense", "Secret apps/pg-tls, key ca.crt").unwrap_err();
        assert!(e.to_string().contains("Secret apps/pg-tls"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = TlsFiles::new(dir.path()).check().unwrap_err().to_string();
        assert!(e.contains("tls.crt"), "{e}");
    }
}
