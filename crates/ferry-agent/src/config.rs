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
}

impl AgentConfig {
    pub fn validate(&self) -> Result<(), String> {
        validate_name("host name", &self.name).map_err(|e| e.message)?;
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
        if let Some(url) = &self.server_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "server URL '{url}' must start with http:// or https://"
                ));
            }
        }
        Ok(())
    }

    /// The migration address peers connect to.
    pub fn advertised_migration_address(&self) -> IpAddr {
        self.migration_advertise.unwrap_or(self.migration_address)
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.state_dir.join("vms")
    }
}
