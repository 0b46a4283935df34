//! TLS on Kubernetes: the certificate Secret `NAME-tls` (cert-manager layout: `ca.crt`,
//! `tls.crt`, `tls.key`, plus `client.crt`/`client.key` for the replication user), mounted into
//! every pod at [`TLS_DIR`], which `stator instance --pod` passes on as the instance's TLS
//! directory.
//!
//! With `spec.tls.issuerRef`, cert-manager issues instead: render emits two `Certificate`s
//! ([`certificates`]), the server's into the Secret `NAME-tls` and the replication user's into
//! `NAME-replication-tls` (each `ca.crt`/`tls.crt`/`tls.key`), and the pods mount both through
//! one projected volume that maps the second pair to `client.crt`/`client.key`
//! ([`projected_sources`]), so [`TLS_DIR`] holds the same five files either way.
//!
//! Where the Secret comes from otherwise: `stator render` generates it ([`TlsMaterial::issue`]) and writes it
//! next to the generated passwords in `secret.yaml` (mode 0600, never committed); the operator
//! calls the same [`TlsMaterial::issue`] and [`tls_secret`] and creates the Secret when it does not
//! exist yet. The CA's key is not part of the Secret: Stator's instance managers do not renew
//! certificates on Kubernetes; a re-issue is a new Secret (same name) and the pods copy the new
//! files in when the kubelet updates the mount.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{KeyToPath, Secret, SecretProjection, VolumeProjection};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use stator_api::Database;
use stator_api::spec::IssuerRef;
use stator_engine::tls::{CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY, TlsFiles};

use super::meta::object_meta;

/// Where the pods mount the certificate Secret (the instance's `tls_dir`).
pub const TLS_DIR: &str = "/etc/stator/tls";

/// The files of the Secret, in the cert-manager layout plus the replication client's pair.
pub const TLS_SECRET_KEYS: [&str; 5] = [CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY];

/// Name of the certificate Secret of `db`.
pub fn tls_secret_name(db: &Database) -> String {
    format!("{}-tls", db.name())
}

/// The names clients dial on Kubernetes: `NAME-rw`, `NAME-ro` and each pod's headless name,
/// bare, with the namespace, with `.svc` and with `.svc.cluster.local`; plus `localhost` and the
/// loopback addresses for the pod's own connections.
pub fn kube_sans(db: &Database) -> Vec<String> {
    let ns = db.namespace();
    let headless = db.headless_service_name();
    let mut bases = vec![db.rw_service_name(), db.ro_service_name()];
    bases.extend((0..db.spec.instances).map(|o| format!("{}.{headless}", db.instance_name(o))));
    let mut sans = stator_engine::tls::local_sans(&[]);
    for base in bases {
        for suffix in ["", ".svc", ".svc.cluster.local"] {
            if suffix.is_empty() {
                sans.push(base.clone());
            }
            sans.push(format!("{base}.{ns}{suffix}"));
        }
    }
    sans
}

/// The names of the certificate Stator issues itself: [`kube_sans`] and every pod of the
/// headless Service (`*.NAME-headless.NS.svc`, with and without `.svc`/`.svc.cluster.local`),
/// so that pods added by scaling are covered by the certificate issued once (the Secret is
/// never rewritten). cert-manager's Certificate names only [`kube_sans`]: it is rendered again
/// with `spec.instances` and cert-manager reissues. (rustls, libpq's `verify-full` and
/// OpenSSL's host check all take a wildcard in the leftmost label.)
pub fn issued_sans(db: &Database) -> Vec<String> {
    let (ns, headless) = (db.namespace(), db.headless_service_name());
    let mut sans = kube_sans(db);
    sans.extend(
        ["", ".svc", ".svc.cluster.local"].map(|suffix| format!("*.{headless}.{ns}{suffix}")),
    );
    sans
}

/// Name of the Secret cert-manager fills with the replication user's client certificate (with
/// `spec.tls.issuerRef`).
pub fn replication_tls_secret_name(db: &Database) -> String {
    format!("{}-replication-tls", db.name())
}

/// `apiVersion` of the cert-manager objects render emits.
pub const CERT_MANAGER_API_VERSION: &str = "cert-manager.io/v1";

/// A cert-manager `Certificate` (`cert-manager.io/v1`), the fields Stator sets.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: CertificateSpec,
}

/// `spec` of a [`Certificate`].
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    pub common_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    pub usages: Vec<&'static str>,
    pub private_key: CertificatePrivateKey,
    pub issuer_ref: IssuerRef,
}

/// `spec.privateKey`: the key kind Stator issues itself (ECDSA P-256), PKCS#8 (what every
/// reader of the files takes), and a new key on every renewal.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificatePrivateKey {
    pub algorithm: &'static str,
    pub size: u16,
    pub encoding: &'static str,
    pub rotation_policy: &'static str,
}

const PRIVATE_KEY: CertificatePrivateKey = CertificatePrivateKey {
    algorithm: "ECDSA",
    size: 256,
    encoding: "PKCS8",
    rotation_policy: "Always",
};

/// With `spec.tls.issuerRef` (and TLS on): the server's `Certificate` (Secret `NAME-tls`, the
/// names of [`kube_sans`]) and the replication user's (Secret `NAME-replication-tls`); else none.
pub fn certificates(db: &Database) -> Vec<Certificate> {
    let Some(issuer) = db
        .spec
        .tls
        .issuer_ref
        .as_ref()
        .filter(|_| db.spec.tls.enabled)
    else {
        return Vec::new();
    };
    let (ips, names): (Vec<String>, Vec<String>) = kube_sans(db)
        .into_iter()
        .partition(|san| san.parse::<std::net::IpAddr>().is_ok());
    let certificate = |name: String, spec: CertificateSpec| Certificate {
        api_version: CERT_MANAGER_API_VERSION,
        kind: "Certificate",
        metadata: object_meta(db, name),
        spec,
    };
    vec![
        certificate(
            tls_secret_name(db),
            CertificateSpec {
                secret_name: tls_secret_name(db),
                common_name: db.name().to_string(),
                dns_names: names,
                ip_addresses: ips,
                usages: vec!["server auth", "digital signature", "key encipherment"],
                private_key: PRIVATE_KEY,
                issuer_ref: issuer.clone(),
            },
        ),
        certificate(
            replication_tls_secret_name(db),
            CertificateSpec {
                secret_name: replication_tls_secret_name(db),
                common_name: stator_engine::postgres::config::REPLICATION_USER.to_string(),
                dns_names: Vec::new(),
                ip_addresses: Vec::new(),
                usages: vec!["client auth", "digital signature"],
                private_key: PRIVATE_KEY,
                issuer_ref: issuer.clone(),
            },
        ),
    ]
}

/// The pods' certificate files from the two Secrets cert-manager fills: `NAME-tls` as it is
/// (`ca.crt`, `tls.crt`, `tls.key`), and the replication pair of `NAME-replication-tls` as
/// `client.crt`/`client.key`, the layout of [`TLS_SECRET_KEYS`].
pub fn projected_sources(db: &Database) -> Vec<VolumeProjection> {
    let items = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(key, path)| KeyToPath {
                key: (*key).to_string(),
                path: (*path).to_string(),
                mode: None,
            })
            .collect()
    };
    let secret = |name: String, items: Vec<KeyToPath>| VolumeProjection {
        secret: Some(SecretProjection {
            name,
            items: Some(items),
            optional: Some(false),
        }),
        ..VolumeProjection::default()
    };
    vec![
        secret(
            tls_secret_name(db),
            items(&[
                (CA_CERT, CA_CERT),
                (SERVER_CERT, SERVER_CERT),
                (SERVER_KEY, SERVER_KEY),
            ]),
        ),
        secret(
            replication_tls_secret_name(db),
            items(&[(SERVER_CERT, CLIENT_CERT), (SERVER_KEY, CLIENT_KEY)]),
        ),
    ]
}

/// A CA, a server certificate for [`issued_sans`] and a replication client certificate, in memory
/// (the keys never touch a disk but for a 0700 temporary directory removed at once).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    files: BTreeMap<&'static str, String>,
}

impl TlsMaterial {
    /// Issues a fresh set for `db`.
    pub fn issue(db: &Database) -> Result<TlsMaterial, String> {
        let dir = tempfile::Builder::new()
            .prefix("stator-tls-")
            .tempdir()
            .map_err(|e| {
                format!("cannot create a temporary directory for the certificates: {e}")
            })?;
        let files = TlsFiles::new(dir.path().join("tls"));
        let user = stator_engine::postgres::config::REPLICATION_USER;
        files
            .issue(db.name(), &issued_sans(db), user)
            .map_err(|e| e.to_string())?;
        let files = TLS_SECRET_KEYS
            .into_iter()
            .map(|name| Ok((name, files.read(name).map_err(|e| e.to_string())?)))
            .collect::<Result<_, String>>()?;
        Ok(TlsMaterial { files })
    }

    /// File names and PEM contents.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.files.iter().map(|(k, v)| (*k, v.as_str()))
    }
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The Secret `NAME-tls` holding `material` (type `kubernetes.io/tls`, as cert-manager's).
pub fn tls_secret(db: &Database, material: &TlsMaterial) -> Secret {
    let data: BTreeMap<String, ByteString> = material
        .iter()
        .map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec())))
        .collect();
    Secret {
        metadata: object_meta(db, tls_secret_name(db)),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_cover_services_and_pods_in_every_form() {
        let db = stator_api::load_database(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: orders\n  namespace: shop\nspec:\n  engine: postgres\n  instances: 2\n",
        )
        .unwrap()
        .database;
        let sans = kube_sans(&db);
        for name in [
            "orders-rw",
            "orders-rw.shop",
            "orders-rw.shop.svc",
            "orders-ro.shop.svc.cluster.local",
            "orders-1.orders-headless",
            "orders-1.orders-headless.shop.svc",
            "orders-0.orders-headless.shop.svc.cluster.local",
            "localhost",
        ] {
            assert!(
                sans.iter().any(|s| s == name),
                "{name} missing from {sans:?}"
            );
        }
        assert!(!sans.iter().any(|s| s.starts_with("orders-2.")));
        // What Stator issues itself also covers pods added later by scaling.
        let issued = issued_sans(&db);
        assert!(issued.starts_with(&sans));
        for wildcard in [
            "*.orders-headless.shop",
            "*.orders-headless.shop.svc",
            "*.orders-headless.shop.svc.cluster.local",
        ] {
            assert!(issued.iter().any(|s| s == wildcard), "{issued:?}");
        }
        let material = TlsMaterial::issue(&db).unwrap();
        let keys: Vec<&str> = material.iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 5);
        assert!(!format!("{material:?}").contains("PRIVATE KEY"));
        let secret = tls_secret(&db, &material);
        assert_eq!(secret.metadata.name.as_deref(), Some("orders-tls"));
        assert!(
            !secret.data.unwrap().contains_key("ca.key"),
            "the CA key stays out"
        );
    }
}
