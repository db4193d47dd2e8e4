//! What `accel = auto` means on a host.
//!
//! `/dev/kvm` existing is not enough. In a nested, paravirtual KVM without VMX/SVM exposed,
//! KVM runs guest user mode natively but emulates guest kernel code instruction by
//! instruction: a probe that runs a few instructions passes, and a real Linux guest crawls
//! and then crashes. So KVM is chosen only when the CPU advertises VMX/SVM *and* a real
//! guest kernel, booted under KVM, reaches user space (prints its init's boot line) in time.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ferry_api::Accel;

/// What was observed on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelFacts {
    pub dev_kvm_present: bool,
    /// `vmx` or `svm` among /proc/cpuinfo's flags.
    pub cpu_virt_flag: bool,
    /// Outcome of booting the probe guest under KVM, if that was tried.
    pub boot_probe: Option<BootProbe>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootProbe {
    /// The guest's init printed its boot line after this long.
    ReachedUserspace { millis: u64 },
    /// It did not within the timeout, or QEMU failed; with what was seen.
    Failed { reason: String },
    /// No probe guest is available (the test image is not built).
    NoImage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    /// Kvm or Tcg, never Auto.
    pub accel: Accel,
    pub reason: String,
}

/// The pure decision: facts in, accelerator and a reason out.
pub fn decide_accel(facts: &AccelFacts) -> AccelDecision {
    let tcg = |reason: String| AccelDecision {
        accel: Accel::Tcg,
        reason,
    };
    if !facts.dev_kvm_present {
        return tcg("/dev/kvm is missing".into());
    }
    if !facts.cpu_virt_flag {
        return tcg(
            "/dev/kvm exists but the CPU shows no vmx/svm flag (nested paravirtual KVM): \
             guest kernel code would be emulated instruction by instruction"
                .into(),
        );
    }
    match &facts.boot_probe {
        Some(BootProbe::ReachedUserspace { millis }) => AccelDecision {
            accel: Accel::Kvm,
            reason: format!("a probe guest booted to user space under KVM in {millis} ms"),
        },
        Some(BootProbe::Failed { reason }) => {
            tcg(format!("a probe guest did not boot under KVM: {reason}"))
        }
        Some(BootProbe::NoImage) | None => tcg(
            "KVM looks available but was not proven with a real guest boot (build the test \
             image with `ferry image build` so the agent can probe)"
                .into(),
        ),
    }
}

/// Resolves a VM's requested accel against the host's decision.
pub fn resolve_requested(requested: Accel, host: &AccelDecision) -> Result<Accel, String> {
    match requested {
        Accel::Auto => Ok(host.accel),
        Accel::Tcg => Ok(Accel::Tcg),
        Accel::Kvm if host.accel == Accel::Kvm => Ok(Accel::Kvm),
        Accel::Kvm => Err(format!(
            "the VM asks for accel=kvm but KVM is not usable on this host: {}",
            host.reason
        )),
    }
}

/// Reads the cheap facts (no guest boot).
pub fn host_facts() -> AccelFacts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    AccelFacts {
        dev_kvm_present: Path::new("/dev/kvm").exists(),
        cpu_virt_flag: cpuinfo_has_virt_flag(&cpuinfo),
        boot_probe: None,
    }
}

pub fn cpuinfo_has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Boots `kernel`/`initrd` under KVM and waits for `marker` on the serial console.
/// Only called when the cheap facts allow KVM at all.
pub async fn boot_probe(
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    marker: &str,
    timeout: Duration,
) -> BootProbe {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let started = std::time::Instant::now();
    let child = tokio::process::Command::new(qemu)
        .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults"])
        .args(["-display", "none", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 ferry.mem_mib=16 ferry.rate_mib=0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return BootProbe::Failed {
                reason: format!("cannot start QEMU: {e}"),
            }
        }
    };
    let Some(stdout) = child.stdout.take() else {
        return BootProbe::Failed {
            reason: "no console pipe".into(),
        };
    };
    let mut lines = BufReader::new(stdout).lines();
    let wait = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(marker) {
                return true;
            }
        }
        false
    };
    let outcome = match tokio::time::timeout(timeout, wait).await {
        Ok(true) => BootProbe::ReachedUserspace {
            millis: started.elapsed().as_millis() as u64,
        },
        Ok(false) => BootProbe::Failed {
            reason: "QEMU exited before the guest reached user space".into(),
        },
        Err(_) => BootProbe::Failed {
            reason: format!(
                "the guest did not reach user space within {}s",
                timeout.as_secs()
            ),
        },
    };
    let _ = child.kill().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kvm: bool, flag: bool, probe: Option<BootProbe>) -> AccelFacts {
        AccelFacts {
            dev_kvm_present: kvm,
            cpu_virt_flag: flag,
            boot_probe: probe,
        }
    }

    #[test]
    fn kvm_only_when_a_real_guest_booted() {
        let ok = Some(BootProbe::ReachedUserspace { millis: 900 });
        assert_eq!(decide_accel(&facts(true, true, ok)).accel, Accel::Kvm);
        assert_eq!(decide_accel(&facts(true, true, None)).accel, Accel::Tcg);
        let failed = Some(BootProbe::Failed {
            reason: "timeout".into(),
        });
        assert_eq!(decide_accel(&facts(true, true, failed)).accel, Accel::Tcg);
    }

    #[test]
    fn nested_paravirtual_kvm_is_tcg_even_if_a_probe_claims_success() {
        // /dev/kvm present, no vmx/svm: whatever a probe says, guest kernels crawl.
        let ok = Some(BootProbe::ReachedUserspace { millis: 5 });
        let d = decide_accel(&facts(true, false, ok));
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("vmx/svm"), "{}", d.reason);
        assert_eq!(decide_accel(&facts(false, true, None)).accel, Accel::Tcg);
    }

    #[test]
    fn forced_kvm_is_refused_where_kvm_does_not_work() {
        let host = decide_accel(&facts(false, false, None));
        assert!(resolve_requested(Accel::Kvm, &host).is_err());
        assert_eq!(resolve_requested(Accel::Tcg, &host).unwrap(), Accel::Tcg);
        assert_eq!(resolve_requested(Accel::Auto, &host).unwrap(), Accel::Tcg);
    }

    #[test]
    fn reads_virt_flags_from_cpuinfo() {
        assert!(cpuinfo_has_virt_flag("flags\t\t: fpu vme vmx sse\n"));
        assert!(cpuinfo_has_virt_flag("flags\t\t: fpu svm\n"));
        assert!(!cpuinfo_has_virt_flag(
            "flags\t\t: fpu hypervisor sse\nvmx_flags: x\n"
        ));
    }
}
