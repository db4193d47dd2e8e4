//! Storage pools and the disk images in them.

use serde::{Deserialize, Serialize};

use crate::{validate_name, ApiError};

/// A directory of qcow2 images on a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub name: String,
    pub path: String,
    /// The same storage is visible at the same path on the other hosts of the pool (NFS, a
    /// cluster file system): migrations move no disk data, only ownership.
    pub shared: bool,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// A disk image in a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskImage {
    pub pool: String,
    pub name: String,
    pub format: String,
    pub virtual_size: u64,
    /// Bytes the image occupies on the host.
    pub actual_size: u64,
    /// The VM on this host that has it attached, if any.
    pub in_use_by: Option<String>,
}

/// `POST .../pools/{pool}/images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDiskRequest {
    pub name: String,
    pub size_mib: u64,
}

pub const MAX_DISK_MIB: u64 = 64 * 1024 * 1024;

impl CreateDiskRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_name("disk name", &self.name)?;
        if self.size_mib == 0 || self.size_mib > MAX_DISK_MIB {
            return Err(ApiError::bad_request(format!(
                "disk size {} MiB must be between 1 MiB and {MAX_DISK_MIB} MiB",
                self.size_mib
            )));
        }
        Ok(())
    }
}

/// Parses a size such as `4G`, `512M`, `1T` or a plain number of MiB, into MiB.
pub fn parse_size_mib(text: &str) -> Result<u64, ApiError> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'M' => 1,
                'G' => 1024,
                'T' => 1024 * 1024,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "size '{text}': use a number of MiB or a suffix M, G or T"
                    )))
                }
            };
            (&t[..i], mult)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| ApiError::bad_request(format!("size '{text}' is not a whole number")))?;
    n.checked_mul(mult)
        .ok_or_else(|| ApiError::bad_request(format!("size '{text}' is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size_mib("512").unwrap(), 512);
        assert_eq!(parse_size_mib("512M").unwrap(), 512);
        assert_eq!(parse_size_mib("4G").unwrap(), 4096);
        assert_eq!(parse_size_mib("1t").unwrap(), 1 << 20);
        for bad in ["", "G", "4K", "-1", "1.5G", "9999999999999999999T"] {
            assert!(parse_size_mib(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disk_requests_are_checked() {
        assert!(CreateDiskRequest {
            name: "data1".into(),
            size_mib: 64
        }
        .validate()
        .is_ok());
        assert!(CreateDiskRequest {
            name: "../etc/passwd".into(),
            size_mib: 64
        }
        .validate()
        .is_err());
        assert!(CreateDiskRequest {
            name: "d".into(),
            size_mib: 0
        }
        .validate()
        .is_err());
    }
}
