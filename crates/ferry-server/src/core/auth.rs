//! Who is calling ([`Caller`], from a certificate or an API token) and whether they may
//! ([`authorize`], a pure function of the caller and what the request [`Need`]s).
//!
//! Every [`super::Action`] and [`super::Query`] says what it needs; [`super::Server`]
//! checks it before doing anything, so a route cannot forget: the HTTP layer only turns
//! requests into actions and queries.
//!
//! | caller                         | Public | Role(viewer..admin)     | HostSelf(h)   |
//! |--------------------------------|--------|-------------------------|---------------|
//! | nobody (no token, no cert)     | yes    | 401                     | 401           |
//! | user with role r               | yes    | r >= needed, else 403   | 403           |
//! | host h' (its certificate)      | yes    | 403                     | h' == h       |
//! | insecure (`--insecure` server) | yes    | yes                     | yes           |

use chrono::Utc;
use ferry_api::{ApiError, Role};
use ferry_pki::{ApiToken, Identity, Peer, Transport};

use super::Server;

/// The authenticated party behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    User {
        name: String,
        role: Role,
    },
    /// An agent, by the host name in its (issued, unrevoked) certificate.
    Host(String),
    /// No credentials: only public routes.
    Anonymous,
    /// The server runs with `--insecure`: no identities, everything allowed.
    Insecure,
}

impl Caller {
    /// As the event log records it.
    pub fn actor(&self) -> String {
        match self {
            Caller::User { name, .. } => format!("user:{name}"),
            Caller::Host(h) => format!("host:{h}"),
            Caller::Anonymous => "anonymous".into(),
            Caller::Insecure => "insecure".into(),
        }
    }

    pub fn role(&self) -> Option<Role> {
        match self {
            Caller::User { role, .. } => Some(*role),
            Caller::Insecure => Some(Role::Admin),
            _ => None,
        }
    }
}

/// What a request needs of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Anyone (health, the CA bundle, joining with a token).
    Public,
    /// A user with at least this role.
    Role(Role),
    /// The named host itself (its heartbeat, its certificate renewal).
    HostSelf(String),
}

/// Whether `caller` may do what needs `need`; the refusal says why.
pub fn authorize(caller: &Caller, need: &Need) -> Result<(), ApiError> {
    match (caller, need) {
        (_, Need::Public) | (Caller::Insecure, _) => Ok(()),
        (Caller::Anonymous, _) => Err(ApiError::unauthorized(
            "authentication required: give an API token (`ferry user token`, FERRY_TOKEN) or a \
             host certificate",
        )),
        (Caller::User { role, .. }, Need::Role(needed)) if role >= needed => Ok(()),
        (Caller::User { name, role }, Need::Role(needed)) => Err(ApiError::forbidden(format!(
            "user {name} has role {role}; this needs {needed}"
        ))),
        (Caller::User { name, .. }, Need::HostSelf(h)) => Err(ApiError::forbidden(format!(
            "only host {h}'s agent may do this, not user {name}"
        ))),
        (Caller::Host(me), Need::HostSelf(h)) if me == h => Ok(()),
        (Caller::Host(me), Need::HostSelf(h)) => Err(ApiError::forbidden(format!(
            "host {me} may not act for host {h}"
        ))),
        (Caller::Host(me), Need::Role(needed)) => Err(ApiError::forbidden(format!(
            "host {me}'s certificate is for agents; this needs a user with role {needed}"
        ))),
    }
}

impl Server {
    /// Who is calling: an API token wins; else a host certificate the CA issued and nobody
    /// revoked; else nobody. Credentials that are present but wrong are refused rather than
    /// downgraded to anonymous, so a typo in a token says so.
    pub fn authenticate(
        &self,
        peer: Option<&Peer>,
        bearer: Option<&str>,
    ) -> Result<Caller, ApiError> {
        if self.pki.is_none() {
            return Ok(Caller::Insecure);
        }
        if let Some(text) = bearer {
            let token = ApiToken::parse(text).map_err(|e| ApiError::unauthorized(e.to_string()))?;
            return match self.store.user_for_token(&token.id, &token.secret_hash())? {
                Some((name, role)) => Ok(Caller::User { name, role }),
                None => Err(ApiError::unauthorized(
                    "unknown or revoked API token (make a new one with `ferry user token`)",
                )),
            };
        }
        match peer.map(|p| &p.transport) {
            Some(Transport::Certificate {
                identity: Some(Identity::Host(h)),
                fingerprint,
                ..
            }) => {
                if self.store.host_cert_valid(h, fingerprint, Utc::now())? {
                    Ok(Caller::Host(h.clone()))
                } else {
                    Err(ApiError::unauthorized(format!(
                        "host {h}'s certificate was revoked, has expired or was never issued \
                         by this server (join again with a new token)"
                    )))
                }
            }
            Some(Transport::Certificate { .. }) => Err(ApiError::unauthorized(
                "this certificate names no host of this cluster",
            )),
            _ => Ok(Caller::Anonymous),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn caller() -> impl Strategy<Value = Caller> {
        prop_oneof![
            (0..3usize, "[a-c]").prop_map(|(r, n)| Caller::User {
                name: n,
                role: Role::ALL[r]
            }),
            "[a-c]".prop_map(Caller::Host),
            Just(Caller::Anonymous),
            Just(Caller::Insecure),
        ]
    }

    fn need() -> impl Strategy<Value = Need> {
        prop_oneof![
            Just(Need::Public),
            (0..3usize).prop_map(|r| Need::Role(Role::ALL[r])),
            "[a-c]".prop_map(Need::HostSelf),
        ]
    }

    proptest! {
        /// The table in the module doc, as a property.
        #[test]
        fn authorization_follows_the_table(c in caller(), n in need()) {
            let allowed = authorize(&c, &n).is_ok();
            let expected = match (&c, &n) {
                (_, Need::Public) | (Caller::Insecure, _) => true,
                (Caller::User { role, .. }, Need::Role(r)) => role >= r,
                (Caller::Host(me), Need::HostSelf(h)) => me == h,
                _ => false,
            };
            prop_assert_eq!(allowed, expected);
            if let Err(e) = authorize(&c, &n) {
                let status = e.http_status();
                if c == Caller::Anonymous {
                    prop_assert_eq!(status, 401);
                } else {
                    prop_assert_eq!(status, 403);
                }
            }
        }
    }

    #[test]
    fn a_lower_role_is_told_what_it_lacks() {
        let viewer = Caller::User {
            name: "v".into(),
            role: Role::Viewer,
        };
        let e = authorize(&viewer, &Need::Role(Role::Operator)).unwrap_err();
        assert!(
            e.message.contains("viewer") && e.message.contains("operator"),
            "{e}"
        );
    }
}
