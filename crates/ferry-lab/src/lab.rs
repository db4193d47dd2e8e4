//! Starting and stopping the daemons.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::client::ServerClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::daemon::{self, Daemon, DaemonSpec};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{what} did not start: {reason}")]
    Start { what: String, reason: String },
    #[error("{0}")]
    Io(String),
}

#[derive(Debug, Clone)]
pub struct LabConfig {
    /// The `ferry` binary to run daemons from.
    pub ferry_bin: PathBuf,
    pub hosts: Vec<String>,
    /// The guest image cache the agents use (None: their default).
    pub image_dir: Option<PathBuf>,
    /// Keep the lab directory (logs) after shutdown, for debugging.
    pub keep: bool,
    /// Extra `RUST_LOG` for the daemons.
    pub log_filter: String,
    /// Give every agent a local pool `local` (its own directory) and a pool `shared` (one
    /// directory every agent sees, as shared storage would be).
    pub pools: bool,
    /// Extra arguments for `ferry server` (e.g. the hidden `--test-hold-at` flags of the
    /// fault tests, or `--recovery-bound-s 20`); kept on a restart.
    pub server_args: Vec<String>,
    /// Run the cluster with `--insecure` (plain HTTP, no identities): only for comparing
    /// against the secured cluster (`ferry bench api`).
    pub insecure: bool,
    /// Extra arguments per agent (host name -> arguments, e.g. `--aux-qmp`); kept on a
    /// restart.
    pub agent_args: std::collections::BTreeMap<String, Vec<String>>,
}

impl LabConfig {
    pub fn new(ferry_bin: PathBuf, hosts: &[&str]) -> LabConfig {
        LabConfig {
            ferry_bin,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            image_dir: None,
            keep: false,
            log_filter: "info".into(),
            pools: false,
            server_args: Vec::new(),
            insecure: false,
            agent_args: Default::default(),
        }
    }
}

pub struct AgentInfo {
    pub name: String,
    pub url: String,
    pub state_dir: PathBuf,
}

pub struct Lab {
    /// The cluster's CA and the admin's token (`ferry ca init` on the server's data dir);
    /// None when the lab runs `--insecure`.
    pub trust: Option<crate::Trust>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    daemons: Vec<Daemon>,
    pub server_url: String,
    pub agents: Vec<AgentInfo>,
    keep: bool,
    /// Each agent's original arguments (restarts start from these).
    agent_args: std::collections::HashMap<String, Vec<String>>,
    /// The server's arguments: a restart (after [`Lab::kill_server`]) reuses them, so the
    /// new server has the same data directory and the same port the agents talk to.
    server_args: Vec<String>,
    restarts: u32,
}

impl Lab {
    /// Starts the server, then the agents, and waits until every host is connected.
    pub async fn start(cfg: LabConfig) -> Result<Lab, LabError> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-lab-")
            .tempdir()
            .map_err(|e| LabError::Io(format!("cannot create a lab directory: {e}")))?;
        let path = dir.path().to_path_buf();
        let trust = if cfg.insecure {
            None
        } else {
            Some(crate::Trust::init(
                &cfg.ferry_bin,
                &path.join("server"),
                &path.join("client.toml"),
            )?)
        };
        let mut lab = Lab {
            trust,
            dir: Some(dir),
            path: path.clone(),
            daemons: Vec::new(),
            server_url: String::new(),
            agents: Vec::new(),
            keep: cfg.keep,
            agent_args: Default::default(),
            server_args: Vec::new(),
            restarts: 0,
        };
        let server_ready = path.join("server.addr");
        // A fixed port, chosen now, rather than port 0: agents are given the server's URL
        // once, so a restarted server must come back where they look for it.
        let port = free_port()?;
        let mut args: Vec<String> = vec![
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            path.join("server").display().to_string(),
            "--ready-file".into(),
            server_ready.display().to_string(),
            "--host-timeout-ms".into(),
            "5000".into(),
        ];
        if cfg.insecure {
            args.push("--insecure".into());
        }
        args.extend(cfg.server_args.iter().cloned());
        lab.server_args = args.clone();
        lab.spawn(&cfg, "server", &args)?;
        let addr = lab.wait_ready_file("server", &server_ready).await?;
        let scheme = if cfg.insecure { "http" } else { "https" };
        lab.server_url = format!("{scheme}://{addr}");
        if let Some(t) = &lab.trust {
            t.write_config(&lab.server_url)?;
        }
        for host in &cfg.hosts {
            let state = path.join(host);
            let ready = path.join(format!("{host}.addr"));
            args = vec![
                "agent".into(),
                "--name".into(),
                host.clone(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--server".into(),
                lab.server_url.clone(),
                "--state-dir".into(),
                state.display().to_string(),
                "--migration-address".into(),
                "127.0.0.1".into(),
                "--heartbeat-ms".into(),
                "500".into(),
                "--ready-file".into(),
                ready.display().to_string(),
            ];
            if let Some(img) = &cfg.image_dir {
                args.push("--image-dir".into());
                args.push(img.display().to_string());
            }
            if cfg.pools {
                let shared = path.join("shared-pool");
                std::fs::create_dir_all(&shared).map_err(|e| {
                    LabError::Io(format!("cannot create {}: {e}", shared.display()))
                })?;
                args.push("--pool".into());
                args.push(format!("local={}", state.join("pool-local").display()));
                args.push("--pool".into());
                args.push(format!("shared={}:shared", shared.display()));
            }
            if cfg.insecure {
                args.push("--insecure".into());
            }
            if let Some(extra) = cfg.agent_args.get(host) {
                args.extend(extra.iter().cloned());
            }
            lab.agent_args.insert(host.clone(), args.clone());
            let env = match &lab.trust {
                Some(t) => vec![(
                    "FERRY_JOIN_TOKEN".into(),
                    t.join_token(&lab.server_url, host).await?,
                )],
                None => Vec::new(),
            };
            lab.spawn_with(&cfg, &format!("agent-{host}"), &args, env)?;
            let addr = lab
                .wait_ready_file(&format!("agent {host}"), &ready)
                .await?;
            lab.agents.push(AgentInfo {
                name: host.clone(),
                url: format!("{scheme}://{addr}"),
                state_dir: state,
            });
        }
        lab.wait_connected(&cfg.hosts).await?;
        Ok(lab)
    }

    fn spawn(&mut self, cfg: &LabConfig, name: &str, args: &[String]) -> Result<(), LabError> {
        self.spawn_with(cfg, name, args, Vec::new())
    }

    fn spawn_with(
        &mut self,
        cfg: &LabConfig,
        name: &str,
        args: &[String],
        env: Vec<(String, String)>,
    ) -> Result<(), LabError> {
        let spec = DaemonSpec {
            name: name.into(),
            ferry_bin: cfg.ferry_bin.clone(),
            args: args.to_vec(),
            netns: None,
            log_filter: cfg.log_filter.clone(),
            own_group: false,
            env,
        };
        self.daemons.push(daemon::spawn(&self.path, spec)?);
        Ok(())
    }

    async fn wait_ready_file(&mut self, what: &str, file: &Path) -> Result<String, LabError> {
        let Some(last) = self.daemons.last_mut() else {
            return Err(LabError::Io(format!("{what}: no daemon was started")));
        };
        daemon::wait_ready_file(last, &self.path, what, file).await
    }

    async fn wait_connected(&self, hosts: &[String]) -> Result<(), LabError> {
        daemon::wait_connected(&self.client(), hosts).await
    }

    /// Stops host `host`'s agent (SIGTERM) and starts it again with the same settings; its
    /// VMs keep running meanwhile. Returns once the new agent answers.
    pub async fn restart_agent(&mut self, cfg: &LabConfig, host: &str) -> Result<(), LabError> {
        self.restart_agent_with(cfg, host, &[]).await
    }

    /// Kills host `host`'s agent with SIGKILL (a crash: no clean-up of its own). Its QEMUs
    /// keep running. Start it again with [`Lab::restart_agent_with`].
    pub fn kill_agent(&mut self, host: &str) -> Result<(), LabError> {
        let idx = self.agent_daemon(host)?;
        let child = &mut self.daemons[idx].child;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
        Ok(())
    }

    fn agent_daemon(&self, host: &str) -> Result<usize, LabError> {
        let name = format!("agent-{host}");
        self.daemons
            .iter()
            .position(|d| d.spec.name == name || d.spec.name.starts_with(&format!("{name}-")))
            .ok_or_else(|| LabError::Io(format!("no agent {host} in this lab")))
    }

    /// Stops host `host`'s agent (SIGTERM; a no-op if it is already dead) and starts it
    /// with its original settings plus `extra` arguments (e.g. another
    /// `--migration-advertise`). Returns once the new agent answers.
    pub async fn restart_agent_with(
        &mut self,
        cfg: &LabConfig,
        host: &str,
        extra: &[&str],
    ) -> Result<(), LabError> {
        let idx = self.agent_daemon(host)?;
        let mut old = self.daemons.remove(idx);
        let _ = kill(Pid::from_raw(old.child.id() as i32), Signal::SIGTERM);
        let _ = old.child.wait();
        let ready = self.path.join(format!("{host}.addr"));
        let _ = std::fs::remove_file(&ready);
        let base = self
            .agent_args
            .get(host)
            .cloned()
            .unwrap_or_else(|| old.spec.args.clone());
        let args: Vec<String> = base
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect();
        self.restarts += 1;
        let name = format!("agent-{host}-restart{}", self.restarts);
        self.spawn(cfg, &name, &args)?;
        let addr = self
            .wait_ready_file(&format!("agent {host}"), &ready)
            .await?;
        let scheme = if self.trust.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{addr}");
        if let Some(a) = self.agents.iter_mut().find(|a| a.name == host) {
            a.url = url.clone();
        }
        // The new agent listens on a new port: the server only reaches it once it has
        // registered that address, so wait for that rather than for the port alone.
        daemon::wait_registered(&self.client(), host, &url).await
    }

    fn server_daemon(&self) -> Result<usize, LabError> {
        self.daemons
            .iter()
            .position(|d| d.spec.name == "server" || d.spec.name.starts_with("server-"))
            .ok_or_else(|| LabError::Io("no server in this lab".into()))
    }

    /// Kills the server with SIGKILL (a crash: nothing saved beyond what it had written).
    /// Agents and QEMUs keep running. Start it again with [`Lab::restart_server`].
    pub fn kill_server(&mut self) -> Result<(), LabError> {
        let idx = self.server_daemon()?;
        let child = &mut self.daemons[idx].child;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
        Ok(())
    }

    /// Stops the server (SIGTERM; a no-op if it is already dead) and starts it again on the
    /// same data directory and address, with its original arguments. Returns once every
    /// host is connected to the new server again.
    pub async fn restart_server(&mut self, cfg: &LabConfig) -> Result<(), LabError> {
        let idx = self.server_daemon()?;
        let mut old = self.daemons.remove(idx);
        daemon::stop_one(&mut old, Duration::from_secs(5));
        let ready = self.path.join("server.addr");
        let _ = std::fs::remove_file(&ready);
        self.restarts += 1;
        let name = format!("server-restart{}", self.restarts);
        let args = self.server_args.clone();
        self.spawn(cfg, &name, &args)?;
        let addr = self.wait_ready_file("server", &ready).await?;
        let scheme = if self.trust.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{addr}");
        if url != self.server_url {
            return Err(LabError::Start {
                what: "server".into(),
                reason: format!("came back on {url}, not {}", self.server_url),
            });
        }
        let hosts: Vec<String> = self.agents.iter().map(|a| a.name.clone()).collect();
        self.wait_connected(&hosts).await
    }

    /// The log files of every server this lab ran (the first, then each restart).
    pub fn server_logs(&self) -> String {
        let mut out = self.log_tail("server");
        for i in 1..=self.restarts {
            let name = format!("server-restart{i}");
            if self.path.join(format!("{name}.log")).exists() {
                out.push_str(&format!("\n--- {name}:\n{}", self.log_tail(&name)));
            }
        }
        out
    }

    /// The admin's client (no credentials when the lab runs `--insecure`).
    pub fn client(&self) -> ServerClient {
        match &self.trust {
            Some(t) => t.client(&self.server_url),
            None => match ServerClient::new(&self.server_url) {
                Ok(c) => c,
                Err(e) => panic!("lab client for {}: {e}", self.server_url),
            },
        }
    }

    /// Reads the cluster's CA bundle and the server's certificate again (after
    /// `ferry ca rotate`).
    pub fn reload_trust(&mut self) -> Result<(), LabError> {
        match &mut self.trust {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// The lab's trust; an error for a lab run `--insecure`.
    pub fn trust(&self) -> Result<&crate::Trust, LabError> {
        self.trust
            .as_ref()
            .ok_or_else(|| LabError::Io("this lab runs --insecure: it has no CA".into()))
    }

    /// A client for host `host`'s agent, presenting the server's certificate (agents take
    /// orders from the server only).
    pub fn agent_client(&self, host: &str) -> Result<ferry_api::client::AgentClient, LabError> {
        let a = self
            .agents
            .iter()
            .find(|a| a.name == host)
            .ok_or_else(|| LabError::Io(format!("no agent {host} in this lab")))?;
        match &self.trust {
            Some(t) => t.agent_client(&a.url, host),
            None => ferry_api::client::AgentClient::new(&a.url)
                .map_err(|e| LabError::Io(format!("agent client for {host}: {e}"))),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The pid of the QEMU running `vm` on `host`, from its pidfile.
    pub fn qemu_pid(&self, host: &str, vm: &str) -> Option<u32> {
        let pidfile = self.path.join(host).join("vms").join(vm).join("qemu.pid");
        let pid = ferry_qemu::process::read_pidfile(&pidfile)?;
        ferry_qemu::process::pid_runs_with(pid, &self.path).then_some(pid)
    }

    /// QEMU processes of the lab still running on `host`.
    pub fn qemus_on(&self, host: &str) -> Vec<u32> {
        ferry_qemu::process::qemu_pids_under(&self.path.join(host))
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }

    /// SIGKILLs the QEMU of `vm` on `host` (failure injection).
    pub fn kill_qemu(&self, host: &str, vm: &str) -> bool {
        match self.qemu_pid(host, vm) {
            Some(pid) => kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok(),
            None => false,
        }
    }

    pub fn log_tail(&self, name: &str) -> String {
        daemon::log_tail(&self.path, name)
    }

    /// Stops everything the lab started. Called by `Drop` too; idempotent.
    pub fn shutdown(&mut self) {
        daemon::stop_all(&mut self.daemons, Duration::from_secs(5));
        self.daemons.clear();
        // Agents leave VMs running by design (an agent restart must not kill VMs); a lab
        // owns its VMs, so it ends them.
        for (pid, _) in ferry_qemu::process::qemu_pids_under(&self.path) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if self.keep {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("lab directory kept: {}", kept.display());
            }
        } else if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// A free TCP port on loopback (bound and released: another process could take it in
/// between, which on a test machine is rare and fails loudly at the server's bind).
fn free_port() -> Result<u16, LabError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| LabError::Io(format!("cannot find a free port: {e}")))
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shutdown();
    }
}
