//! The `rw` and `ro` TCP proxies: the local runtime's `NAME-rw` and `NAME-ro` Services.
//!
//! `rw` forwards every connection to the current primary; `ro` spreads connections round-robin
//! over the ready replicas (the supervisor puts the primary there when none is ready). Bytes are
//! copied both ways by tokio's `copy_bidirectional` with TCP_NODELAY on both legs, so a small
//! query costs no Nagle delay. Routes are read once per connection; changing them never touches
//! connections already made.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Bytes buffered per direction per connection.
const BUFFER: usize = 32 * 1024;

/// Which Service a proxy plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Rw,
    Ro,
}

/// Where the proxies send new connections. Written by the supervisor, read on every accept.
#[derive(Debug, Default)]
pub struct Routes {
    rw: RwLock<Option<SocketAddr>>,
    ro: RwLock<Vec<SocketAddr>>,
    next: AtomicUsize,
}

impl Routes {
    pub fn set_rw(&self, target: Option<SocketAddr>) {
        if let Ok(mut rw) = self.rw.write() {
            *rw = target;
        }
    }

    pub fn set_ro(&self, targets: Vec<SocketAddr>) {
        if let Ok(mut ro) = self.ro.write() {
            *ro = targets;
        }
    }

    /// The target for a new connection of `kind`; `None` when there is none.
    pub fn pick(&self, kind: ProxyKind) -> Option<SocketAddr> {
        match kind {
            ProxyKind::Rw => self.rw.read().ok().and_then(|rw| *rw),
            ProxyKind::Ro => {
                let ro = self.ro.read().ok()?;
                if ro.is_empty() {
                    return None;
                }
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                Some(ro[n % ro.len()])
            }
        }
    }
}

/// Accepts connections on `listener` forever, forwarding each to `routes.pick(kind)`. A client
/// for which there is no target, or whose target refuses, is disconnected.
pub async fn serve(listener: TcpListener, routes: Arc<Routes>, kind: ProxyKind) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!("{kind:?} proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(target) = routes.pick(kind) else {
            drop(client);
            continue;
        };
        tokio::spawn(forward(client, target));
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr) {
    let mut server = match TcpStream::connect(target).await {
        Ok(server) => server,
        Err(e) => {
            tracing::debug!("proxy: cannot reach {target}: {e}");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER, BUFFER).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TCP server that answers every connection with `tag` and then echoes.
    async fn tagged_echo(tag: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    s.write_all(tag).await.unwrap();
                    let mut buf = [0u8; 1024];
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn proxy(routes: Arc<Routes>, kind: ProxyKind) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, routes, kind));
        addr
    }

    async fn first_byte(addr: SocketAddr) -> Option<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) => Some(b[0]),
            _ => None,
        }
    }

    #[tokio::test]
    async fn rw_forwards_both_ways_to_the_primary() {
        let primary = tagged_echo(b"P").await;
        let routes = Arc::new(Routes::default());
        routes.set_rw(Some(primary));
        let addr = proxy(routes, ProxyKind::Rw).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 6];
        s.read_exact(&mut b[..1]).await.unwrap();
        assert_eq!(&b[..1], b"P");
        s.write_all(b"hello").await.unwrap();
        s.read_exact(&mut b[..5]).await.unwrap();
        assert_eq!(&b[..5], b"hello");
    }

    #[tokio::test]
    async fn ro_takes_replicas_in_turn() {
        let a = tagged_echo(b"a").await;
        let b = tagged_echo(b"b").await;
        let routes = Arc::new(Routes::default());
        routes.set_ro(vec![a, b]);
        let addr = proxy(routes, ProxyKind::Ro).await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(first_byte(addr).await.unwrap());
        }
        assert_eq!(seen, b"abab".to_vec());
    }

    #[tokio::test]
    async fn without_a_target_the_client_is_disconnected() {
        let routes = Arc::new(Routes::default());
        let addr = proxy(routes.clone(), ProxyKind::Ro).await;
        assert_eq!(first_byte(addr).await, None);
        // A route set later is used by the next connection.
        routes.set_ro(vec![tagged_echo(b"r").await]);
        assert_eq!(first_byte(addr).await, Some(b'r'));
    }
}
