//! Starting `ferry` daemons with their output in a log file, waiting for their ready files
//! and for their hosts to register, and stopping them. Shared by [`crate::lab::Lab`]
//! (loopback) and [`crate::netlab::NetLab`] (network namespaces).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_api::client::ServerClient;
use ferry_api::HostState;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::lab::LabError;

/// How to start one daemon.
#[derive(Debug, Clone)]
pub(crate) struct DaemonSpec {
    /// Also the log's name: `<dir>/<name>.log`.
    pub name: String,
    pub ferry_bin: PathBuf,
    /// Arguments to `ferry` (e.g. `agent --name a ...`).
    pub args: Vec<String>,
    /// Run inside this network namespace (`ip netns exec NS ferry ...`, which execs, so the
    /// child's pid is the daemon's).
    pub netns: Option<String>,
    pub log_filter: String,
    /// Put the daemon in its own process group (a Ctrl-C meant for the owner does not
    /// reach it; the owner stops it in order).
    pub own_group: bool,
    /// Extra environment (secrets such as a join token go here, not in `args`).
    pub env: Vec<(String, String)>,
}

pub(crate) struct Daemon {
    pub spec: DaemonSpec,
    pub child: Child,
}

/// Starts a daemon; stdout and stderr go to `<dir>/<name>.log`.
pub(crate) fn spawn(dir: &Path, spec: DaemonSpec) -> Result<Daemon, LabError> {
    let name = &spec.name;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))
        .map_err(|e| LabError::Io(format!("cannot create the {name} log: {e}")))?;
    let err = log
        .try_clone()
        .map_err(|e| LabError::Io(format!("cannot share the {name} log: {e}")))?;
    let mut cmd = match &spec.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.as_str()]).arg(&spec.ferry_bin);
            c
        }
        None => Command::new(&spec.ferry_bin),
    };
    cmd.args(&spec.args)
        .env("RUST_LOG", &spec.log_filter)
        .env("NO_COLOR", "1")
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    if spec.own_group {
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| LabError::Start {
        what: name.clone(),
        reason: match &spec.netns {
            Some(ns) => format!("ip netns exec {ns} {}: {e}", spec.ferry_bin.display()),
            None => format!("{}: {e}", spec.ferry_bin.display()),
        },
    })?;
    Ok(Daemon { spec, child })
}

/// Waits (30 s at most) until `file` exists and returns its trimmed content (the address the
/// daemon bound). Fails early, with the end of its log, if the daemon exits.
pub(crate) async fn wait_ready_file(
    daemon: &mut Daemon,
    dir: &Path,
    what: &str,
    file: &Path,
) -> Result<String, LabError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            // Never take an empty (just created) file for an address.
            if !text.trim().is_empty() {
                return Ok(text.trim().to_string());
            }
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(LabError::Start {
                what: what.into(),
                reason: format!("exited with {status}: {}", log_tail(dir, &daemon.spec.name)),
            });
        }
        if Instant::now() > deadline {
            return Err(LabError::Start {
                what: what.into(),
                reason: format!(
                    "not ready within 30 s: {}",
                    log_tail(dir, &daemon.spec.name)
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (30 s at most) until every host in `hosts` is registered and connected.
pub(crate) async fn wait_connected(
    client: &ServerClient,
    hosts: &[String],
) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(list) = client.hosts().await {
            let up = hosts.iter().all(|h| {
                list.iter()
                    .any(|x| &x.name == h && x.state == HostState::Connected)
            });
            if up {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(LabError::Start {
                what: "agents".into(),
                reason: "did not register with the server within 30 s".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the server lists `host` as connected at `url` (a restarted agent's new
/// address), for at most 30 s.
pub(crate) async fn wait_registered(
    client: &ServerClient,
    host: &str,
    url: &str,
) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(list) = client.hosts().await {
            if list
                .iter()
                .any(|x| x.name == host && x.url == url && x.state == HostState::Connected)
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(LabError::Start {
                what: format!("agent {host}"),
                reason: format!("did not register {url} with the server within 30 s"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last 15 lines of `<dir>/<name>.log`.
pub(crate) fn log_tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// SIGTERM to one daemon, then waits for it (SIGKILL after the grace period).
pub(crate) fn stop_one(d: &mut Daemon, grace: Duration) {
    stop_all(std::slice::from_mut(d), grace);
}

/// SIGTERM to every daemon, then waits for each (SIGKILL when `grace` has passed).
pub(crate) fn stop_all(daemons: &mut [Daemon], grace: Duration) {
    for d in daemons.iter() {
        let _ = kill(Pid::from_raw(d.child.id() as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    for d in daemons.iter_mut() {
        loop {
            match d.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = d.child.kill();
                    let _ = d.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
