//! Who a certificate speaks for.
//!
//! Every certificate the cluster CA issues names exactly one [`Identity`], written twice
//! the same way: as the subject's common name and as the only DNS subject-alternative
//! name. The DNS form is what TLS checks (`<host>.host.ferry`, `server.ferry`); the
//! distinguished name (`CN=<dns>`) is what QEMU's `tls-authz` compares.
//!
//! The names live under `.ferry`, a name no public CA issues for, and are never resolved:
//! a client connects to whatever address it was given and checks that the certificate
//! there is the identity it expects (see [`crate::tls`]).

use std::fmt;

use crate::PkiError;

/// The DNS suffix of every identity.
pub const DOMAIN: &str = "ferry";

/// A party in the cluster, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The Ferry server (one per cluster).
    Server,
    /// A host's agent, by host name.
    Host(String),
}

impl Identity {
    /// A host's identity; refuses a name that cannot be a DNS label sequence (the
    /// certificate could not carry it).
    pub fn host(name: &str) -> Result<Identity, PkiError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                    })
            });
        if !ok {
            return Err(PkiError::BadName(format!(
                "host name '{name}' cannot be a certificate name: use lowercase letters, \
                 digits, '-' and '_' in dot-separated labels that do not start or end with '-'"
            )));
        }
        Ok(Identity::Host(name.to_string()))
    }

    /// `server.ferry` or `<host>.host.ferry`.
    pub fn dns_name(&self) -> String {
        match self {
            Identity::Server => format!("server.{DOMAIN}"),
            Identity::Host(h) => format!("{h}.host.{DOMAIN}"),
        }
    }

    /// The subject as QEMU's x509 authorization prints it: `CN=<dns name>`.
    pub fn distinguished_name(&self) -> String {
        format!("CN={}", self.dns_name())
    }

    /// The identity a DNS name stands for, if it is one of ours.
    pub fn from_dns_name(name: &str) -> Option<Identity> {
        if name == format!("server.{DOMAIN}") {
            return Some(Identity::Server);
        }
        let host = name.strip_suffix(&format!(".host.{DOMAIN}"))?;
        Identity::host(host).ok()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Server => write!(f, "the server"),
            Identity::Host(h) => write!(f, "host {h}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_round_trip() {
        for id in [
            Identity::Server,
            Identity::host("a").unwrap(),
            Identity::host("rack1.node_2").unwrap(),
        ] {
            assert_eq!(Identity::from_dns_name(&id.dns_name()), Some(id.clone()));
            assert_eq!(id.distinguished_name(), format!("CN={}", id.dns_name()));
        }
    }

    #[test]
    fn names_that_cannot_be_certificate_names_are_refused() {
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "-a",
            "a-",
            "A",
            "a b",
            "a/b",
            &"x".repeat(64),
        ] {
            assert!(Identity::host(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn foreign_names_are_no_identity() {
        for name in [
            "example.com",
            "server.ferry.evil",
            "host.ferry",
            "a.host.ferry.x",
        ] {
            assert_eq!(Identity::from_dns_name(name), None, "{name}");
        }
    }
}
