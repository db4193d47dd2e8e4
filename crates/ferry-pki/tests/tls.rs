//! The transport end to end on loopback: a daemon served with `ferry_pki::serve` sees its
//! caller's certificate identity; clients check they reached the identity they meant.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Extension, Router};
use ferry_pki::tls::certs_from_pem;
use ferry_pki::{
    client_config, new_key_and_csr, server_config, CertAuthority, ClientCerts, Identity, Material,
    Peer, ReloadableCert,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

fn material(ca: &CertAuthority, id: &Identity) -> Material {
    let (key_pem, csr) = new_key_and_csr(id).unwrap();
    let (cert_pem, _) = ca.issue(&csr, id, Duration::from_secs(3600)).unwrap();
    Material {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem,
        key_pem,
    }
}

async fn who(Extension(peer): Extension<Peer>) -> String {
    match peer.identity() {
        Some(id) => id.dns_name(),
        None => "nobody".into(),
    }
}

/// Serves on loopback; returns the address and the shutdown trigger.
async fn start(
    m: &Material,
    clients: ClientCerts,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = server_config(&m.ca_pem, ReloadableCert::new(m).unwrap(), clients).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = Router::new().route("/who", get(who));
    tokio::spawn(ferry_pki::serve(
        listener,
        Some(ferry_pki::TlsSlot::new(cfg)),
        app,
        async {
            let _ = rx.await;
        },
    ));
    (addr, tx)
}

/// One GET /who over TLS with `cfg`; the body, or the error.
async fn get_who(addr: std::net::SocketAddr, cfg: rustls::ClientConfig) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).to_string();
    text.split("\r\n\r\n")
        .nth(1)
        .map(|b| b.to_string())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))
}

#[tokio::test]
async fn the_server_sees_the_callers_identity_and_the_caller_checks_the_servers() {
    let ca = CertAuthority::generate("test").unwrap();
    let agent = material(&ca, &Identity::host("a").unwrap());
    let server = material(&ca, &Identity::Server);
    let (addr, _stop) = start(&agent, ClientCerts::Required).await;

    let as_server =
        client_config(ca.cert_pem(), Some(&server), &Identity::host("a").unwrap()).unwrap();
    assert_eq!(get_who(addr, as_server).await.unwrap(), "server.ferry");

    // Expecting host b at host a's address: refused, whatever the address.
    let wrong = client_config(ca.cert_pem(), Some(&server), &Identity::host("b").unwrap()).unwrap();
    assert!(get_who(addr, wrong).await.is_err());

    // No client certificate: the agent refuses the handshake.
    let anonymous = client_config(ca.cert_pem(), None, &Identity::host("a").unwrap()).unwrap();
    assert!(get_who(addr, anonymous).await.is_err());

    // A certificate from another CA: refused too.
    let other_ca = CertAuthority::generate("other").unwrap();
    let stranger = material(&other_ca, &Identity::Server);
    let cfg = client_config(
        ca.cert_pem(),
        Some(&stranger),
        &Identity::host("a").unwrap(),
    )
    .unwrap();
    assert!(get_who(addr, cfg).await.is_err());
}

#[tokio::test]
async fn optional_client_certificates_admit_anonymous_callers_as_nobody() {
    let ca = CertAuthority::generate("test").unwrap();
    let server = material(&ca, &Identity::Server);
    let (addr, _stop) = start(&server, ClientCerts::Optional).await;
    let anonymous = client_config(ca.cert_pem(), None, &Identity::Server).unwrap();
    assert_eq!(get_who(addr, anonymous).await.unwrap(), "nobody");
    let host = material(&ca, &Identity::host("h1").unwrap());
    let cfg = client_config(ca.cert_pem(), Some(&host), &Identity::Server).unwrap();
    assert_eq!(get_who(addr, cfg).await.unwrap(), "h1.host.ferry");
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_connections() {
    let ca = CertAuthority::generate("test").unwrap();
    let first = material(&ca, &Identity::Server);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reload = ReloadableCert::new(&first).unwrap();
    let cfg = server_config(&first.ca_pem, reload.clone(), ClientCerts::Optional).unwrap();
    let app = Router::new().route("/who", get(who));
    tokio::spawn(ferry_pki::serve(
        listener,
        Some(ferry_pki::TlsSlot::new(cfg)),
        app,
        std::future::pending(),
    ));

    let second = material(&ca, &Identity::Server);
    reload.replace(&second).unwrap();
    // Capture what the server presents now: its leaf must be the second certificate.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let cfg = client_config(ca.cert_pem(), None, &Identity::Server).unwrap();
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::try_from("x").unwrap(), tcp)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(presented, certs_from_pem(&second.cert_pem).unwrap()[0]);
}
