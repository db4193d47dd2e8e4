//! Who may do what: operator roles, users and their tokens, and how hosts join.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An operator's role. Each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads: hosts, VMs, migrations, events, the cluster.
    Viewer,
    /// Viewer, plus VMs, disks and migrations (create, start, stop, migrate, cancel, resolve).
    Operator,
    /// Operator, plus hosts (join, remove, maintenance), cluster settings, users and the CA.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role '{other}': use viewer, operator or admin"
            )),
        }
    }
}

/// `POST /v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// How many API tokens the user has.
    pub tokens: u32,
}

/// A user and a new API token, shown once (the server keeps only its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserToken {
    pub user: User,
    pub token: String,
}

/// `POST /v1/hosts/join-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    pub host: String,
    /// How long the token may be used, seconds (default 15 minutes, at most a day).
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenResponse {
    pub host: String,
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// `POST /v1/join`: a joining agent's token and certificate request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    pub csr_pem: String,
}

/// A certificate issued to a host (on join and on renewal), with the CA bundle to trust.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedCertificate {
    pub host: String,
    pub cert_pem: String,
    pub ca_pem: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// `POST /v1/hosts/{name}/certificate`: a host renews its certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr_pem: String,
}

/// `GET /v1/ca`: the CA certificates to trust (public).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaBundle {
    pub ca_pem: String,
    /// SHA-256 of each CA certificate in the bundle, hex.
    pub fingerprints: Vec<String>,
}

/// `POST /v1/ca/rotate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// End the overlap: the server takes a certificate from the new CA and stops trusting
    /// the old one. Refused while a host still holds only old certificates.
    #[serde(default)]
    pub finish: bool,
}

/// Where a CA rotation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    /// `settled` (one CA) or `overlapping` (the new CA signs, the old one is still trusted).
    pub state: String,
    /// SHA-256 of the CA that signs new certificates.
    pub signing: String,
    /// SHA-256 of every CA trusted now.
    pub trusted: Vec<String>,
    /// Registered hosts that hold no certificate from the signing CA yet (agents renew
    /// within a heartbeat or two of seeing the new bundle).
    pub pending_hosts: Vec<String>,
}

/// `GET /v1/whoami`: how the server sees the caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    /// As the event log records it: `user:NAME`, `host:NAME`, `insecure`.
    pub actor: String,
    pub role: Option<Role>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
