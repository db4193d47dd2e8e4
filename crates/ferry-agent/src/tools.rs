//! Helper processes the agent runs for a while (`qemu-nbd` serving a copy target,
//! `qemu-img convert` copying into it): started with argument lists, tied to the agent's
//! life (the kernel kills them if the agent dies: `PR_SET_PDEATHSIG`), killed on request,
//! and watched to their end.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::error::AgentError;

/// How a finished helper ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub success: bool,
    /// The exit status and the last lines it wrote to stderr.
    pub reason: String,
}

/// A helper process that runs.
pub struct Tool {
    pub pid: u32,
    child: tokio::process::Child,
    killer: Killer,
}

/// Kills one helper, and only it: it holds a pidfd taken while the helper was still ours
/// (not reaped), so a late kill reaches nothing once the helper has gone, never another
/// process given the same pid since (pids wrap at 32,768 here). Without a pidfd (a kernel
/// before 5.3) it kills nothing: a helper then runs to its end.
#[derive(Clone)]
pub struct Killer {
    pidfd: Option<Arc<OwnedFd>>,
}

impl Killer {
    fn of(pid: u32) -> Killer {
        // SAFETY: pidfd_open(2) with no flags; a non-negative result is a new descriptor.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: the descriptor pidfd_open just returned, owned by no one else.
            Arc::new(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        });
        if pidfd.is_none() {
            tracing::warn!(pid, "no pidfd for a helper: it cannot be stopped early");
        }
        Killer { pidfd }
    }

    /// Sends SIGKILL (it is reaped by whoever waits for it).
    pub fn kill(&self) {
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal(2) on our pidfd, no siginfo, no flags. A helper
            // already gone answers ESRCH, which is what it should.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                );
            }
        }
    }
}

/// Starts `program` with `args` (stdout and stderr piped: [`Tool::wait`] reads them).
pub fn spawn(program: &str, args: &[OsString]) -> Result<Tool, AgentError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| AgentError::process(format!("cannot run {program}: {e}")))?;
    let pid = child
        .id()
        .ok_or_else(|| AgentError::process(format!("{program} exited at once")))?;
    // Still ours: nothing reaps it before `wait`.
    let killer = Killer::of(pid);
    Ok(Tool { pid, child, killer })
}

impl Tool {
    /// What kills this helper, usable after it was handed to a waiter.
    pub fn killer(&self) -> Killer {
        self.killer.clone()
    }

    /// Whether it already exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// Waits for the end, feeding stdout to `progress` as it comes.
    pub async fn wait(mut self, mut progress: impl FnMut(&str) + Send) -> Ended {
        let mut stdout = self.child.stdout.take();
        let mut stderr = self.child.stderr.take();
        let err_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(e) = stderr.as_mut() {
                // Bounded: a helper that floods stderr is cut at 64 KiB.
                let _ = e.take(64 << 10).read_to_end(&mut buf).await;
            }
            buf
        });
        if let Some(out) = stdout.as_mut() {
            let mut chunk = [0u8; 4096];
            loop {
                match out.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => progress(&String::from_utf8_lossy(&chunk[..n])),
                }
            }
        }
        let status = self.child.wait().await;
        let err = err_task.await.unwrap_or_default();
        let text = String::from_utf8_lossy(&err);
        let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
        match status {
            Ok(s) if s.success() => Ended {
                success: true,
                reason: s.to_string(),
            },
            Ok(s) => Ended {
                success: false,
                reason: if tail.is_empty() {
                    s.to_string()
                } else {
                    format!("{s}: {tail}")
                },
            },
            Err(e) => Ended {
                success: false,
                reason: format!("cannot wait for it: {e}"),
            },
        }
    }
}

/// The last `(x/100%)` progress figure in `text` (`qemu-img -p` writes them with `\r`).
pub fn progress_pct(text: &str) -> Option<f64> {
    text.rsplit(['\r', '\n'])
        .filter_map(|part| {
            let inner = part.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
            inner.trim().parse::<f64>().ok()
        })
        .next()
}

/// Whether something listens on TCP `port` in this network namespace (read from
/// `/proc/net/tcp{,6}`, without connecting: a connection would count as the one client a
/// one-shot export serves).
pub fn listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .map(|t| listening_in(&t, port))
            .unwrap_or(false)
    })
}

fn listening_in(table: &str, port: u16) -> bool {
    let want = format!("{port:04X}");
    table.lines().skip(1).any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() > 3
            && cols[3] == "0A"
            && cols[1].rsplit_once(':').is_some_and(|(_, p)| p == want)
    })
}

/// Waits (up to `within`) until `tool` listens on `port`; an error says why not (it exited,
/// with its reason, or it took too long).
pub async fn wait_listening(tool: &mut Tool, port: u16, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if listening(port) {
            return Ok(());
        }
        if let Some(status) = tool.exited() {
            return Err(format!("it exited ({status})"));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("it did not listen within {} s", within.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_the_last_figure() {
        assert_eq!(
            progress_pct("    (0.00/100%)\r    (42.50/100%)\r"),
            Some(42.5)
        );
        assert_eq!(progress_pct("    (100.00/100%)\r\n"), Some(100.0));
        assert_eq!(progress_pct("nothing"), None);
    }

    #[test]
    fn a_listening_socket_is_found_in_the_table() {
        let table = "  sl  local_address rem_address   st tx_queue\n   \
             5: 0100007F:2AF7 00000000:0000 0A 00000000:00000000\n   \
             6: 0100007F:2AF8 0100007F:D2F0 01 00000000:00000000\n";
        assert!(listening_in(table, 0x2AF7));
        assert!(!listening_in(table, 0x2AF8), "established, not listening");
        assert!(!listening_in(table, 80));
    }

    #[tokio::test]
    async fn a_helper_is_watched_to_its_end() {
        let t = spawn(
            "sh",
            &[
                "-c".into(),
                "printf '(50.00/100%%)\\r'; echo oops >&2; exit 3".into(),
            ],
        )
        .unwrap();
        let mut seen = String::new();
        let end = t.wait(|s| seen.push_str(s)).await;
        assert!(!end.success);
        assert!(end.reason.contains("oops"), "{}", end.reason);
        assert_eq!(progress_pct(&seen), Some(50.0));
        let mut t = spawn("sleep", &["30".into()]).unwrap();
        assert!(t.exited().is_none());
        let killer = t.killer();
        killer.kill();
        let end = t.wait(|_| {}).await;
        assert!(!end.success);
        assert!(end.reason.contains("signal: 9"), "{}", end.reason);
        // Reaped: a late kill reaches nothing, whatever has this pid now.
        killer.kill();
    }
}
