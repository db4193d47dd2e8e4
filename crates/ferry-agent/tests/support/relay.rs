//! A TCP relay that records every byte it passes, per direction: what a capture on the
//! migration network would see.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

#[derive(Default)]
struct Seen {
    /// Client to server (source to destination).
    up: Mutex<Vec<u8>>,
    /// Server to client.
    down: Mutex<Vec<u8>>,
    connections: AtomicUsize,
}

/// Listens on 127.0.0.1; each connection is forwarded to `target`. Dropping it ends
/// every forwarding task (their sockets close).
pub struct Relay {
    pub port: u16,
    seen: Arc<Seen>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
        let port = listener.local_addr().expect("relay addr").port();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let accept = tokio::spawn(async move {
            // Owned here: aborting the accept task drops the set, which aborts them all.
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                conns.spawn(forward(client, target, s.clone()));
            }
        });
        Relay { port, seen, accept }
    }

    pub fn upstream(&self) -> Vec<u8> {
        self.seen.up.lock().unwrap().clone()
    }

    pub fn downstream(&self) -> Vec<u8> {
        self.seen.down.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seen: Arc<Seen>,
    up: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let record = if up { &seen.up } else { &seen.down };
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn forward(client: TcpStream, target: SocketAddr, seen: Arc<Seen>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(pump(cr, sw, seen.clone(), true), pump(sr, cw, seen, false));
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
