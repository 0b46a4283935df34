//! The one HTTP/1.1 client for instance managers (and the local supervisor, which serves the
//! same way): `GET /status` decoded as JSON, orders (`POST` with a JSON body and the api-token
//! as a bearer token: `/promote`, `/demote`, `/reload` to a manager, `/switchover` to the
//! supervisor), and a streamed `GET` (`/backup`). Its users: the failover shell, the local
//! runtime, an instance manager asking its peers and cloning from its upstream. One request per
//! connection, on hyper, over TLS verified against the database's CA: the one this process
//! registered for the endpoint (the `host, port` functions), or the one the caller's
//! [`Dial`] carries (the `*_at` functions: the operator, which reaches many databases by pod
//! IPs that change). The token only ever travels in the `Authorization` header.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

pub use crate::tls::Dial;

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

impl ClientError {
    /// What went wrong, without the URL (for messages that name the peer already).
    pub fn detail(&self) -> String {
        match self {
            ClientError::Connect(_, e) => e.to_string(),
            ClientError::Timeout(_, timeout) => format!("no answer within {timeout:?}"),
            ClientError::Protocol(_, m) => m.clone(),
            ClientError::Status(_, code, body) => format!("HTTP {code}: {body}"),
        }
    }
}

/// `GET http://host:port/path` decoded as JSON.
pub async fn get_json<T: DeserializeOwned>(
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<T, ClientError> {
    get_json_at(&Dial::registered(host, port), path, timeout).await
}

/// `GET path` at `dial`, decoded as JSON.
pub async fn get_json_at<T: DeserializeOwned>(
    dial: &Dial,
    path: &str,
    timeout: Duration,
) -> Result<T, ClientError> {
    let (status, body) = request_at(dial, "GET", path, None, None, timeout).await?;
    let target = target(dial, path);
    if status != 200 {
        return Err(ClientError::Status(
            target,
            status,
            String::from_utf8_lossy(&body).trim().to_string(),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(target, e.to_string()))
}

/// `https://host:port/path` (or `http`), for messages.
fn target(dial: &Dial, path: &str) -> String {
    format!("{}://{}:{}{path}", dial.scheme(), dial.host, dial.port)
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
    post_at(&Dial::registered(host, port), path, token, body, timeout).await
}

/// [`post`] to `dial`.
pub async fn post_at(
    dial: &Dial,
    path: &str,
    token: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    request_at(dial, "POST", path, Some(token), Some(body), timeout).await
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

/// A `GET` whose body is read as it arrives ([`Streaming::chunk`]); only the connection has a
/// timeout, the transfer may take as long as it takes.
pub async fn get_stream(
    host: &str,
    port: u16,
    path: &str,
    bearer: Option<&str>,
    connect_timeout: Duration,
) -> Result<Streaming, ClientError> {
    let dial = Dial::registered(host, port);
    let target = target(&dial, path);
    let tcp = tokio::time::timeout(connect_timeout, dial.connect())
        .await
        .map_err(|_| ClientError::Timeout(target.clone(), connect_timeout))?
        .map_err(|e| ClientError::Connect(target.clone(), e))?;
    let (status, body, driver) = send(tcp, host, port, "GET", path, bearer, None, &target).await?;
    Ok(Streaming {
        status,
        body,
        target,
        trailers: None,
        _driver: driver,
    })
}

/// An answer whose body is still arriving.
pub struct Streaming {
    pub status: u16,
    body: Incoming,
    target: String,
    trailers: Option<hyper::HeaderMap>,
    /// Held for its Drop: the connection lives as long as the answer.
    _driver: Driver,
}

impl Streaming {
    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => return Some(Ok(data)),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
                Err(e) => {
                    return Some(Err(ClientError::Protocol(
                        self.target.clone(),
                        e.to_string(),
                    )));
                }
            }
        }
    }

    /// Trailer `name` of the answer, once its body has ended (the request says it takes
    /// trailers: `TE: trailers`).
    pub fn trailer(&self, name: &str) -> Option<String> {
        let value = self.trailers.as_ref()?.get(name)?;
        value.to_str().ok().map(str::to_string)
    }

    /// The rest of the body as text (an error's explanation).
    pub async fn text(mut self) -> String {
        let mut out = Vec::new();
        while let Some(Ok(data)) = self.chunk().await {
            out.extend_from_slice(&data);
            if out.len() > MAX_RESPONSE {
                break;
            }
        }
        String::from_utf8_lossy(&out).trim().to_string()
    }
}

/// The task driving a connection, stopped when the answer is dropped.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
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
    request_at(
        &Dial::registered(host, port),
        method,
        path,
        bearer,
        body,
        timeout,
    )
    .await
}

/// [`request`] to `dial`.
pub async fn request_at(
    dial: &Dial,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    let target = target(dial, path);
    let (host, port) = (dial.host.as_str(), dial.port);
    let exchange = async {
        let tcp = dial
            .connect()
            .await
            .map_err(|e| ClientError::Connect(target.clone(), e))?;
        let (status, answer, _driver) =
            send(tcp, host, port, method, path, bearer, body, &target).await?;
        let bytes = Limited::new(answer, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(target.clone(), e.to_string()))?
            .to_bytes();
        Ok((status, bytes.to_vec()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout(target, timeout)),
    }
}

/// Sends one request on `tcp`; the answer's status, its body still to be read, and the task
/// driving the connection meanwhile.
#[allow(clippy::too_many_arguments)]
async fn send(
    tcp: Box<dyn crate::tls::Stream>,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
    target: &str,
) -> Result<(u16, Incoming, Driver), ClientError> {
    let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol(target.into(), e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| protocol(&e))?;
    let driver = Driver(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, format!("{host}:{port}"));
    if let Some(token) = bearer {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    } else {
        // A streamed answer may end with trailers (the compressed `/backup`'s GTID position).
        builder = builder
            .header(hyper::header::TE, "trailers")
            .header(hyper::header::CONNECTION, "TE");
    }
    let payload = Full::new(Bytes::from(body.unwrap_or_default().to_string()));
    let request = builder.body(payload).map_err(|e| protocol(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| protocol(&e))?;
    Ok((response.status().as_u16(), response.into_body(), driver))
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
    async fn a_streamed_answer_arrives_in_pieces_with_the_token_sent() {
        let (port, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            "\r\n\r\n",
        )
        .await;
        let mut answer = get_stream(
            "127.0.0.1",
            port,
            "/backup",
            Some("t0k"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 200);
        let mut body = Vec::new();
        while let Some(piece) = answer.chunk().await {
            body.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(body, b"abcde");
        let request = server.await.unwrap().to_ascii_lowercase();
        assert!(request.starts_with("get /backup http/1.1\r\n"), "{request}");
        assert!(
            request.contains("authorization: bearer t0k\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_streamed_answer_says_it_takes_trailers_and_keeps_them() {
        let (port, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTrailer: stator-backup-gtid\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nstator-backup-gtid: 0-1-7\r\n\r\n",
            "\r\n\r\n",
        )
        .await;
        let mut answer = get_stream(
            "127.0.0.1",
            port,
            "/backup?compression=zstd",
            Some("t0k"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(
            answer.trailer("stator-backup-gtid"),
            None,
            "not before the end"
        );
        let mut body = Vec::new();
        while let Some(piece) = answer.chunk().await {
            body.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(body, b"abc");
        assert_eq!(
            answer.trailer("stator-backup-gtid").as_deref(),
            Some("0-1-7")
        );
        let request = server.await.unwrap().to_ascii_lowercase();
        assert!(request.contains("\r\nte: trailers\r\n"), "{request}");
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
