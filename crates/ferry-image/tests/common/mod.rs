//! What the image boot tests share: a QEMU command line that boots the test guest under
//! TCG with its serial console in a file, and a guard that kills QEMU however a test ends.

#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::{Child, Command};

use ferry_image::{find_guest_binary, BuildOptions, DEFAULT_IMAGE_NAME, GUEST_BUILD_COMMAND};

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

/// Options that build the test image into `dir/images` from the static guest binary, or a
/// panic that says how to build that binary.
pub fn build_options(dir: &Path) -> BuildOptions {
    let guest = find_guest_binary().unwrap_or_else(|e| {
        panic!(
            "{e}\n\nThis test boots the real guest; build it first with:\n  {GUEST_BUILD_COMMAND}"
        )
    });
    BuildOptions {
        cache_dir: dir.join("images"),
        name: DEFAULT_IMAGE_NAME.to_string(),
        guest_bin: guest,
        force: false,
    }
}
