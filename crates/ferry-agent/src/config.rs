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
        if let Some(url) = &self.server_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "server URL '{url}' must start with http:// or https://"
                ));
            }
        }
        Ok(())
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.state_dir.join("vms")
    }
}
