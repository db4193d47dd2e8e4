//! Host networking for VMs: one tap per NIC, attached to the bridge the agent's config maps
//! the NIC's network name to (`--network vmnet=br-vm`). Commands run with argument lists.

use std::process::Command;

use crate::error::AgentError;

/// The tap of NIC `index` of `vm` on `host`: unique per host (the host name is hashed in,
/// so two agents sharing one network namespace never collide during a migration), and
/// within Linux's 15-character limit.
pub fn tap_name(host: &str, vm: &str, index: usize) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in host.bytes().chain([0]).chain(vm.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("fy{h:08x}n{index}")
}

/// Checks a bridge name from the config (an interface name: 1-15 safe characters).
pub fn validate_ifname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid interface name (1-15 of a-z A-Z 0-9 - _ .)"
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn bridge_exists(bridge: &str) -> bool {
    std::path::Path::new("/sys/class/net")
        .join(bridge)
        .join("bridge")
        .exists()
}

/// Creates `tap` (replacing a stale one) and attaches it to `bridge`, up.
pub fn create_tap(tap: &str, bridge: &str) -> Result<(), AgentError> {
    if !bridge_exists(bridge) {
        return Err(AgentError::bad_request(format!(
            "bridge '{bridge}' does not exist on this host"
        )));
    }
    let _ = ip(&["link", "del", tap]);
    let steps: [&[&str]; 3] = [
        &["tuntap", "add", "dev", tap, "mode", "tap"],
        &["link", "set", tap, "master", bridge],
        &["link", "set", tap, "up"],
    ];
    for step in steps {
        if let Err(e) = ip(step) {
            let _ = ip(&["link", "del", tap]);
            return Err(AgentError::net(format!("cannot create tap {tap}: {e}")));
        }
    }
    Ok(())
}

/// Removes a tap if it exists.
pub fn delete_tap(tap: &str) {
    if std::path::Path::new("/sys/class/net").join(tap).exists() {
        if let Err(e) = ip(&["link", "del", tap]) {
            tracing::warn!("cannot remove tap {tap}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_and_differ_per_host() {
        let a = tap_name("a", "web1", 0);
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, tap_name("b", "web1", 0));
        assert_ne!(a, tap_name("a", "web1", 1));
        assert_eq!(a, tap_name("a", "web1", 0));
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(validate_ifname("br-vm").is_ok());
        for bad in ["", "a-very-long-bridge-name", "br vm", "br;x", "../x/"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }
}
