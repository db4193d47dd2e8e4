//! QEMU's own TLS: credentials and authorization objects (`object-add`), and the NBD
//! server and client with TLS.
//!
//! A migration stream is encrypted when the migration parameter `tls-creds` names a
//! `tls-creds-x509` object (QAPI `qom.json`: `TlsCredsX509Properties`); the destination
//! (endpoint `server`) admits a client only if its certificate chains to the CA and, with
//! `tls-authz`, only if the certificate's distinguished name is the identity of that
//! `authz-simple` object; the source (endpoint `client`) checks the destination's
//! certificate against the CA and against `tls-hostname`. The NBD server takes the same
//! pair (`nbd-server-start` `tls-creds` + `tls-authz`) and an NBD client node
//! `tls-creds` + `tls-hostname` (`block-core.json`: `BlockdevOptionsNbd`).
//!
//! QEMU reads the credential files once, when the object is created (gnutls keeps them in
//! memory), so the directory may be removed right after [`QmpClient::object_add_tls_creds_x509`].
//! The files QEMU looks for in `dir`: `ca-cert.pem` always, `server-cert.pem` +
//! `server-key.pem` for a server, `client-cert.pem` + `client-key.pem` for a client.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::client::QmpClient;
use crate::error::QmpError;
use crate::types::InetSocketAddress;

/// Which side of a TLS connection credentials are for (`QCryptoTLSCredsEndpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsEndpoint {
    Client,
    Server,
}

/// `object-add` of a `tls-creds-x509` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TlsCredsX509 {
    pub id: String,
    /// Directory holding the PEM files (see the module doc).
    pub dir: String,
    pub endpoint: TlsEndpoint,
    /// A server: demand a client certificate signed by the CA. A client: check the
    /// server's certificate (QEMU's default for a client is true, for a server false).
    pub verify_peer: bool,
}

impl TlsCredsX509 {
    fn to_args(&self) -> Value {
        let mut args = json!({ "qom-type": "tls-creds-x509" });
        if let (Value::Object(args), Ok(Value::Object(props))) =
            (&mut args, serde_json::to_value(self))
        {
            args.extend(props);
        }
        args
    }
}

/// What an NBD server needs for TLS: the server credentials and the authorization object
/// that admits clients by certificate name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdServerTls {
    /// Id of a `tls-creds-x509` object with endpoint `server`.
    pub creds: String,
    /// Id of an authz object (e.g. `authz-simple`); None admits any certificate the CA
    /// signed.
    pub authz: Option<String>,
}

/// What an NBD client node needs for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdClientTls {
    /// Id of a `tls-creds-x509` object with endpoint `client`.
    pub creds: String,
    /// The name the server's certificate must carry (checked against its subject
    /// alternative names).
    pub hostname: String,
}

impl QmpClient {
    /// `object-add` of `tls-creds-x509`: QEMU loads and checks the files at once (a
    /// missing file, a key that does not match, a certificate the CA did not sign are
    /// refused here with gnutls' reason).
    pub async fn object_add_tls_creds_x509(&self, creds: &TlsCredsX509) -> Result<(), QmpError> {
        self.execute_raw("object-add", Some(creds.to_args()))
            .await
            .map(|_| ())
    }

    /// `object-add` of `authz-simple`: admits exactly one identity. For TLS the identity
    /// is the peer certificate's distinguished name as gnutls prints it
    /// (`gnutls_x509_crt_get_dn`, RFC 4514 order, e.g. `CN=b.host.ferry`).
    pub async fn object_add_authz_simple(&self, id: &str, identity: &str) -> Result<(), QmpError> {
        self.execute_raw(
            "object-add",
            Some(json!({ "qom-type": "authz-simple", "id": id, "identity": identity })),
        )
        .await
        .map(|_| ())
    }

    /// `object-del`.
    pub async fn object_del(&self, id: &str) -> Result<(), QmpError> {
        self.execute_raw("object-del", Some(json!({ "id": id })))
            .await
            .map(|_| ())
    }

    /// `qom-get` of a string property, e.g. an authz object's `identity`
    /// (`/objects/ID`, `identity`).
    pub async fn qom_get_string(&self, path: &str, property: &str) -> Result<String, QmpError> {
        self.execute(
            "qom-get",
            Some(&json!({ "path": path, "property": property })),
        )
        .await
    }

    /// `nbd-server-start` on `host:port`, with TLS when `tls` is given (then a client must
    /// complete the TLS handshake before any NBD option is answered).
    pub async fn nbd_server_start_with(
        &self,
        host: &str,
        port: u16,
        tls: Option<&NbdServerTls>,
    ) -> Result<(), QmpError> {
        let addr = InetSocketAddress::new(host, port);
        let mut args = json!({ "addr": { "type": "inet", "data": addr } });
        if let Some(tls) = tls {
            args["tls-creds"] = json!(tls.creds);
            if let Some(authz) = &tls.authz {
                args["tls-authz"] = json!(authz);
            }
        }
        self.execute_raw("nbd-server-start", Some(args))
            .await
            .map(|_| ())
    }

    /// `blockdev-add` of an NBD client node connected to `host:port`, export `export`,
    /// with TLS when `tls` is given.
    pub async fn blockdev_add_nbd_with(
        &self,
        node: &str,
        host: &str,
        port: u16,
        export: &str,
        tls: Option<&NbdClientTls>,
    ) -> Result<(), QmpError> {
        let mut args = json!({
            "driver": "nbd", "node-name": node, "export": export,
            "server": {"type": "inet", "host": host, "port": port.to_string()},
        });
        if let Some(tls) = tls {
            args["tls-creds"] = json!(tls.creds);
            args["tls-hostname"] = json!(tls.hostname);
        }
        self.execute_raw("blockdev-add", Some(args))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_creds_use_qemus_spelling() {
        let c = TlsCredsX509 {
            id: "tls0".into(),
            dir: "/run/x".into(),
            endpoint: TlsEndpoint::Server,
            verify_peer: true,
        };
        assert_eq!(
            c.to_args(),
            json!({"qom-type": "tls-creds-x509", "id": "tls0", "dir": "/run/x",
                   "endpoint": "server", "verify-peer": true})
        );
    }
}
