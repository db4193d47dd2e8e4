//! QEMU as Ferry drives it.
//!
//! - [`binary`]: find `qemu-system-x86_64`, read its version (and refuse a QEMU older than 8:
//!   QEMU 7.2, Debian 12's own, loses dirty pages under TCG at high guest write rates), and
//!   read its machine types.
//! - [`cmdline`]: the VM spec to QEMU arguments, as a pure function. The same spec gives the
//!   same device layout on every host, which migration requires.
//! - [`accel`]: what `accel = auto` means on this host, decided from facts a probe gathers.
//! - [`process`]: launching QEMU so it outlives a restarted agent.
//! - [`cpu`]: the CPU models this host's QEMU can run, and what each one lacks here.

pub mod accel;
pub mod binary;
pub mod cmdline;
pub mod cpu;
pub mod process;

pub use accel::BootProbe;

pub use accel::{decide_accel, AccelDecision, AccelFacts};
pub use binary::{MachineInfo, QemuBinary, QemuVersion};
pub use cmdline::{build_args, ResolvedBoot, RuntimePaths, StartMode};
pub use cpu::cpu_models;
pub use process::QemuProcess;

/// Errors from running or inspecting QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("QEMU binary '{path}' not found or not runnable: {reason}")]
    Binary { path: String, reason: String },
    #[error("QEMU {found} is too old: Ferry needs QEMU 8 or newer (install QEMU 10 from Debian's bookworm-backports). QEMU 7.2 loses dirty pages under TCG when the guest writes fast, so a migration it reports as completed can corrupt guest memory")]
    TooOld { found: String },
    #[error("cannot read QEMU's output: {0}")]
    Parse(String),
    #[error(
        "machine type '{wanted}' is not offered by this QEMU ({version}); it offers e.g. {some}"
    )]
    UnknownMachine {
        wanted: String,
        version: String,
        some: String,
    },
    #[error("cannot start QEMU: {0}")]
    Spawn(String),
    #[error("QEMU's monitor (QMP) failed: {0}")]
    Qmp(String),
    #[error("{0}")]
    Io(String),
}
