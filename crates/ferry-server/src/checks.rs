//! Pre-migration checks as a pure function of what the server gathered from both agents
//! ([`crate::core::Server::check_migration`] does the gathering). Each check has a stable
//! name, a verdict and one sentence with the numbers behind it.

use ferry_api::{CheckResult, Host, HostState, ProbeSendResponse, Verdict, Vm, VmState};
use serde_json::json;

use crate::storage_plan::PlannedCopy;

/// Below this the probe says the link is barely usable: warn. (A 400 ms probe under-reads
/// long-distance links, whose TCP window is still opening, so the bar is low.)
pub const SLOW_LINK_BYTES_PER_S: u64 = 1 << 20;

/// Everything the checks look at.
pub struct CheckInput<'a> {
    /// Live, quick or cold: what the move needs differs (see [`crate::checks_modes`]).
    pub mode: ferry_api::MigrationMode,
    pub vm: &'a Vm,
    /// The VM's state as the source agent reports it (None: the source did not answer).
    pub source_state: Option<VmState>,
    /// Another migration of this VM is in flight.
    pub migrating: bool,
    pub source: &'a Host,
    pub dest: &'a Host,
    /// Memory (MiB) and vCPUs of migrations already heading to the destination.
    pub incoming_memory_mib: u64,
    pub incoming_vcpus: u32,
    /// The storage plan, or why the storage cannot move.
    pub storage: Result<Vec<PlannedCopy>, String>,
    /// The probe from the source to the destination's migration address.
    pub probe: Result<ProbeSendResponse, String>,
    /// A probe of this pair from a recent check, reused: how old it is, s.
    pub probe_age_s: Option<u64>,
}

/// QEMU's own memory beside the guest's: page tables, device emulation, the TCG
/// translation cache / KVM structures. A conservative estimate in MiB.
pub fn qemu_overhead_mib(memory_mib: u64, vcpus: u32) -> u64 {
    96 + memory_mib / 64 + 16 * vcpus as u64
}

/// Compares dotted versions numerically ("10.0.2" > "9.2.0"); None if either is not one.
pub fn version_at_least(have: &str, need: &str) -> Option<bool> {
    let parse = |v: &str| -> Option<Vec<u64>> {
        v.split(['.', '-', ' '])
            .take_while(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<u64>>>()
            .filter(|parts| !parts.is_empty())
    };
    Some(parse(have)? >= parse(need)?)
}

pub(crate) fn pass(name: &str, msg: String) -> CheckResult {
    CheckResult::new(name, Verdict::Pass, msg)
}
pub(crate) fn warn(name: &str, msg: String) -> CheckResult {
    CheckResult::new(name, Verdict::Warn, msg)
}
pub(crate) fn fail(name: &str, msg: String) -> CheckResult {
    CheckResult::new(name, Verdict::Fail, msg)
}

/// Runs every check of the migration's mode. The order is stable (it is the report's
/// order).
pub fn run_checks(i: &CheckInput) -> Vec<CheckResult> {
    use crate::checks_modes as modes;
    match i.mode {
        ferry_api::MigrationMode::Live => {}
        ferry_api::MigrationMode::Quick => {
            return vec![
                destination(i),
                memory(i),
                vcpus(i),
                cpu_model(i),
                cpu_vendor(i),
                machine(i),
                qemu_version(i),
                modes::quick_storage(i),
                modes::quick_state_pool(i),
                networks(i),
                vm_state(i),
            ]
        }
        ferry_api::MigrationMode::Cold => {
            return vec![
                destination(i),
                cpu_model(i),
                machine(i),
                storage(i),
                networks(i),
                modes::cold_vm_state(i),
            ]
        }
    }
    let mut out = vec![
        destination(i),
        memory(i),
        vcpus(i),
        cpu_model(i),
        cpu_vendor(i),
        machine(i),
        qemu_version(i),
        storage(i),
        networks(i),
    ];
    out.extend(migration_network(i));
    out.push(vm_state(i));
    out
}

fn destination(i: &CheckInput) -> CheckResult {
    const N: &str = "destination";
    let d = i.dest;
    if d.name == i.source.name {
        return fail(N, format!("{} is the VM's own host", d.name));
    }
    if d.state != HostState::Connected {
        return fail(
            N,
            format!(
                "{} is disconnected (last heartbeat {})",
                d.name,
                d.last_seen
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        );
    }
    if d.maintenance {
        return fail(N, format!("{} is in maintenance and takes no VMs", d.name));
    }
    if d.inventory.qemu_version.is_empty() {
        return fail(N, format!("{} reports no usable QEMU", d.name));
    }
    pass(
        N,
        format!(
            "{} is connected, healthy and not in maintenance (QEMU {}, accel {})",
            d.name, d.inventory.qemu_version, d.inventory.accel
        ),
    )
}

fn memory(i: &CheckInput) -> CheckResult {
    const N: &str = "memory";
    let inv = &i.dest.inventory;
    let spec = &i.vm.spec;
    let overhead = qemu_overhead_mib(spec.memory_mib, spec.vcpus);
    let need = spec.memory_mib + overhead + inv.memory_reserve_mib;
    let available = inv
        .memory_available_mib
        .saturating_sub(i.incoming_memory_mib);
    let data = json!({
        "vm_mib": spec.memory_mib, "qemu_overhead_mib": overhead,
        "reserve_mib": inv.memory_reserve_mib, "available_mib": inv.memory_available_mib,
        "incoming_mib": i.incoming_memory_mib, "needed_mib": need,
    });
    let numbers = format!(
        "{} MiB VM + {} MiB QEMU overhead + {} MiB host reserve = {} MiB needed; {} has {} MiB available{}",
        spec.memory_mib,
        overhead,
        inv.memory_reserve_mib,
        need,
        i.dest.name,
        inv.memory_available_mib,
        if i.incoming_memory_mib > 0 {
            format!(
                ", {} MiB of it promised to migrations already heading there",
                i.incoming_memory_mib
            )
        } else {
            String::new()
        }
    );
    if need > available {
        fail(N, format!("does not fit: {numbers}")).with_data(data)
    } else {
        pass(N, format!("fits: {numbers}")).with_data(data)
    }
}

fn vcpus(i: &CheckInput) -> CheckResult {
    const N: &str = "vcpus";
    let inv = &i.dest.inventory;
    let ratio = if inv.vcpu_overcommit > 0.0 {
        inv.vcpu_overcommit
    } else {
        1.0
    };
    let limit = (inv.cpus as f64 * ratio).floor() as u64;
    let after = inv.vcpus_committed as u64 + i.incoming_vcpus as u64 + i.vm.spec.vcpus as u64;
    let msg = format!(
        "{} vCPUs committed + {} incoming + {} for this VM = {after}; {} allows {limit} ({} CPUs x {ratio} overcommit)",
        inv.vcpus_committed, i.incoming_vcpus, i.vm.spec.vcpus, i.dest.name, inv.cpus
    );
    if after > limit {
        fail(N, format!("over the overcommit limit: {msg}"))
    } else {
        pass(N, msg)
    }
}

fn cpu_model(i: &CheckInput) -> CheckResult {
    const N: &str = "cpu.model";
    let model = &i.vm.spec.cpu_model;
    let (src, dst) = (&i.source.inventory, &i.dest.inventory);
    if model == "host" || model == "max" {
        // Passthrough exposes whatever the host CPU has: only between identical CPUs.
        return if src.cpu_model_name == dst.cpu_model_name && !src.cpu_model_name.is_empty() {
            pass(
                N,
                format!(
                    "'{model}' passthrough between identical CPUs ({})",
                    dst.cpu_model_name
                ),
            )
        } else {
            fail(
                N,
                format!(
                    "'{model}' passes the host CPU through, and the CPUs differ ({} on {}, {} on {}); use a named model or the cluster baseline",
                    src.cpu_model_name, i.source.name, dst.cpu_model_name, i.dest.name
                ),
            )
        };
    }
    if dst.cpu_models.is_empty() {
        return warn(
            N,
            format!(
                "{} did not report its CPU models, so '{model}' could not be checked",
                i.dest.name
            ),
        );
    }
    match dst.cpu_model(model) {
        None => fail(
            N,
            format!("{}'s QEMU does not offer CPU model '{model}'", i.dest.name),
        ),
        Some(m) if !m.unavailable_features.is_empty() => fail(
            N,
            format!(
                "'{model}' cannot run on {}: missing {}",
                i.dest.name,
                m.unavailable_features.join(", ")
            ),
        )
        .with_data(json!({ "missing": m.unavailable_features })),
        Some(_) => pass(
            N,
            format!("'{model}' runs on {} with every feature", i.dest.name),
        ),
    }
}

fn cpu_vendor(i: &CheckInput) -> CheckResult {
    const N: &str = "cpu.vendor";
    let (s, d) = (&i.source.inventory.cpu_vendor, &i.dest.inventory.cpu_vendor);
    if s.is_empty() || d.is_empty() {
        return warn(
            N,
            format!(
                "CPU vendor unknown ({}: '{s}', {}: '{d}')",
                i.source.name, i.dest.name
            ),
        );
    }
    if s != d {
        return fail(
            N,
            format!(
                "CPU vendors differ ({s} on {}, {d} on {}); a running guest cannot move between them",
                i.source.name, i.dest.name
            ),
        );
    }
    pass(N, format!("both hosts are {s}"))
}

fn machine(i: &CheckInput) -> CheckResult {
    const N: &str = "qemu.machine";
    let m = &i.vm.spec.machine;
    let inv = &i.dest.inventory;
    let known = inv.machine_types.iter().any(|t| t == m)
        || inv.machine_aliases.iter().any(|(alias, _)| alias == m);
    if known {
        pass(N, format!("{}'s QEMU has machine type {m}", i.dest.name))
    } else {
        fail(
            N,
            format!(
                "{}'s QEMU {} has no machine type {m}",
                i.dest.name, inv.qemu_version
            ),
        )
    }
}

fn qemu_version(i: &CheckInput) -> CheckResult {
    const N: &str = "qemu.version";
    let (s, d) = (
        &i.source.inventory.qemu_version,
        &i.dest.inventory.qemu_version,
    );
    match version_at_least(d, s) {
        Some(true) => pass(
            N,
            format!("QEMU {d} on {} >= {s} on {}", i.dest.name, i.source.name),
        ),
        Some(false) => fail(
            N,
            format!(
                "QEMU {d} on {} is older than {s} on {}; a stream cannot go to an older QEMU",
                i.dest.name, i.source.name
            ),
        ),
        None => warn(N, format!("cannot compare QEMU versions '{s}' and '{d}'")),
    }
}

fn storage(i: &CheckInput) -> CheckResult {
    const N: &str = "storage";
    let disks = &i.vm.spec.disks;
    match &i.storage {
        Err(reason) => fail(N, reason.clone()),
        Ok(_) if disks.is_empty() => pass(N, "the VM has no data disks".into()),
        Ok(copies) => {
            let bytes: u64 = copies.iter().map(|c| c.actual_size).sum();
            let shared = disks.len() - copies.len();
            pass(
                N,
                format!(
                    "{} disk(s) in shared pools stay put; {} local disk(s) ({} MiB of data) will be copied and fit on {}",
                    shared,
                    copies.len(),
                    bytes >> 20,
                    i.dest.name
                ),
            )
            .with_data(json!({ "copy_bytes": bytes, "copies": copies.len(), "shared": shared }))
        }
    }
}

fn networks(i: &CheckInput) -> CheckResult {
    const N: &str = "networks";
    let have = &i.dest.inventory.networks;
    let missing: Vec<&str> =
        i.vm.spec
            .nics
            .iter()
            .map(|n| n.network.as_str())
            .filter(|n| !have.iter().any(|h| h == n))
            .collect();
    if i.vm.spec.nics.is_empty() {
        pass(N, "the VM has no network interfaces".into())
    } else if missing.is_empty() {
        pass(N, format!("{} has every network the VM uses", i.dest.name))
    } else {
        fail(
            N,
            format!(
                "{} lacks network(s) {} (it has: {})",
                i.dest.name,
                missing.join(", "),
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ),
        )
    }
}

fn migration_network(i: &CheckInput) -> Vec<CheckResult> {
    const R: &str = "migration_network.reachable";
    const B: &str = "migration_network.bandwidth";
    match &i.probe {
        Err(reason) => vec![
            fail(
                R,
                format!(
                    "{} cannot reach {}'s migration address {}: {reason}",
                    i.source.name, i.dest.name, i.dest.migration_address
                ),
            ),
            warn(B, "no estimate (the destination was not reached)".into()),
        ],
        Ok(p) => {
            let mib_s = p.bytes_per_s as f64 / (1 << 20) as f64;
            let total = i.vm.spec.memory_mib as f64
                + i.storage
                    .as_ref()
                    .map(|c| c.iter().map(|c| c.actual_size).sum::<u64>() >> 20)
                    .unwrap_or(0) as f64;
            let estimate_s = if mib_s > 0.0 {
                total / mib_s
            } else {
                f64::INFINITY
            };
            let ago = i
                .probe_age_s
                .map(|s| format!(" (the probe of {s} s ago, reused)"))
                .unwrap_or_default();
            let reach = pass(
                R,
                format!(
                    "{} connected to {}'s migration address {} in {:.1} ms{ago}",
                    i.source.name, i.dest.name, i.dest.migration_address, p.connect_ms
                ),
            );
            let msg = format!(
                "about {mib_s:.0} MiB/s in a {:.0} ms probe ({} KiB){ago}; moving {total:.0} MiB would take about {estimate_s:.0} s",
                p.elapsed_ms,
                p.bytes_sent >> 10
            );
            let data = json!({ "bytes_per_s": p.bytes_per_s, "estimate_s": estimate_s });
            let bw = if p.bytes_per_s < SLOW_LINK_BYTES_PER_S {
                warn(B, format!("slow link: {msg}")).with_data(data)
            } else {
                pass(B, msg).with_data(data)
            };
            vec![reach, bw]
        }
    }
}

fn vm_state(i: &CheckInput) -> CheckResult {
    const N: &str = "vm.state";
    if i.migrating {
        return fail(N, format!("VM {} is already migrating", i.vm.spec.name));
    }
    match i.source_state {
        Some(VmState::Running) => pass(
            N,
            format!("VM {} runs on {} with no migration in flight", i.vm.spec.name, i.source.name),
        ),
        Some(VmState::Stopped) => fail(
            N,
            format!(
                "VM {} is stopped: that is a cold move (`--mode cold` moves it stopped, with its local disks); start it first to move it {}",
                i.vm.spec.name,
                i.mode
            ),
        ),
        Some(s) => fail(
            N,
            format!("VM {} is {s} on {}; only a running VM can be moved {}", i.vm.spec.name, i.source.name, i.mode),
        ),
        None => fail(
            N,
            format!("{} did not say whether VM {} runs", i.source.name, i.vm.spec.name),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use ferry_api::*;

    fn host(name: &str) -> Host {
        Host {
            name: name.into(),
            url: format!("http://{name}"),
            migration_address: "10.0.0.1".into(),
            state: HostState::Connected,
            registered_at: Utc::now(),
            last_seen: Utc::now(),
            inventory: HostInventory {
                cpus: 8,
                cpu_model_name: "AMD EPYC 7B13".into(),
                cpu_vendor: "AuthenticAMD".into(),
                memory_total_mib: 32768,
                memory_available_mib: 16384,
                memory_reserve_mib: 1024,
                vcpu_overcommit: 4.0,
                vcpus_committed: 4,
                qemu_version: "10.0.2".into(),
                machine_types: vec!["pc-q35-10.0".into()],
                machine_aliases: vec![("q35".into(), "pc-q35-10.0".into())],
                networks: vec!["vmnet".into()],
                cpu_models: vec![
                    CpuModelAvailability {
                        name: "qemu64".into(),
                        unavailable_features: vec![],
                    },
                    CpuModelAvailability {
                        name: "Skylake-Server".into(),
                        unavailable_features: vec!["avx512f".into()],
                    },
                ],
                ..Default::default()
            },
            vms: 1,
            maintenance: false,
            health: Default::default(),
            lease: None,
        }
    }

    fn vm() -> Vm {
        Vm {
            spec: VmSpec {
                ha: None,
                name: "web1".into(),
                vcpus: 2,
                memory_mib: 4096,
                boot: Boot::Image {
                    image: "test-guest".into(),
                    cmdline: String::new(),
                },
                accel: Accel::Tcg,
                machine: "pc-q35-10.0".into(),
                cpu_model: "qemu64".into(),
                nics: vec![NicSpec {
                    network: "vmnet".into(),
                    mac: None,
                }],
                disks: vec![],
            },
            host: "a".into(),
            state: VmState::Running,
            migration: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            runtime: None,
        }
    }

    fn probe() -> Result<ProbeSendResponse, String> {
        Ok(ProbeSendResponse {
            connect_ms: 0.4,
            bytes_sent: 16 << 20,
            elapsed_ms: 140.0,
            bytes_per_s: 115 << 20,
        })
    }

    /// Runs the checks on a healthy pair changed by `change`, returns (name, verdict, msg).
    fn run(
        change: impl FnOnce(&mut Vm, &mut Host, &mut Host, &mut CheckInputExtras),
    ) -> Vec<CheckResult> {
        let (mut v, mut s, mut d) = (vm(), host("a"), host("b"));
        let mut x = CheckInputExtras {
            mode: MigrationMode::Live,
            source_state: Some(VmState::Running),
            migrating: false,
            incoming_memory_mib: 0,
            incoming_vcpus: 0,
            storage: Ok(vec![]),
            probe: probe(),
            probe_age_s: None,
        };
        change(&mut v, &mut s, &mut d, &mut x);
        run_checks(&CheckInput {
            mode: x.mode,
            vm: &v,
            source_state: x.source_state,
            migrating: x.migrating,
            source: &s,
            dest: &d,
            incoming_memory_mib: x.incoming_memory_mib,
            incoming_vcpus: x.incoming_vcpus,
            storage: x.storage,
            probe: x.probe,
            probe_age_s: x.probe_age_s,
        })
    }

    #[test]
    fn a_reused_probe_says_how_old_it_is() {
        let out = run(|_, _, _, x| x.probe_age_s = Some(12));
        let bw = out
            .iter()
            .find(|c| c.name == "migration_network.bandwidth")
            .expect("bandwidth check");
        assert!(
            bw.message.contains("probe of 12 s ago, reused"),
            "{}",
            bw.message
        );
    }

    struct CheckInputExtras {
        mode: MigrationMode,
        source_state: Option<VmState>,
        migrating: bool,
        incoming_memory_mib: u64,
        incoming_vcpus: u32,
        storage: Result<Vec<PlannedCopy>, String>,
        probe: Result<ProbeSendResponse, String>,
        probe_age_s: Option<u64>,
    }

    fn verdict_of(checks: &[CheckResult], name: &str) -> (Verdict, String) {
        let c = checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}"));
        (c.verdict, c.message.clone())
    }

    #[test]
    fn a_healthy_pair_passes_every_check() {
        let checks = run(|_, _, _, _| {});
        for c in &checks {
            assert_eq!(c.verdict, Verdict::Pass, "{}: {}", c.name, c.message);
        }
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "destination",
                "memory",
                "vcpus",
                "cpu.model",
                "cpu.vendor",
                "qemu.machine",
                "qemu.version",
                "storage",
                "networks",
                "migration_network.reachable",
                "migration_network.bandwidth",
                "vm.state"
            ]
        );
    }

    #[test]
    fn each_problem_fails_the_check_that_names_it() {
        type Change = Box<dyn FnOnce(&mut Vm, &mut Host, &mut Host, &mut CheckInputExtras)>;
        let cases: Vec<(&str, &str, Change)> = vec![
            (
                "destination",
                "maintenance",
                Box::new(|_, _, d, _| d.maintenance = true),
            ),
            (
                "destination",
                "disconnected",
                Box::new(|_, _, d, _| d.state = HostState::Disconnected),
            ),
            (
                "destination",
                "own host",
                Box::new(|_, _, d, _| d.name = "a".into()),
            ),
            // 4096 + 96+64+32 overhead + 1024 reserve = 5312 > 5000
            (
                "memory",
                "5312 MiB needed",
                Box::new(|_, _, d, _| d.inventory.memory_available_mib = 5000),
            ),
            (
                "memory",
                "promised",
                Box::new(|_, _, _, x| x.incoming_memory_mib = 12000),
            ),
            (
                "vcpus",
                "allows 32",
                Box::new(|_, _, d, _| d.inventory.vcpus_committed = 31),
            ),
            (
                "cpu.model",
                "missing avx512f",
                Box::new(|v, _, _, _| v.spec.cpu_model = "Skylake-Server".into()),
            ),
            (
                "cpu.model",
                "does not offer",
                Box::new(|v, _, _, _| v.spec.cpu_model = "Nehalem".into()),
            ),
            (
                "cpu.model",
                "passes the host CPU through",
                Box::new(|v, _, d, _| {
                    v.spec.cpu_model = "host".into();
                    d.inventory.cpu_model_name = "Intel Xeon".into();
                }),
            ),
            (
                "cpu.vendor",
                "vendors differ",
                Box::new(|_, _, d, _| d.inventory.cpu_vendor = "GenuineIntel".into()),
            ),
            (
                "qemu.machine",
                "no machine type pc-q35-11.0",
                Box::new(|v, _, _, _| v.spec.machine = "pc-q35-11.0".into()),
            ),
            (
                "qemu.version",
                "older",
                Box::new(|_, _, d, _| d.inventory.qemu_version = "9.2.0".into()),
            ),
            (
                "storage",
                "no room",
                Box::new(|_, _, _, x| x.storage = Err("no room".into())),
            ),
            (
                "networks",
                "lacks network(s) vmnet",
                Box::new(|_, _, d, _| d.inventory.networks.clear()),
            ),
            (
                "migration_network.reachable",
                "Connection refused",
                Box::new(|_, _, _, x| x.probe = Err("Connection refused".into())),
            ),
            (
                "vm.state",
                "cold move",
                Box::new(|_, _, _, x| x.source_state = Some(VmState::Stopped)),
            ),
            (
                "vm.state",
                "already migrating",
                Box::new(|_, _, _, x| x.migrating = true),
            ),
        ];
        for (name, words, change) in cases {
            let checks = run(change);
            let (v, msg) = verdict_of(&checks, name);
            assert_eq!(v, Verdict::Fail, "{name}: {msg}");
            assert!(msg.contains(words), "{name}: '{msg}' should say '{words}'");
        }
    }

    #[test]
    fn doubts_are_warnings() {
        let checks = run(|_, _, d, x| {
            d.inventory.cpu_models.clear();
            x.probe = Ok(ProbeSendResponse {
                bytes_per_s: 512 << 10,
                ..probe().unwrap()
            });
        });
        assert_eq!(verdict_of(&checks, "cpu.model").0, Verdict::Warn);
        let (v, msg) = verdict_of(&checks, "migration_network.bandwidth");
        assert_eq!(v, Verdict::Warn);
        assert!(msg.contains("slow link"), "{msg}");
    }

    #[test]
    fn quick_and_cold_check_what_they_need_and_refuse_with_the_reason() {
        let shared = |free_mib: u64| PoolInfo {
            name: "san".into(),
            path: "/mnt/san".into(),
            shared: true,
            total_bytes: 100 << 30,
            free_bytes: free_mib << 20,
        };
        // Quick: a shared pool in common, the guest runs; no probe of the network.
        let checks = run(|_, s, d, x| {
            x.mode = MigrationMode::Quick;
            x.probe = Err("not asked".into());
            s.inventory.pools = vec![shared(9000)];
            d.inventory.pools = vec![shared(9000)];
        });
        for c in &checks {
            assert_eq!(c.verdict, Verdict::Pass, "{}: {}", c.name, c.message);
        }
        assert!(checks.iter().any(|c| c.name == "quick.state_pool"));
        assert!(!checks
            .iter()
            .any(|c| c.name.starts_with("migration_network")));
        // No shared pool; a local disk; a stopped VM: each refused by name.
        let checks = run(|_, _, _, x| {
            x.mode = MigrationMode::Quick;
            x.source_state = Some(VmState::Stopped);
            x.storage = Ok(vec![PlannedCopy {
                index: 0,
                pool: "local".into(),
                image: "d1".into(),
                virtual_size: 1 << 30,
                actual_size: 1 << 20,
            }]);
        });
        let (v, msg) = verdict_of(&checks, "quick.state_pool");
        assert_eq!(v, Verdict::Fail);
        assert!(
            msg.contains("no storage pool is shared by a and b"),
            "{msg}"
        );
        let (v, msg) = verdict_of(&checks, "storage");
        assert_eq!(v, Verdict::Fail);
        assert!(
            msg.contains("local/d1") && msg.contains("does not copy disks"),
            "{msg}"
        );
        let (v, msg) = verdict_of(&checks, "vm.state");
        assert_eq!(v, Verdict::Fail);
        assert!(msg.contains("--mode cold"), "{msg}");
        // Cold: stopped passes, running is refused with what to do instead.
        let checks = run(|_, _, _, x| {
            x.mode = MigrationMode::Cold;
            x.source_state = Some(VmState::Stopped);
            x.probe = Err("not asked".into());
        });
        for c in &checks {
            assert_eq!(c.verdict, Verdict::Pass, "{}: {}", c.name, c.message);
        }
        let checks = run(|_, _, _, x| x.mode = MigrationMode::Cold);
        let (v, msg) = verdict_of(&checks, "vm.state");
        assert_eq!(v, Verdict::Fail);
        assert!(
            msg.contains("stop it first") && msg.contains("--mode live or --mode quick"),
            "{msg}"
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(version_at_least("10.0.2", "9.2.0"), Some(true));
        assert_eq!(version_at_least("9.2.0", "10.0.2"), Some(false));
        assert_eq!(version_at_least("10.0.2", "10.0.2"), Some(true));
        assert_eq!(version_at_least("10.1", "10.0.2"), Some(true));
        assert_eq!(version_at_least("", "10.0"), None);
    }
}
