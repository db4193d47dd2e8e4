//! The network probe of the pre-migration checks: can the source reach the destination's
//! migration address, and how fast?
//!
//! The destination opens a one-shot TCP listener on its migration address (the address the
//! real stream will use, not the management one), the source connects and sends data for
//! a bounded time. Everything is bounded (connections, bytes, time) because the server asks
//! for it on every proposed migration and a stuck probe must never pin an agent.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::{ProbeListenResponse, ProbeSendRequest, ProbeSendResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::AgentError;

/// The most a probe may send (and a listener reads).
pub const MAX_PROBE_BYTES: u64 = 256 << 20;
/// The longest a probe may send, and the longest a connect may take, ms.
pub const MAX_PROBE_MS: u64 = 10_000;
/// Probe listeners open at once; more are refused so repeated checks cannot exhaust ports.
pub const MAX_LISTENERS: usize = 4;
/// The size of each write: large enough to keep the link busy, small enough to stop soon
/// after `max_ms`.
const CHUNK: usize = 64 * 1024;

/// The destination's probe listeners.
#[derive(Debug, Clone)]
pub struct ProbeListeners {
    slots: Arc<Semaphore>,
    /// How long a listener waits for its one connection.
    accept_within: Duration,
    /// How long it reads from that connection.
    read_for: Duration,
}

impl Default for ProbeListeners {
    fn default() -> Self {
        // Reading gets a second beyond the longest send so that a sender using all of
        // MAX_PROBE_MS is not cut off in its last write.
        ProbeListeners::new(
            MAX_LISTENERS,
            Duration::from_millis(MAX_PROBE_MS),
            Duration::from_millis(MAX_PROBE_MS + 1_000),
        )
    }
}

impl ProbeListeners {
    pub fn new(max: usize, accept_within: Duration, read_for: Duration) -> ProbeListeners {
        ProbeListeners {
            slots: Arc::new(Semaphore::new(max)),
            accept_within,
            read_for,
        }
    }

    /// Listens on `bind`:`port` for one probe connection and returns where the source
    /// must connect (`advertise` and the port). `port` is the host's fixed migration port
    /// if it has one (only that port may be forwarded by a NAT or relay; the probe must
    /// take the path the stream will take), else 0 for any. The listener lives in a
    /// background task that closes it after one connection, or when nobody comes.
    pub async fn listen(
        &self,
        bind: IpAddr,
        port: u16,
        advertise: IpAddr,
    ) -> Result<ProbeListenResponse, AgentError> {
        self.listen_with(bind, port, advertise, None).await
    }

    /// [`ProbeListeners::listen`], over TLS when `tls` is given: the one connection must
    /// present the expected peer's certificate, else it is closed unread.
    pub async fn listen_with(
        &self,
        bind: IpAddr,
        port: u16,
        advertise: IpAddr,
        tls: Option<ListenTls>,
    ) -> Result<ProbeListenResponse, AgentError> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            AgentError::refused(format!(
                "{MAX_LISTENERS} probe listeners are already open; try again in a few seconds"
            ))
        })?;
        let listener = TcpListener::bind(SocketAddr::new(bind, port))
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    AgentError::refused(format!(
                        "the migration port {bind}:{port} is in use (an incoming migration?)"
                    ))
                } else {
                    AgentError::internal(format!("cannot listen on {bind}:{port} for a probe: {e}"))
                }
            })?;
        let port = listener
            .local_addr()
            .map_err(|e| {
                AgentError::internal(format!("cannot read the probe listener's port: {e}"))
            })?
            .port();
        let (accept_within, read_for) = (self.accept_within, self.read_for);
        tokio::spawn(async move {
            // Held until the listener and its connection are gone.
            let _slot = slot;
            let Ok(accepted) = tokio::time::timeout(accept_within, listener.accept()).await else {
                tracing::debug!(port, "no probe connection came; listener closed");
                return;
            };
            // Stop listening at once: the probe is one connection.
            drop(listener);
            match (accepted, tls) {
                (Ok((stream, peer)), None) => {
                    let read = drain(stream, read_for).await;
                    tracing::debug!(port, %peer, read, "probe connection done");
                }
                (Ok((stream, peer)), Some(tls)) => {
                    let acceptor = ferry_pki::tokio_rustls::TlsAcceptor::from(tls.config);
                    let stream = match tokio::time::timeout(accept_within, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(port, %peer, "probe connection refused: TLS: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(port, %peer, "probe connection refused: no TLS handshake");
                            return;
                        }
                    };
                    let who = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| ferry_pki::cert_info_der(c).ok())
                        .and_then(|i| i.identity);
                    if who.as_ref() != Some(&tls.peer) {
                        tracing::info!(port, %peer, ?who, expected = %tls.peer, "probe connection refused: not the expected host");
                        return;
                    }
                    let read = drain(stream, read_for).await;
                    tracing::debug!(port, %peer, read, "probe connection (TLS) done");
                }
                (Err(e), _) => tracing::debug!(port, "probe accept failed: {e}"),
            }
        });
        let advertised = SocketAddr::new(advertise, port).to_string();
        tracing::debug!(%advertised, "probe listener open");
        Ok(ProbeListenResponse { advertised })
    }
}

/// What a TLS probe listener needs: its server settings (client certificates required)
/// and the one host it admits.
pub struct ListenTls {
    pub config: Arc<rustls_config::ServerConfig>,
    pub peer: ferry_pki::Identity,
}

mod rustls_config {
    pub use ferry_pki::tokio_rustls::rustls::{ClientConfig, ServerConfig};
}

/// Reads and discards until EOF, MAX_PROBE_BYTES or `read_for`; returns the bytes read.
/// Dropping the stream closes it, which tells the sender everything arrived.
async fn drain<S: tokio::io::AsyncRead + Unpin>(mut stream: S, read_for: Duration) -> u64 {
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    let deadline = tokio::time::Instant::now() + read_for;
    while read < MAX_PROBE_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => read += n as u64,
        }
    }
    read
}

/// Checks a send request; the reason names the field and the allowed range.
pub fn validate_send(req: &ProbeSendRequest) -> Result<SocketAddr, AgentError> {
    let target: SocketAddr = req.target.parse().map_err(|_| {
        AgentError::bad_request(format!("probe target '{}' is not ADDRESS:PORT", req.target))
    })?;
    let range = |field: &str, value: u64, max: u64, unit: &str| {
        if (1..=max).contains(&value) {
            Ok(())
        } else {
            Err(AgentError::bad_request(format!(
                "probe {field} is {value}; it must be between 1 and {max} {unit}"
            )))
        }
    };
    range("bytes", req.bytes, MAX_PROBE_BYTES, "(256 MiB)")?;
    range("max_ms", req.max_ms, MAX_PROBE_MS, "ms")?;
    range(
        "connect_timeout_ms",
        req.connect_timeout_ms,
        MAX_PROBE_MS,
        "ms",
    )?;
    Ok(target)
}

/// Source: connects to a probe listener and sends `bytes`, or for at most `max_ms`.
pub async fn send(req: &ProbeSendRequest) -> Result<ProbeSendResponse, AgentError> {
    send_with(req, None).await
}

/// [`send`], over TLS when `tls` is given (its verifier accepts only the destination's
/// certificate).
pub async fn send_with(
    req: &ProbeSendRequest,
    tls: Option<Arc<rustls_config::ClientConfig>>,
) -> Result<ProbeSendResponse, AgentError> {
    let target = validate_send(req)?;
    let unreachable =
        |reason: String| AgentError::upstream(format!("cannot reach {target}: {reason}"));
    let connect_started = Instant::now();
    let stream = match tokio::time::timeout(
        Duration::from_millis(req.connect_timeout_ms),
        TcpStream::connect(target),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => {
            return Err(unreachable(format!(
                "no connection within {} ms",
                req.connect_timeout_ms
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            let connect_ms = ms(connect_started.elapsed());
            pump(stream, req, target, connect_ms).await
        }
        Some(config) => {
            let connector = ferry_pki::tokio_rustls::TlsConnector::from(config);
            // The verifier checks the destination's identity, not this name.
            let name = ferry_pki::tokio_rustls::rustls::pki_types::ServerName::try_from("probe")
                .map_err(|e| AgentError::internal(e.to_string()))?;
            let stream = match tokio::time::timeout(
                Duration::from_millis(req.connect_timeout_ms),
                connector.connect(name, stream),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(unreachable(format!("TLS: {e}"))),
                Err(_) => return Err(unreachable("no TLS handshake in time".into())),
            };
            let connect_ms = ms(connect_started.elapsed());
            pump(stream, req, target, connect_ms).await
        }
    }
}

/// Sends the probe's data on a connected stream and waits for the listener to close it.
async fn pump<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    req: &ProbeSendRequest,
    target: SocketAddr,
    connect_ms: f64,
) -> Result<ProbeSendResponse, AgentError> {
    let chunk = filler();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(req.max_ms);
    let mut sent = 0u64;
    while sent < req.bytes {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let n = CHUNK.min((req.bytes - sent) as usize);
        // A single `write` that times out wrote nothing, so `sent` stays exact.
        match tokio::time::timeout(deadline - now, stream.write(&chunk[..n])).await {
            Ok(Ok(0)) => {
                return Err(AgentError::upstream(format!(
                    "probe stream to {target} was closed after {sent} bytes"
                )))
            }
            Ok(Ok(w)) => sent += w as u64,
            Ok(Err(e)) => {
                return Err(AgentError::upstream(format!(
                    "probe stream to {target} broke after {sent} bytes: {e}"
                )))
            }
            Err(_) => break,
        }
    }
    let _ = stream.shutdown().await;
    // The bytes written so far may still sit in socket buffers (several MiB on a fast
    // link), which would flatter the rate. The listener closes once it has read them all,
    // so wait for that close, bounded by the probe's own time and a second of grace.
    let grace = deadline.max(Instant::now()) + Duration::from_secs(1);
    let mut sink = [0u8; 512];
    let _ = tokio::time::timeout_at(grace.into(), async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    // A microsecond floor: a tiny send on loopback can finish within the clock's step.
    let secs = elapsed.as_secs_f64().max(1e-6);
    Ok(ProbeSendResponse {
        connect_ms,
        bytes_sent: sent,
        elapsed_ms: ms(elapsed),
        bytes_per_s: (sent as f64 / secs) as u64,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A chunk of pseudo-random bytes: zeros would let a compressing link (WAN optimizer, VPN)
/// report a rate the migration stream never gets.
fn filler() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(CHUNK);
    while out.len() < CHUNK {
        // xorshift64: fast and plenty for incompressible-looking filler.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(CHUNK);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::ErrorCode;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn request(target: &str, bytes: u64) -> ProbeSendRequest {
        ProbeSendRequest {
            peer_host: None,
            target: target.into(),
            bytes,
            max_ms: 5_000,
            connect_timeout_ms: 1_000,
        }
    }

    #[tokio::test]
    async fn listen_then_send_8_mib_on_loopback() {
        let listeners = ProbeListeners::default();
        let open = listeners.listen(LOOPBACK, 0, LOOPBACK).await.unwrap();
        assert!(
            open.advertised.starts_with("127.0.0.1:"),
            "{}",
            open.advertised
        );
        let r = send(&request(&open.advertised, 8 << 20)).await.unwrap();
        assert_eq!(r.bytes_sent, 8 << 20);
        assert!(r.bytes_per_s > 0, "{r:?}");
        assert!(r.elapsed_ms > 0.0 && r.connect_ms >= 0.0, "{r:?}");
        // The listener took its one connection and closed: a second send finds nobody.
        let again = send(&request(&open.advertised, 1)).await;
        assert!(again.is_err(), "{again:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_clear_upstream_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target = format!("127.0.0.1:{port}");
        let e = send(&request(&target, 1 << 20)).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Upstream);
        assert!(
            e.to_string()
                .starts_with(&format!("cannot reach {target}: ")),
            "{}",
            e.to_string()
        );
    }

    #[tokio::test]
    async fn sending_stops_at_max_ms() {
        // A peer that accepts and never reads: the sender fills the socket buffers and must
        // give up at max_ms (plus the grace for the close), not hang.
        let peer = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let target = peer.local_addr().unwrap().to_string();
        let hold = tokio::spawn(async move {
            let (s, _) = peer.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let started = Instant::now();
        let r = send(&ProbeSendRequest {
            max_ms: 300,
            ..request(&target, MAX_PROBE_BYTES)
        })
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(3), "{r:?}");
        assert!(r.bytes_sent < MAX_PROBE_BYTES, "{r:?}");
        hold.abort();
    }

    #[tokio::test]
    async fn at_most_four_listeners_and_a_slot_frees_when_nobody_comes() {
        let listeners = ProbeListeners::new(
            MAX_LISTENERS,
            Duration::from_millis(200),
            Duration::from_secs(1),
        );
        for _ in 0..MAX_LISTENERS {
            listeners.listen(LOOPBACK, 0, LOOPBACK).await.unwrap();
        }
        let e = listeners.listen(LOOPBACK, 0, LOOPBACK).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Conflict);
        // A fixed port in use (an incoming migration listening there) is a clear conflict.
        let busy = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        let fresh = ProbeListeners::new(1, Duration::from_millis(300), Duration::from_secs(1));
        let e = fresh.listen(LOOPBACK, port, LOOPBACK).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Conflict);
        assert!(e.to_string().contains("in use"), "{}", e.to_string());
        drop(busy);
        tokio::time::sleep(Duration::from_millis(500)).await;
        listeners.listen(LOOPBACK, 0, LOOPBACK).await.unwrap();
    }

    #[test]
    fn send_requests_are_validated() {
        let ok = request("10.0.0.5:4000", 1);
        assert!(validate_send(&ok).is_ok());
        let cases = [
            (request("10.0.0.5", 1), "ADDRESS:PORT"),
            (request("host:1", 1), "ADDRESS:PORT"),
            (request("10.0.0.5:1", 0), "bytes"),
            (request("10.0.0.5:1", MAX_PROBE_BYTES + 1), "bytes"),
            (
                ProbeSendRequest {
                    max_ms: 0,
                    ..ok.clone()
                },
                "max_ms",
            ),
            (
                ProbeSendRequest {
                    max_ms: 10_001,
                    ..ok.clone()
                },
                "max_ms",
            ),
            (
                ProbeSendRequest {
                    connect_timeout_ms: 0,
                    ..ok.clone()
                },
                "connect_timeout_ms",
            ),
        ];
        for (req, word) in cases {
            let e = validate_send(&req).unwrap_err();
            assert_eq!(e.code(), ErrorCode::BadRequest);
            assert!(e.to_string().contains(word), "{word}: {e}");
        }
    }

    fn host_material(ca: &ferry_pki::CertAuthority, host: &str) -> ferry_pki::Material {
        let id = ferry_pki::Identity::host(host).unwrap();
        let (key_pem, csr) = ferry_pki::new_key_and_csr(&id).unwrap();
        let (cert_pem, _) = ca.issue(&csr, &id, Duration::from_secs(600)).unwrap();
        ferry_pki::Material {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem,
            key_pem,
        }
    }

    fn listen_tls(m: &ferry_pki::Material, peer: &str) -> ListenTls {
        ListenTls {
            config: ferry_pki::server_config(
                &m.ca_pem,
                ferry_pki::ReloadableCert::new(m).unwrap(),
                ferry_pki::ClientCerts::Required,
            )
            .unwrap(),
            peer: ferry_pki::Identity::host(peer).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_tls_probe_runs_between_the_expected_hosts_only() {
        let ca = ferry_pki::CertAuthority::generate("probe CA").unwrap();
        let (a, b, c) = (
            host_material(&ca, "a"),
            host_material(&ca, "b"),
            host_material(&ca, "c"),
        );
        let client = |me: &ferry_pki::Material, dest: &str| {
            Some(Arc::new(
                ferry_pki::client_config(
                    &me.ca_pem,
                    Some(me),
                    &ferry_pki::Identity::host(dest).unwrap(),
                )
                .unwrap(),
            ))
        };
        let listeners = ProbeListeners::default();
        // b listens for a; a sends: the probe runs and measures.
        let open = listeners
            .listen_with(LOOPBACK, 0, LOOPBACK, Some(listen_tls(&b, "a")))
            .await
            .unwrap();
        let r = send_with(&request(&open.advertised, 4 << 20), client(&a, "b"))
            .await
            .unwrap();
        assert_eq!(r.bytes_sent, 4 << 20);

        // c, with a valid certificate of the cluster, is not the host b waits for.
        let open = listeners
            .listen_with(LOOPBACK, 0, LOOPBACK, Some(listen_tls(&b, "a")))
            .await
            .unwrap();
        let e = send_with(&request(&open.advertised, 64 << 20), client(&c, "b"))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("cannot reach") || e.to_string().contains("probe stream"),
            "{e}"
        );

        // a expecting b but reaching a listener with c's certificate: refused by a itself.
        let open = listeners
            .listen_with(LOOPBACK, 0, LOOPBACK, Some(listen_tls(&c, "a")))
            .await
            .unwrap();
        let e = send_with(&request(&open.advertised, 1 << 20), client(&a, "b"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
    }
}
