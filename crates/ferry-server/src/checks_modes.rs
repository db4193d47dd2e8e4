//! The pre-migration checks of quick and cold migrations (pure, like [`crate::checks`]):
//!
//! - quick: the guest runs; every disk is on a pool both hosts share (nothing is copied);
//!   a shared pool both hosts have at the same path has room for the guest's state
//!   (`quick.state_pool`); the destination can run it (memory, CPU, machine, QEMU). The
//!   migration network is not used, so it is not probed.
//! - cold: the VM is stopped; its local disks fit the destination's pools of the same name
//!   (the storage plan) and it can boot there (CPU model, machine type, networks). Memory
//!   is admitted when it starts.

use ferry_api::{CheckResult, Host, VmSpec, VmState};
use serde_json::json;

use crate::checks::{fail, pass, CheckInput};

/// Room kept beside the guest's RAM for its device state and the file's headers.
pub const STATE_MARGIN_BYTES: u64 = 64 << 20;

/// The shared pool a quick migration's state file goes to: one both hosts report as shared
/// under the same name at the same path, with room for the guest's RAM; the pool of the
/// VM's disks first, else the one with the most room. The error says why none fits.
pub fn state_pool(spec: &VmSpec, source: &Host, dest: &Host) -> Result<String, String> {
    let need = (spec.memory_mib << 20) + STATE_MARGIN_BYTES;
    let mut common: Vec<&ferry_api::PoolInfo> = source
        .inventory
        .pools
        .iter()
        .filter(|p| p.shared)
        .filter(|p| {
            dest.inventory
                .pools
                .iter()
                .any(|q| q.shared && q.name == p.name && q.path == p.path)
        })
        .collect();
    if common.is_empty() {
        let shared = |h: &Host| {
            let names: Vec<String> = h
                .inventory
                .pools
                .iter()
                .filter(|p| p.shared)
                .map(|p| format!("{} ({})", p.name, p.path))
                .collect();
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        return Err(format!(
            "no storage pool is shared by {} and {} (the same name, shared, at the same path); \
             quick migration saves the VM's state to one. Shared pools on {}: {}; on {}: {}",
            source.name,
            dest.name,
            source.name,
            shared(source),
            dest.name,
            shared(dest)
        ));
    }
    // The disks' own pool first, then the roomiest; names break ties.
    common.sort_by(|a, b| {
        let own = |p: &ferry_api::PoolInfo| spec.disks.iter().any(|d| d.pool == p.name);
        own(b)
            .cmp(&own(a))
            .then(b.free_bytes.cmp(&a.free_bytes))
            .then(a.name.cmp(&b.name))
    });
    match common.iter().find(|p| p.free_bytes >= need) {
        Some(p) => Ok(p.name.clone()),
        None => Err(format!(
            "no pool shared by {} and {} has room for the state of a {} MiB guest (up to {} \
             MiB): {}",
            source.name,
            dest.name,
            spec.memory_mib,
            need >> 20,
            common
                .iter()
                .map(|p| format!("{} has {} MiB free", p.name, p.free_bytes >> 20))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `storage` for a quick migration: nothing is copied, so every disk must be on a pool
/// both hosts share.
pub fn quick_storage(i: &CheckInput) -> CheckResult {
    const N: &str = "storage";
    let disks = &i.vm.spec.disks;
    match &i.storage {
        Err(reason) => fail(N, reason.clone()),
        Ok(copies) if !copies.is_empty() => {
            let local: Vec<String> = copies.iter().map(|c| c.label()).collect();
            fail(
                N,
                format!(
                    "disk(s) {} are on local pools, which are not shared: quick migration does \
                     not copy disks; use --mode live (it copies them), or move them to a shared \
                     pool",
                    local.join(", ")
                ),
            )
            .with_data(json!({ "local": local }))
        }
        Ok(_) if disks.is_empty() => pass(N, "the VM has no data disks".into()),
        Ok(_) => pass(
            N,
            format!(
                "{} disk(s) on shared pools stay where they are",
                disks.len()
            ),
        ),
    }
}

/// `quick.state_pool`: where the state file goes.
pub fn quick_state_pool(i: &CheckInput) -> CheckResult {
    const N: &str = "quick.state_pool";
    match state_pool(&i.vm.spec, i.source, i.dest) {
        Ok(pool) => pass(
            N,
            format!(
                "the VM's state (up to {} MiB) goes to pool {pool}, shared by {} and {}",
                ((i.vm.spec.memory_mib << 20) + STATE_MARGIN_BYTES) >> 20,
                i.source.name,
                i.dest.name
            ),
        )
        .with_data(json!({ "pool": pool })),
        Err(reason) => fail(N, reason),
    }
}

/// `vm.state` for a cold migration: the VM must be stopped.
pub fn cold_vm_state(i: &CheckInput) -> CheckResult {
    const N: &str = "vm.state";
    let name = &i.vm.spec.name;
    if i.migrating {
        return fail(N, format!("VM {name} is already migrating"));
    }
    match i.source_state {
        Some(VmState::Stopped) => pass(
            N,
            format!(
                "VM {name} is stopped on {}: its record and local disks move",
                i.source.name
            ),
        ),
        Some(s) => fail(
            N,
            format!(
                "VM {name} is {s} on {}: stop it first (`ferry vm stop {name}`), or move it \
                 while it runs with --mode live or --mode quick",
                i.source.name
            ),
        ),
        None => fail(
            N,
            format!("{} did not say whether VM {name} runs there", i.source.name),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use ferry_api::*;

    fn pool(name: &str, path: &str, shared: bool, free_mib: u64) -> PoolInfo {
        PoolInfo {
            name: name.into(),
            path: path.into(),
            shared,
            total_bytes: 100 << 30,
            free_bytes: free_mib << 20,
        }
    }

    fn host(name: &str, pools: Vec<PoolInfo>) -> Host {
        Host {
            name: name.into(),
            url: String::new(),
            migration_address: String::new(),
            state: HostState::Connected,
            registered_at: Utc::now(),
            last_seen: Utc::now(),
            inventory: HostInventory {
                pools,
                ..Default::default()
            },
            vms: 0,
            maintenance: false,
            health: Default::default(),
            lease: None,
        }
    }

    fn spec(memory_mib: u64, disk_pool: Option<&str>) -> VmSpec {
        VmSpec {
            ha: None,
            name: "web1".into(),
            vcpus: 1,
            memory_mib,
            boot: Boot::Image {
                image: "test-guest".into(),
                cmdline: String::new(),
            },
            accel: Accel::Tcg,
            machine: "q35".into(),
            cpu_model: "qemu64".into(),
            nics: vec![],
            disks: disk_pool
                .map(|p| {
                    vec![DiskRef {
                        pool: p.into(),
                        image: "d1".into(),
                    }]
                })
                .unwrap_or_default(),
        }
    }

    #[test]
    fn the_state_goes_to_a_pool_both_hosts_share_at_the_same_path() {
        let a = host(
            "a",
            vec![
                pool("local", "/l", false, 9000),
                pool("san", "/mnt/san", true, 2000),
                pool("nfs", "/mnt/nfs", true, 8000),
            ],
        );
        let b = host(
            "b",
            vec![
                pool("local", "/l", false, 9000),
                pool("san", "/mnt/san", true, 2000),
                pool("nfs", "/mnt/nfs", true, 8000),
            ],
        );
        // The roomiest, or the disks' own pool when it has room.
        assert_eq!(state_pool(&spec(1024, None), &a, &b).unwrap(), "nfs");
        assert_eq!(state_pool(&spec(1024, Some("san")), &a, &b).unwrap(), "san");
        // The disks' pool lacks room: another shared pool takes the state.
        assert_eq!(state_pool(&spec(4096, Some("san")), &a, &b).unwrap(), "nfs");
        let e = state_pool(&spec(16384, None), &a, &b).unwrap_err();
        assert!(
            e.contains("has room for the state of a 16384 MiB guest"),
            "{e}"
        );
    }

    #[test]
    fn without_a_common_shared_pool_the_reason_names_what_each_host_has() {
        let a = host("a", vec![pool("san", "/mnt/san", true, 9000)]);
        for b in [
            host("b", vec![]),
            host("b", vec![pool("san", "/mnt/other", true, 9000)]),
            host("b", vec![pool("san", "/mnt/san", false, 9000)]),
        ] {
            let e = state_pool(&spec(512, None), &a, &b).unwrap_err();
            assert!(e.starts_with("no storage pool is shared by a and b"), "{e}");
            assert!(e.contains("san (/mnt/san)"), "{e}");
        }
    }
}
