//! Builds Ferry's test guest: a Debian cloud kernel plus a small initramfs (busybox, an `/init`
//! script, the virtio modules and the static `ferry-guest` workload).
//!
//! ```text
//! <cache>/test-guest/vmlinuz        kernel from Debian's linux-image-cloud-amd64 dependency
//! <cache>/test-guest/initrd.img     gzip newc cpio: /init, busybox, modules, /bin/ferry-guest
//! <cache>/test-guest/manifest.json  what went in (package, version, sizes, sha256s, time)
//! ```
//!
//! # API
//! - [`build`]`(&`[`BuildOptions`]`, progress)` builds (or finds up to date) an image and returns
//!   an [`Image`]. Idempotent: when the manifest records the same kernel package version, the
//!   same guest binary, the same busybox and the same build recipe, nothing is done unless
//!   `force` is set. The new image is assembled in a temporary directory inside the cache and
//!   renamed into place, under a per-image lock file (`<cache>/.<name>.lock`), so readers never
//!   see a half-written image and concurrent builds do not collide.
//! - [`load`]`(cache_dir, name)` returns an already built image or says to run
//!   `ferry image build`.
//! - [`default_cache_dir`], [`find_guest_binary`], [`kernel_cmdline`],
//!   [`kernel_cmdline_with_net`], [`kernel_cmdline_net`] (with [`GuestNet`]), [`with_disk`]
//!   and [`GUEST_BUILD_COMMAND`] help callers fill in the options and boot the result.
//!
//! # Host requirements
//! Debian's apt and dpkg (the kernel is fetched with `apt-get download` and unpacked with
//! `dpkg-deb -x`, never installed), the busybox-static package (`/bin/busybox`), and `xz` /
//! `zstd` only if the kernel ships compressed modules. If apt's package lists are missing or
//! stale, the build runs `apt-get update` once and retries when running as root; otherwise the
//! error says to run it.
//!
//! # Booting
//! `qemu-system-x86_64 -kernel <kernel> -initrd <initrd> -append "<kernel_cmdline(..)>"
//! -serial ... -no-reboot`. The guest prints the lines documented in `ferry_guest::status` on
//! the serial console; `/init` adds `FERRY-GUEST boot kernel=<release>` before starting the
//! workload and `FERRY-GUEST exited status=<n>` (then powers off) if it ever ends.
//!
//! # Networking
//! With `ferry.ip=ADDR/PREFIX` on the command line (and optionally `ferry.gw=ADDR`), `/init`
//! configures the first virtio-net NIC, `eth0`, with busybox `ip` (lo up, eth0 up, address,
//! default route) and prints `FERRY-GUEST net ip=<addr/prefix> mac=<mac>` (or
//! `FERRY-GUEST net error=<reason>`) before starting the workload, which then serves its TCP
//! protocol on `ferry.port` (default 7000, 0 = off) and prints `FERRY-GUEST tcp port=<n>`; see
//! `ferry_guest::service`. Give the VM e.g. `-netdev user,id=n0,hostfwd=tcp:127.0.0.1:<p>-<ADDR>:7000
//! -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56`.
//!
//! # Disk
//! With `ferry.disk=<name>` (see [`with_disk`]) the workload also runs its disk mode on
//! `/dev/<name>`: self-verifying 4 KiB blocks rewritten at `ferry.disk_rate_mib` MiB/s and
//! verified continuously (`FERRY-GUEST disk ...` lines; see `ferry_guest::disk`). A fresh disk
//! (first 4 KiB zero) is initialised; when the VM is started again with the same disk, the
//! workload finds its header, verifies every block once (`disk resume`, then
//! `disk verified-after-restart ... mismatches=<m>`) and carries on. Neither `/init` nor the
//! workload ever formats anything else: a disk holding other data, or a Ferry area of another
//! size, is refused with a `disk error` line. Give the VM e.g. `-blockdev
//! {"driver":"file","filename":"d.qcow2","node-name":"f0"} -blockdev
//! {"driver":"qcow2","file":"f0","node-name":"d0"} -device virtio-blk-pci,drive=d0`; the
//! first virtio-blk disk is `vda`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod command;
pub mod cpio;
pub mod elf;
mod guest_bin;
pub mod initramfs;
pub mod kernel;

pub use guest_bin::{
    candidates as guest_binary_candidates, check_static_executable, find_guest_binary,
    GUEST_BIN_ENV, GUEST_BUILD_COMMAND,
};
pub use kernel::{KernelPackage, GUEST_MODULES, KERNEL_METAPACKAGE};

/// Name of the image `ferry image build` makes by default.
pub const DEFAULT_IMAGE_NAME: &str = "test-guest";
/// Version of the build recipe (init script, layout, module list). Bump it when any of them
/// changes so that existing images are rebuilt.
pub const RECIPE: u32 = 2;
/// File names inside an image directory.
pub const KERNEL_FILE: &str = "vmlinuz";
/// See [`KERNEL_FILE`].
pub const INITRD_FILE: &str = "initrd.img";
/// See [`KERNEL_FILE`].
pub const MANIFEST_FILE: &str = "manifest.json";
/// Environment variable that moves the cache (images go to `$FERRY_CACHE_DIR/images`).
pub const CACHE_DIR_ENV: &str = "FERRY_CACHE_DIR";

/// Errors of this crate. Messages say what failed, why, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A host tool could not be started.
    #[error("cannot run `{program}` ({hint}): {source}")]
    Spawn {
        /// Program name.
        program: String,
        /// What to install.
        hint: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A host tool ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line, for display.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// apt could not resolve or download the kernel package.
    #[error("cannot get kernel package {package}: {detail}. The apt package lists are probably missing or stale: run `apt-get update` (as root) and retry")]
    AptStale {
        /// Package being resolved or downloaded.
        package: String,
        /// What apt said.
        detail: String,
    },
    /// The kernel package does not look as expected.
    #[error("kernel package: {0}")]
    Kernel(String),
    /// The host's busybox is missing or unusable.
    #[error("busybox: {0}")]
    Busybox(String),
    /// The guest binary is dynamically linked.
    #[error("{} is dynamically linked (it has an ELF interpreter), but the guest initramfs has no libc; build a static one with: {GUEST_BUILD_COMMAND}", path.display())]
    NotStatic {
        /// The offending binary.
        path: PathBuf,
    },
    /// The guest binary is not a usable x86-64 executable.
    #[error("{}: {reason}", path.display())]
    BadBinary {
        /// The offending file.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// No guest binary was found.
    #[error("ferry-guest binary not found{note}; looked at: {}. Build it with: {GUEST_BUILD_COMMAND} (or set ${GUEST_BIN_ENV})", display_paths(.searched))]
    GuestNotFound {
        /// Paths tried.
        searched: Vec<PathBuf>,
        /// Extra context.
        note: String,
    },
    /// The image was never built.
    #[error("image `{name}` is not built in {}: run `ferry image build`", dir.display())]
    NotBuilt {
        /// Image name.
        name: String,
        /// Directory where it was expected.
        dir: PathBuf,
    },
    /// The image directory exists but is inconsistent.
    #[error("image `{name}` in {} is damaged: {reason}; rebuild it with `ferry image build --force`", dir.display())]
    Damaged {
        /// Image name.
        name: String,
        /// Image directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Guest network settings the guest would refuse.
    #[error("guest network settings: {0}")]
    Network(String),
    /// The image name cannot be used as a directory name.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Size and checksum of one file of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// `manifest.json`: what an image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Image name.
    pub name: String,
    /// Build recipe version ([`RECIPE`]).
    pub recipe: u32,
    /// Kernel package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub kernel_package: String,
    /// Its Debian version, e.g. `6.1.192-2`.
    pub kernel_version: String,
    /// Kernel release (`uname -r` in the guest).
    pub kernel_release: String,
    /// `vmlinuz`.
    pub kernel: FileInfo,
    /// `initrd.img`.
    pub initrd: FileInfo,
    /// SHA-256 of the `ferry-guest` binary inside the initramfs.
    pub guest_sha256: String,
    /// SHA-256 of the busybox binary inside the initramfs.
    pub busybox_sha256: String,
    /// Modules in the initramfs, in load order.
    pub modules: Vec<String>,
    /// Build time, RFC 3339 UTC.
    pub built_at: String,
}

/// Inputs that decide whether an existing image is up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    kernel: KernelPackage,
    guest_sha256: String,
    busybox_sha256: String,
}

impl Manifest {
    fn built_from(&self, i: &Inputs) -> bool {
        self.recipe == RECIPE
            && self.kernel_package == i.kernel.name
            && self.kernel_version == i.kernel.version
            && self.guest_sha256 == i.guest_sha256
            && self.busybox_sha256 == i.busybox_sha256
    }
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `<cache>/<name>`.
    pub dir: PathBuf,
    /// `<dir>/vmlinuz`, for QEMU's `-kernel`.
    pub kernel: PathBuf,
    /// `<dir>/initrd.img`, for QEMU's `-initrd`.
    pub initrd: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Image {
    /// Re-hashes the kernel and initrd and compares with the manifest.
    pub fn verify(&self) -> Result<(), ImageError> {
        for (path, want) in [
            (&self.kernel, &self.manifest.kernel),
            (&self.initrd, &self.manifest.initrd),
        ] {
            let got = file_info(path)?;
            if &got != want {
                return Err(self.damaged(format!(
                    "{} has sha256 {} but the manifest records {}",
                    path.display(),
                    got.sha256,
                    want.sha256
                )));
            }
        }
        Ok(())
    }

    fn damaged(&self, reason: String) -> ImageError {
        ImageError::Damaged {
            name: self.manifest.name.clone(),
            dir: self.dir.clone(),
            reason,
        }
    }
}

/// What [`build`] should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Cache directory holding images ([`default_cache_dir`] by default).
    pub cache_dir: PathBuf,
    /// Image name, a plain directory name ([`DEFAULT_IMAGE_NAME`] by default).
    pub name: String,
    /// Static `ferry-guest` binary to put into the initramfs (see [`find_guest_binary`]).
    pub guest_bin: PathBuf,
    /// Rebuild even if the existing image is up to date.
    pub force: bool,
}

impl BuildOptions {
    /// Options for the default image in the default cache with the given guest binary.
    pub fn new(guest_bin: PathBuf) -> Self {
        BuildOptions {
            cache_dir: default_cache_dir(),
            name: DEFAULT_IMAGE_NAME.to_string(),
            guest_bin,
            force: false,
        }
    }
}

/// The image cache: `$FERRY_CACHE_DIR/images` if set, else `/var/cache/ferry/images` for root,
/// else `$HOME/.cache/ferry/images` (or under the temp dir without `$HOME`).
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(
        std::env::var_os(CACHE_DIR_ENV),
        nix::unistd::geteuid().is_root(),
        std::env::var_os("HOME"),
    )
}

fn cache_dir_from(
    ferry_cache: Option<std::ffi::OsString>,
    is_root: bool,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    if let Some(d) = ferry_cache.filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("images");
    }
    if is_root {
        return PathBuf::from("/var/cache/ferry/images");
    }
    match home.filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache/ferry/images"),
        None => std::env::temp_dir().join("ferry-cache/images"),
    }
}

/// Kernel command line for the test guest: serial console, reboot at once on panic (with
/// QEMU's `-no-reboot` the VM then exits instead of hanging), quiet boot (faster under TCG,
/// fewer lines to interleave with the workload's), and the workload settings read by
/// `ferry_guest::Config`. `rate_mib` should be finite and >= 0; the guest refuses other values
/// loudly.
pub fn kernel_cmdline(mem_mib: u64, rate_mib: f64) -> String {
    format!("console=ttyS0 panic=-1 quiet ferry.mem_mib={mem_mib} ferry.rate_mib={rate_mib}")
}

/// Network settings of the test guest, for [`kernel_cmdline_net`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    /// `ferry.ip`: `ADDR/PREFIX` of `eth0`, e.g. `172.30.5.100/24`.
    pub ip: String,
    /// `ferry.gw`: default gateway, inside the subnet of `ip`.
    pub gw: Option<String>,
    /// `ferry.port`: port of the guest's TCP service, 0 = no service.
    pub port: u16,
}

impl GuestNet {
    /// `ip` with no gateway and the default port
    /// ([`ferry_guest::config::DEFAULT_PORT`], 7000).
    pub fn new(ip: impl Into<String>) -> Self {
        GuestNet {
            ip: ip.into(),
            gw: None,
            port: ferry_guest::config::DEFAULT_PORT,
        }
    }

    /// Sets the default gateway.
    pub fn with_gateway(mut self, gw: impl Into<String>) -> Self {
        self.gw = Some(gw.into());
        self
    }

    /// Sets the TCP service port (0 disables the service).
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Checks the settings with the guest's own parser, so a mistake is caught before a VM
    /// is booted only to print a `config-error` line.
    pub fn validate(&self) -> Result<(), ImageError> {
        let words = net_words(self);
        ferry_guest::Config::parse(&words)
            .map(|_| ())
            .map_err(|errors| {
                ImageError::Network(
                    errors
                        .iter()
                        .map(|e| format!("{}={:?}: {}", e.key, e.value, e.reason))
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })
    }
}

/// A value as one command-line word: whitespace, quotes and control characters become `_`,
/// so a malformed value can only make the guest report a `config-error`, never add or split
/// kernel parameters.
fn cmdline_word(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn net_words(net: &GuestNet) -> String {
    let mut s = format!("ferry.ip={}", cmdline_word(&net.ip));
    if let Some(gw) = &net.gw {
        s.push_str(&format!(" ferry.gw={}", cmdline_word(gw)));
    }
    s.push_str(&format!(" ferry.port={}", net.port));
    s
}

/// [`kernel_cmdline`] plus the guest's network settings, if any: `ferry.ip=<ip>
/// ferry.port=<port>` appended (without `ip`, the result is exactly [`kernel_cmdline`] and the
/// guest has no network). `ip` is `ADDR/PREFIX`; see [`GuestNet::validate`] to check it first
/// (the guest refuses a bad one loudly, and whitespace or quotes in it are replaced so that
/// it stays one word).
pub fn kernel_cmdline_with_net(mem_mib: u64, rate_mib: f64, ip: Option<&str>, port: u16) -> String {
    let net = ip.map(|ip| GuestNet::new(ip).with_port(port));
    kernel_cmdline_net(mem_mib, rate_mib, net.as_ref())
}

/// [`kernel_cmdline`] plus `ferry.ip=.. [ferry.gw=..] ferry.port=..` from `net`, if given.
pub fn kernel_cmdline_net(mem_mib: u64, rate_mib: f64, net: Option<&GuestNet>) -> String {
    let mut s = kernel_cmdline(mem_mib, rate_mib);
    if let Some(net) = net {
        s.push(' ');
        s.push_str(&net_words(net));
    }
    s
}

/// `cmdline` plus the guest's disk workload settings: `ferry.disk=<dev>
/// [ferry.disk_mib=<mib>] ferry.disk_rate_mib=<rate_mib>`. `dev` is a block device name under
/// the guest's `/dev`, e.g. `vda` for the first virtio-blk disk; `mib` is the area used from
/// the start of the device, `0` to leave it out (the whole device, at most 1024 MiB);
/// `rate_mib` is the rewrite rate in MiB/s (`0` = write once, then only verify; it should be
/// finite and >= 0). Every value stays one word (whitespace and quotes become `_`), so a bad
/// one can only make the guest print a `config-error` line.
///
/// The disk must be empty (its first 4 KiB zero) on the first boot, or hold the area an
/// earlier boot made with the same `mib`: the guest refuses anything else rather than format
/// it.
pub fn with_disk(cmdline: &str, dev: &str, mib: u64, rate_mib: f64) -> String {
    let mut s = cmdline.trim_end().to_string();
    if !s.is_empty() {
        s.push(' ');
    }
    s.push_str(&format!("ferry.disk={}", cmdline_word(dev)));
    if mib != 0 {
        s.push_str(&format!(" ferry.disk_mib={mib}"));
    }
    s.push_str(&format!(
        " ferry.disk_rate_mib={}",
        cmdline_word(&rate_mib.to_string())
    ));
    s
}

fn validate_name(name: &str) -> Result<(), ImageError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.starts_with('.') {
        "must not start with '.'"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        "use only letters, digits, '-', '_' and '.'"
    } else {
        return Ok(());
    };
    Err(ImageError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_info(path: &Path) -> Result<FileInfo, ImageError> {
    let bytes =
        fs::read(path).map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
    Ok(FileInfo {
        size: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
    })
}

/// Loads the image `name` from `cache_dir`, checking that its files are present with the
/// recorded sizes (use [`Image::verify`] to also compare checksums).
pub fn load(cache_dir: &Path, name: &str) -> Result<Image, ImageError> {
    validate_name(name)?;
    let dir = cache_dir.join(name);
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = match fs::read_to_string(&manifest_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::NotBuilt {
                name: name.to_string(),
                dir,
            })
        }
        Err(e) => {
            return Err(ImageError::io(
                format!("reading {}", manifest_path.display()),
                e,
            ))
        }
    };
    let damaged = |reason: String| ImageError::Damaged {
        name: name.to_string(),
        dir: dir.clone(),
        reason,
    };
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| damaged(format!("{MANIFEST_FILE} is unreadable: {e}")))?;
    let image = Image {
        kernel: dir.join(KERNEL_FILE),
        initrd: dir.join(INITRD_FILE),
        dir: dir.clone(),
        manifest,
    };
    for (path, info) in [
        (&image.kernel, &image.manifest.kernel),
        (&image.initrd, &image.manifest.initrd),
    ] {
        let meta = fs::metadata(path).map_err(|e| damaged(format!("{}: {e}", path.display())))?;
        if meta.len() != info.size {
            return Err(damaged(format!(
                "{} is {} bytes, the manifest says {}",
                path.display(),
                meta.len(),
                info.size
            )));
        }
    }
    Ok(image)
}

mod builder;
pub use builder::build;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_rules() {
        assert_eq!(
            cache_dir_from(Some("/x".into()), true, Some("/root".into())),
            PathBuf::from("/x/images")
        );
        assert_eq!(
            cache_dir_from(None, true, Some("/root".into())),
            PathBuf::from("/var/cache/ferry/images")
        );
        assert_eq!(
            cache_dir_from(Some("".into()), false, Some("/home/u".into())),
            PathBuf::from("/home/u/.cache/ferry/images")
        );
        assert!(cache_dir_from(None, false, None).ends_with("ferry-cache/images"));
    }

    #[test]
    fn cmdline() {
        assert_eq!(
            kernel_cmdline(64, 5.0),
            "console=ttyS0 panic=-1 quiet ferry.mem_mib=64 ferry.rate_mib=5"
        );
        assert!(kernel_cmdline(256, 2.5).ends_with("ferry.rate_mib=2.5"));
    }

    #[test]
    fn cmdline_with_net() {
        assert_eq!(
            kernel_cmdline_with_net(64, 5.0, None, 7000),
            kernel_cmdline(64, 5.0)
        );
        assert_eq!(
            kernel_cmdline_with_net(64, 5.0, Some("172.30.5.100/24"), 7000),
            "console=ttyS0 panic=-1 quiet ferry.mem_mib=64 ferry.rate_mib=5 \
             ferry.ip=172.30.5.100/24 ferry.port=7000"
        );
        let net = GuestNet::new("10.0.2.15/24")
            .with_gateway("10.0.2.2")
            .with_port(0);
        net.validate().unwrap();
        let line = kernel_cmdline_net(8, 0.0, Some(&net));
        assert!(
            line.ends_with("ferry.rate_mib=0 ferry.ip=10.0.2.15/24 ferry.gw=10.0.2.2 ferry.port=0"),
            "{line}"
        );
        // The guest's parser reads back what was written.
        let cfg = ferry_guest::Config::parse(&line).unwrap();
        assert_eq!(
            cfg.ip.map(|i| i.to_string()).as_deref(),
            Some("10.0.2.15/24")
        );
        assert_eq!(cfg.gw.map(|g| g.to_string()).as_deref(), Some("10.0.2.2"));
        assert_eq!((cfg.port, cfg.mem_mib), (0, 8));

        // A value cannot smuggle in more parameters.
        let line = kernel_cmdline_with_net(8, 1.0, Some("10.0.0.1/24 init=/bin/sh \"x"), 1);
        assert!(
            line.ends_with(" ferry.ip=10.0.0.1/24_init=/bin/sh__x ferry.port=1"),
            "{line}"
        );
        assert!(ferry_guest::Config::parse(&line).is_err());

        let err = GuestNet::new("10.0.2.15/24")
            .with_gateway("10.0.3.1")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("ferry.gw=\"10.0.3.1\""), "{err}");
        assert!(err.to_string().contains("outside"), "{err}");
        assert!(GuestNet::new("10.0.2.15").validate().is_err());
    }

    #[test]
    fn cmdline_with_disk() {
        let line = with_disk(&kernel_cmdline(32, 2.0), "vda", 32, 2.0);
        assert_eq!(
            line,
            "console=ttyS0 panic=-1 quiet ferry.mem_mib=32 ferry.rate_mib=2 ferry.disk=vda \
             ferry.disk_mib=32 ferry.disk_rate_mib=2"
        );
        let cfg = ferry_guest::Config::parse(&line).unwrap();
        let d = cfg.disk_settings().unwrap();
        assert_eq!(d.path, Path::new("/dev/vda"));
        assert_eq!((d.mib, d.rate_mib), (Some(32), 2.0));

        // mib 0: the whole device; fractional rates; composes with the network settings.
        let net = GuestNet::new("10.0.2.15/24");
        let line = with_disk(&kernel_cmdline_net(8, 1.0, Some(&net)), "vdb", 0, 0.5);
        assert!(
            line.ends_with("ferry.port=7000 ferry.disk=vdb ferry.disk_rate_mib=0.5"),
            "{line}"
        );
        let cfg = ferry_guest::Config::parse(&line).unwrap();
        assert_eq!((cfg.disk_mib, cfg.disk_rate_mib), (None, 0.5));
        assert_eq!(cfg.service_port(), Some(7000));

        // A value cannot add parameters; the guest refuses it loudly.
        let line = with_disk("", "vda init=/bin/sh", 1, 2.0);
        assert_eq!(
            line,
            "ferry.disk=vda_init=/bin/sh ferry.disk_mib=1 ferry.disk_rate_mib=2"
        );
        let errs = ferry_guest::Config::parse(&line).unwrap_err();
        assert_eq!(errs[0].key, "ferry.disk");
        assert!(ferry_guest::Config::parse(&with_disk("", "vda", 1, f64::NAN)).is_err());
        assert!(ferry_guest::Config::parse(&with_disk("", "vda", 1, -1.0)).is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("test-guest").is_ok());
        assert!(validate_name("v1.2_x").is_ok());
        for bad in ["", ".", "..", ".hidden", "a/b", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn load_reports_missing_and_damaged_images() {
        let cache = tempfile::tempdir().unwrap();
        let err = load(cache.path(), "test-guest").unwrap_err();
        assert!(matches!(err, ImageError::NotBuilt { .. }));
        assert!(err.to_string().contains("run `ferry image build`"), "{err}");

        let dir = cache.path().join("test-guest");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(MANIFEST_FILE), "{").unwrap();
        let err = load(cache.path(), "test-guest").unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");

        let info = |b: &[u8]| FileInfo {
            size: b.len() as u64,
            sha256: sha256_hex(b),
        };
        let m = Manifest {
            name: "test-guest".into(),
            recipe: RECIPE,
            kernel_package: "linux-image-x".into(),
            kernel_version: "1".into(),
            kernel_release: "x".into(),
            kernel: info(b"kernel"),
            initrd: info(b"initrd"),
            guest_sha256: "g".into(),
            busybox_sha256: "b".into(),
            modules: vec![],
            built_at: "2024-01-01T00:00:00Z".into(),
        };
        fs::write(dir.join(MANIFEST_FILE), serde_json::to_string(&m).unwrap()).unwrap();
        fs::write(dir.join(KERNEL_FILE), b"kernel").unwrap();
        assert!(load(cache.path(), "test-guest").is_err(), "initrd missing");
        fs::write(dir.join(INITRD_FILE), b"initrX").unwrap();
        let img = load(cache.path(), "test-guest").unwrap();
        assert_eq!(img.manifest, m);
        let err = img.verify().unwrap_err();
        assert!(err.to_string().contains("initrd.img has sha256"), "{err}");
        fs::write(dir.join(INITRD_FILE), b"initrd").unwrap();
        img.verify().unwrap();

        let inputs = Inputs {
            kernel: KernelPackage {
                name: "linux-image-x".into(),
                version: "1".into(),
            },
            guest_sha256: "g".into(),
            busybox_sha256: "b".into(),
        };
        assert!(m.built_from(&inputs));
        let mut other = inputs.clone();
        other.kernel.version = "2".into();
        assert!(!m.built_from(&other));
        let mut other = inputs;
        other.guest_sha256 = "h".into();
        assert!(!m.built_from(&other));
    }
}
