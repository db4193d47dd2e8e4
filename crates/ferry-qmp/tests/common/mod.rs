//! Starts real QEMU processes for the tests, and kills them on drop (also when a test fails).

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ferry_qmp::{QmpClient, QmpOptions};

pub const QEMU: &str = "qemu-system-x86_64";

/// A QEMU process in its own temporary directory, QMP on `<dir>/qmp.sock`.
pub struct Qemu {
    child: Child,
    pub dir: tempfile::TempDir,
    pub qmp_path: PathBuf,
    pub name: String,
}

impl Qemu {
    /// `qemu-system-x86_64 -accel tcg -nodefaults -display none -qmp unix:...` plus `args`
    /// (which should choose the machine).
    pub fn spawn(name: &str, args: &[&str]) -> Qemu {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferry-qmp-{name}-"))
            .tempdir()
            .expect("temp dir");
        let qmp_path = dir.path().join("qmp.sock");
        let log = std::fs::File::create(dir.path().join("qemu.log")).expect("log file");
        let child = Command::new(QEMU)
            .args([
                "-name",
                name,
                "-accel",
                "tcg",
                "-nodefaults",
                "-no-user-config",
            ])
            .args(["-display", "none", "-serial", "none", "-monitor", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));
        Qemu {
            child,
            dir,
            qmp_path,
            name: name.into(),
        }
    }

    /// Connects to its QMP socket (retrying while QEMU starts up).
    pub async fn connect(&mut self) -> QmpClient {
        match QmpClient::connect_with_retry(&self.qmp_path, Duration::from_secs(20)).await {
            Ok(client) => client,
            Err(e) => panic!(
                "QMP connect to {} failed: {e}\nexit: {:?}\nQEMU output:\n{}",
                self.name,
                self.child.try_wait(),
                self.log()
            ),
        }
    }

    /// Connects with explicit options (e.g. out-of-band execution), retrying while QEMU starts.
    pub async fn connect_with(&mut self, options: QmpOptions) -> QmpClient {
        let options = QmpOptions {
            connect_retry: Some(Duration::from_secs(20)),
            ..options
        };
        QmpClient::connect_with(&self.qmp_path, options)
            .await
            .unwrap_or_else(|e| panic!("QMP connect to {} failed: {e}\n{}", self.name, self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qemu.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
