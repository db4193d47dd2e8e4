//! Agent settings, validated once at start.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ferry_api::validate_name;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This host's name in the cluster.
    pub name: String,
    /// Where the agent's HTTP API listens (port 0: pick one; see `ready_file`).
    pub listen: SocketAddr,
    /// URL the server uses to reach this agent; derived from the bound address if unset.
    pub advertise_url: Option<String>,
    /// The server to register with; None runs the agent stand-alone.
    pub server_url: Option<String>,
    /// Where VM records, QMP sockets and consoles live.
    pub state_dir: PathBuf,
    /// The guest image cache (`ferry image build` writes it).
    pub image_dir: PathBuf,
    pub qemu: PathBuf,
    /// Address on the migration network that incoming streams listen on.
    pub migration_address: IpAddr,
    /// The address other hosts use to reach `migration_address` (differs behind NAT or a
    /// relay); None: the same.
    pub migration_advertise: Option<IpAddr>,
    /// Fixed port for incoming streams (for firewalls and relays); 0: any free port.
    pub migration_port: u16,
    /// Network name -> host bridge that VMs' NICs on that network attach to.
    pub networks: std::collections::BTreeMap<String, String>,
    /// Storage pools (directories of qcow2 images).
    pub pools: Vec<crate::storage::Pool>,
    pub heartbeat: Duration,
    /// Written with the bound API address once listening (for scripts and tests).
    pub ready_file: Option<PathBuf>,
    /// Memory the host keeps for itself and never gives to VMs, MiB.
    pub memory_reserve_mib: u64,
    /// vCPUs allowed per host CPU.
    pub vcpu_overcommit: f64,
    /// The migration link's capacity, MiB/s, if the operator knows it (the server shares
    /// it fairly among migrations and estimates evacuations with it).
    pub migration_link_mib_s: Option<u64>,
    /// If set, the only CPU models this host offers (an operator policy, e.g. models the
    /// host is certified for); None: every model its QEMU can run.
    pub cpu_models: Option<Vec<String>>,
    /// Give every VM a second QMP socket, `<state dir>/vms/<vm>/qmp-aux.sock`, for the
    /// operator's own tools (what they do there bypasses Ferry).
    pub aux_qmp: bool,
    /// Directories a VM's kernel, initrd or boot disk may come from, besides the image
    /// cache and the pools (QEMU runs as root: a spec must not name any file on the host).
    pub boot_path_allow: Vec<PathBuf>,
    /// Where the host's TLS material lives (`ca.crt`, `host.crt`, `host.key`): the agent's
    /// API and its calls to the server use it (mTLS), and so does QEMU's own TLS for every
    /// migration stream and disk export (see [`crate::tls_material`]). None runs the agent
    /// with `--insecure` (plain HTTP and plain TCP; anyone may call it; development only).
    pub tls_dir: Option<PathBuf>,
    /// A join token (`ferry host join-token`), used once when `tls_dir` has no certificate.
    pub join_token: Option<String>,
    /// Run QEMU as this unprivileged user (QEMU opens what it needs as root, then drops
    /// to it: `-run-with user=`). None: QEMU runs as root.
    pub qemu_user: Option<String>,
}

/// The defaults of the flags behind the capacity settings.
pub const DEFAULT_MEMORY_RESERVE_MIB: u64 = 1024;
pub const DEFAULT_VCPU_OVERCOMMIT: f64 = 4.0;
/// Beyond this many vCPUs per host CPU every guest starves; a larger value is a typo.
pub const MAX_VCPU_OVERCOMMIT: f64 = 64.0;

impl AgentConfig {
    pub fn validate(&self) -> Result<(), String> {
        validate_name("host name", &self.name).map_err(|e| e.message)?;
        if let Some(l) = self.migration_link_mib_s {
            if !(1..=1 << 20).contains(&l) {
                return Err(format!(
                    "--migration-link-mib-s is {l}; it must be between 1 and {}",
                    1 << 20
                ));
            }
        }
        if !self.state_dir.is_absolute() {
            return Err(format!(
                "state directory '{}' must be an absolute path",
                self.state_dir.display()
            ));
        }
        // QMP socket paths are limited to 107 bytes: <state>/vms/<name>/qmp.sock.
        let longest = self.state_dir.as_os_str().len() + "/vms/".len() + 48 + "/qmp.sock".len();
        if longest > 107 {
            return Err(format!(
                "state directory '{}' is too long for QMP socket paths (keep it under {} bytes)",
                self.state_dir.display(),
                107 - (longest - self.state_dir.as_os_str().len())
            ));
        }
        if self.migration_address.is_unspecified() {
            return Err("migration address must be a concrete address on the migration network, not 0.0.0.0".into());
        }
        for (net, bridge) in &self.networks {
            validate_name("network name", net).map_err(|e| e.message)?;
            crate::net::validate_ifname(bridge).map_err(|e| format!("network {net}: {e}"))?;
        }
        let mut seen = std::collections::HashSet::new();
        for pool in &self.pools {
            if !seen.insert(&pool.name) {
                return Err(format!("pool {} is configured twice", pool.name));
            }
        }
        // Written so that NaN fails too.
        if !(self.vcpu_overcommit > 0.0 && self.vcpu_overcommit <= MAX_VCPU_OVERCOMMIT) {
            return Err(format!(
                "vCPU overcommit {} must be more than 0 and at most {MAX_VCPU_OVERCOMMIT} vCPUs per host CPU",
                self.vcpu_overcommit
            ));
        }
        if let Some(models) = &self.cpu_models {
            validate_cpu_models(models)?;
        }
        for dir in &self.boot_path_allow {
            if !dir.is_absolute() || !dir.is_dir() {
                return Err(format!(
                    "--boot-path-allow {}: must be an existing directory, given as an absolute path",
                    dir.display()
                ));
            }
        }
        if let Some(url) = &self.server_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "server URL '{url}' must start with http:// or https://"
                ));
            }
            match (&self.tls_dir, url.starts_with("https://")) {
                (Some(_), false) => {
                    return Err(format!(
                        "server URL '{url}' is plain http: a secured agent talks to the server \
                         over https:// only (or run both with --insecure for development)"
                    ))
                }
                (None, true) => {
                    return Err(format!(
                        "server URL '{url}' is https but this agent runs with --insecure; \
                         join the cluster instead (--join TOKEN)"
                    ))
                }
                _ => {}
            }
        }
        if let Some(u) = &self.qemu_user {
            self.qemu_owner()?;
            if u.is_empty() {
                return Err("--qemu-user must name a user".into());
            }
        }
        if self.join_token.is_some() && self.tls_dir.is_none() {
            return Err("--join and --insecure do not go together".into());
        }
        if let Some(h) = Some(&self.name).filter(|_| self.tls_dir.is_some()) {
            ferry_pki::Identity::host(h).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The (uid, gid) of `qemu_user`; an error if that user does not exist or is root.
    pub fn qemu_owner(&self) -> Result<Option<(u32, u32)>, String> {
        let Some(name) = &self.qemu_user else {
            return Ok(None);
        };
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("--qemu-user {name}: {e}"))?
            .ok_or_else(|| format!("--qemu-user {name}: no such user on this host"))?;
        if user.uid.is_root() {
            return Err(format!(
                "--qemu-user {name} is root; leave the flag out instead"
            ));
        }
        Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
    }

    /// The migration address peers connect to.
    pub fn advertised_migration_address(&self) -> IpAddr {
        self.migration_advertise.unwrap_or(self.migration_address)
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.state_dir.join("vms")
    }
}

/// The CPU model allow-list: non-empty, each name a QEMU token (the same rule as a VM spec's
/// `cpu_model`, since the server matches the two), none twice.
fn validate_cpu_models(models: &[String]) -> Result<(), String> {
    if models.is_empty() {
        return Err("the CPU model allow-list is empty; leave it out to offer every model".into());
    }
    for (i, m) in models.iter().enumerate() {
        let token = !m.is_empty()
            && m.len() <= 64
            && m.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !token {
            return Err(format!(
                "CPU model '{m}' in the allow-list is not a valid QEMU name (letters, digits, '-', '_', '.', at most 64)"
            ));
        }
        if models[..i].contains(m) {
            return Err(format!("CPU model '{m}' is listed twice in the allow-list"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AgentConfig {
        AgentConfig {
            name: "a".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise_url: None,
            server_url: None,
            state_dir: "/var/lib/ferry/agent".into(),
            image_dir: "/var/cache/ferry/images".into(),
            qemu: "qemu-system-x86_64".into(),
            migration_address: "127.0.0.1".parse().unwrap(),
            migration_advertise: None,
            migration_port: 0,
            networks: Default::default(),
            pools: Vec::new(),
            heartbeat: Duration::from_secs(2),
            ready_file: None,
            tls_dir: None,
            join_token: None,
            qemu_user: None,
            memory_reserve_mib: DEFAULT_MEMORY_RESERVE_MIB,
            migration_link_mib_s: None,
            vcpu_overcommit: DEFAULT_VCPU_OVERCOMMIT,
            cpu_models: None,
            aux_qmp: false,
            boot_path_allow: Vec::new(),
        }
    }

    #[test]
    fn vcpu_overcommit_must_be_positive_and_sane() {
        assert!(config().validate().is_ok());
        for bad in [0.0, -1.0, 64.5, f64::NAN, f64::INFINITY] {
            let e = AgentConfig {
                vcpu_overcommit: bad,
                ..config()
            }
            .validate()
            .unwrap_err();
            assert!(e.contains("vCPU overcommit"), "{e}");
        }
        for good in [0.5, 1.0, 64.0] {
            let c = AgentConfig {
                vcpu_overcommit: good,
                ..config()
            };
            assert!(c.validate().is_ok(), "{good}");
        }
    }

    #[test]
    fn cpu_model_allow_list_is_checked() {
        let with = |models: &[&str]| AgentConfig {
            cpu_models: Some(models.iter().map(|m| m.to_string()).collect()),
            ..config()
        };
        assert!(with(&["qemu64", "Skylake-Server-v4", "EPYC_x.1"])
            .validate()
            .is_ok());
        let e = with(&["qemu64,+vmx"]).validate().unwrap_err();
        assert!(e.contains("not a valid QEMU name"), "{e}");
        assert!(with(&[""]).validate().is_err());
        let e = with(&["qemu64", "qemu64"]).validate().unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = with(&[]).validate().unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }
}
