//! Getting the guest kernel from Debian: resolve the metapackage, download the real package
//! with apt, unpack it with dpkg-deb (never installed into /boot), and pick out `vmlinuz` and the
//! virtio modules with their dependencies in load order.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{command, elf, ImageError};

/// Debian metapackage whose dependency is the current cloud kernel. The cloud flavour has the
/// virtio drivers and boots fast; its storage and network drivers are modules, so we load them
/// from the initramfs.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the guest loads, in this order, each after its dependencies: the PCI transport,
/// then network (virtio_net pulls in failover/net_failover) and disks (virtio-blk, and
/// virtio-scsi with the SCSI disk driver). Whatever the kernel has built in is skipped.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
];

/// A resolved kernel package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    /// Real package name, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub name: String,
    /// Candidate version apt would download, e.g. `6.1.192-2`.
    pub version: String,
}

/// Module names treat `-` and `_` alike; use `_` everywhere.
pub fn normalize_module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The first `linux-image-*` dependency in `apt-cache depends` output.
pub fn parse_depends(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let l = l.trim().trim_start_matches('|');
        let dep = l.strip_prefix("Depends:")?.trim();
        (dep.starts_with("linux-image-") && !dep.starts_with('<')).then(|| dep.to_string())
    })
}

/// The `Candidate:` version in `apt-cache policy` output (`None` for "(none)").
pub fn parse_candidate(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let v = l.trim().strip_prefix("Candidate:")?.trim();
        (!v.is_empty() && v != "(none)").then(|| v.to_string())
    })
}

/// A failing apt command most likely means missing or stale package lists; anything else
/// (apt not installed, ...) is passed on as it is.
fn apt_error(package: &str, err: ImageError) -> ImageError {
    match err {
        ImageError::CommandFailed { .. } => ImageError::AptStale {
            package: package.to_string(),
            detail: err.to_string(),
        },
        other => other,
    }
}

/// Resolves [`KERNEL_METAPACKAGE`] to the real kernel package and the version apt's default
/// candidate has (the bookworm 6.1 kernel on Debian 12, not backports). Reads only the local
/// package lists, so it is cheap and works offline.
pub fn resolve() -> Result<KernelPackage, ImageError> {
    let meta = KERNEL_METAPACKAGE;
    let out = command::run("apt-cache", ["depends", meta], None).map_err(|e| apt_error(meta, e))?;
    let name = parse_depends(&out).ok_or_else(|| ImageError::AptStale {
        package: meta.to_string(),
        detail: format!("`apt-cache depends {meta}` lists no linux-image-* dependency"),
    })?;
    let policy = command::run("apt-cache", ["policy", name.as_str()], None)
        .map_err(|e| apt_error(&name, e))?;
    let version = parse_candidate(&policy).ok_or_else(|| ImageError::AptStale {
        package: name.clone(),
        detail: format!("`apt-cache policy {name}` shows no candidate version"),
    })?;
    Ok(KernelPackage { name, version })
}

/// Downloads the package's candidate `.deb` into `dir` (apt-get writes to its working
/// directory) and returns its path.
pub fn download(pkg: &KernelPackage, dir: &Path) -> Result<PathBuf, ImageError> {
    command::run("apt-get", ["download", "-q", pkg.name.as_str()], Some(dir))
        .map_err(|e| apt_error(&pkg.name, e))?;
    let prefix = format!("{}_", pkg.name);
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ImageError::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io(format!("reading {}", dir.display()), e))?;
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if file.starts_with(&prefix) && file.ends_with(".deb") {
            return Ok(entry.path());
        }
    }
    Err(ImageError::Kernel(format!(
        "`apt-get download {}` succeeded but left no {prefix}*.deb in {}",
        pkg.name,
        dir.display()
    )))
}

/// `(Package, Version)` recorded in a `.deb`.
pub fn deb_identity(deb: &Path) -> Result<(String, String), ImageError> {
    let out = command::run(
        "dpkg-deb",
        [
            OsStr::new("--field"),
            deb.as_os_str(),
            OsStr::new("Package"),
            OsStr::new("Version"),
        ],
        None,
    )?;
    let mut package = None;
    let mut version = None;
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("Package:") {
            package = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Version:") {
            version = Some(v.trim().to_string());
        }
    }
    match (package, version) {
        (Some(p), Some(v)) => Ok((p, v)),
        _ => Err(ImageError::Kernel(format!(
            "{} has no Package/Version fields: not a Debian package?",
            deb.display()
        ))),
    }
}

/// Unpacks a `.deb`'s files under `dest` (no maintainer scripts run, nothing is installed).
pub fn unpack(deb: &Path, dest: &Path) -> Result<(), ImageError> {
    command::run(
        "dpkg-deb",
        [OsStr::new("-x"), deb.as_os_str(), dest.as_os_str()],
        None,
    )?;
    Ok(())
}

/// The interesting paths of an unpacked kernel package.
#[derive(Debug, Clone)]
pub struct UnpackedKernel {
    /// `boot/vmlinuz-<release>`.
    pub vmlinuz: PathBuf,
    /// Kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// `lib/modules/<release>` (or under `usr/` on merged-/usr packages).
    pub modules_dir: PathBuf,
}

/// Finds the kernel image and module tree in an unpacked package.
pub fn locate(root: &Path) -> Result<UnpackedKernel, ImageError> {
    let boot = root.join("boot");
    let entries = std::fs::read_dir(&boot).map_err(|e| {
        ImageError::io(
            format!("kernel package has no boot/ directory ({})", boot.display()),
            e,
        )
    })?;
    let mut found = None;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io(format!("reading {}", boot.display()), e))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(release) = file.strip_prefix("vmlinuz-") {
            if found.is_some() {
                return Err(ImageError::Kernel(format!(
                    "more than one vmlinuz-* in {}",
                    boot.display()
                )));
            }
            found = Some((entry.path(), release.to_string()));
        }
    }
    let (vmlinuz, release) =
        found.ok_or_else(|| ImageError::Kernel(format!("no vmlinuz-* in {}", boot.display())))?;
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&release))
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            ImageError::Kernel(format!("no lib/modules/{release} in the kernel package"))
        })?;
    Ok(UnpackedKernel {
        vmlinuz,
        release,
        modules_dir,
    })
}

/// Module name of a module file (`virtio-rng.ko.xz` → `virtio_rng`), if it is one.
fn module_name(file: &str) -> Option<String> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .map(normalize_module_name)
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> Result<(), ImageError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ImageError::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io(format!("reading {}", dir.display()), e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
        if kind.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = module_name(&entry.file_name().to_string_lossy()) {
            index.insert(name, path);
        }
    }
    Ok(())
}

/// Reads a module file, decompressing `.ko.xz` / `.ko.zst` with the host's `xz` / `zstd`
/// (busybox `insmod` in the guest takes only plain `.ko`).
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let name = path.to_string_lossy();
    let io_err = |e| ImageError::io(format!("reading {}", path.display()), e);
    if name.ends_with(".ko.xz") {
        command::run_bytes("xz", [OsStr::new("-dc"), path.as_os_str()], None)
    } else if name.ends_with(".ko.zst") {
        command::run_bytes("zstd", [OsStr::new("-dcq"), path.as_os_str()], None)
    } else if name.ends_with(".ko.gz") {
        let file = std::fs::File::open(path).map_err(io_err)?;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut out)
            .map_err(io_err)?;
        Ok(out)
    } else {
        std::fs::read(path).map_err(io_err)
    }
}

/// Orders `wanted` modules and their dependencies so that each comes after what it depends
/// on. `lookup(name)` gives a module's dependencies, or `None` if the kernel has it built in
/// (it is then left out). Errors on unknown modules and dependency cycles.
pub fn load_order<F>(wanted: &[&str], mut lookup: F) -> Result<Vec<String>, ImageError>
where
    F: FnMut(&str) -> Result<Option<Vec<String>>, ImageError>,
{
    fn visit<F>(
        name: &str,
        lookup: &mut F,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ImageError>
    where
        F: FnMut(&str) -> Result<Option<Vec<String>>, ImageError>,
    {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(ImageError::Kernel(format!(
                "module dependency cycle: {} -> {name}",
                path.join(" -> ")
            )));
        }
        let Some(deps) = lookup(name)? else {
            done.insert(name.to_string());
            return Ok(());
        };
        path.push(name.to_string());
        for dep in &deps {
            visit(dep, lookup, done, path, order)?;
        }
        path.pop();
        done.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    for w in wanted {
        visit(
            &normalize_module_name(w),
            &mut lookup,
            &mut done,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok(order)
}

/// Modules picked for the initramfs.
#[derive(Debug, Clone, Default)]
pub struct ModuleSelection {
    /// `(name, plain .ko contents)` in load order.
    pub modules: Vec<(String, Vec<u8>)>,
    /// Wanted modules the kernel has built in (nothing to load).
    pub builtin: Vec<String>,
    /// Wanted modules the kernel has neither built in nor as a module.
    pub missing: Vec<String>,
}

/// Collects [`GUEST_MODULES`] and their dependencies from an unpacked kernel.
pub fn select_modules(kernel: &UnpackedKernel) -> Result<ModuleSelection, ImageError> {
    let builtin_path = kernel.modules_dir.join("modules.builtin");
    let builtin_text = std::fs::read_to_string(&builtin_path)
        .map_err(|e| ImageError::io(format!("reading {}", builtin_path.display()), e))?;
    let builtin: BTreeSet<String> = builtin_text
        .lines()
        .filter_map(|l| module_name(l.rsplit('/').next().unwrap_or(l)))
        .collect();
    let mut index = BTreeMap::new();
    index_modules(&kernel.modules_dir, &mut index)?;

    let mut sel = ModuleSelection::default();
    let mut wanted = Vec::new();
    for &w in GUEST_MODULES {
        let n = normalize_module_name(w);
        if builtin.contains(&n) {
            sel.builtin.push(n);
        } else if !index.contains_key(&n) {
            sel.missing.push(n);
        } else {
            wanted.push(w);
        }
    }
    let mut contents = BTreeMap::new();
    let order = load_order(&wanted, |name| {
        if builtin.contains(name) {
            return Ok(None);
        }
        let path = index.get(name).ok_or_else(|| {
            ImageError::Kernel(format!(
                "module {name} is needed but is neither built in nor in {}",
                kernel.modules_dir.display()
            ))
        })?;
        let bytes = read_module(path)?;
        let deps = elf::module_depends(&bytes)
            .map_err(|e| ImageError::Kernel(format!("{}: {e}", path.display())))?;
        contents.insert(name.to_string(), bytes);
        Ok(Some(deps))
    })?;
    for name in order {
        let bytes = contents.remove(&name).ok_or_else(|| {
            ImageError::Kernel(format!("internal: module {name} ordered but not read"))
        })?;
        sel.modules.push((name, bytes));
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_output() {
        let depends = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(depends).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_depends("linux-image-cloud-amd64\n"), None);
        let alt = "x\n |Depends: <linux-image-virtual>\n  Depends: linux-image-6.12-cloud\n";
        assert_eq!(
            parse_depends(alt).as_deref(),
            Some("linux-image-6.12-cloud")
        );

        let policy = "linux-image-6.1.0-56-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n";
        assert_eq!(parse_candidate(policy).as_deref(), Some("6.1.192-2"));
        assert_eq!(parse_candidate("x:\n  Candidate: (none)\n"), None);
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("virtio_net.ko").as_deref(), Some("virtio_net"));
        assert_eq!(
            module_name("virtio-rng.ko.xz").as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(module_name("sd_mod.ko.zst").as_deref(), Some("sd_mod"));
        assert_eq!(module_name("modules.dep"), None);
    }

    #[test]
    fn load_order_puts_dependencies_first_and_skips_builtin() {
        let deps: BTreeMap<&str, Vec<&str>> = [
            ("virtio_net", vec!["virtio_ring", "virtio", "net_failover"]),
            ("net_failover", vec!["failover"]),
            ("failover", vec![]),
            ("virtio_ring", vec![]),
            ("virtio", vec![]),
            ("virtio_scsi", vec!["scsi_mod", "virtio_ring", "virtio"]),
            ("scsi_mod", vec!["scsi_common"]),
            ("scsi_common", vec![]),
        ]
        .into_iter()
        .collect();
        let order = load_order(&["virtio-net", "virtio_pci", "virtio_scsi"], |n| {
            if n == "virtio_pci" {
                return Ok(None); // built in
            }
            Ok(Some(deps[n].iter().map(|s| s.to_string()).collect()))
        })
        .unwrap();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "failover",
                "net_failover",
                "virtio_net",
                "scsi_common",
                "scsi_mod",
                "virtio_scsi"
            ]
        );
    }

    #[test]
    fn load_order_reports_cycles_and_unknown_modules() {
        let err = load_order(&["a"], |n| {
            Ok(Some(vec![if n == "a" { "b" } else { "a" }.to_string()]))
        })
        .unwrap_err();
        assert!(err.to_string().contains("cycle: a -> b -> a"), "{err}");
        let err =
            load_order(&["a"], |_| Err(ImageError::Kernel("no module a".into()))).unwrap_err();
        assert!(err.to_string().contains("no module a"));
    }
}
