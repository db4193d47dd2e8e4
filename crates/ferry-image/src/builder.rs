//! [`build`]: assembles an image in a temporary directory of the cache and swaps it into place.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::initramfs::{self, Contents, HOST_BUSYBOX};
use crate::kernel;
use crate::{
    check_static_executable, command, file_info, load, sha256_hex, validate_name, BuildOptions,
    FileInfo, Image, ImageError, Inputs, Manifest, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE, RECIPE,
};

/// Runs apt steps, refreshing the package lists once (as root) when apt looks stale.
struct Apt {
    updated: bool,
    is_root: bool,
}

impl Apt {
    fn retry<T>(
        &mut self,
        progress: &mut dyn FnMut(&str),
        mut step: impl FnMut(&mut dyn FnMut(&str)) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        match step(progress) {
            Err(ImageError::AptStale { package, detail }) if !self.updated && self.is_root => {
                progress(&format!(
                    "apt could not get {package}; refreshing package lists with `apt-get update`"
                ));
                self.updated = true;
                if let Err(e) = command::run("apt-get", ["update", "-q"], None) {
                    return Err(ImageError::AptStale {
                        package,
                        detail: format!("{detail}; `apt-get update` failed too: {e}"),
                    });
                }
                step(progress)
            }
            other => other,
        }
    }
}

/// Takes the per-image build lock, waiting (and saying so) if another build holds it.
fn lock(
    cache_dir: &Path,
    name: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Flock<File>, ImageError> {
    let path = cache_dir.join(format!(".{name}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ImageError::io(format!("opening lock file {}", path.display()), e))?;
    let lock_err = |e: Errno| {
        ImageError::io(
            format!("locking {}", path.display()),
            std::io::Error::from(e),
        )
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((file, Errno::EWOULDBLOCK)) => {
            progress(&format!(
                "waiting for another build of image `{name}` to finish"
            ));
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| lock_err(e))
        }
        Err((_, e)) => Err(lock_err(e)),
    }
}

fn read_busybox() -> Result<(Vec<u8>, Vec<String>), ImageError> {
    let path = Path::new(HOST_BUSYBOX);
    if !path.exists() {
        return Err(ImageError::Busybox(format!(
            "{HOST_BUSYBOX} not found: install the busybox-static package"
        )));
    }
    let bytes = check_static_executable(path).map_err(|e| {
        ImageError::Busybox(format!(
            "{e} (the guest needs a static busybox: install busybox-static, not busybox)"
        ))
    })?;
    let list = command::run(HOST_BUSYBOX, ["--list-full"], None)?;
    Ok((bytes, initramfs::parse_applets(&list)?))
}

/// Builds the image described by `opts` (see the crate docs), reporting steps to `progress`.
/// Returns the existing image untouched when it is up to date and `opts.force` is false.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<Image, ImageError> {
    validate_name(&opts.name)?;
    let cache = &opts.cache_dir;
    fs::create_dir_all(cache)
        .map_err(|e| ImageError::io(format!("creating cache directory {}", cache.display()), e))?;

    let guest = check_static_executable(&opts.guest_bin)?;
    let (busybox, applets) = read_busybox()?;
    let _lock = lock(cache, &opts.name, progress)?;

    let mut apt = Apt {
        updated: false,
        is_root: nix::unistd::geteuid().is_root(),
    };
    progress(&format!("resolving {}", kernel::KERNEL_METAPACKAGE));
    let pkg = apt.retry(progress, |_| kernel::resolve())?;
    let inputs = Inputs {
        kernel: pkg,
        guest_sha256: sha256_hex(&guest),
        busybox_sha256: sha256_hex(&busybox),
    };
    if !opts.force {
        match load(cache, &opts.name) {
            Ok(img) if img.manifest.built_from(&inputs) => {
                progress(&format!(
                    "image `{}` is up to date ({} {}) in {}",
                    opts.name,
                    inputs.kernel.name,
                    inputs.kernel.version,
                    img.dir.display()
                ));
                return Ok(img);
            }
            Ok(_) => progress("image is out of date: rebuilding"),
            Err(ImageError::NotBuilt { .. }) => {}
            Err(e) => progress(&format!("existing image unusable, rebuilding: {e}")),
        }
    }

    // Everything is built inside the cache (same file system, so the final rename is atomic)
    // and the temporary directory is removed on every exit path.
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}.build-", opts.name))
        .tempdir_in(cache)
        .map_err(|e| {
            ImageError::io(
                format!("creating a temporary directory in {}", cache.display()),
                e,
            )
        })?;
    let deb_dir = work.path().join("deb");
    let root = work.path().join("root");
    let out = work.path().join("out");
    for d in [&deb_dir, &root, &out] {
        fs::create_dir(d).map_err(|e| ImageError::io(format!("creating {}", d.display()), e))?;
    }

    let mut attempt = 0;
    let deb = apt.retry(progress, |progress| {
        attempt += 1;
        // After an `apt-get update` the metapackage may point at a newer kernel.
        let pkg = if attempt == 1 {
            inputs.kernel.clone()
        } else {
            kernel::resolve()?
        };
        progress(&format!("downloading {} {}", pkg.name, pkg.version));
        kernel::download(&pkg, &deb_dir)
    })?;
    let (deb_name, deb_version) = kernel::deb_identity(&deb)?;
    progress(&format!("unpacking {deb_name} {deb_version}"));
    kernel::unpack(&deb, &root)?;
    let unpacked = kernel::locate(&root)?;

    let selection = kernel::select_modules(&unpacked)?;
    let names: Vec<String> = selection.modules.iter().map(|(n, _)| n.clone()).collect();
    progress(&format!("modules (load order): {}", names.join(" ")));
    if !selection.builtin.is_empty() {
        progress(&format!(
            "built into the kernel: {}",
            selection.builtin.join(" ")
        ));
    }
    if !selection.missing.is_empty() {
        progress(&format!(
            "warning: not in this kernel at all: {}",
            selection.missing.join(" ")
        ));
    }

    let kernel_path = out.join(KERNEL_FILE);
    fs::copy(&unpacked.vmlinuz, &kernel_path).map_err(|e| {
        ImageError::io(
            format!(
                "copying {} to {}",
                unpacked.vmlinuz.display(),
                kernel_path.display()
            ),
            e,
        )
    })?;
    sync_file(&kernel_path)?;
    let initrd_path = out.join(INITRD_FILE);
    progress("writing initramfs");
    initramfs::write_initrd(
        &initrd_path,
        &Contents {
            busybox: &busybox,
            applets: &applets,
            guest: &guest,
            modules: &selection.modules,
        },
    )?;

    let manifest = Manifest {
        name: opts.name.clone(),
        recipe: RECIPE,
        kernel_package: deb_name,
        kernel_version: deb_version,
        kernel_release: unpacked.release,
        kernel: file_info(&kernel_path)?,
        initrd: file_info(&initrd_path)?,
        guest_sha256: inputs.guest_sha256,
        busybox_sha256: inputs.busybox_sha256,
        modules: names,
        built_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    write_manifest(&out.join(MANIFEST_FILE), &manifest)?;

    let dir = install(&out, &cache.join(&opts.name), &work.path().join("old"))?;
    progress(&format!(
        "image `{}` ready in {} (kernel {}, initrd {})",
        opts.name,
        dir.display(),
        human(&manifest.kernel),
        human(&manifest.initrd)
    ));
    Ok(Image {
        kernel: dir.join(KERNEL_FILE),
        initrd: dir.join(INITRD_FILE),
        dir,
        manifest,
    })
}

fn human(f: &FileInfo) -> String {
    format!("{:.1} MiB", f.size as f64 / (1024.0 * 1024.0))
}

fn sync_file(path: &Path) -> Result<(), ImageError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| ImageError::io(format!("syncing {}", path.display()), e))
}

fn write_manifest(path: &Path, m: &Manifest) -> Result<(), ImageError> {
    let mut text = serde_json::to_string_pretty(m).map_err(|e| {
        ImageError::io(
            format!("encoding {}", path.display()),
            std::io::Error::other(e),
        )
    })?;
    text.push('\n');
    fs::write(path, text).map_err(|e| ImageError::io(format!("writing {}", path.display()), e))?;
    sync_file(path)
}

/// Moves the finished `new` directory to `dest`; an existing `dest` is first moved to `old`
/// (inside the temporary directory, which removes it). Each rename is atomic, so `dest` is at
/// every moment either the complete old image, absent, or the complete new one.
fn install(new: &Path, dest: &Path, old: &Path) -> Result<PathBuf, ImageError> {
    if dest.exists() {
        fs::rename(dest, old).map_err(|e| {
            ImageError::io(format!("moving the old image {} aside", dest.display()), e)
        })?;
    }
    fs::rename(new, dest)
        .map_err(|e| ImageError::io(format!("moving the new image to {}", dest.display()), e))?;
    Ok(dest.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_replaces_an_existing_image_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("test-guest");
        let work = tempfile::tempdir_in(tmp.path()).unwrap();
        for (dir, content) in [(&dest, "old"), (&work.path().join("out"), "new")] {
            fs::create_dir(dir).unwrap();
            fs::write(dir.join(KERNEL_FILE), content).unwrap();
        }
        fs::write(dest.join("stale-extra-file"), "x").unwrap();
        install(&work.path().join("out"), &dest, &work.path().join("old")).unwrap();
        assert_eq!(fs::read_to_string(dest.join(KERNEL_FILE)).unwrap(), "new");
        assert!(!dest.join("stale-extra-file").exists());
        drop(work);
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the image remains: {left:?}");
    }

    #[test]
    fn lock_is_exclusive_and_reentrant_after_release() {
        let tmp = tempfile::tempdir().unwrap();
        let mut said = Vec::new();
        let first = lock(tmp.path(), "img", &mut |m| said.push(m.to_string())).unwrap();
        // A second, independent open of the lock file cannot take it while `first` holds it.
        let f = File::open(tmp.path().join(".img.lock")).unwrap();
        assert!(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err());
        drop(first);
        let _again = lock(tmp.path(), "img", &mut |m| said.push(m.to_string())).unwrap();
        assert!(said.is_empty(), "no waiting expected: {said:?}");
    }
}
