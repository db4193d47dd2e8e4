//! Host networking for VMs: one tap per NIC, attached to the bridge the agent's config maps
//! the NIC's network name to (`--network vmnet=br-vm`). Commands run with argument lists.

use std::process::Command;

use crate::error::AgentError;

/// The first-choice tap name of NIC `index` of `vm` on `host`: differs per host (the host
/// name is hashed in, so two agents sharing one network namespace do not meet during a
/// migration) and fits Linux's 15-character limit. A 32-bit hash can still collide, so
/// this is only the first candidate (see [`create_tap_from`]); the name a VM actually got
/// is recorded with the VM and is the only one its cleanup deletes.
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

/// How many suffixed names are tried after the hashed one before giving up.
const TAP_SUFFIXES: usize = 99;

/// The names NIC `index` of `vm` may get, in the order they are tried: the hashed name,
/// then the same with `x1`..`x99` appended (at most 15 characters). A suffixed name can
/// never equal another VM's hashed one (those end in `n<index>`).
pub fn tap_candidates(host: &str, vm: &str, index: usize) -> Vec<String> {
    let base = tap_name(host, vm, index);
    std::iter::once(base.clone())
        .chain((1..=TAP_SUFFIXES).map(|k| format!("{base}x{k}")))
        .filter(|n| n.len() <= 15)
        .collect()
}

fn interface_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Creates the first of `candidates` that does not exist yet, attaches it to `bridge`
/// and brings it up; returns its name.
///
/// `ip tuntap add` refuses a name that is taken, so an existing interface (another VM's
/// tap after a hash collision, or one a crashed QEMU left) is never taken over or
/// deleted: the next candidate is tried instead.
pub fn create_tap_from(candidates: &[String], bridge: &str) -> Result<String, AgentError> {
    if !bridge_exists(bridge) {
        return Err(AgentError::bad_request(format!(
            "bridge '{bridge}' does not exist on this host"
        )));
    }
    for tap in candidates {
        if interface_exists(tap) {
            continue;
        }
        if let Err(e) = ip(&["tuntap", "add", "dev", tap, "mode", "tap"]) {
            if interface_exists(tap) {
                continue; // taken between the look and the add
            }
            return Err(AgentError::net(format!("cannot create tap {tap}: {e}")));
        }
        // From here the tap is ours: undo it on failure. One `ip` for both settings: each
        // run is a fork and exec on the way to the VM's start.
        if let Err(e) = ip(&["link", "set", "dev", tap, "master", bridge, "up"]) {
            let _ = ip(&["link", "del", tap]);
            return Err(AgentError::net(format!("cannot set up tap {tap}: {e}")));
        }
        return Ok(tap.clone());
    }
    Err(AgentError::net(format!(
        "cannot create a tap: all {} candidate names (from {}) are taken",
        candidates.len(),
        candidates.first().map(String::as_str).unwrap_or("none")
    )))
}

/// Creates the tap of NIC `index` of `vm` (see [`tap_candidates`]); returns its name.
pub fn create_tap(host: &str, vm: &str, index: usize, bridge: &str) -> Result<String, AgentError> {
    create_tap_from(&tap_candidates(host, vm, index), bridge)
}

/// The taps `record`'s VM owns on `host`. A record from before taps were recorded names
/// none, while its QEMU uses the hashed names the agent of then always created (replacing
/// whatever was there), so those are its own.
pub fn recorded_taps(host: &str, record: &crate::persist::PersistedVm) -> Vec<String> {
    if !record.taps.is_empty() || record.spec.nics.is_empty() {
        return record.taps.clone();
    }
    (0..record.spec.nics.len())
        .map(|i| tap_name(host, &record.spec.name, i))
        .collect()
}

/// Removes a tap if it exists.
pub fn delete_tap(tap: &str) {
    if interface_exists(tap) {
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
    fn tap_candidates_fit_differ_and_start_with_the_hashed_name() {
        let c = tap_candidates("a", "web1", ferry_api::MAX_NICS - 1);
        assert_eq!(c[0], tap_name("a", "web1", ferry_api::MAX_NICS - 1));
        assert_eq!(c.len(), 1 + TAP_SUFFIXES);
        assert!(c
            .iter()
            .all(|n| n.len() <= 15 && validate_ifname(n).is_ok()));
        let mut unique = c.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), c.len());
    }

    /// Deletes what the test made, however it ends.
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for name in &self.0 {
                let _ = ip(&["link", "del", name]);
            }
        }
    }

    #[test]
    fn colliding_taps_get_distinct_names_and_deleting_one_spares_the_other() {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root {
            eprintln!("skipped: creating taps needs root");
            return;
        }
        let tag = std::process::id() % 100_000;
        let bridge = format!("fyb{tag}");
        let names = vec![format!("fyt{tag}a"), format!("fyt{tag}b")];
        // Bridge last: taps go first.
        let _cleanup = Cleanup(names.iter().cloned().chain([bridge.clone()]).collect());
        ip(&["link", "add", "name", &bridge, "type", "bridge"]).unwrap();
        // Both VMs' first candidate is the same name (a hash collision).
        let first = create_tap_from(&names, &bridge).unwrap();
        let second = create_tap_from(&names, &bridge).unwrap();
        assert_eq!(first, names[0]);
        assert_eq!(second, names[1]);
        // No candidate left: a clear error, and the existing taps are untouched.
        let err = create_tap_from(&names, &bridge).unwrap_err().to_string();
        assert!(err.contains("are taken"), "{err}");
        assert!(interface_exists(&first) && interface_exists(&second));
        delete_tap(&first);
        assert!(!interface_exists(&first));
        assert!(interface_exists(&second), "the other VM's tap must survive");
        delete_tap(&second);
        assert!(!interface_exists(&second));
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(validate_ifname("br-vm").is_ok());
        for bad in ["", "a-very-long-bridge-name", "br vm", "br;x", "../x/"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }
}
