//! Serving an axum app over TLS (or, with `--insecure`, plain TCP), with the caller's
//! certificate identity attached to every request as a [`Peer`] extension.
//!
//! axum's own `serve` cannot show the application who is on the other end of a TLS
//! connection, so this is the accept loop of axum's low-level rustls example: accept,
//! handshake (bounded in time, so a silent client cannot hold a task), then hand the
//! connection to hyper with the peer attached.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::Watcher;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::ca::cert_info_der;
use crate::Identity;

/// The longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a request's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// How the connection was made.
    pub transport: Transport,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TLS with a client certificate the CA signed (already verified by rustls).
    Certificate {
        /// The identity it names, if it names exactly one of ours.
        identity: Option<Identity>,
        fingerprint: String,
        /// Seconds since the epoch.
        not_after: i64,
    },
    /// TLS without a client certificate (an operator with a token, or nobody).
    Anonymous,
    /// Plain TCP: the daemon runs with `--insecure`.
    Insecure,
}

impl Peer {
    /// The certificate identity, if the peer showed one.
    pub fn identity(&self) -> Option<&Identity> {
        match &self.transport {
            Transport::Certificate { identity, .. } => identity.as_ref(),
            _ => None,
        }
    }
}

/// A TLS server configuration that can be replaced while serving (a CA rotation changes
/// whom the server trusts): each new connection takes the current one.
#[derive(Debug)]
pub struct TlsSlot {
    current: std::sync::RwLock<Arc<ServerConfig>>,
}

impl TlsSlot {
    pub fn new(config: Arc<ServerConfig>) -> Arc<TlsSlot> {
        Arc::new(TlsSlot {
            current: std::sync::RwLock::new(config),
        })
    }

    pub fn get(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn replace(&self, config: Arc<ServerConfig>) {
        match self.current.write() {
            Ok(mut g) => *g = config,
            Err(p) => *p.into_inner() = config,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
/// `tls: None` serves plain HTTP (insecure development mode).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsSlot>>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), std::io::Error> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a little rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let app = app.clone();
        let acceptor = tls.as_ref().map(|slot| TlsAcceptor::from(slot.get()));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor else {
                let peer = Peer {
                    addr,
                    transport: Transport::Insecure,
                };
                serve_connection(tcp, app, peer, watcher).await;
                return;
            };
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            let transport = match stream.get_ref().1.peer_certificates() {
                Some([leaf, ..]) => match cert_info_der(leaf) {
                    Ok(info) => Transport::Certificate {
                        identity: info.identity,
                        fingerprint: info.fingerprint,
                        not_after: info.not_after,
                    },
                    Err(_) => Transport::Anonymous,
                },
                _ => Transport::Anonymous,
            };
            serve_connection(stream, app, Peer { addr, transport }, watcher).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    Ok(())
}

async fn serve_connection<I>(io: I, app: Router, peer: Peer, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        app.clone().oneshot(req)
    });
    let conn = Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%addr, "connection ended: {e}");
    }
}
