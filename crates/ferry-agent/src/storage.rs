//! Storage pools: directories of qcow2 images, named in the agent's config
//! (`--pool local=/var/lib/ferry/pools/local`, `--pool san=/mnt/san:shared`). Specs and API
//! calls name pool and image, never host paths; image names are validated, so a path is
//! always `<pool dir>/<name>.qcow2`. Images are made and inspected with `qemu-img`, run with
//! argument lists.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_api::{validate_name, CreateDiskRequest, DiskImage, PoolInfo};

use crate::error::AgentError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub dir: PathBuf,
    pub shared: bool,
}

/// Parses `NAME=DIR` or `NAME=DIR:shared`.
pub fn parse_pool_arg(arg: &str) -> Result<Pool, String> {
    let (name, rest) = arg
        .split_once('=')
        .ok_or_else(|| format!("--pool '{arg}' must be NAME=DIR or NAME=DIR:shared"))?;
    let (dir, shared) = match rest.strip_suffix(":shared") {
        Some(d) => (d, true),
        None => (rest, false),
    };
    validate_name("pool name", name).map_err(|e| e.message)?;
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() {
        return Err(format!(
            "pool {name}: directory '{}' must be absolute",
            dir.display()
        ));
    }
    Ok(Pool {
        name: name.to_string(),
        dir,
        shared,
    })
}

const SUFFIX: &str = ".qcow2";

impl Pool {
    /// Makes sure the directory is there: a local pool's is created, a shared pool's must
    /// already be mounted (creating it would hide a missing mount).
    pub fn prepare(&self) -> Result<(), String> {
        if self.shared {
            if !self.dir.is_dir() {
                return Err(format!(
                    "shared pool {}: {} is not there (is the shared storage mounted?)",
                    self.name,
                    self.dir.display()
                ));
            }
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            format!(
                "pool {}: cannot create {}: {e}",
                self.name,
                self.dir.display()
            )
        })
    }

    pub fn image_path(&self, image: &str) -> Result<PathBuf, AgentError> {
        validate_name("disk name", image)?;
        Ok(self.dir.join(format!("{image}{SUFFIX}")))
    }

    pub fn info(&self) -> PoolInfo {
        // statvfs field types (c_ulong, fsblkcnt_t) differ between platforms; the casts are
        // no-ops only on 64-bit Linux.
        #[allow(clippy::unnecessary_cast)]
        let (total, free) = match nix::sys::statvfs::statvfs(&self.dir) {
            Ok(s) => {
                let frag = s.fragment_size() as u64;
                (s.blocks() as u64 * frag, s.blocks_available() as u64 * frag)
            }
            Err(_) => (0, 0),
        };
        PoolInfo {
            name: self.name.clone(),
            path: self.dir.display().to_string(),
            shared: self.shared,
            total_bytes: total,
            free_bytes: free,
        }
    }

    /// The images in the pool. `in_use` tells which VM on this host uses an image.
    pub fn list(
        &self,
        in_use: &dyn Fn(&str, &str) -> Option<String>,
    ) -> Result<Vec<DiskImage>, AgentError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            AgentError::storage(format!(
                "pool {}: cannot read {}: {e}",
                self.name,
                self.dir.display()
            ))
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(SUFFIX) else {
                continue;
            };
            if validate_name("disk name", name).is_err() {
                continue; // not ours
            }
            match self.describe(name, in_use(&self.name, name)) {
                Ok(d) => out.push(d),
                // Deleted between the directory read and the look inside (a migrated
                // VM's source image goes right after the switch): not in the pool now.
                Err(_) if !entry.path().exists() => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn describe(&self, name: &str, in_use_by: Option<String>) -> Result<DiskImage, AgentError> {
        let path = self.image_path(name)?;
        let info = qemu_img_info(&path)?;
        Ok(DiskImage {
            pool: self.name.clone(),
            name: name.to_string(),
            format: info["format"].as_str().unwrap_or("?").to_string(),
            virtual_size: info["virtual-size"].as_u64().unwrap_or(0),
            actual_size: info["actual-size"].as_u64().unwrap_or(0),
            in_use_by,
        })
    }

    pub fn create(&self, req: &CreateDiskRequest) -> Result<DiskImage, AgentError> {
        req.validate()?;
        let path = self.image_path(&req.name)?;
        if path.exists() {
            return Err(AgentError::refused(format!(
                "disk '{}' already exists in pool {}",
                req.name, self.name
            )));
        }
        let needed = req.size_mib << 20;
        let free = self.info().free_bytes;
        if !self.shared && free < needed / 16 {
            // qcow2 is thin, but a pool that cannot even hold the metadata is full.
            return Err(AgentError::refused(format!(
                "pool {} has {} MiB free; refusing a {} MiB disk",
                self.name,
                free >> 20,
                req.size_mib
            )));
        }
        run_qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            path.as_os_str(),
            format!("{}M", req.size_mib).as_ref(),
        ])?;
        self.describe(&req.name, None)
    }

    /// An empty image of exactly `virtual_size` bytes, as the target of a storage copy.
    /// Refuses to touch an image that already exists.
    pub fn create_copy_target(&self, name: &str, virtual_size: u64) -> Result<PathBuf, AgentError> {
        let path = self.image_path(name)?;
        if self.shared {
            return Err(AgentError::refused(format!(
                "pool {} is shared; a copied disk needs a local pool",
                self.name
            )));
        }
        if path.exists() {
            return Err(AgentError::refused(format!(
                "disk '{name}' already exists in pool {} (a copy kept from an earlier move?); \
                 refusing to overwrite it",
                self.name
            )));
        }
        if virtual_size == 0 || !virtual_size.is_multiple_of(512) {
            return Err(AgentError::bad_request(format!(
                "virtual size {virtual_size} is not a positive multiple of 512 bytes"
            )));
        }
        run_qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            path.as_os_str(),
            virtual_size.to_string().as_ref(),
        ])?;
        Ok(path)
    }

    /// Removes an image without the in-use check (the caller owns it: a copy target).
    pub fn remove_image(&self, name: &str) -> Result<(), AgentError> {
        let path = self.image_path(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AgentError::storage(format!(
                "cannot remove {}: {e}",
                path.display()
            ))),
        }
    }

    pub fn delete(&self, name: &str, in_use_by: Option<String>) -> Result<(), AgentError> {
        let path = self.image_path(name)?;
        if let Some(vm) = in_use_by {
            return Err(AgentError::refused(format!(
                "disk '{name}' in pool {} is attached to VM {vm}; stop or delete the VM first",
                self.name
            )));
        }
        if !path.exists() {
            return Err(AgentError::not_found(format!(
                "no disk '{name}' in pool {}",
                self.name
            )));
        }
        std::fs::remove_file(&path)
            .map_err(|e| AgentError::storage(format!("cannot remove {}: {e}", path.display())))
    }
}

fn run_qemu_img(args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, AgentError> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| AgentError::storage(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(AgentError::storage(format!(
            "qemu-img {} failed: {}",
            args.first()
                .map(|a| a.to_string_lossy())
                .unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Whether a pool image may be attached to a VM: qcow2 (the format is fixed, never probed)
/// and no backing file. QEMU would open a named backing file as root wherever it points
/// (any host file could become part of a guest's disk); Ferry never makes chains, so it
/// opens images without backing (`"backing": null`) and refuses one that names a backing
/// file rather than show the guest a disk with holes.
pub fn check_attachable(path: &Path, label: &str) -> Result<(), AgentError> {
    let info = qemu_img_info(path)?;
    let format = info["format"].as_str().unwrap_or("?");
    if format != "qcow2" {
        return Err(AgentError::bad_request(format!(
            "disk {label} is {format}, not qcow2; pool images are qcow2"
        )));
    }
    if let Some(backing) = info.get("backing-filename").and_then(|b| b.as_str()) {
        return Err(AgentError::bad_request(format!(
            "disk {label} names a backing file ({backing}); Ferry attaches only images without \
             one (flatten it first: qemu-img convert -O qcow2 IMAGE NEW)"
        )));
    }
    Ok(())
}

/// `qemu-img info -U`: -U (force share) because the image may be open by a running QEMU.
fn qemu_img_info(path: &Path) -> Result<serde_json::Value, AgentError> {
    let out = run_qemu_img(&[
        "info".as_ref(),
        "-U".as_ref(),
        "--output=json".as_ref(),
        path.as_os_str(),
    ])?;
    serde_json::from_slice(&out).map_err(|e| AgentError::storage(format!("qemu-img info: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_with_a_backing_file_or_another_format_are_not_attached() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let plain = dir.path().join("plain.qcow2");
        let chained = dir.path().join("chained.qcow2");
        run_qemu_img(&[
            "create".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            plain.as_os_str(),
            "1M".as_ref(),
        ])
        .unwrap();
        run_qemu_img(&[
            "create".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            base.as_os_str(),
            "-F".as_ref(),
            "raw".as_ref(),
            chained.as_os_str(),
        ])
        .unwrap();
        check_attachable(&plain, "p/plain").unwrap();
        let e = check_attachable(&chained, "p/chained").unwrap_err();
        assert!(e.to_string().contains("backing file"), "{e}");
        let e = check_attachable(&base, "p/base").unwrap_err();
        assert!(e.to_string().contains("not qcow2"), "{e}");
    }

    #[test]
    fn pool_args_parse_and_refuse_bad_ones() {
        assert_eq!(
            parse_pool_arg("san=/mnt/san:shared").unwrap(),
            Pool {
                name: "san".into(),
                dir: "/mnt/san".into(),
                shared: true
            }
        );
        assert!(!parse_pool_arg("local=/var/lib/x").unwrap().shared);
        for bad in ["local", "local=relative/dir", "../x=/d", "=/d"] {
            assert!(parse_pool_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_are_created_listed_and_deleted_with_qemu_img() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool {
            name: "local".into(),
            dir: dir.path().to_path_buf(),
            shared: false,
        };
        let none = |_: &str, _: &str| None;
        let img = pool
            .create(&CreateDiskRequest {
                name: "data1".into(),
                size_mib: 64,
            })
            .unwrap();
        assert_eq!((img.format.as_str(), img.virtual_size), ("qcow2", 64 << 20));
        let again = pool.create(&CreateDiskRequest {
            name: "data1".into(),
            size_mib: 64,
        });
        assert!(again.unwrap_err().to_string().contains("already exists"));
        assert_eq!(pool.list(&none).unwrap().len(), 1);
        let busy = pool.delete("data1", Some("web1".into())).unwrap_err();
        assert!(busy.to_string().contains("attached to VM web1"));
        pool.delete("data1", None).unwrap();
        assert!(pool.list(&none).unwrap().is_empty());
        assert!(pool
            .delete("data1", None)
            .unwrap_err()
            .to_string()
            .contains("no disk"));
        assert!(pool.image_path("../../etc/passwd").is_err());
    }

    /// An image that disappears while the pool is listed is left out, not an error: a
    /// dangling link stands for one deleted between the directory read and `qemu-img info`.
    #[test]
    fn an_image_deleted_during_the_listing_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool {
            name: "local".into(),
            dir: dir.path().to_path_buf(),
            shared: false,
        };
        pool.create(&CreateDiskRequest {
            name: "kept".into(),
            size_mib: 1,
        })
        .unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("gone.qcow2")).unwrap();
        let listed = pool.list(&|_: &str, _: &str| None).unwrap();
        let names: Vec<&str> = listed.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["kept"]);
    }

    #[test]
    fn copy_targets_have_the_exact_size_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool {
            name: "local".into(),
            dir: dir.path().to_path_buf(),
            shared: false,
        };
        let none = |_: &str, _: &str| None;
        let odd = (64 << 20) + 4096;
        pool.create_copy_target("d1", odd).unwrap();
        assert_eq!(pool.list(&none).unwrap()[0].virtual_size, odd);
        let again = pool.create_copy_target("d1", odd).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{}", again);
        assert!(pool.create_copy_target("d2", 1000).is_err());
        assert!(pool.create_copy_target("../x", 4096).is_err());
        pool.remove_image("d1").unwrap();
        pool.remove_image("d1").unwrap(); // idempotent
        assert!(pool.list(&none).unwrap().is_empty());
        let shared = Pool {
            shared: true,
            ..pool
        };
        assert!(shared.create_copy_target("d3", 4096).is_err());
    }
}
