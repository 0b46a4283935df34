//! The `rw` and `ro` TCP proxies: the local runtime's `NAME-rw` and `NAME-ro` Services.
//!
//! `rw` forwards every connection to the current primary; `ro` spreads connections round-robin
//! over the ready replicas (the supervisor puts the primary there when none is ready). Bytes are
//! copied both ways by tokio's `copy_bidirectional` with TCP_NODELAY on both legs, so a small
//! query costs no Nagle delay. Routes are read once per connection; changing them does not
//! touch connections already made, except that the supervisor can [`Routes::cut`] every live
//! connection to a target (a fenced primary): both legs are closed at once, so no client keeps
//! writing to an instance that is no longer the primary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
    /// The registry of live connections: per target, a counter every live connection to it
    /// watches (its receiver count is the number of live connections); bumping it cuts them.
    live: Mutex<HashMap<SocketAddr, watch::Sender<u64>>>,
}

impl Routes {
    /// Closes every live proxied connection (rw and ro) to `target`; returns how many there
    /// were. New connections are not affected: take the target out of the routes first.
    pub fn cut(&self, target: SocketAddr) -> usize {
        let Ok(live) = self.live.lock() else {
            return 0;
        };
        match live.get(&target) {
            Some(sender) => {
                let count = sender.receiver_count();
                sender.send_modify(|generation| *generation += 1);
                count
            }
            None => 0,
        }
    }

    /// How many proxied connections to `target` are open now.
    pub fn live_connections(&self, target: SocketAddr) -> usize {
        self.live
            .lock()
            .ok()
            .and_then(|live| live.get(&target).map(watch::Sender::receiver_count))
            .unwrap_or(0)
    }

    /// The rw target now.
    pub fn rw(&self) -> Option<SocketAddr> {
        self.rw.read().ok().and_then(|rw| *rw)
    }

    /// The ro targets now.
    pub fn ro(&self) -> Vec<SocketAddr> {
        self.ro.read().map(|ro| ro.clone()).unwrap_or_default()
    }

    /// Registers a new connection to `target`: it ends when the receiver sees a change.
    fn register(&self, target: SocketAddr) -> Option<watch::Receiver<u64>> {
        let mut live = self.live.lock().ok()?;
        Some(
            live.entry(target)
                .or_insert_with(|| watch::channel(0).0)
                .subscribe(),
        )
    }

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
        let Some(cut) = routes.register(target) else {
            drop(client);
            continue;
        };
        tokio::spawn(forward(client, target, cut));
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<u64>) {
    let mut server = tokio::select! {
        connected = TcpStream::connect(target) => match connected {
            Ok(server) => server,
            Err(e) => {
                tracing::debug!("proxy: cannot reach {target}: {e}");
                return;
            }
        },
        _ = cut.changed() => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER, BUFFER) => {}
        _ = cut.changed() => {
            tracing::debug!("proxy: cut the connection to {target}");
        }
    }
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
    async fn cutting_a_target_closes_its_live_connections_and_only_those() {
        let old = tagged_echo(b"o").await;
        let other = tagged_echo(b"n").await;
        let routes = Arc::new(Routes::default());
        routes.set_rw(Some(old));
        let addr = proxy(routes.clone(), ProxyKind::Rw).await;
        let mut to_old = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        to_old.read_exact(&mut b).await.unwrap();
        routes.set_rw(Some(other));
        let mut to_other = TcpStream::connect(addr).await.unwrap();
        to_other.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"n");
        assert_eq!(routes.live_connections(old), 1);
        assert_eq!(routes.cut(old), 1);
        // The cut connection reads EOF; the other still echoes.
        assert_eq!(to_old.read(&mut b).await.unwrap_or(0), 0);
        to_other.write_all(b"x").await.unwrap();
        to_other.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"x");
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
