//! Identities: join tokens and joining, certificate renewal, removing a host, users and
//! their API tokens. Authorization happened before any of this runs (see [`super::auth`]).

use std::time::Duration;

use chrono::Utc;
use ferry_api::*;
use ferry_pki::{ApiToken, Identity, JoinToken};

use super::Server;
use crate::store::{JoinRedeem, UserRemoval};

/// A join token's default and longest life.
const JOIN_TTL_DEFAULT: Duration = Duration::from_secs(15 * 60);
const JOIN_TTL_MAX: Duration = Duration::from_secs(86_400);

impl Server {
    fn pki(&self) -> Result<&crate::pki::ServerPki, ApiError> {
        self.pki.as_deref().ok_or_else(|| {
            ApiError::conflict("this server runs with --insecure: it has no CA and issues nothing")
        })
    }

    /// The CA bundle hosts and operators trust.
    pub fn ca_bundle(&self) -> Result<CaBundle, ApiError> {
        let pki = self.pki()?;
        let ca_pem = pki.material().ca_pem;
        let fingerprints = ferry_pki::tls::certs_from_pem(&ca_pem)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .iter()
            .map(|c| ferry_pki::ca::fingerprint_der(c))
            .collect();
        Ok(CaBundle {
            ca_pem,
            fingerprints,
        })
    }

    pub(super) fn create_join_token(
        &self,
        actor: &str,
        req: &JoinTokenRequest,
    ) -> Result<JoinTokenResponse, ApiError> {
        let pki = self.pki()?;
        validate_name("host name", &req.host)?;
        Identity::host(&req.host).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let ttl = match req.ttl_s {
            None => JOIN_TTL_DEFAULT,
            Some(0) => return Err(ApiError::bad_request("ttl_s must be at least 1 second")),
            Some(s) if Duration::from_secs(s) > JOIN_TTL_MAX => {
                return Err(ApiError::bad_request(format!(
                    "ttl_s {s} is longer than a day ({} s): join tokens are short-lived",
                    JOIN_TTL_MAX.as_secs()
                )))
            }
            Some(s) => Duration::from_secs(s),
        };
        let now = Utc::now();
        if self.store.host_has_live_cert(&req.host, now)? {
            return Err(ApiError::conflict(format!(
                "host {} already has a certificate; `ferry host remove {}` first to let \
                 another machine take the name",
                req.host, req.host
            )));
        }
        let fingerprint = pki
            .signing_fingerprint()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let token =
            JoinToken::generate(&fingerprint).map_err(|e| ApiError::internal(e.to_string()))?;
        let expires_at =
            now + chrono::Duration::from_std(ttl).map_err(|e| ApiError::internal(e.to_string()))?;
        self.store.add_join_token(
            &token.id,
            &req.host,
            &token.secret_hash(),
            expires_at,
            actor,
        )?;
        Ok(JoinTokenResponse {
            host: req.host.clone(),
            token: token.to_string(),
            expires_at,
        })
    }

    /// Redeems a join token for a certificate naming the host the token was made for
    /// (never a name the request chose).
    pub(super) fn join(&self, req: &JoinRequest) -> Result<IssuedCertificate, ApiError> {
        let pki = self.pki()?;
        let token =
            JoinToken::parse(&req.token).map_err(|e| ApiError::unauthorized(e.to_string()))?;
        let now = Utc::now();
        let host = match self
            .store
            .redeem_join_token(&token.id, &token.secret_hash(), now)?
        {
            JoinRedeem::Host(h) => h,
            JoinRedeem::Refused(why) => return Err(ApiError::unauthorized(why)),
        };
        if self.store.host_has_live_cert(&host, now)? {
            return Err(ApiError::conflict(format!(
                "host {host} already has a certificate; `ferry host remove {host}` first"
            )));
        }
        self.issue_host_cert(pki, &host, &req.csr_pem)
    }

    pub(super) fn renew_certificate(
        &self,
        host: &str,
        req: &RenewRequest,
    ) -> Result<IssuedCertificate, ApiError> {
        let pki = self.pki()?;
        // The old certificate stays valid until it expires, so connections made with it
        // (and a renewal whose answer got lost) keep working; removing the host revokes both.
        self.issue_host_cert(pki, host, &req.csr_pem)
    }

    fn issue_host_cert(
        &self,
        pki: &crate::pki::ServerPki,
        host: &str,
        csr_pem: &str,
    ) -> Result<IssuedCertificate, ApiError> {
        if csr_pem.len() > 16 * 1024 {
            return Err(ApiError::bad_request(
                "certificate request larger than 16 KiB",
            ));
        }
        let identity = Identity::host(host).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let signing = pki
            .signing_fingerprint()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let (cert_pem, info) = pki
            .issue(csr_pem, &identity)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        self.store
            .record_host_cert(host, &info, &signing, Utc::now())?;
        Ok(IssuedCertificate {
            host: host.to_string(),
            cert_pem,
            ca_pem: pki.material().ca_pem,
            not_after: info.not_after,
        })
    }

    /// Forgets a host that holds no VM and takes part in no migration, and revokes its
    /// certificates: its agent can no longer register, and the server no longer calls it.
    pub(super) fn remove_host(&self, name: &str) -> Result<String, ApiError> {
        validate_name("host name", name)?;
        let known = self.store.host(name)?.is_some();
        let on_it: Vec<String> = self
            .store
            .vms()?
            .into_iter()
            .filter(|v| v.host == name)
            .map(|v| v.spec.name)
            .collect();
        if !on_it.is_empty() {
            return Err(ApiError::conflict(format!(
                "host {name} still has VMs ({}); move or delete them first",
                on_it.join(", ")
            )));
        }
        let busy: Vec<String> = self
            .store
            .migrations(10_000)?
            .into_iter()
            .filter(|m| !m.phase.is_terminal() && (m.source == name || m.destination == name))
            .map(|m| m.id.to_string())
            .collect();
        if !busy.is_empty() {
            return Err(ApiError::conflict(format!(
                "host {name} takes part in migrations still running ({})",
                busy.join(", ")
            )));
        }
        let revoked = self.store.remove_host(name, Utc::now())?;
        if !known && revoked == 0 {
            return Err(ApiError::not_found(format!("no host named '{name}'")));
        }
        Ok(format!(
            "host {name} ({revoked} certificate{} revoked)",
            if revoked == 1 { "" } else { "s" }
        ))
    }

    /// Where a CA rotation stands, with the hosts it still waits for.
    pub fn ca_rotation(&self) -> Result<CaRotation, ApiError> {
        let pki = self.pki()?;
        let internal = |e: ferry_pki::PkiError| ApiError::internal(e.to_string());
        let signing = pki.signing_fingerprint().map_err(internal)?;
        let (state, trusted) = match pki.rotation().map_err(internal)? {
            crate::pki::Rotation::Settled { ca } => ("settled", vec![ca]),
            crate::pki::Rotation::Overlapping { new, old } => ("overlapping", vec![new, old]),
        };
        let pending_hosts = if state == "settled" {
            Vec::new()
        } else {
            self.store.hosts_without_cert_from(&signing, Utc::now())?
        };
        Ok(CaRotation {
            state: state.into(),
            signing,
            trusted,
            pending_hosts,
        })
    }

    /// `ferry ca rotate`: starts the overlap (a new CA signs; both are trusted; agents
    /// fetch the new bundle and renew), or finishes it once every host holds a certificate
    /// from the new CA (the server takes one too, and the old CA is dropped).
    pub(super) fn rotate_ca(&self, req: &RotateRequest) -> Result<CaRotation, ApiError> {
        let pki = self.pki()?;
        let tls = self
            .tls
            .as_ref()
            .ok_or_else(|| ApiError::internal("a secured server without TLS settings"))?;
        if req.finish {
            let now = self.ca_rotation()?;
            if now.state != "overlapping" {
                return Err(ApiError::conflict(
                    "no CA rotation is under way (`ferry ca rotate` starts one)",
                ));
            }
            if !now.pending_hosts.is_empty() {
                return Err(ApiError::conflict(format!(
                    "hosts still hold only certificates from the old CA: {}; their agents \
                     renew once they see the new CA (running agents do within a heartbeat \
                     or two); remove hosts that are gone (`ferry host remove`)",
                    now.pending_hosts.join(", ")
                ))
                .with_details(serde_json::to_value(&now).unwrap_or_default()));
            }
            pki.rotate_finish()
                .map_err(|e| ApiError::internal(e.to_string()))?;
        } else {
            pki.rotate_start()
                .map_err(|e| ApiError::conflict(e.to_string()))?;
        }
        tls.update(&pki.material())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.ca_rotation()
    }

    pub(super) fn add_user(&self, req: &CreateUserRequest) -> Result<UserToken, ApiError> {
        validate_name("user name", &req.name)?;
        let token = ApiToken::generate().map_err(|e| ApiError::internal(e.to_string()))?;
        if !self.store.add_user(
            &req.name,
            req.role,
            &token.id,
            &token.secret_hash(),
            Utc::now(),
        )? {
            return Err(ApiError::conflict(format!(
                "a user named '{}' exists",
                req.name
            )));
        }
        self.user_token(&req.name, token)
    }

    pub(super) fn new_user_token(&self, name: &str) -> Result<UserToken, ApiError> {
        validate_name("user name", name)?;
        let token = ApiToken::generate().map_err(|e| ApiError::internal(e.to_string()))?;
        if !self
            .store
            .add_api_token(name, &token.id, &token.secret_hash(), Utc::now())?
        {
            return Err(ApiError::not_found(format!("no user named '{name}'")));
        }
        self.user_token(name, token)
    }

    fn user_token(&self, name: &str, token: ApiToken) -> Result<UserToken, ApiError> {
        let user = self
            .store
            .user(name)?
            .ok_or_else(|| ApiError::internal(format!("user {name} vanished")))?;
        Ok(UserToken {
            user,
            token: token.to_string(),
        })
    }

    pub(super) fn remove_user(&self, name: &str) -> Result<String, ApiError> {
        validate_name("user name", name)?;
        match self.store.remove_user(name)? {
            UserRemoval::Removed => Ok(format!("user {name}")),
            UserRemoval::NotFound => Err(ApiError::not_found(format!("no user named '{name}'"))),
            UserRemoval::LastAdmin => Err(ApiError::conflict(format!(
                "{name} is the last admin; add another admin first"
            ))),
        }
    }
}
