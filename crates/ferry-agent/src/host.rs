//! The agent's core: the VMs on this host and what can be done to them. HTTP-free, so the
//! routes in [`crate::api`] stay thin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_api::{
    validate_name, AgentMigrationStatus, Boot, ConsoleTail, CpuModelAvailability, DiskCopyRequest,
    HostInventory, IncomingRequest, IncomingResponse, OutgoingRequest, ProbeListenResponse,
    ProbeSendRequest, ProbeSendResponse, VmRuntime, VmSpec,
};
use ferry_qemu::accel::{boot_probe, host_facts, resolve_requested, BootProbe};
use ferry_qemu::{decide_accel, AccelDecision, QemuBinary, ResolvedBoot, StartMode};
use tokio::sync::Mutex;

use crate::boot_paths::confine;
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::persist::{PersistedVm, Role};
use crate::postcopy::PostcopyRecoverable;
use crate::qemu_tls::{check_same_peer, peer_tls, PeerTls};
use crate::runtime::{Migratable, QemuVm};
use crate::tls_material::HostTls;

mod adopt;

/// The line the test guest's init prints once it reaches user space (the accel probe waits
/// for it).
pub const GUEST_BOOT_MARKER: &str = "FERRY-GUEST boot";
pub const PROBE_IMAGE: &str = "test-guest";

pub struct Agent {
    pub config: AgentConfig,
    /// The URL the server reaches this agent at.
    pub url: String,
    qemu: QemuBinary,
    accel: RwLock<AccelDecision>,
    vms: adopt::Vms,
    /// VMs whose QEMU runs but whose monitor has not answered since the agent started
    /// (see [`adopt`]): listed as unresponsive, refused for operations, killed on remove.
    unadopted: adopt::Unadopteds,
    /// The CPU models this host offers (asked of QEMU once at start, under the decided
    /// accelerator, restricted by `--cpu-models`). Empty if QEMU could not be asked.
    cpu_models: Vec<CpuModelAvailability>,
    probes: crate::probe::ProbeListeners,
    /// The host's certificate; None with `--insecure`.
    pub identity: Option<Arc<crate::identity::HostIdentity>>,
    /// Whether this host's migrations use QEMU's TLS (material in `config.tls_dir`, checked
    /// at start); None: plain TCP. Each migration reads the files again
    /// ([`Agent::host_tls`]), so a renewed certificate is used from the next one on.
    tls: Option<HostTls>,
    /// The previous load reading and the dirty rates measured (see [`crate::load`]).
    pub(crate) load: crate::load::LoadState,
    /// The HA lease and the peers' answers (see [`crate::ha`]).
    pub(crate) ha: crate::ha::HaState,
    /// Cold migrations' copies and checksums (see [`crate::cold`]).
    pub(crate) cold: crate::cold::ColdJobs,
    /// Migrating VMs' frames and tap timings (see [`crate::frames`]).
    pub(crate) frames: crate::frames::FrameBook,
}

impl Agent {
    /// Checks QEMU, adopts VMs left running by an earlier agent, decides the accelerator.
    pub async fn start(
        config: AgentConfig,
        bound: SocketAddr,
        identity: Option<Arc<crate::identity::HostIdentity>>,
    ) -> Result<Agent, String> {
        config.validate()?;
        let qemu = QemuBinary::detect(&config.qemu).map_err(|e| e.to_string())?;
        tracing::info!(qemu = %qemu.version, "QEMU checked");
        std::fs::create_dir_all(config.vms_dir())
            .map_err(|e| format!("cannot create {}: {e}", config.vms_dir().display()))?;
        let url = config
            .advertise_url
            .clone()
            .unwrap_or_else(|| match identity {
                Some(_) => format!("https://{bound}"),
                None => format!("http://{bound}"),
            });
        for pool in &config.pools {
            pool.prepare()?;
        }
        let tls = match &config.tls_dir {
            Some(dir) => {
                let tls = HostTls::load(dir, &config.name).map_err(|e| e.to_string())?;
                tracing::info!(dir = %dir.display(), "migration streams and disk exports use QEMU's TLS");
                Some(tls)
            }
            None => {
                tracing::warn!("no TLS material: migration streams and disk exports are plain TCP");
                None
            }
        };
        let facts = host_facts();
        let accel = decide_accel(&facts);
        let mut agent = Agent {
            url,
            qemu,
            accel: RwLock::new(accel),
            vms: Arc::new(Mutex::new(HashMap::new())),
            unadopted: Arc::new(Mutex::new(HashMap::new())),
            cpu_models: Vec::new(),
            probes: crate::probe::ProbeListeners::default(),
            identity,
            tls,
            load: Default::default(),
            ha: crate::ha::HaState::load(&config.state_dir),
            cold: Default::default(),
            frames: Default::default(),
            config,
        };
        agent.clean_cold_scratch();
        agent.adopt_running().await;
        if facts.dev_kvm_present && facts.cpu_virt_flag {
            agent.probe_kvm(facts).await;
        }
        let decision = agent.accel_decision();
        tracing::info!(accel = %decision.accel, reason = %decision.reason, "accelerator decided");
        agent.cpu_models = agent.query_cpu_models(decision.accel).await;
        Ok(agent)
    }

    /// The CPU models QEMU offers under `accel`, restricted by the allow-list. A failure
    /// only costs the CPU model check its facts (the server then cannot prove a model runs
    /// here), so it is logged and the agent runs on.
    async fn query_cpu_models(&self, accel: ferry_api::Accel) -> Vec<CpuModelAvailability> {
        let offered = match ferry_qemu::cpu_models(&self.qemu.path, accel).await {
            Ok(models) => models,
            Err(e) => {
                tracing::warn!(%accel, "cannot list QEMU's CPU models; offering none: {e}");
                return Vec::new();
            }
        };
        let (models, unknown) =
            crate::inventory::allowed_cpu_models(offered, self.config.cpu_models.as_deref());
        if !unknown.is_empty() {
            tracing::warn!(
                ?unknown,
                "--cpu-models names models this QEMU does not have"
            );
        }
        let usable = models
            .iter()
            .filter(|m| m.unavailable_features.is_empty())
            .count();
        tracing::info!(%accel, models = models.len(), usable, "CPU models listed");
        models
    }

    /// Boots the test guest under KVM; KVM is used for `auto` only if it reaches user space.
    async fn probe_kvm(&self, mut facts: ferry_qemu::AccelFacts) {
        let dir = self.config.image_dir.join(PROBE_IMAGE);
        let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.img"));
        facts.boot_probe = Some(if kernel.exists() && initrd.exists() {
            boot_probe(
                &self.qemu.path,
                &kernel,
                &initrd,
                GUEST_BOOT_MARKER,
                Duration::from_secs(60),
            )
            .await
        } else {
            BootProbe::NoImage
        });
        if let Ok(mut a) = self.accel.write() {
            *a = decide_accel(&facts);
        }
    }

    pub fn accel_decision(&self) -> AccelDecision {
        self.accel
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub async fn inventory(&self) -> HostInventory {
        let mut inv = crate::inventory::base_inventory();
        let accel = self.accel_decision();
        inv.qemu_version = self.qemu.version.to_string();
        inv.accel = accel.accel;
        inv.accel_reason = accel.reason;
        inv.machine_aliases = self.qemu.machines.aliases.clone();
        inv.machine_types = self.qemu.machines.types.clone();
        inv.networks = self.config.networks.keys().cloned().collect();
        inv.pools = self.config.pools.iter().map(|p| p.info()).collect();
        inv.cpu_models = self.cpu_models.clone();
        inv.memory_reserve_mib = self.config.memory_reserve_mib;
        inv.vcpu_overcommit = self.config.vcpu_overcommit;
        inv.migration_link_mib_s = self.config.migration_link_mib_s;
        let mut specs: Vec<VmSpec> = {
            let vms = self.vms.lock().await;
            vms.values()
                .filter(|v| v.is_running_process())
                .map(|v| v.record().spec)
                .collect()
        };
        // An unadopted QEMU runs and holds its memory all the same.
        specs.extend(
            self.unadopted
                .lock()
                .await
                .values()
                .map(|u| u.record.spec.clone()),
        );
        for spec in specs {
            inv.vms_running += 1;
            inv.vm_memory_mib += spec.memory_mib;
            inv.vcpus_committed += spec.vcpus;
        }
        inv
    }

    /// Destination: a one-shot probe listener on the migration address (see
    /// [`crate::probe`]).
    pub async fn probe_listen(
        &self,
        req: &ferry_api::ProbeListenRequest,
    ) -> Result<ProbeListenResponse, AgentError> {
        let tls =
            match (&self.identity, &req.peer_host) {
                (None, _) => None,
                (Some(_), None) => return Err(AgentError::bad_request(
                    "probe: this host probes over TLS and must be told the source host (peer_host)",
                )),
                (Some(id), Some(peer)) => {
                    validate_name("peer host", peer)?;
                    let m = id.material();
                    let config = ferry_pki::server_config(
                        &m.ca_pem,
                        id.server_cert.clone(),
                        ferry_pki::ClientCerts::Required,
                    )
                    .map_err(|e| AgentError::internal(e.to_string()))?;
                    let peer = ferry_pki::Identity::host(peer)
                        .map_err(|e| AgentError::bad_request(e.to_string()))?;
                    Some(crate::probe::ListenTls { config, peer })
                }
            };
        self.probes
            .listen_with(
                self.config.migration_address,
                self.config.migration_port,
                self.config.advertised_migration_address(),
                tls,
            )
            .await
    }

    /// Source: send a probe to a destination's listener.
    pub async fn probe_send(
        &self,
        req: &ProbeSendRequest,
    ) -> Result<ProbeSendResponse, AgentError> {
        let tls = match (&self.identity, &req.peer_host) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(AgentError::bad_request(
                    "probe: this host probes over TLS and must be told the destination host \
                     (peer_host)",
                ))
            }
            (Some(id), Some(peer)) => {
                validate_name("peer host", peer)?;
                let peer = ferry_pki::Identity::host(peer)
                    .map_err(|e| AgentError::bad_request(e.to_string()))?;
                let m = id.material();
                Some(std::sync::Arc::new(
                    ferry_pki::client_config(&m.ca_pem, Some(&m), &peer)
                        .map_err(|e| AgentError::internal(e.to_string()))?,
                ))
            }
        };
        crate::probe::send_with(req, tls).await
    }

    pub(crate) async fn find(&self, name: &str) -> Result<Arc<QemuVm>, AgentError> {
        validate_name("VM name", name)?;
        if let Some(vm) = self.vms.lock().await.get(name).cloned() {
            return Ok(vm);
        }
        if let Some(u) = self.unadopted.lock().await.get(name) {
            return Err(AgentError::refused(format!(
                "VM '{name}' runs on host {} (QEMU pid {}) but its monitor has not answered                  since the agent started ({}); adoption is being retried",
                self.config.name, u.pid, u.reason
            )));
        }
        Err(AgentError::not_found(format!(
            "no VM named '{name}' on host {}",
            self.config.name
        )))
    }

    /// The VM if its QEMU runs but has not been adopted yet (its monitor does not answer).
    pub(crate) async fn unadopted(&self, name: &str) -> Option<crate::runtime::Unadopted> {
        self.unadopted.lock().await.get(name).cloned()
    }

    /// The VMs whose QEMU this agent drives (adopted ones included).
    pub(crate) async fn running_vms(&self) -> Vec<Arc<QemuVm>> {
        self.vms.lock().await.values().cloned().collect()
    }

    pub async fn list(&self) -> Vec<VmRuntime> {
        let vms: Vec<Arc<QemuVm>> = self.vms.lock().await.values().cloned().collect();
        let mut out = Vec::with_capacity(vms.len());
        for vm in vms {
            out.push(vm.runtime().await);
        }
        out.extend(self.unadopted.lock().await.values().map(|u| u.runtime()));
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        out
    }

    pub async fn get(&self, name: &str) -> Result<VmRuntime, AgentError> {
        validate_name("VM name", name)?;
        if let Some(u) = self.unadopted(name).await {
            return Ok(u.runtime());
        }
        Ok(self.find(name).await?.runtime().await)
    }

    /// Resolves what the spec leaves to the host: the machine alias (fixed from now on)
    /// and the boot files.
    /// Where boot files may come from: the image cache, the pools, the allowed dirs.
    fn boot_roots(&self) -> Vec<PathBuf> {
        std::iter::once(self.config.image_dir.clone())
            .chain(self.config.pools.iter().map(|p| p.dir.clone()))
            .chain(self.config.boot_path_allow.iter().cloned())
            .collect()
    }

    fn resolve(&self, spec: &VmSpec) -> Result<(VmSpec, ResolvedBoot), AgentError> {
        spec.validate()?;
        let mut spec = spec.clone();
        spec.machine = self
            .qemu
            .machines
            .resolve(&spec.machine, &self.qemu.version.to_string())
            .map_err(|e| AgentError::bad_request(e.to_string()))?;
        let boot = match &spec.boot {
            Boot::Image { image, cmdline } => {
                let dir = self.config.image_dir.join(image);
                let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.img"));
                if !kernel.is_file() || !initrd.is_file() {
                    return Err(AgentError::bad_request(format!(
                        "image '{image}' is not built on host {} (looked in {}); run `ferry image build` there",
                        self.config.name,
                        dir.display()
                    )));
                }
                ResolvedBoot::Kernel {
                    kernel,
                    initrd: Some(initrd),
                    cmdline: cmdline.clone(),
                }
            }
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                for f in std::iter::once(kernel).chain(initrd.iter()) {
                    if !f.is_file() {
                        return Err(AgentError::bad_request(format!(
                            "boot file {} does not exist on host {}",
                            f.display(),
                            self.config.name
                        )));
                    }
                }
                let roots = self.boot_roots();
                ResolvedBoot::Kernel {
                    kernel: confine(kernel, &roots, "kernel")?,
                    initrd: initrd
                        .as_ref()
                        .map(|i| confine(i, &roots, "initrd"))
                        .transpose()?,
                    cmdline: cmdline.clone(),
                }
            }
            Boot::Disk { path, format } => {
                if !path.is_file() {
                    return Err(AgentError::bad_request(format!(
                        "boot disk {} does not exist on host {}",
                        path.display(),
                        self.config.name
                    )));
                }
                ResolvedBoot::Disk {
                    path: confine(path, &self.boot_roots(), "boot disk")?,
                    format: *format,
                }
            }
        };
        Ok((spec, boot))
    }

    fn vm_dir(&self, name: &str) -> PathBuf {
        self.config.vms_dir().join(name)
    }

    /// Takes the name for a new QEMU. A record of a QEMU that already exited is replaced.
    async fn reserve(
        &self,
        name: &str,
    ) -> Result<tokio::sync::MutexGuard<'_, HashMap<String, Arc<QemuVm>>>, AgentError> {
        let mut vms = self.vms.lock().await;
        if let Some(u) = self.unadopted.lock().await.get(name) {
            return Err(AgentError::refused(format!(
                "a VM named '{name}' already runs on host {} (QEMU pid {}, its monitor not \
                 answering yet)",
                self.config.name, u.pid
            )));
        }
        if let Some(existing) = vms.get(name) {
            if existing.is_running_process() {
                return Err(AgentError::refused(format!(
                    "a VM named '{name}' already runs on host {}",
                    self.config.name
                )));
            }
            // Its QEMU is gone, so its taps are unused; the new QEMU gets its own.
            self.delete_taps_of(&existing.record());
            vms.remove(name);
        }
        Ok(vms)
    }

    /// `created_disks`: an incoming VM's disks that were created empty for a storage copy
    /// (exported, and the vCPUs held until the exports are closed).
    /// `held`: the vCPUs stay stopped after the stream until the agent starts them.
    pub(crate) async fn launch_inner(
        &self,
        spec: &VmSpec,
        role: Role,
        created_disks: Vec<usize>,
        held: bool,
    ) -> Result<Arc<QemuVm>, AgentError> {
        let (spec, boot) = self.resolve(spec)?;
        let accel = resolve_requested(spec.accel, &self.accel_decision())
            .map_err(AgentError::bad_request)?;
        let bridges = self.bridges_for(&spec)?;
        let disks = self.disk_paths(&spec)?;
        let mut vms = self.reserve(&spec.name).await?;
        let dir = self.vm_dir(&spec.name);
        let taps = self.create_taps(&spec.name, &bridges)?;
        let start = match role {
            Role::Incoming if held || !created_disks.is_empty() => StartMode::IncomingHeld,
            Role::Incoming => StartMode::Incoming,
            _ => StartMode::Boot,
        };
        let mut record = PersistedVm::new(spec.clone(), accel, role);
        record.exports_disks = !created_disks.is_empty();
        record.created_disks = created_disks;
        record.aux_qmp = self.config.aux_qmp;
        record.taps = taps.clone();
        let launched = QemuVm::launch(
            &self.qemu.path,
            record,
            &boot,
            &taps,
            &disks,
            dir.clone(),
            ferry_qemu::cmdline::Launch {
                start,
                run_as: self.config.qemu_user.as_deref(),
            },
        )
        .await;
        match launched {
            Ok(vm) => {
                vms.insert(spec.name.clone(), vm.clone());
                Ok(vm)
            }
            Err(e) => {
                taps.iter().for_each(|t| crate::net::delete_tap(t.as_str()));
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The host bridge of each of the spec's NICs, or a refusal naming the missing network.
    fn bridges_for(&self, spec: &VmSpec) -> Result<Vec<String>, AgentError> {
        spec.nics
            .iter()
            .map(|nic| {
                self.config
                    .networks
                    .get(&nic.network)
                    .cloned()
                    .ok_or_else(|| {
                        let known: Vec<&str> =
                            self.config.networks.keys().map(|k| k.as_str()).collect();
                        AgentError::bad_request(format!(
                            "host {} has no network '{}' (it has: {})",
                            self.config.name,
                            nic.network,
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ))
                    })
            })
            .collect()
    }

    /// The host path of each of the spec's data disks, or a refusal naming what is missing.
    fn disk_paths(&self, spec: &VmSpec) -> Result<Vec<PathBuf>, AgentError> {
        spec.disks
            .iter()
            .map(|d| {
                let pool = self
                    .pool(&d.pool)
                    .map_err(|e| AgentError::bad_request(e.to_string()))?;
                let path = pool.image_path(&d.image)?;
                if !path.is_file() {
                    return Err(AgentError::bad_request(format!(
                        "disk '{}' does not exist in pool {} on host {}",
                        d.image, d.pool, self.config.name
                    )));
                }
                crate::storage::check_attachable(&path, &format!("{}/{}", d.pool, d.image))?;
                Ok(path)
            })
            .collect()
    }

    fn create_taps(&self, vm: &str, bridges: &[String]) -> Result<Vec<String>, AgentError> {
        let mut taps: Vec<String> = Vec::new();
        for (i, bridge) in bridges.iter().enumerate() {
            match crate::net::create_tap(&self.config.name, vm, i, bridge) {
                Ok(tap) => taps.push(tap),
                Err(e) => {
                    taps.iter().for_each(|t| crate::net::delete_tap(t.as_str()));
                    return Err(e);
                }
            }
        }
        Ok(taps)
    }

    fn delete_taps_of(&self, record: &PersistedVm) {
        for tap in crate::net::recorded_taps(&self.config.name, record) {
            crate::net::delete_tap(&tap);
        }
    }

    /// Boots a VM.
    pub async fn launch(&self, spec: &VmSpec) -> Result<VmRuntime, AgentError> {
        let vm = self
            .launch_inner(spec, Role::Normal, Vec::new(), false)
            .await?;
        tracing::info!(vm = %vm.name, "VM launched");
        Ok(vm.runtime().await)
    }

    /// Stops a VM's QEMU and forgets it (its spec lives on at the server).
    pub async fn stop(&self, name: &str) -> Result<VmRuntime, AgentError> {
        let vm = self.find(name).await?;
        let _op = vm.op_lock.lock().await;
        if vm.role() == Role::Outgoing || !vm.record().copying_disks.is_empty() {
            return Err(AgentError::refused(format!(
                "VM '{name}' is migrating away; cancel the migration first"
            )));
        }
        vm.kill().await;
        let rt = vm.runtime().await;
        self.forget(name).await;
        Ok(rt)
    }

    /// Kills any QEMU of this VM and removes its directory. Idempotent: used for rollback.
    /// A destination that never ran also loses the disks it created for a storage copy
    /// (only those: an image that existed before is never touched).
    pub async fn remove(&self, name: &str) -> Result<(), AgentError> {
        validate_name("VM name", name)?;
        if let Some(u) = self.unadopted.lock().await.remove(name) {
            // Its monitor cannot be asked to quit; the record goes with the process.
            u.kill();
            for _ in 0..50 {
                if !u.is_alive() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tracing::info!(vm = %name, pid = u.pid, "unresponsive QEMU killed");
            adopt::forget_files(&self.config.name, &u.record, &u.dir);
            return Ok(());
        }
        let vm = self.vms.lock().await.get(name).cloned();
        let mut removed_disks = Ok(());
        if let Some(vm) = vm {
            let _op = vm.op_lock.lock().await;
            vm.kill().await;
            let rec = vm.record();
            if rec.role == Role::Incoming {
                for &i in &rec.created_disks {
                    let Some(d) = rec.spec.disks.get(i) else {
                        continue;
                    };
                    let outcome = self.pool(&d.pool).and_then(|p| p.remove_image(&d.image));
                    match outcome {
                        Ok(()) => tracing::info!(vm = %name, pool = %d.pool, disk = %d.image,
                            "removed the partial copy target"),
                        Err(e) => removed_disks = Err(e),
                    }
                }
            }
        }
        self.forget(name).await;
        removed_disks
    }

    /// Drops the VM from the agent: its directory and the taps recorded for it (only
    /// those: another VM may hold a tap whose name the hash would also give this one).
    async fn forget(&self, name: &str) {
        self.frames.close(name);
        let vm = self.vms.lock().await.remove(name);
        let record = match vm {
            Some(vm) => Some(vm.record()),
            None => adopt::load_record(&self.vm_dir(name)),
        };
        let _ = std::fs::remove_dir_all(self.vm_dir(name));
        if let Some(record) = record {
            self.delete_taps_of(&record);
        }
    }

    pub(crate) fn pool(&self, name: &str) -> Result<&crate::storage::Pool, AgentError> {
        validate_name("pool name", name)?;
        self.config
            .pools
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                AgentError::not_found(format!("host {} has no pool '{name}'", self.config.name))
            })
    }

    pub fn pools(&self) -> Vec<ferry_api::PoolInfo> {
        self.config.pools.iter().map(|p| p.info()).collect()
    }

    /// Which VM on this host has each pool image attached.
    async fn disk_users(&self) -> Vec<(String, String, String)> {
        let vms: Vec<Arc<QemuVm>> = self.vms.lock().await.values().cloned().collect();
        let mut users = Vec::new();
        for vm in vms.iter().filter(|v| v.is_running_process()) {
            for d in vm.record().spec.disks {
                users.push((d.pool, d.image, vm.name.clone()));
            }
        }
        for u in self.unadopted.lock().await.values() {
            for d in &u.record.spec.disks {
                users.push((d.pool.clone(), d.image.clone(), u.record.spec.name.clone()));
            }
        }
        users
    }

    /// The VM on this host that has `pool/image` attached, if any.
    pub(crate) async fn disk_user(&self, pool: &str, image: &str) -> Option<String> {
        self.disk_users()
            .await
            .into_iter()
            .find(|(p, i, _)| p == pool && i == image)
            .map(|(_, _, vm)| vm)
    }

    pub async fn disks(&self, pool: &str) -> Result<Vec<ferry_api::DiskImage>, AgentError> {
        let users = self.disk_users().await;
        self.pool(pool)?.list(&|p, i| {
            users
                .iter()
                .find(|(up, ui, _)| up == p && ui == i)
                .map(|(_, _, vm)| vm.clone())
        })
    }

    pub fn create_disk(
        &self,
        pool: &str,
        req: &ferry_api::CreateDiskRequest,
    ) -> Result<ferry_api::DiskImage, AgentError> {
        let img = self.pool(pool)?.create(req)?;
        tracing::info!(pool, disk = %req.name, size_mib = req.size_mib, "disk created");
        Ok(img)
    }

    pub async fn delete_disk(&self, pool: &str, name: &str) -> Result<(), AgentError> {
        let user = self
            .disk_users()
            .await
            .into_iter()
            .find(|(p, i, _)| p == pool && i == name)
            .map(|(_, _, vm)| vm);
        self.pool(pool)?.delete(name, user)?;
        tracing::info!(pool, disk = %name, "disk deleted");
        Ok(())
    }

    /// Makes the network learn where the VM's MACs are now (QEMU's self-announce: RARP
    /// broadcasts from each NIC). QEMU does this by itself after an incoming migration; the
    /// server asks once more when it sees the destination running.
    pub async fn announce(&self, name: &str) -> Result<(), AgentError> {
        self.find(name).await?.announce().await
    }

    /// The checkpoints of the VM's last switch-over pause (either side).
    pub async fn pause_checkpoints(
        &self,
        name: &str,
    ) -> Result<Vec<ferry_migration::pause::Checkpoint>, AgentError> {
        self.find(name).await?.pause_checkpoints()
    }

    pub async fn console(&self, name: &str, bytes: u64) -> Result<ConsoleTail, AgentError> {
        let vm = self.find(name).await?;
        read_tail(&vm.paths.console_log, bytes.clamp(1, 4 << 20))
    }

    /// Destination: start an identical QEMU waiting for the stream on this host's migration
    /// address (never the management address).
    ///
    /// With `copy_disks`, first creates those disks empty in this host's pools (refusing to
    /// overwrite an existing image), then exports them over NBD on the migration address
    /// for the source to copy into.
    /// The host's TLS material as it is now on disk (renewals replace it), for QEMU's TLS;
    /// None when the agent runs without TLS.
    pub(crate) fn host_tls(&self) -> Result<Option<HostTls>, AgentError> {
        match (&self.tls, &self.config.tls_dir) {
            (Some(_), Some(dir)) => {
                let mut tls = HostTls::load(dir, &self.config.name)
                    .map_err(|e| AgentError::Internal(format!("host TLS material: {e}")))?;
                tls.qemu_owner = self.config.qemu_owner().map_err(AgentError::Internal)?;
                Ok(Some(tls))
            }
            _ => Ok(None),
        }
    }

    pub async fn prepare_incoming(
        &self,
        req: &IncomingRequest,
    ) -> Result<IncomingResponse, AgentError> {
        req.spec.validate()?;
        let local = self.host_tls()?;
        let tls = peer_tls(local.as_ref(), req.peer_host.as_deref(), "incoming")?;
        let created = self.create_copy_targets(req)?;
        let vm = match self
            .launch_inner(&req.spec, Role::Incoming, created.clone(), false)
            .await
        {
            Ok(vm) => vm,
            Err(e) => {
                for &i in &created {
                    let d = &req.spec.disks[i];
                    let _ = self.pool(&d.pool).and_then(|p| p.remove_image(&d.image));
                }
                return Err(e);
            }
        };
        match self
            .listen_and_export(&vm, &created, &req.stream, tls)
            .await
        {
            Ok(resp) => {
                self.frames_incoming(&vm, req);
                Ok(resp)
            }
            Err(e) => {
                let _ = self.remove(&vm.name).await;
                Err(e)
            }
        }
    }

    fn create_copy_targets(&self, req: &IncomingRequest) -> Result<Vec<usize>, AgentError> {
        let mut created: Vec<usize> = Vec::new();
        let undo = |created: &[usize]| {
            for &i in created {
                let d = &req.spec.disks[i];
                let _ = self.pool(&d.pool).and_then(|p| p.remove_image(&d.image));
            }
        };
        for t in &req.copy_disks {
            let Some(d) = req.spec.disks.get(t.index) else {
                undo(&created);
                return Err(AgentError::bad_request(format!(
                    "copy_disks names disk {} but the spec has {} disks",
                    t.index,
                    req.spec.disks.len()
                )));
            };
            if created.contains(&t.index) {
                undo(&created);
                return Err(AgentError::bad_request(format!(
                    "copy_disks names disk {} twice",
                    t.index
                )));
            }
            let made = self
                .pool(&d.pool)
                .and_then(|p| p.create_copy_target(&d.image, t.virtual_size));
            if let Err(e) = made {
                undo(&created);
                return Err(e.prefixed(&format!("host {}", self.config.name)));
            }
            created.push(t.index);
        }
        Ok(created)
    }

    async fn listen_and_export(
        &self,
        vm: &Arc<QemuVm>,
        created: &[usize],
        stream: &ferry_api::StreamSettings,
        tls: Option<PeerTls<'_>>,
    ) -> Result<IncomingResponse, AgentError> {
        let port = vm
            .listen_incoming(
                self.config.migration_address,
                self.config.migration_port,
                stream,
                tls,
            )
            .await?;
        let listen = std::net::SocketAddr::new(self.config.migration_address, port);
        let advertised_ip = self.config.advertised_migration_address();
        let advertised = std::net::SocketAddr::new(advertised_ip, port);
        let mut disk_export_names = Vec::new();
        let disk_export = if created.is_empty() {
            None
        } else {
            // With a fixed migration port P (forwarded by a NAT or relay), disks go on P+1.
            let fixed = (self.config.migration_port != 0)
                .then(|| self.config.migration_port.checked_add(1))
                .flatten();
            let (nbd, names) = vm
                .export_disks(self.config.migration_address, fixed, created, tls)
                .await?;
            disk_export_names = names;
            vm.release_after_stream();
            Some(std::net::SocketAddr::new(advertised_ip, nbd).to_string())
        };
        tracing::info!(vm = %vm.name, %listen, %advertised, ?disk_export, "waiting for incoming migration");
        Ok(IncomingResponse {
            listen: listen.to_string(),
            advertised: advertised.to_string(),
            disk_export,
            disk_export_names,
        })
    }

    /// Source: mirror local-pool disks to the destination's NBD export while the guest
    /// runs (before the memory migration).
    pub async fn start_disk_copy(
        &self,
        name: &str,
        req: &DiskCopyRequest,
    ) -> Result<AgentMigrationStatus, AgentError> {
        let vm = self.find(name).await?;
        let _op = vm.op_lock.lock().await;
        let rec = vm.record();
        if !vm.is_running_process() || rec.role != Role::Normal {
            return Err(AgentError::refused(format!(
                "VM '{name}' is not running normally on host {} (it is {:?})",
                self.config.name, rec.role
            )));
        }
        if !rec.copying_disks.is_empty() {
            return Err(AgentError::refused(format!(
                "VM '{name}' is already copying its disks"
            )));
        }
        let export = crate::targets::disk_export(&req.export)?;
        let local = self.host_tls()?;
        let tls = peer_tls(local.as_ref(), req.peer_host.as_deref(), "disk copy")?;
        if req.disks.is_empty() {
            return Err(AgentError::bad_request("no disks to copy"));
        }
        for (n, &i) in req.disks.iter().enumerate() {
            if i >= rec.spec.disks.len() || req.disks[..n].contains(&i) {
                return Err(AgentError::bad_request(format!(
                    "disk index {i} is not one of the VM's {} disks (or is listed twice)",
                    rec.spec.disks.len()
                )));
            }
        }
        vm.start_copies(
            &export.ip().to_string(),
            export.port(),
            &req.disks,
            &req.export_names,
            req.max_bandwidth_bytes,
            tls,
        )
        .await?;
        tracing::info!(vm = %name, export = %req.export, disks = ?req.disks, "disk copy started");
        vm.migration_status().await
    }

    /// Source: start sending the VM.
    pub async fn start_outgoing(
        &self,
        name: &str,
        req: &OutgoingRequest,
    ) -> Result<AgentMigrationStatus, AgentError> {
        // Before anything else: QEMU never sees a URI this agent did not build itself.
        let req = &OutgoingRequest {
            uri: crate::targets::migration_uri(&req.uri)?,
            ..req.clone()
        };
        let local = self.host_tls()?;
        let tls = peer_tls(local.as_ref(), req.peer_host.as_deref(), "migration")?;
        let vm = self.find(name).await?;
        let _op = vm.op_lock.lock().await;
        if !vm.is_running_process() {
            return Err(AgentError::refused(format!(
                "VM '{name}' is not running on host {}",
                self.config.name
            )));
        }
        if vm.role() != Role::Normal {
            return Err(AgentError::refused(format!(
                "VM '{name}' is already migrating"
            )));
        }
        // Subscribed before `migrate`: the frame drain must not miss the completion.
        let events = vm.qmp.events();
        vm.send(req, tls).await?;
        self.frames_outgoing(&vm, req, events);
        tracing::info!(vm = %name, uri = %req.uri, "outgoing migration started");
        vm.migration_status().await
    }

    /// Source: live changes (the controller's throttle and post-copy, the fair share's cap).
    pub async fn tune(
        &self,
        name: &str,
        req: &ferry_api::TuneRequest,
    ) -> Result<AgentMigrationStatus, AgentError> {
        req.validate()?;
        let vm = self.find(name).await?;
        if vm.role() != Role::Outgoing {
            return Err(AgentError::refused(format!(
                "VM '{name}' is not migrating away from host {}",
                self.config.name
            )));
        }
        vm.tune(req).await?;
        tracing::info!(vm = %name, ?req, "migration tuned");
        vm.migration_status().await
    }

    /// Either side, during post-copy: drop the migration connection (QEMU `migrate-pause`)
    /// so it can be re-established; a side already paused stays as it is.
    pub async fn pause_postcopy(&self, name: &str) -> Result<AgentMigrationStatus, AgentError> {
        let vm = self.find(name).await?;
        vm.pause_postcopy().await?;
        tracing::info!(vm = %name, "post-copy paused");
        vm.migration_status().await
    }

    /// Destination, post-copy paused: listen for the source again on the migration
    /// address (the fixed migration port when one is configured).
    pub async fn recover_incoming(
        &self,
        name: &str,
        req: &ferry_api::RecoverRequest,
    ) -> Result<IncomingResponse, AgentError> {
        let local = self.host_tls()?;
        let tls = peer_tls(local.as_ref(), req.peer_host.as_deref(), "recovery")?;
        let vm = self.find(name).await?;
        // QEMU re-listens with the TLS parameters the migration started with.
        check_same_peer(vm.record().tls_peer.as_deref(), tls, name)?;
        let port = vm
            .recover_incoming(self.config.migration_address, self.config.migration_port)
            .await?;
        let listen = std::net::SocketAddr::new(self.config.migration_address, port);
        let advertised =
            std::net::SocketAddr::new(self.config.advertised_migration_address(), port);
        tracing::info!(vm = %name, %listen, %advertised, "post-copy recovery listening");
        Ok(IncomingResponse {
            listen: listen.to_string(),
            advertised: advertised.to_string(),
            disk_export: None,
            disk_export_names: Vec::new(),
        })
    }

    /// Source, post-copy paused: reconnect to the destination's recovery listener.
    pub async fn resume_outgoing(
        &self,
        name: &str,
        req: &ferry_api::ResumeRequest,
    ) -> Result<AgentMigrationStatus, AgentError> {
        let target = crate::targets::migration_uri(&req.uri)?;
        let local = self.host_tls()?;
        let tls = peer_tls(local.as_ref(), req.peer_host.as_deref(), "resume")?;
        let vm = self.find(name).await?;
        let _op = vm.op_lock.lock().await;
        check_same_peer(vm.record().tls_peer.as_deref(), tls, name)?;
        vm.resume_outgoing(&target).await?;
        tracing::info!(vm = %name, %target, "post-copy resumed towards the destination");
        vm.migration_status().await
    }

    pub async fn migration_status(&self, name: &str) -> Result<AgentMigrationStatus, AgentError> {
        validate_name("VM name", name)?;
        if self.unadopted(name).await.is_some() {
            // Runs, state unknown: as a VM whose monitor stopped answering reads.
            return Ok(AgentMigrationStatus {
                vm_state: ferry_api::VmState::Unresponsive,
                progress: ferry_api::MigrationProgress {
                    qemu_status: ferry_api::MigrationStatus::Unknown,
                    ..Default::default()
                },
                downtime_ms: None,
                error: None,
            });
        }
        self.find(name).await?.migration_status().await
    }

    /// Source: cancel and keep running here.
    pub async fn cancel_outgoing(&self, name: &str) -> Result<VmRuntime, AgentError> {
        let vm = self.find(name).await?;
        let _op = vm.op_lock.lock().await;
        vm.cancel_outgoing().await?;
        tracing::info!(vm = %name, "outgoing migration cancelled; VM runs here");
        Ok(vm.runtime().await)
    }

    /// Source whose migration is over with the guest paused here: resume it. Only on the
    /// server's (operator's) proof that the destination does not hold the VM; QEMU's own
    /// status decides whether it is allowed at all (see [`crate::cancel::reclaim_rule`]).
    pub async fn reclaim(&self, name: &str) -> Result<VmRuntime, AgentError> {
        let vm = self.find(name).await?;
        let _op = vm.op_lock.lock().await;
        vm.reclaim().await?;
        Ok(vm.runtime().await)
    }

    /// Source: the destination runs, so this QEMU (paused in `postmigrate`) goes away.
    /// Refused unless QEMU itself reports the migration completed: the only state in which
    /// shutting the source down cannot lose the VM.
    pub async fn hand_over(&self, name: &str) -> Result<(), AgentError> {
        // The drain reads the tap's queue, which goes with QEMU: let it end first.
        self.frames_drained(name).await;
        let vm = self.find(name).await?;
        let _op = vm.op_lock.lock().await;
        let status = vm.migration_status().await?;
        if !status.is_completed() {
            return Err(AgentError::refused(format!(
                "VM '{name}': migration is '{}', not completed; refusing to shut the source down",
                status.progress.qemu_status
            )));
        }
        vm.kill().await;
        drop(_op);
        self.forget(name).await;
        tracing::info!(vm = %name, "handed over; source QEMU shut down");
        Ok(())
    }
}

/// The last `bytes` of a file, as lossy UTF-8, and its size.
pub fn read_tail(path: &std::path::Path, bytes: u64) -> Result<ConsoleTail, AgentError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)
        .map_err(|e| AgentError::internal(format!("cannot open {}: {e}", path.display())))?;
    let total = f
        .metadata()
        .map_err(|e| AgentError::internal(format!("cannot stat {}: {e}", path.display())))?
        .len();
    let start = total.saturating_sub(bytes);
    f.seek(SeekFrom::Start(start))
        .map_err(|e| AgentError::internal(e.to_string()))?;
    let mut buf = Vec::new();
    f.take(bytes)
        .read_to_end(&mut buf)
        .map_err(|e| AgentError::internal(e.to_string()))?;
    Ok(ConsoleTail {
        total_bytes: total,
        text: String::from_utf8_lossy(&buf).into_owned(),
    })
}
