//! Readiness and liveness probes as declared: `exec` (run in the container's network and mount
//! namespaces as its user), `httpGet` (HTTP/1.1 GET, success on 200–399, as `kube-probe`) and
//! `tcpSocket`; the last two connect from the host to the pod's address, through the veth
//! into the pods' network namespace, as a kubelet connects from its node.
//! Periods, delays, timeouts and thresholds are the pod's, with the Kubernetes defaults.
//!
//! `httpGet` with `scheme: HTTPS` speaks TLS without verifying the server's certificate, as a
//! kubelet does. A `startupProbe` runs first; liveness and readiness start once it has
//! succeeded, and its failure threshold restarts the container (see `pod`).
//!
//! Not done: `grpc` probes (they count as failures).

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::launch::{Launch, signal_group};

/// Which probe a result belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Startup,
    Readiness,
    Liveness,
}

/// The timing of a probe, with Kubernetes' defaults.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub(crate) fn timing(probe: &Probe) -> Timing {
    let secs =
        |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |v| v.max(0) as u64));
    Timing {
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period: secs(probe.period_seconds, 10),
        timeout: secs(probe.timeout_seconds, 1),
        success_threshold: probe.success_threshold.map_or(1, |v| v.max(1) as u32),
        failure_threshold: probe.failure_threshold.map_or(3, |v| v.max(1) as u32),
    }
}

fn port_number(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Runs `probe` once; true on success.
pub(crate) async fn run_once(
    probe: &Probe,
    container: &Container,
    pod_ip: Ipv4Addr,
    launch: &Launch,
) -> bool {
    let timeout = timing(probe).timeout;
    if let Some(exec) = &probe.exec {
        let mut launch = launch.clone();
        launch.argv = exec.command.clone().unwrap_or_default();
        let Ok(mut child) = launch.spawn(Stdio::null(), Stdio::null()) else {
            return false;
        };
        let pgid = child.id().map_or(0, |p| p as i32);
        return match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                signal_group(pgid, libc::SIGKILL);
                let _ = child.wait().await;
                false
            }
        };
    }
    if let Some(http) = &probe.http_get {
        let Some(port) = port_number(&http.port, container) else {
            return false;
        };
        let host = http.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.36\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for h in http.http_headers.iter().flatten() {
            request.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        request.push_str("\r\n");
        let https = http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            if https {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(std::io::Error::other)?;
                let tls = tls_connector()?.connect(name, tcp).await?;
                status_code(tls, &request).await
            } else {
                status_code(tcp, &request).await
            }
        };
        return matches!(
            tokio::time::timeout(timeout, exchange).await,
            Ok(Ok(200..=399))
        );
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = port_number(&tcp.port, container) else {
            return false;
        };
        let host = tcp.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let connect = tokio::net::TcpStream::connect((host.as_str(), port));
        return matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)));
    }
    false
}

/// Sends `request` and reads the status code of the answer.
async fn status_code<S>(mut stream: S, request: &str) -> std::io::Result<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    Ok(std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// A TLS client that accepts any server certificate: a kubelet's HTTPS probe does not verify
/// it (the pod's certificate is not for the kubelet to trust).
fn tls_connector() -> std::io::Result<tokio_rustls::TlsConnector> {
    use std::sync::{Arc, OnceLock};
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AnyCertificate(provider.clone()));
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                Arc::new(
                    b.dangerous()
                        .with_custom_certificate_verifier(verifier)
                        .with_no_client_auth(),
                )
            })
            .map_err(|e| e.to_string())
    });
    match config {
        Ok(c) => Ok(tokio_rustls::TlsConnector::from(c.clone())),
        Err(e) => Err(std::io::Error::other(e.clone())),
    }
}

/// Accepts every certificate; still checks the handshake's signatures with the provider.
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
