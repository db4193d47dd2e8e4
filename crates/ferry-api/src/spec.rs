//! The VM spec: what an operator asks for. The agent turns it into a QEMU command line
//! deterministically, so the same spec gives the same device layout on every host (a
//! migration needs the destination's devices to match the source's exactly).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{validate_name, ApiError};

/// Version of the persisted/serialized spec layout. Bump on incompatible change.
pub const SPEC_VERSION: u32 = 1;

/// Smallest and largest memory a VM may ask for, in MiB.
pub const MIN_MEMORY_MIB: u64 = 64;
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
pub const MAX_VCPUS: u32 = 256;

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when a probe guest really runs under it on this host, TCG otherwise.
    #[default]
    Auto,
    /// Hardware virtualization; refused on hosts where KVM does not work.
    Kvm,
    /// QEMU's software emulation (slow, but runs anywhere).
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

impl std::str::FromStr for Accel {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, ApiError> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(ApiError::bad_request(format!(
                "unknown accel '{other}'; use auto, kvm or tcg"
            ))),
        }
    }
}

/// What the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Boot {
    /// A guest image from the agent's image cache (built by `ferry image build`), direct
    /// kernel boot. Each host resolves the name in its own cache, so specs carry no host paths.
    Image { image: String, cmdline: String },
    /// A kernel and initrd at absolute paths that exist on every host the VM may run on.
    Kernel {
        kernel: PathBuf,
        #[serde(default)]
        initrd: Option<PathBuf>,
        #[serde(default)]
        cmdline: String,
    },
    /// A disk image at an absolute path that every host the VM may run on sees at the same
    /// path (shared storage), booted by the firmware. The format is stated, never probed:
    /// letting QEMU guess would let a guest that writes a qcow2 header into a raw disk take
    /// over host files.
    Disk {
        path: PathBuf,
        #[serde(default)]
        format: DiskFormat,
    },
}

/// Image format of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// A VM as the operator describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    pub memory_mib: u64,
    pub boot: Boot,
    #[serde(default)]
    pub accel: Accel,
    /// QEMU machine type. An alias such as `q35` is resolved by the first agent that runs the
    /// VM to the concrete versioned type (`pc-q35-10.0`), which then stays fixed for life:
    /// the alias points elsewhere on a newer QEMU, and migration needs the same machine.
    #[serde(default = "default_machine")]
    pub machine: String,
    /// QEMU CPU model. `qemu64` runs everywhere (TCG and KVM); `host` only between identical CPUs.
    #[serde(default = "default_cpu_model")]
    pub cpu_model: String,
    /// Network interfaces, in guest order (the first is the guest's eth0).
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Data disks, by pool and image name, in guest order (virtio-blk: vda, vdb, ... after
    /// a boot disk if there is one).
    #[serde(default)]
    pub disks: Vec<DiskRef>,
    /// Restart on another host when this one fails (None: not protected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<crate::HaPolicy>,
}

/// Most data disks a VM may have.
pub const MAX_DISKS: usize = 8;

/// A disk image in a storage pool. Specs never carry host paths: each host resolves the
/// pool name to its own directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRef {
    pub pool: String,
    pub image: String,
}

/// Most NICs a VM may have.
pub const MAX_NICS: usize = 8;

/// A virtio-net interface on a named network. Each host maps network names to its own
/// bridges, so the spec carries no host details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    pub network: String,
    /// `52:54:00:xx:xx:xx`-style unicast MAC. Ferry assigns a stable one when absent
    /// (see [`stable_mac`]); it never changes for the life of the VM, on any host.
    #[serde(default)]
    pub mac: Option<String>,
}

/// The MAC Ferry assigns to NIC `index` of VM `vm`: QEMU's 52:54:00 prefix and three bytes
/// of a hash of the name and index, so re-creating a VM of the same name gives the same MAC.
pub fn stable_mac(vm: &str, index: usize) -> String {
    // FNV-1a: tiny, stable across Rust versions (unlike std's DefaultHasher).
    let mut h: u32 = 0x811c_9dc5;
    for b in vm
        .bytes()
        .chain(std::iter::once(0))
        .chain((index as u32).to_le_bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let [_, a, b, c] = h.to_be_bytes();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

/// Checks a MAC: six two-digit hex groups, unicast.
pub fn validate_mac(mac: &str) -> Result<(), ApiError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let hex_ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !hex_ok {
        return Err(ApiError::bad_request(format!(
            "MAC '{mac}' is not of the form 52:54:00:12:34:56"
        )));
    }
    let first = u8::from_str_radix(parts[0], 16).unwrap_or(1);
    if first & 1 == 1 {
        return Err(ApiError::bad_request(format!(
            "MAC '{mac}' is a multicast address; a NIC needs a unicast one"
        )));
    }
    Ok(())
}

fn default_vcpus() -> u32 {
    1
}
pub fn default_machine() -> String {
    "q35".to_string()
}
/// `baseline`: the cluster's CPU baseline, resolved by the server when the VM is created.
pub fn default_cpu_model() -> String {
    "baseline".to_string()
}

impl VmSpec {
    /// Checks everything that can be checked without a host. Errors name the field.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_name("VM name", &self.name)?;
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ApiError::bad_request(format!(
                "vcpus is {}; it must be between 1 and {MAX_VCPUS}",
                self.vcpus
            )));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ApiError::bad_request(format!(
                "memory_mib is {}; it must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}",
                self.memory_mib
            )));
        }
        validate_token("machine", &self.machine)?;
        if self.nics.len() > MAX_NICS {
            return Err(ApiError::bad_request(format!(
                "{} NICs asked for; at most {MAX_NICS}",
                self.nics.len()
            )));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ApiError::bad_request(format!(
                "{} disks asked for; at most {MAX_DISKS}",
                self.disks.len()
            )));
        }
        let mut images = std::collections::HashSet::new();
        for d in &self.disks {
            validate_name("pool name", &d.pool)?;
            validate_name("disk name", &d.image)?;
            if !images.insert((&d.pool, &d.image)) {
                return Err(ApiError::bad_request(format!(
                    "disk {} in pool {} is attached twice",
                    d.image, d.pool
                )));
            }
        }
        let mut macs = std::collections::HashSet::new();
        for nic in &self.nics {
            validate_name("network name", &nic.network)?;
            if let Some(mac) = &nic.mac {
                validate_mac(mac)?;
                if !macs.insert(mac.to_ascii_lowercase()) {
                    return Err(ApiError::bad_request(format!("MAC {mac} is used twice")));
                }
            }
        }
        validate_token("cpu_model", &self.cpu_model)?;
        match &self.boot {
            Boot::Image { image, cmdline } => {
                validate_name("image name", image)?;
                validate_cmdline(cmdline)?;
            }
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                validate_abs_path("boot.kernel", kernel, false)?;
                if let Some(initrd) = initrd {
                    validate_abs_path("boot.initrd", initrd, false)?;
                }
                validate_cmdline(cmdline)?;
            }
            // Passed to QEMU inside JSON, where a comma is just a character.
            Boot::Disk { path, .. } => validate_abs_path("boot.path", path, true)?,
        }
        Ok(())
    }

    /// Fills in what Ferry assigns: a stable MAC for every NIC without one. Done once, when
    /// the VM is created; the result is stored and used on every host.
    pub fn assign_defaults(&mut self) {
        let name = self.name.clone();
        for (i, nic) in self.nics.iter_mut().enumerate() {
            if nic.mac.is_none() {
                nic.mac = Some(stable_mac(&name, i));
            }
        }
    }

    /// Parses and validates a spec from JSON, with the reason on failure.
    pub fn from_json(text: &str) -> Result<VmSpec, ApiError> {
        let spec: VmSpec = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("invalid VM spec: {e}")))?;
        spec.validate()?;
        Ok(spec)
    }
}

/// Machine types and CPU models become QEMU option values; a comma would inject options.
fn validate_token(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{field} '{value}' is not a valid QEMU name (letters, digits, '-', '_', '.', at most 64)"
        )))
    }
}

fn validate_cmdline(cmdline: &str) -> Result<(), ApiError> {
    if cmdline.len() > 2048 {
        return Err(ApiError::bad_request(format!(
            "boot.cmdline is {} bytes; the limit is 2048",
            cmdline.len()
        )));
    }
    if cmdline.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(
            "boot.cmdline contains control characters",
        ));
    }
    Ok(())
}

fn validate_abs_path(field: &str, path: &std::path::Path, commas_ok: bool) -> Result<(), ApiError> {
    let text = path.to_string_lossy();
    if !path.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "{field} '{text}' must be an absolute path"
        )));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(ApiError::bad_request(format!(
            "{field} '{text}' must not contain '..'"
        )));
    }
    if !commas_ok && text.contains(',') {
        // QEMU option syntax: a comma would start a new option.
        return Err(ApiError::bad_request(format!(
            "{field} '{text}' must not contain ','"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            ha: None,
            name: "web1".into(),
            vcpus: 1,
            memory_mib: 512,
            boot: Boot::Image {
                image: "test-guest".into(),
                cmdline: "console=ttyS0".into(),
            },
            accel: Accel::Tcg,
            machine: "q35".into(),
            cpu_model: "qemu64".into(),
            nics: vec![],
            disks: vec![],
        }
    }

    #[test]
    fn nics_get_stable_distinct_macs_and_bad_macs_are_refused() {
        let mut s = VmSpec {
            nics: vec![
                NicSpec {
                    network: "vmnet".into(),
                    mac: None,
                },
                NicSpec {
                    network: "storage".into(),
                    mac: None,
                },
            ],
            ..spec()
        };
        s.assign_defaults();
        let macs: Vec<String> = s.nics.iter().map(|n| n.mac.clone().unwrap()).collect();
        assert_eq!(macs[0], stable_mac("web1", 0));
        assert_ne!(macs[0], macs[1]);
        assert!(macs[0].starts_with("52:54:00:"));
        s.validate().unwrap();
        for bad in ["52:54:00:12:34", "zz:54:00:12:34:56", "01:00:5e:00:00:01"] {
            let s = VmSpec {
                nics: vec![NicSpec {
                    network: "vmnet".into(),
                    mac: Some(bad.into()),
                }],
                ..spec()
            };
            assert!(s.validate().is_err(), "{bad}");
        }
        let dup = Some("52:54:00:aa:bb:cc".to_string());
        let s = VmSpec {
            nics: vec![
                NicSpec {
                    network: "a".into(),
                    mac: dup.clone(),
                },
                NicSpec {
                    network: "b".into(),
                    mac: dup,
                },
            ],
            ..spec()
        };
        assert!(s.validate().unwrap_err().message.contains("twice"));
    }

    #[test]
    fn a_good_spec_validates_and_round_trips() {
        let s = spec();
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(VmSpec::from_json(&json).unwrap(), s);
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let s = VmSpec::from_json(
            r#"{"name":"a","memory_mib":256,"boot":{"type":"image","image":"test-guest","cmdline":""}}"#,
        )
        .unwrap();
        assert_eq!(s.vcpus, 1);
        assert_eq!(s.accel, Accel::Auto);
        assert_eq!(s.machine, "q35");
        assert_eq!(s.cpu_model, "baseline");
    }

    #[test]
    fn malformed_specs_are_refused_with_the_field_named() {
        let cases: Vec<(VmSpec, &str)> = vec![
            (
                VmSpec {
                    name: "../x".into(),
                    ..spec()
                },
                "VM name",
            ),
            (VmSpec { vcpus: 0, ..spec() }, "vcpus"),
            (
                VmSpec {
                    memory_mib: 1,
                    ..spec()
                },
                "memory_mib",
            ),
            (
                VmSpec {
                    machine: "q35,accel=kvm".into(),
                    ..spec()
                },
                "machine",
            ),
            (
                VmSpec {
                    cpu_model: "".into(),
                    ..spec()
                },
                "cpu_model",
            ),
            (
                VmSpec {
                    boot: Boot::Kernel {
                        kernel: "vmlinuz".into(),
                        initrd: None,
                        cmdline: String::new(),
                    },
                    ..spec()
                },
                "absolute",
            ),
            (
                VmSpec {
                    boot: Boot::Kernel {
                        kernel: "/a/../b".into(),
                        initrd: None,
                        cmdline: String::new(),
                    },
                    ..spec()
                },
                "..",
            ),
        ];
        for (s, needle) in cases {
            let err = s.validate().unwrap_err();
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
    }

    #[test]
    fn a_disk_boot_spec_parses_with_its_format() {
        let s = VmSpec::from_json(
            r#"{"name":"d","memory_mib":256,"boot":{"type":"disk","path":"/srv/d.qcow2"}}"#,
        )
        .unwrap();
        assert_eq!(
            s.boot,
            Boot::Disk {
                path: "/srv/d.qcow2".into(),
                format: DiskFormat::Qcow2
            }
        );
        let err = VmSpec::from_json(
            r#"{"name":"d","memory_mib":256,"boot":{"type":"disk","path":"/srv/d","format":"vmdk"}}"#,
        )
        .unwrap_err();
        assert!(err.message.contains("vmdk"), "{}", err.message);
    }

    #[test]
    fn unknown_fields_and_bad_json_are_refused() {
        assert!(VmSpec::from_json("{").is_err());
        let err = VmSpec::from_json(
            r#"{"name":"a","memory_mib":256,"boot":{"type":"image","image":"t","cmdline":""},"disk":"/etc/passwd"}"#,
        )
        .unwrap_err();
        assert!(err.message.contains("unknown field"), "{}", err.message);
    }
}
