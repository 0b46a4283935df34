//! Orders over HTTP: `POST` with a JSON body and the api-token as a bearer token, to an
//! instance manager (`/promote`, `/demote`) or to the supervisor (`/switchover`). The token is
//! read from its 0600 file for each order and only ever travels in the `Authorization` header.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::probe::{ProbeError, parse_response};

/// Largest answer accepted.
const MAX_ANSWER: u64 = 1 << 20;

/// `POST http://host:port/path` with `body` (JSON) and `Authorization: Bearer token`; the
/// status code and the body of the answer.
pub async fn post(
    host: &str,
    port: u16,
    path: &str,
    token: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ProbeError> {
    let target = format!("http://{host}:{port}{path}");
    let exchange = async {
        let mut stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| ProbeError::Connect(target.clone(), e))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let protocol = |e: std::io::Error| ProbeError::Protocol(target.clone(), e.to_string());
        stream.write_all(head.as_bytes()).await.map_err(protocol)?;
        stream.write_all(body.as_bytes()).await.map_err(protocol)?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER)
            .read_to_end(&mut raw)
            .await
            .map_err(protocol)?;
        parse_response(&raw).map_err(|m| ProbeError::Protocol(target.clone(), m))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(target, timeout)),
    }
}

/// The `error` (or `result`) field of a JSON answer, else the body as text.
pub fn answer_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error")
                .or_else(|| v.get("result"))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn the_token_goes_in_the_header_and_the_body_after_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while !String::from_utf8_lossy(&got).ends_with("{\"to\":null}") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 409 Conflict\r\nContent-Length: 15\r\n\r\n{\"error\":\"no\"}\n")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let (code, body) = post(
            "127.0.0.1",
            port,
            "/switchover",
            "t0k",
            "{\"to\":null}",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let request = server.await.unwrap();
        assert!(
            request.contains("Authorization: Bearer t0k\r\n"),
            "{request}"
        );
        assert_eq!(code, 409);
        assert_eq!(answer_text(&body), "no");
    }
}
