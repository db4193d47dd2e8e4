//! Launching QEMU so that it outlives the agent.
//!
//! An agent restart (upgrade, crash) must not kill the VMs on its host. QEMU is therefore
//! started in its own process group, not killed when the agent's handle drops, and found
//! again after a restart by its pidfile and `/proc/PID/cmdline`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::QemuError;

/// A running QEMU process.
#[derive(Debug)]
pub struct QemuProcess {
    pub pid: u32,
    /// Present when this agent started the process (so it can reap it); absent after an
    /// agent restart, when the process was adopted from its pidfile.
    pub child: Option<tokio::process::Child>,
}

impl QemuProcess {
    /// Starts QEMU with `args`; its stdout and stderr go to `log` (truncated).
    pub fn spawn(qemu: &Path, args: &[OsString], log: &Path) -> Result<QemuProcess, QemuError> {
        let out = std::fs::File::create(log)
            .map_err(|e| QemuError::Io(format!("cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| QemuError::Io(format!("cannot open {}: {e}", log.display())))?;
        let child = tokio::process::Command::new(qemu)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| QemuError::Spawn(format!("{}: {e}", qemu.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| QemuError::Spawn("QEMU exited at once".into()))?;
        Ok(QemuProcess {
            pid,
            child: Some(child),
        })
    }

    /// Adopts a QEMU left running by an earlier agent, if `pid` is alive and its command
    /// line mentions `marker` (guards against a reused pid).
    pub fn adopt(pid: u32, marker: &Path) -> Option<QemuProcess> {
        if pid_runs_with(pid, marker) {
            Some(QemuProcess { pid, child: None })
        } else {
            None
        }
    }

    pub fn is_alive(&self) -> bool {
        pid_alive(self.pid)
    }

    /// Sends SIGKILL. QEMU holds no state worth a graceful exit once the agent decided
    /// to end it (the guest was already stopped or handed over).
    pub fn kill(&self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
    }
}

pub fn pid_alive(pid: u32) -> bool {
    // Signal 0 checks existence; a zombie still "exists", so look at /proc state too.
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `pid` is alive and its command line contains `marker`.
pub fn pid_runs_with(pid: u32, marker: &Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = marker.to_string_lossy();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| String::from_utf8_lossy(arg).contains(needle.as_ref()))
}

/// Reads a QEMU pidfile.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Every pid in `dir`'s subdirectories' `qemu.pid` files whose process still runs with the
/// directory in its command line. Used to clean up after tests and on `lab` teardown.
pub fn qemu_pids_under(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut found = Vec::new();
    let Ok(walk) = walk_pidfiles(dir) else {
        return found;
    };
    for pidfile in walk {
        if let Some(pid) = read_pidfile(&pidfile) {
            if pid_runs_with(pid, dir) {
                found.push((pid, pidfile));
            }
        }
    }
    found
}

fn walk_pidfiles(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() == "qemu.pid" {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}
