//! What the fault runner needs from a lab, over both kinds: the loopback [`Lab`] (every
//! fault but the link cut) and the [`NetLab`] (separate migration links, so a cut does not
//! also cut the agents off from the server).

use std::path::{Path, PathBuf};

use ferry_api::client::ServerClient;

use crate::faults::{Fault, Tmpfs};
use crate::lab::{Lab, LabConfig};
use crate::netlab::{NetLab, NetLabConfig};

/// Which VM moves where (the soak moves two VMs both ways).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route<'a> {
    pub vm: &'a str,
    pub source: &'a str,
    pub destination: &'a str,
}

pub(crate) enum Cluster {
    Loop { lab: Lab, cfg: LabConfig },
    Net(NetLab),
}

impl Cluster {
    pub async fn start_loop(cfg: LabConfig) -> Result<Cluster, String> {
        let lab = Lab::start(cfg.clone())
            .await
            .map_err(|e| format!("lab: {e}"))?;
        Ok(Cluster::Loop { lab, cfg })
    }

    /// A network lab with hosts a and b; `pools` (if given) holds each host's local pool
    /// (`<pools>/<host>`).
    pub async fn start_net(
        mut cfg: NetLabConfig,
        server_args: Vec<String>,
        pools: Option<&Path>,
    ) -> Result<Cluster, String> {
        cfg.server_args = server_args;
        if let Some(dir) = pools {
            for h in cfg.hosts.clone() {
                let pool = dir.join(&h);
                cfg.host_args.push((
                    h,
                    vec!["--pool".into(), format!("local={}", pool.display())],
                ));
            }
        }
        let lab = NetLab::start(cfg)
            .await
            .map_err(|e| format!("network lab: {e}"))?;
        Ok(Cluster::Net(lab))
    }

    pub fn client(&self) -> ServerClient {
        match self {
            Cluster::Loop { lab, .. } => lab.client(),
            Cluster::Net(lab) => lab.client(),
        }
    }

    pub fn qemu_pid(&self, host: &str, vm: &str) -> Option<u32> {
        match self {
            Cluster::Loop { lab, .. } => lab.qemu_pid(host, vm),
            Cluster::Net(lab) => lab.qemu_pid(host, vm),
        }
    }

    pub fn qemus_on(&self, host: &str) -> Vec<u32> {
        match self {
            Cluster::Loop { lab, .. } => lab.qemus_on(host),
            Cluster::Net(lab) => lab.qemus_on(host),
        }
    }

    /// Host `host`'s agent state directory (VM directories live under `vms/`).
    pub fn state_dir(&self, host: &str) -> PathBuf {
        match self {
            Cluster::Loop { lab, .. } => lab.dir().join(host),
            Cluster::Net(lab) => lab
                .host(host)
                .map(|h| h.state_dir.clone())
                .unwrap_or_default(),
        }
    }

    pub fn server_logs(&self) -> String {
        match self {
            Cluster::Loop { lab, .. } => lab.server_logs(),
            Cluster::Net(lab) => lab.log_tail("server"),
        }
    }

    /// Takes host `host`'s migration link down or up (network lab only).
    pub fn set_link(&self, host: &str, up: bool) -> Result<(), String> {
        match self {
            Cluster::Loop { .. } => Err("the loopback lab has no separate migration link".into()),
            Cluster::Net(lab) => lab.set_migration_link(host, up).map_err(|e| e.to_string()),
        }
    }

    /// Injects `fault` into `route`'s migration and brings back whatever was killed (a
    /// QEMU is not brought back: its death is the fault; a cut link is restored by the
    /// caller, after the fault's duration).
    pub async fn inject(
        &mut self,
        fault: Fault,
        route: Route<'_>,
        pool: Option<&Tmpfs>,
    ) -> Result<(), String> {
        let pick = |source_side: bool| {
            if source_side {
                route.source
            } else {
                route.destination
            }
        };
        match (fault, &mut *self) {
            (Fault::KillDestQemu | Fault::KillSourceQemu, _) => {
                let host = pick(fault == Fault::KillSourceQemu);
                let Some(pid) = self.qemu_pid(host, route.vm) else {
                    return Err(format!("no QEMU of {} on {host} to kill", route.vm));
                };
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .map_err(|e| format!("kill QEMU {pid}: {e}"))?;
            }
            (Fault::DestPoolFull, _) => pool.ok_or("no tmpfs over the pool")?.fill()?,
            (Fault::LinkCut, _) => self.set_link(route.destination, false)?,
            (Fault::KillServer, Cluster::Loop { lab, cfg }) => {
                lab.kill_server().map_err(|e| e.to_string())?;
                lab.restart_server(cfg).await.map_err(|e| e.to_string())?;
            }
            (Fault::KillSourceAgent | Fault::KillDestAgent, Cluster::Loop { lab, cfg }) => {
                let host = pick(fault == Fault::KillSourceAgent);
                lab.kill_agent(host).map_err(|e| e.to_string())?;
                lab.restart_agent_with(cfg, host, &[])
                    .await
                    .map_err(|e| e.to_string())?;
                // Back means registered again: until then the server still has the dead
                // agent's address (a restarted agent listens on a new port).
                wait_registered(lab, host).await?;
            }
            (f, Cluster::Net(_)) => {
                return Err(format!("{} is not run in the network lab", f.as_str()))
            }
        }
        Ok(())
    }
}

/// Waits (30 s at most) until the server has `host`'s current agent address and sees it
/// connected.
async fn wait_registered(lab: &Lab, host: &str) -> Result<(), String> {
    let url = lab
        .agents
        .iter()
        .find(|a| a.name == host)
        .map(|a| a.url.clone())
        .ok_or_else(|| format!("no agent {host}"))?;
    let c = lab.client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(h) = c.host(host).await {
            if h.url == url && h.state == ferry_api::HostState::Connected {
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("agent {host} did not register again within 30 s"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
