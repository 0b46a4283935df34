//! A small HTTP/1.1 client for the endpoints on 127.0.0.1 this runtime talks to: the instance
//! managers' `/status` and the supervisor's own `/status`. One request per connection.

use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response body accepted.
const MAX_RESPONSE: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}: cannot connect: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: {1}")]
    Protocol(String, String),
    #[error("{0}: HTTP {1}: {2}")]
    Status(String, u16, String),
}

/// `GET http://host:port/path` decoded as JSON.
pub async fn get_json<T: DeserializeOwned>(
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<T, ProbeError> {
    let (status, body) = request(host, port, "GET", path, None, timeout).await?;
    let target = format!("http://{host}:{port}{path}");
    if status != 200 {
        return Err(ProbeError::Status(
            target,
            status,
            String::from_utf8_lossy(&body).trim().to_string(),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| ProbeError::Protocol(target, e.to_string()))
}

/// One request; returns the status code and the body.
pub async fn request(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ProbeError> {
    let target = format!("http://{host}:{port}{path}");
    match tokio::time::timeout(timeout, exchange(host, port, method, path, bearer, &target)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(target, timeout)),
    }
}

async fn exchange(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    target: &str,
) -> Result<(u16, Vec<u8>), ProbeError> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| ProbeError::Connect(target.to_string(), e))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let protocol = |e: std::io::Error| ProbeError::Protocol(target.to_string(), e.to_string());
    stream.write_all(head.as_bytes()).await.map_err(protocol)?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64)
        .read_to_end(&mut raw)
        .await
        .map_err(protocol)?;
    parse_response(&raw).map_err(|m| ProbeError::Protocol(target.to_string(), m))
}

/// Splits a raw HTTP/1.1 response into status and body (Content-Length, chunked, or until EOF).
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = find(raw, b"\r\n\r\n").ok_or("response has no complete header")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    if chunked {
        return dechunk(body).map(|b| (status, b));
    }
    match length {
        Some(n) if n <= body.len() => Ok((status, body[..n].to_vec())),
        Some(n) => Err(format!("body is {} bytes, expected {n}", body.len())),
        None => Ok((status, body.to_vec())),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_bodies_are_cut_to_length() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(raw).unwrap(), (200, b"{}".to_vec()));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap(), (503, b"abcde".to_vec()));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_response(b"nonsense").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let result: Result<serde_json::Value, _> =
            get_json("127.0.0.1", port, "/status", Duration::from_secs(1)).await;
        assert!(matches!(result, Err(ProbeError::Connect(..))));
    }
}
