//! What the image boot tests share: a QEMU command line that boots the test guest under
//! TCG with its serial console in a file, and a guard that kills QEMU however a test ends.

#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::{Child, Command};

/// Kills QEMU (SIGKILL) however the test ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// `qemu-system-x86_64` booting `kernel`/`initrd` with `cmdline` under TCG (512 MiB, one
/// vCPU, no default devices), the serial console written to `console`. Callers add devices
/// and standard streams, then spawn.
pub fn guest_command(kernel: &Path, initrd: &Path, cmdline: &str, console: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "512",
        "-smp",
        "1",
        "-nographic",
        "-nodefaults",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", cmdline, "-no-reboot"]);
    cmd
}
