//! The system calls of the network lab: running `ip` and `tc` (always an argument list, never
//! a shell string), entering a network namespace from a thread, and processes (identity by
//! pid + start time, the processes inside a namespace, killing and waiting).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::NetLabError;

/// Where `ip netns add` puts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Runs `program args...`; on failure the error names the command, its exit status and its
/// stderr. Returns stdout.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, NetLabError> {
    let command = describe(program, args);
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetLabError::Command {
            command: command.clone(),
            detail: format!("cannot run {program}: {e}"),
        })?;
    if !out.status.success() {
        return Err(NetLabError::Command {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command as a person would type it, for messages only (it is never executed).
pub(crate) fn describe(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// `ip ARGS` in the root namespace.
pub(crate) fn ip(args: &[&str]) -> Result<String, NetLabError> {
    run("ip", args)
}

/// `ip -n NS ARGS`.
pub(crate) fn ip_in(ns: &str, args: &[&str]) -> Result<String, NetLabError> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// `tc -n NS ARGS`.
pub(crate) fn tc_in(ns: &str, args: &[&str]) -> Result<String, NetLabError> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("tc", &full)
}

pub(crate) fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

pub(crate) fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

/// Names of all named network namespaces.
pub(crate) fn netns_list() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Network interfaces of the root namespace (from /sys/class/net, which this process's
/// mount namespace shows for the root network namespace).
pub(crate) fn root_links() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Runs `f` on a new thread that has entered network namespace `ns` and returns its result.
/// Sockets created in `f` belong to `ns` for their whole life, whichever thread uses them
/// later; the thread itself ends with `f`, so it pins nothing.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T, NetLabError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = netns_path(ns);
    let file = File::open(&path)
        .map_err(|e| NetLabError::Io(format!("cannot open {}: {e}", path.display())))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetLabError::Io(format!("setns into {ns}: {e}")))?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Enters `ns` on the calling thread (for threads that live in a namespace, like relays).
pub(crate) fn enter_netns(ns: &str) -> Result<(), NetLabError> {
    let path = netns_path(ns);
    let file = File::open(&path)
        .map_err(|e| NetLabError::Io(format!("cannot open {}: {e}", path.display())))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetLabError::Io(format!("setns into {ns}: {e}")))
}

/// A process, identified so that a reused pid is not mistaken for it: the pid and the
/// process's start time (field 22 of /proc/PID/stat, in clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcId {
    pub fn of(pid: u32) -> Option<ProcId> {
        Some(ProcId {
            pid,
            start_time: start_time(pid)?,
        })
    }

    pub fn me() -> Option<ProcId> {
        ProcId::of(std::process::id())
    }

    /// The same process still runs (not a zombie, not a new process with the same pid).
    pub fn alive(&self) -> bool {
        ferry_qemu::process::pid_alive(self.pid) && start_time(self.pid) == Some(self.start_time)
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after the
    // last ')' start with field 3 (state). Start time is field 22.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Processes whose network namespace is `ns` (`ip netns pids`), never this process.
pub(crate) fn netns_pids(ns: &str) -> Vec<u32> {
    let me = std::process::id();
    match run("ip", &["netns", "pids", ns]) {
        Ok(out) => out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != me)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Sends `signal` to each pid, then waits until all are gone (or `timeout`). Returns the
/// pids still alive.
pub(crate) fn kill_and_wait(pids: &[u32], signal: Signal, timeout: Duration) -> Vec<u32> {
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid as i32), signal);
    }
    wait_gone(pids, timeout)
}

/// Waits until none of `pids` runs (zombies count as gone). Returns those still running.
pub(crate) fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| ferry_qemu::process::pid_alive(*p))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn my_start_time_is_read_and_stable() {
        let me = ProcId::me().expect("own stat");
        assert!(me.alive());
        assert_eq!(ProcId::me(), Some(me));
        let other = ProcId {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!other.alive(), "a different start time is another process");
    }

    #[test]
    fn failed_commands_name_the_command_and_stderr() {
        let err = run("ip", &["link", "show", "dev", "fy-no-such-link"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ip link show dev fy-no-such-link"), "{text}");
        assert!(text.contains("does not exist"), "{text}");
        let err = run("/nonexistent/tool", &[]).unwrap_err().to_string();
        assert!(err.contains("cannot run /nonexistent/tool"), "{err}");
    }
}
