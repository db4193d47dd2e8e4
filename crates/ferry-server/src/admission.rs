//! Admission: may one more VM run on a host (a create, a start, an incoming migration), and
//! may a disk image be attached or deleted? Pure functions of the cluster as one
//! transaction sees it ([`ClusterView`]); the store runs them inside the transaction that
//! records the claim, so twenty requests at once cannot overcommit a host that fits three.
//!
//! A host's capacity is static accounting, not the free memory of the moment (that is the
//! pre-migration check's business): its total memory less the operator's reserve, against
//! every VM placed on it that a QEMU runs or is about to run (each with QEMU's overhead),
//! plus every VM migrating to it (which holds memory on both hosts until the switch). vCPUs
//! likewise, against CPUs x the host's overcommit ratio.

use ferry_api::*;

use crate::checks::qemu_overhead_mib;
use crate::store::{ClusterView, StoredHost};

/// What one VM takes from a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    pub memory_mib: u64,
    pub vcpus: u64,
}

impl Demand {
    pub fn of(spec: &VmSpec) -> Demand {
        Demand {
            memory_mib: spec.memory_mib + qemu_overhead_mib(spec.memory_mib, spec.vcpus),
            vcpus: spec.vcpus as u64,
        }
    }
}

impl std::ops::Add for Demand {
    type Output = Demand;
    fn add(self, o: Demand) -> Demand {
        Demand {
            memory_mib: self.memory_mib + o.memory_mib,
            vcpus: self.vcpus + o.vcpus,
        }
    }
}

/// A VM state in which a QEMU holds (or is about to hold) the VM's memory.
fn holds_memory(state: VmState) -> bool {
    !matches!(state, VmState::Stopped | VmState::Crashed)
}

/// Everything committed on `host`, leaving out `except` (the VM being admitted), with the
/// names of the VMs counted.
pub fn committed(view: &ClusterView, host: &str, except: &str) -> (Demand, Vec<String>) {
    let mut total = Demand::default();
    let mut names = Vec::new();
    for vm in view.vms.iter().filter(|v| v.spec.name != except) {
        let placed_here = vm.host == host && holds_memory(vm.state);
        // A stopped VM moving (a cold migration) holds memory nowhere.
        let arriving = holds_memory(vm.state)
            && vm.migration.is_some_and(|id| {
                view.migrations
                    .iter()
                    .any(|m| m.id == id && m.destination == host)
            });
        if placed_here || arriving {
            total = total + Demand::of(&vm.spec);
            names.push(vm.spec.name.clone());
        }
    }
    (total, names)
}

/// The host's capacity: memory after the reserve, and the vCPU limit.
pub fn capacity(h: &StoredHost) -> Demand {
    let inv = &h.inventory;
    let ratio = if inv.vcpu_overcommit > 0.0 {
        inv.vcpu_overcommit
    } else {
        1.0
    };
    Demand {
        memory_mib: inv.memory_total_mib.saturating_sub(inv.memory_reserve_mib),
        vcpus: (inv.cpus as f64 * ratio).floor() as u64,
    }
}

/// Whether `spec` (a VM named `spec.name`) fits on host `host` next to what is committed
/// there. The refusal names the numbers.
pub fn admit(view: &ClusterView, host: &str, spec: &VmSpec) -> Result<(), ApiError> {
    let h = view
        .hosts
        .iter()
        .find(|h| h.name == host)
        .ok_or_else(|| ApiError::not_found(format!("no host named '{host}'")))?;
    let cap = capacity(h);
    let need = Demand::of(spec);
    let (used, names) = committed(view, host, &spec.name);
    let counted = if names.is_empty() {
        "nothing".to_string()
    } else {
        format!("{} VM(s): {}", names.len(), names.join(", "))
    };
    if used.memory_mib + need.memory_mib > cap.memory_mib {
        return Err(ApiError::conflict(format!(
            "host {host} has no room for VM {}: it needs {} MiB ({} MiB guest + QEMU overhead), \
             {} MiB are committed to {counted}, and the host offers {} MiB ({} MiB total less \
             a {} MiB reserve)",
            spec.name,
            need.memory_mib,
            spec.memory_mib,
            used.memory_mib,
            cap.memory_mib,
            h.inventory.memory_total_mib,
            h.inventory.memory_reserve_mib
        )));
    }
    if used.vcpus + need.vcpus > cap.vcpus {
        return Err(ApiError::conflict(format!(
            "host {host} has no vCPUs left for VM {}: it needs {}, {} are committed to \
             {counted}, and the host allows {} ({} CPUs x {} overcommit)",
            spec.name,
            need.vcpus,
            used.vcpus,
            cap.vcpus,
            h.inventory.cpus,
            h.inventory.vcpu_overcommit
        )));
    }
    Ok(())
}

/// Whether a pool is shared storage, as `host` reports it.
fn pool_shared(view: &ClusterView, host: &str, pool: &str) -> bool {
    view.hosts
        .iter()
        .find(|h| h.name == host)
        .and_then(|h| h.inventory.pools.iter().find(|p| p.name == pool))
        .is_some_and(|p| p.shared)
}

/// Whether `vm` uses image `pool/image` as seen on `host`: a shared pool's image is the
/// same file everywhere; a local pool's is the one on the VM's host (or on the destination
/// its migration is copying it to).
fn uses_image(view: &ClusterView, vm: &Vm, host: &str, pool: &str, image: &str) -> bool {
    if !vm
        .spec
        .disks
        .iter()
        .any(|d| d.pool == pool && d.image == image)
    {
        return false;
    }
    if pool_shared(view, host, pool) || vm.host == host {
        return true;
    }
    vm.migration.is_some_and(|id| {
        view.migrations
            .iter()
            .any(|m| m.id == id && m.destination == host)
    })
}

/// The VM (any state, stopped ones included) that owns image `pool/image` on `host`.
pub fn image_owner<'a>(
    view: &'a ClusterView,
    host: &str,
    pool: &str,
    image: &str,
) -> Option<&'a Vm> {
    view.vms
        .iter()
        .find(|vm| uses_image(view, vm, host, pool, image))
}

/// A new VM's disks on `host`: none listed twice, none owned by another VM.
pub fn disks_free(view: &ClusterView, host: &str, spec: &VmSpec) -> Result<(), ApiError> {
    for (i, d) in spec.disks.iter().enumerate() {
        if spec.disks[..i]
            .iter()
            .any(|e| e.pool == d.pool && e.image == d.image)
        {
            return Err(ApiError::bad_request(format!(
                "disk {}/{} is attached twice to VM {}",
                d.pool, d.image, spec.name
            )));
        }
        if let Some(owner) =
            image_owner(view, host, &d.pool, &d.image).filter(|owner| owner.spec.name != spec.name)
        {
            return Err(ApiError::conflict(format!(
                "disk {}/{} is attached to VM {} ({} on {}); an image belongs to one VM",
                d.pool, d.image, owner.spec.name, owner.state, owner.host
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use proptest::prelude::*;

    fn host(name: &str, total: u64, reserve: u64, cpus: u32) -> StoredHost {
        let inventory = HostInventory {
            memory_total_mib: total,
            memory_reserve_mib: reserve,
            cpus,
            vcpu_overcommit: 1.0,
            pools: vec![
                PoolInfo {
                    name: "san".into(),
                    path: "/san".into(),
                    shared: true,
                    total_bytes: 1 << 40,
                    free_bytes: 1 << 40,
                },
                PoolInfo {
                    name: "local".into(),
                    path: "/local".into(),
                    shared: false,
                    total_bytes: 1 << 40,
                    free_bytes: 1 << 40,
                },
            ],
            ..Default::default()
        };
        StoredHost {
            name: name.into(),
            url: "http://x".into(),
            migration_address: "127.0.0.1".into(),
            registered_at: Utc::now(),
            last_seen: Utc::now(),
            inventory,
            vms: 0,
            maintenance: false,
        }
    }

    fn spec(name: &str, memory: u64, disks: &[(&str, &str)]) -> VmSpec {
        let mut s = ferry_api::VmSpec {
            ha: None,
            name: name.into(),
            vcpus: 1,
            memory_mib: memory,
            boot: Boot::Image {
                image: "test-guest".into(),
                cmdline: String::new(),
            },
            accel: Accel::Tcg,
            machine: "q35".into(),
            cpu_model: "qemu64".into(),
            nics: vec![],
            disks: vec![],
        };
        s.disks = disks
            .iter()
            .map(|(p, i)| DiskRef {
                pool: p.to_string(),
                image: i.to_string(),
            })
            .collect();
        s
    }

    fn vm(name: &str, host: &str, memory: u64, state: VmState) -> Vm {
        Vm {
            spec: spec(name, memory, &[]),
            host: host.into(),
            state,
            migration: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            runtime: None,
        }
    }

    #[test]
    fn a_host_takes_vms_until_its_memory_is_committed() {
        // 1024 MiB guests take 1024 + 96 + 16 + 16 = 1152 MiB; 4000 MiB fit three.
        let mut view = ClusterView {
            hosts: vec![host("a", 5000, 1000, 64)],
            ..Default::default()
        };
        for i in 0..3 {
            let s = spec(&format!("v{i}"), 1024, &[]);
            admit(&view, "a", &s).unwrap();
            view.vms.push(vm(&s.name, "a", 1024, VmState::Starting));
        }
        let err = admit(&view, "a", &spec("v3", 1024, &[])).unwrap_err();
        assert_eq!(err.code, ErrorCode::Conflict);
        assert!(err.message.contains("3 VM(s)"), "{}", err.message);
        // A stopped VM holds nothing.
        view.vms[0].state = VmState::Stopped;
        admit(&view, "a", &spec("v3", 1024, &[])).unwrap();
    }

    #[test]
    fn a_migration_counts_on_its_destination_before_it_arrives() {
        let mut view = ClusterView {
            hosts: vec![host("a", 5000, 1000, 64), host("b", 2500, 1000, 64)],
            ..Default::default()
        };
        let mut moving = vm("m", "a", 1024, VmState::Running);
        let m = Migration {
            id: uuid::Uuid::new_v4(),
            vm: "m".into(),
            source: "a".into(),
            destination: "b".into(),
            phase: Phase::Transferring,
            options: Default::default(),
            stream_uri: None,
            addresses: None,
            progress: None,
            report: None,
            error: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            finished_at: None,
            run: Default::default(),
            attention: None,
            priority: 0,
            operation: None,
            queue: None,
        };
        moving.migration = Some(m.id);
        view.vms.push(moving);
        view.migrations.push(m);
        assert!(admit(&view, "b", &spec("other", 512, &[])).is_err());
        assert_eq!(committed(&view, "a", "").1, vec!["m".to_string()]);
    }

    #[test]
    fn an_image_belongs_to_one_vm_whatever_its_state() {
        let mut owner = vm("db", "a", 512, VmState::Stopped);
        owner.spec.disks = spec("db", 512, &[("san", "data"), ("local", "scratch")]).disks;
        let view = ClusterView {
            hosts: vec![host("a", 5000, 0, 8), host("b", 5000, 0, 8)],
            vms: vec![owner],
            migrations: vec![],
        };
        // Shared: the same file from any host.
        assert!(disks_free(&view, "b", &spec("x", 512, &[("san", "data")])).is_err());
        assert_eq!(
            image_owner(&view, "b", "san", "data").unwrap().spec.name,
            "db"
        );
        // Local: only on the owner's host.
        assert!(disks_free(&view, "a", &spec("x", 512, &[("local", "scratch")])).is_err());
        assert!(disks_free(&view, "b", &spec("x", 512, &[("local", "scratch")])).is_ok());
        // Twice in one spec.
        assert!(disks_free(&view, "b", &spec("x", 512, &[("san", "n"), ("san", "n")])).is_err());
    }

    proptest! {
        /// Admitting VMs one by one (as the transactions do) never commits more memory or
        /// vCPUs than the host offers.
        #[test]
        fn admission_never_overcommits(total in 1000u64..64_000, reserve in 0u64..4_000, cpus in 1u32..64,
                                        sizes in proptest::collection::vec((128u64..8_192, 1u32..8), 1..40)) {
            let mut view = ClusterView { hosts: vec![host("a", total, reserve, cpus)], ..Default::default() };
            for (i, (mem, vcpus)) in sizes.into_iter().enumerate() {
                let mut s = spec(&format!("v{i}"), mem, &[]);
                s.vcpus = vcpus;
                if admit(&view, "a", &s).is_ok() {
                    let mut v = vm(&s.name, "a", mem, VmState::Starting);
                    v.spec = s;
                    view.vms.push(v);
                }
                let (used, _) = committed(&view, "a", "");
                let cap = capacity(&view.hosts[0]);
                prop_assert!(used.memory_mib <= cap.memory_mib);
                prop_assert!(used.vcpus <= cap.vcpus);
            }
        }
    }
}
