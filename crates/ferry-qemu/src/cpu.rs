//! Which CPU models this host's QEMU can run, asked of QEMU itself.
//!
//! A guest's CPU model must be runnable on the destination with every feature it has on the
//! source, or the migrated guest faults on an instruction that vanished. Only QEMU knows
//! what each model needs from this host under a given accelerator (under KVM: what the host
//! CPU and kernel provide; under TCG: what the emulator implements), so the agent starts a
//! machine-less QEMU and reads `query-cpu-definitions`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ferry_api::{Accel, CpuModelAvailability};
use ferry_qmp::QmpClient;

use crate::QemuError;

/// How long the whole query may take: starting a machine-less QEMU and one QMP command
/// take well under a second; a QEMU that hangs must not hold up the agent's start.
pub const CPU_QUERY_TIMEOUT: Duration = Duration::from_secs(20);

/// A Unix socket path is limited to 107 bytes (`sun_path`).
const MAX_SOCKET_PATH: usize = 107;

/// The CPU models `qemu` offers under `accel` (Kvm or Tcg), sorted by name, each with the
/// features this host cannot provide for it (empty: the model runs here).
///
/// QEMU runs in a fresh temporary directory, which is removed, and is killed on every path
/// out, including the timeout and the caller dropping this future.
pub async fn cpu_models(qemu: &Path, accel: Accel) -> Result<Vec<CpuModelAvailability>, QemuError> {
    cpu_models_in(qemu, accel, &std::env::temp_dir(), CPU_QUERY_TIMEOUT).await
}

/// [`cpu_models`] with the temporary directory made under `parent` and an explicit timeout
/// (tests check that nothing is left behind in `parent`).
pub async fn cpu_models_in(
    qemu: &Path,
    accel: Accel,
    parent: &Path,
    timeout: Duration,
) -> Result<Vec<CpuModelAvailability>, QemuError> {
    let accel_arg =
        match accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            // The answer depends on the accelerator, so the caller must have decided it.
            Accel::Auto => return Err(QemuError::Io(
                "CPU models can only be listed for a decided accelerator (kvm or tcg), not auto"
                    .into(),
            )),
        };
    let dir = tempfile::Builder::new()
        .prefix("ferry-cpu-")
        .tempdir_in(parent)
        .map_err(|e| {
            QemuError::Io(format!(
                "cannot create a temporary directory in {}: {e}",
                parent.display()
            ))
        })?;
    let socket = dir.path().join("qmp.sock");
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(QemuError::Io(format!(
            "the QMP socket path {} is longer than {MAX_SOCKET_PATH} bytes; set TMPDIR to a shorter directory",
            socket.display()
        )));
    }
    let log = dir.path().join("qemu.log");
    let out = std::fs::File::create(&log)
        .map_err(|e| QemuError::Io(format!("cannot create {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| QemuError::Io(format!("cannot open {}: {e}", log.display())))?;
    let mut qmp_arg = std::ffi::OsString::from("unix:");
    qmp_arg.push(socket.as_os_str());
    qmp_arg.push(",server=on,wait=off");
    let mut child = tokio::process::Command::new(qemu)
        .args(["-machine", "none", "-accel", accel_arg, "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-qmp"])
        .arg(&qmp_arg)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Unlike a VM's QEMU this one must not outlive us: if the caller gives up on the
        // future, dropping the child kills it.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| QemuError::Spawn(format!("{}: {e}", qemu.display())))?;

    let outcome = tokio::time::timeout(timeout, query(&mut child, &socket, &log, timeout)).await;
    // Killed before the directory goes, so QEMU cannot recreate its socket in a removed
    // directory; `kill` also reaps it.
    let _ = child.kill().await;
    drop(dir);
    match outcome {
        Ok(models) => models,
        Err(_) => Err(QemuError::Io(format!(
            "QEMU did not list its CPU models within {} s",
            timeout.as_secs_f64()
        ))),
    }
}

async fn query(
    child: &mut tokio::process::Child,
    socket: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<Vec<CpuModelAvailability>, QemuError> {
    // QEMU creates its socket a moment after it starts, or exits at once on a bad option
    // (e.g. an accelerator it cannot use): whichever happens first.
    let client = tokio::select! {
        status = child.wait() => {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            return Err(QemuError::Spawn(format!(
                "QEMU exited ({}) before its monitor was ready: {}",
                status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                last_line(&said)
            )));
        }
        client = QmpClient::connect_with_retry(socket, timeout) => client,
    };
    let client = client.map_err(|e| QemuError::Qmp(e.to_string()))?;
    let defs = client
        .query_cpu_definitions()
        .await
        .map_err(|e| QemuError::Qmp(format!("query-cpu-definitions: {e}")))?;
    let mut models: Vec<CpuModelAvailability> = defs
        .into_iter()
        .map(|d| CpuModelAvailability {
            name: d.name,
            // x86 QEMU always fills this in; were it absent, QEMU could not tell, and the
            // destination's own launch check is what remains.
            unavailable_features: d.unavailable_features.unwrap_or_default(),
        })
        .collect();
    models.sort_by(|a, b| a.name.cmp(&b.name));
    models.dedup_by(|a, b| a.name == b.name);
    Ok(models)
}

/// The last non-empty line of QEMU's output (its error message), or a placeholder.
fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(300).collect())
        .unwrap_or_else(|| "it printed nothing".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: &str = "/usr/bin/qemu-system-x86_64";

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Processes whose command line mentions `needle`.
    fn processes_mentioning(needle: &Path) -> Vec<u32> {
        let needle = needle.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
            .collect()
    }

    // TCG only: /dev/kvm on the test machines may be a nested paravirtual KVM that must not
    // be used (see `accel`).
    #[tokio::test]
    async fn tcg_offers_qemu64_with_nothing_missing_and_leaves_nothing_behind() {
        let parent = tempfile::tempdir().unwrap();
        let models = cpu_models_in(
            Path::new(QEMU),
            Accel::Tcg,
            parent.path(),
            CPU_QUERY_TIMEOUT,
        )
        .await
        .unwrap();
        assert!(!models.is_empty());
        let qemu64 = models.iter().find(|m| m.name == "qemu64").expect("qemu64");
        assert!(
            qemu64.unavailable_features.is_empty(),
            "{:?}",
            qemu64.unavailable_features
        );
        assert!(models.windows(2).all(|w| w[0].name < w[1].name));
        assert!(leftovers(parent.path()).is_empty());
        assert!(processes_mentioning(parent.path()).is_empty());
    }

    #[tokio::test]
    async fn auto_and_a_missing_binary_are_clear_errors() {
        let parent = tempfile::tempdir().unwrap();
        let e = cpu_models_in(
            Path::new(QEMU),
            Accel::Auto,
            parent.path(),
            CPU_QUERY_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("not auto"), "{e}");
        let missing = parent.path().join("no-such-qemu");
        let e = cpu_models_in(&missing, Accel::Tcg, parent.path(), CPU_QUERY_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(e, QemuError::Spawn(_)), "{e}");
        assert!(leftovers(parent.path()).is_empty());
    }

    #[tokio::test]
    async fn a_qemu_that_exits_at_once_is_reported() {
        let parent = tempfile::tempdir().unwrap();
        let e = cpu_models_in(
            Path::new("/bin/false"),
            Accel::Tcg,
            parent.path(),
            CPU_QUERY_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("exited"), "{e}");
        assert!(leftovers(parent.path()).is_empty());
    }

    #[tokio::test]
    async fn a_hanging_qemu_is_killed_at_the_timeout() {
        use std::os::unix::fs::PermissionsExt;
        // A stand-in QEMU that records its pid and then never opens a socket.
        let bin = tempfile::tempdir().unwrap();
        let pidfile = bin.path().join("pid");
        let script = bin.path().join("qemu");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho $$ > '{}'\nexec sleep 60\n",
                pidfile.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let parent = tempfile::tempdir().unwrap();
        // Exec'ing a file written a moment ago can fail with ETXTBSY while another test
        // thread forks (the child briefly holds the write descriptor): try again then.
        let mut attempt = 0;
        let (e, started) = loop {
            let started = std::time::Instant::now();
            let e = cpu_models_in(
                &script,
                Accel::Tcg,
                parent.path(),
                Duration::from_millis(700),
            )
            .await
            .unwrap_err();
            attempt += 1;
            if !e.to_string().contains("busy") || attempt == 5 {
                break (e, started);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(e.to_string().contains("within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !crate::process::pid_alive(pid),
            "stand-in QEMU {pid} still runs"
        );
        assert!(leftovers(parent.path()).is_empty());
    }
}
