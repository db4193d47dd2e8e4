//! Where this agent may send a VM: checked against what is allowed, not against what is
//! forbidden. QEMU's `migrate` takes URIs that run commands (`exec:`), write files (`file:`),
//! or reach local sockets and descriptors (`unix:`, `fd:`); a request that named one would
//! have QEMU, running as root, do it. The agent accepts exactly `tcp:IP:PORT` (an IP literal
//! and a real port) and hands QEMU a URI it rebuilt from the parsed address, so nothing of
//! the request's text reaches QEMU. Disk exports are `IP:PORT` under the same rules.

use std::net::{IpAddr, SocketAddr};

use crate::error::AgentError;

/// A peer address a stream or a disk copy may go to.
fn check_peer(addr: SocketAddr, what: &str, given: &str) -> Result<SocketAddr, AgentError> {
    let ip = addr.ip();
    let bad_ip = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if bad_ip || addr.port() == 0 {
        return Err(AgentError::bad_request(format!(
            "{what} '{given}' is not a peer's address (an unspecified, multicast or broadcast \
             address, or port 0)"
        )));
    }
    Ok(addr)
}

/// The destination of a migration stream: `tcp:IP:PORT` only. Returns the URI to give
/// QEMU, rebuilt from the parsed address.
pub fn migration_uri(given: &str) -> Result<String, AgentError> {
    let refuse = || {
        AgentError::bad_request(format!(
            "migration URI '{given}' is refused: only tcp:IP:PORT (a peer's migration address) \
             is accepted"
        ))
    };
    let addr = given
        .strip_prefix("tcp:")
        .ok_or_else(refuse)?
        .parse::<SocketAddr>()
        .map_err(|_| refuse())?;
    let addr = check_peer(addr, "migration URI", given)?;
    Ok(format!("tcp:{addr}"))
}

/// The destination's NBD server for a disk copy: `IP:PORT` only.
pub fn disk_export(given: &str) -> Result<SocketAddr, AgentError> {
    let addr = given
        .parse::<SocketAddr>()
        .map_err(|_| AgentError::bad_request(format!("disk export '{given}' is not IP:PORT")))?;
    check_peer(addr, "disk export", given)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tcp_to_an_address_and_port_is_accepted() {
        assert_eq!(
            migration_uri("tcp:10.0.0.5:4444").unwrap(),
            "tcp:10.0.0.5:4444"
        );
        assert_eq!(
            migration_uri("tcp:[fd00::5]:4444").unwrap(),
            "tcp:[fd00::5]:4444"
        );
        for bad in [
            "exec:touch /tmp/owned",
            "exec:/bin/sh -c 'id'",
            "file:/etc/shadow",
            "unix:/run/ferry.sock",
            "fd:3",
            "rdma:10.0.0.5:4444",
            "tcp:host.example:4444",
            "tcp:10.0.0.5",
            "tcp:10.0.0.5:0",
            "tcp:0.0.0.0:4444",
            "tcp:255.255.255.255:4444",
            "tcp:224.0.0.1:4444",
            "tcp:10.0.0.5:4444,exec:id",
            "tcp:10.0.0.5:4444 ",
            " tcp:10.0.0.5:4444",
            "TCP:10.0.0.5:4444",
            "",
        ] {
            let e = migration_uri(bad).expect_err(bad);
            assert!(
                e.to_string().contains("refused") || e.to_string().contains("peer"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn disk_exports_are_peer_addresses() {
        assert_eq!(
            disk_export("10.0.0.5:10809").unwrap(),
            "10.0.0.5:10809".parse::<SocketAddr>().unwrap()
        );
        for bad in [
            "nbd:10.0.0.5:10809",
            "10.0.0.5",
            "0.0.0.0:10809",
            "10.0.0.5:0",
            "host:10809",
        ] {
            assert!(disk_export(bad).is_err(), "{bad}");
        }
    }
}
