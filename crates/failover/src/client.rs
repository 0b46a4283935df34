//! The one HTTP/1.1 client for instance managers and the local supervisor: `GET /status`
//! decoded as JSON, and orders (`POST` with a JSON body and the api-token as a bearer token:
//! `/promote`, `/demote`, `/reload` to a manager, `/switchover` to the supervisor). One request
//! per connection, on hyper. The token only ever travels in the `Authorization` header.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// Largest answer accepted.
const MAX_RESPONSE: usize = 4 << 20;

/// Why a request got no usable answer; each names the URL it was for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
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
) -> Result<T, ClientError> {
    let (status, body) = request(host, port, "GET", path, None, None, timeout).await?;
    let target = format!("http://{host}:{port}{path}");
    if status != 200 {
        return Err(ClientError::Status(
            target,
            status,
            String::from_utf8_lossy(&body).trim().to_string(),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(target, e.to_string()))
}

/// `POST http://host:port/path` with `body` (JSON) and `Authorization: Bearer token`; the
/// status code and the body of the answer.
pub async fn post(
    host: &str,
    port: u16,
    path: &str,
    token: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    request(host, port, "POST", path, Some(token), Some(body), timeout).await
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

/// One request (`bearer`: the token for `Authorization`, `body`: JSON); the status code and
/// the body.
pub async fn request(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    let target = format!("http://{host}:{port}{path}");
    let exchange = exchange(host, port, method, path, bearer, body, &target);
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout(target, timeout)),
    }
}

async fn exchange(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
    target: &str,
) -> Result<(u16, Vec<u8>), ClientError> {
    let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol(target.into(), e.to_string());
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| ClientError::Connect(target.to_string(), e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| protocol(&e))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, format!("{host}:{port}"));
    if let Some(token) = bearer {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let payload = Full::new(Bytes::from(body.unwrap_or_default().to_string()));
    let answer = async {
        let request = builder.body(payload).map_err(|e| protocol(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| protocol(&e))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| protocol(&e))?
            .to_bytes();
        Ok((status, bytes.to_vec()))
    }
    .await;
    driver.abort();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves one connection with `answer`; what the client sent.
    async fn serve_once(answer: &'static [u8], until: &'static str) -> (u16, TaskOf<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while !String::from_utf8_lossy(&got).ends_with(until) {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).await.unwrap();
            String::from_utf8(got).unwrap()
        });
        (port, server)
    }

    type TaskOf<T> = tokio::task::JoinHandle<T>;

    #[tokio::test]
    async fn the_token_goes_in_the_header_and_the_body_after_it() {
        let (port, server) = serve_once(
            b"HTTP/1.1 409 Conflict\r\nContent-Length: 15\r\n\r\n{\"error\":\"no\"}\n",
            "{\"to\":null}",
        )
        .await;
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
        let request = server.await.unwrap().to_ascii_lowercase();
        assert!(
            request.contains("authorization: bearer t0k\r\n"),
            "{request}"
        );
        assert!(
            request.starts_with("post /switchover http/1.1\r\n"),
            "{request}"
        );
        assert_eq!(code, 409);
        assert_eq!(answer_text(&body), "no");
    }

    #[tokio::test]
    async fn chunked_answers_are_joined_and_errors_named() {
        let (port, _server) = serve_once(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            "\r\n\r\n",
        )
        .await;
        let result: Result<serde_json::Value, _> =
            get_json("127.0.0.1", port, "/status", Duration::from_secs(5)).await;
        match result {
            Err(ClientError::Status(target, 503, body)) => {
                assert_eq!(target, format!("http://127.0.0.1:{port}/status"));
                assert_eq!(body, "abcde");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        let (port, _server) = serve_once(b"nonsense\r\n\r\n", "\r\n\r\n").await;
        let result: Result<serde_json::Value, _> =
            get_json("127.0.0.1", port, "/status", Duration::from_secs(5)).await;
        assert!(
            matches!(result, Err(ClientError::Protocol(..))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let result: Result<serde_json::Value, _> =
            get_json("127.0.0.1", port, "/status", Duration::from_secs(1)).await;
        assert!(matches!(result, Err(ClientError::Connect(..))));
    }
}
