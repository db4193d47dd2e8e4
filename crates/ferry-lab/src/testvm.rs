//! The test guest: making sure its image exists, and the spec of a VM that boots it (with
//! or without a NIC on the network lab's VM network).

use std::path::PathBuf;

use ferry_api::{Accel, Boot, VmSpec};

/// Builds the test image if it is missing or stale (idempotent and quick when up to date).
/// Returns the image cache directory agents should use.
pub fn ensure_test_image(progress: &mut dyn FnMut(&str)) -> Result<PathBuf, String> {
    let guest = ferry_image::find_guest_binary().map_err(|e| e.to_string())?;
    let opts = ferry_image::BuildOptions::new(guest);
    let cache = opts.cache_dir.clone();
    ferry_image::build(&opts, progress).map_err(|e| e.to_string())?;
    Ok(cache)
}

/// A VM booting the test guest, whose workload fills `workload_mib` and rewrites
/// `rate_mib_s` MiB/s.
pub fn test_vm_spec(name: &str, memory_mib: u64, workload_mib: u64, rate_mib_s: f64) -> VmSpec {
    VmSpec {
        ha: None,
        name: name.to_string(),
        vcpus: 1,
        memory_mib,
        boot: Boot::Image {
            image: ferry_image::DEFAULT_IMAGE_NAME.to_string(),
            cmdline: ferry_image::kernel_cmdline(workload_mib, rate_mib_s),
        },
        accel: Accel::Auto,
        machine: ferry_api::default_machine(),
        cpu_model: ferry_api::default_cpu_model(),
        nics: vec![],
        disks: vec![],
    }
}

/// [`test_vm_spec`] with one NIC on the lab's VM network (`vmnet`) and the guest's
/// address `ip` (a /24), its TCP service on [`crate::probe::GUEST_PORT`].
pub fn networked_vm_spec(
    name: &str,
    memory_mib: u64,
    workload_mib: u64,
    rate_mib_s: f64,
    ip: &str,
) -> VmSpec {
    let mut spec = test_vm_spec(name, memory_mib, workload_mib, rate_mib_s);
    spec.nics = vec![ferry_api::NicSpec {
        network: "vmnet".into(),
        mac: None,
    }];
    if let Boot::Image { cmdline, .. } = &mut spec.boot {
        *cmdline = ferry_image::kernel_cmdline_with_net(
            workload_mib,
            rate_mib_s,
            Some(&format!("{ip}/24")),
            crate::probe::GUEST_PORT,
        );
    }
    spec
}
