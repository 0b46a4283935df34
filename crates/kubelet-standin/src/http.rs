//! HTTP from the host into a pod: one request, one answer, the connection closed; over TLS
//! without verifying the server's certificate when asked (as a kubelet's HTTPS probes do).
//! The probes use it, and tests use [`request`] to call instance managers over the pod IPs.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` (which asks the server to close the connection) and reads the whole
/// answer: its status code and body.
async fn read_answer<S>(mut stream: S, request: &str) -> std::io::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    // A server that closes without TLS close_notify still gave its whole answer.
    if let Err(e) = stream.read_to_end(&mut out).await
        && (out.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof)
    {
        return Err(e);
    }
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    Ok((code, body.to_string()))
}

/// Connects to `host:port` from `source` (any port), or from the address the kernel picks.
pub(crate) async fn connect(
    host: &str,
    port: u16,
    source: Option<std::net::Ipv4Addr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(source) = source else {
        return tokio::net::TcpStream::connect((host, port)).await;
    };
    let mut last = std::io::Error::other(format!("{host}:{port}: no IPv4 address"));
    for to in tokio::net::lookup_host((host, port)).await? {
        if !to.is_ipv4() {
            continue;
        }
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        match socket.connect(to).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Sends one HTTP/1.1 `request` to `host:port` (from `source` when given), over TLS
/// (certificate not verified) when `https`; the status code and body.
pub(crate) async fn exchange(
    host: &str,
    port: u16,
    source: Option<std::net::Ipv4Addr>,
    https: bool,
    request: &str,
) -> std::io::Result<(u16, String)> {
    let tcp = connect(host, port, source).await?;
    if https {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(std::io::Error::other)?;
        let tls = tls_connector()?.connect(name, tcp).await?;
        read_answer(tls, request).await
    } else {
        read_answer(tcp, request).await
    }
}

/// A request to an instance manager (or any HTTP server in a pod) from the host, as a test or
/// an operator on the node would send it: `method path`, an optional bearer `token` and JSON
/// `body`; over HTTPS without verifying the certificate when `https`. The status code and body.
pub async fn request(
    ip: std::net::Ipv4Addr,
    port: u16,
    https: bool,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nAccept: */*\r\nConnection: close\r\n"
    );
    if let Some(token) = token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    exchange(&ip.to_string(), port, None, https, &req).await
}

/// Whether the container's probes on `port_name` speak HTTPS (`scheme: HTTPS`): how a test
/// knows the scheme of the instance manager it calls.
pub fn probes_https(pod: &k8s_openapi::api::core::v1::Pod, port_name: &str) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| [&c.readiness_probe, &c.liveness_probe, &c.startup_probe])
        .filter_map(|p| p.as_ref()?.http_get.as_ref())
        .filter(|h| {
            matches!(&h.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n) if n == port_name)
        })
        .any(|h| h.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl s_server` with a self-signed certificate for another name: a verifying client
    /// refuses it, a kubelet's probe (and [`request`]) does not.
    #[tokio::test]
    async fn https_is_spoken_without_verifying_the_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args([
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=not-this-address",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl req");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let _server = tokio::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run openssl s_server");
        let localhost = std::net::Ipv4Addr::LOCALHOST;
        let mut last = None;
        for _ in 0..100 {
            match request(localhost, port, true, "GET", "/", None, None).await {
                Ok((200, _)) => {
                    last = None;
                    break;
                }
                other => last = Some(format!("{other:?}")),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(last, None, "HTTPS GET / on the self-signed server");
        let plain = request(localhost, port, false, "GET", "/", None, None).await;
        assert!(
            !matches!(plain, Ok((200, _))),
            "plain HTTP to a TLS port: {plain:?}"
        );
    }
}
