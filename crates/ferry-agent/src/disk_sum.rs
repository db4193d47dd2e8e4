//! A checksum of a qcow2 image's guest-visible content, so two hosts can tell whether
//! their copies of a disk hold the same bytes without sending either across.
//!
//! The content is read through the image's own map (`qemu-img map`): extents QEMU reports
//! as zero (unallocated, or zero clusters) count as zeros without being read, data extents
//! are read from the file at the offset the map gives. The digest is SHA-256 over a header
//! (`ferry-disk-sum-v1`, the virtual size) and the SHA-256 of every 64 KiB block in order,
//! so it depends on the bytes the guest sees only: a copy with another cluster layout, or
//! zeros written where the source had none allocated, sums the same.
//!
//! Images Ferry handles are plain qcow2 (no backing file, no compression, no external data
//! file); an extent the map cannot place in the file (compressed, encrypted) is refused
//! rather than guessed at.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_migration::cold::DiskSum;
use ring::digest::{Context, SHA256};
use serde::Deserialize;

use crate::error::AgentError;

/// The unit each block digest covers.
pub const BLOCK: usize = 64 << 10;

/// One extent of `qemu-img map --output=json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Extent {
    pub start: u64,
    pub length: u64,
    #[serde(default)]
    pub data: bool,
    #[serde(default)]
    pub zero: bool,
    #[serde(default)]
    pub compressed: bool,
    /// Where the data is in the image file.
    #[serde(default)]
    pub offset: Option<u64>,
}

impl Extent {
    /// Whether the guest reads zeros here without the file being read.
    fn reads_zero(&self) -> bool {
        self.zero || !self.data
    }
}

/// The image's map, checked: contiguous from 0, every data extent placed in the file.
/// Returns the extents and the virtual size.
pub fn read_map(path: &Path) -> Result<(Vec<Extent>, u64), AgentError> {
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "qcow2"])
        .arg(path)
        .output()
        .map_err(|e| AgentError::storage(format!("cannot run qemu-img map: {e}")))?;
    if !out.status.success() {
        return Err(AgentError::storage(format!(
            "qemu-img map {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let extents: Vec<Extent> = serde_json::from_slice(&out.stdout)
        .map_err(|e| AgentError::storage(format!("qemu-img map: {e}")))?;
    let size = check_map(&extents)
        .map_err(|e| AgentError::storage(format!("cannot checksum {}: {e}", path.display())))?;
    Ok((extents, size))
}

/// Checks that the extents tile the disk from 0 and that every data extent can be read
/// from the file; returns the virtual size.
pub fn check_map(extents: &[Extent]) -> Result<u64, String> {
    let mut at = 0u64;
    for e in extents {
        if e.start != at {
            return Err(format!("the map has a gap or overlap at byte {at}"));
        }
        if !e.reads_zero() && (e.compressed || e.offset.is_none()) {
            return Err(format!(
                "the data at bytes {}..{} is not stored plainly in the file (compressed or \
                 encrypted); Ferry's images never are",
                e.start,
                e.start + e.length
            ));
        }
        at = e.start.checked_add(e.length).ok_or("the map overflows")?;
    }
    Ok(at)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Sums `path` (a qcow2 image no process writes meanwhile). `stop` ends it early (the job
/// was cancelled).
pub fn checksum(path: &Path, stop: &AtomicBool) -> Result<DiskSum, AgentError> {
    let (extents, size) = read_map(path)?;
    let file = std::fs::File::open(path)
        .map_err(|e| AgentError::storage(format!("cannot open {}: {e}", path.display())))?;
    let read = |buf: &mut [u8], at: u64| {
        file.read_exact_at(buf, at)
            .map_err(|e| AgentError::storage(format!("cannot read {}: {e}", path.display())))
    };
    sum_extents(&extents, size, read, stop)
}

/// The digest of a disk of `size` bytes laid out as `extents`, reading data through
/// `read(buf, file_offset)`.
pub fn sum_extents(
    extents: &[Extent],
    size: u64,
    mut read: impl FnMut(&mut [u8], u64) -> Result<(), AgentError>,
    stop: &AtomicBool,
) -> Result<DiskSum, AgentError> {
    let zero_block = sha256(&vec![0u8; BLOCK]);
    let mut total = Context::new(&SHA256);
    total.update(b"ferry-disk-sum-v1");
    total.update(&size.to_be_bytes());
    let mut buf = vec![0u8; BLOCK];
    let mut first = 0usize; // the first extent that may overlap the current block
    let mut pos = 0u64;
    while pos < size {
        if stop.load(Ordering::Relaxed) {
            return Err(AgentError::refused("the checksum was cancelled"));
        }
        let end = (pos + BLOCK as u64).min(size);
        let len = (end - pos) as usize;
        while first < extents.len() && extents[first].start + extents[first].length <= pos {
            first += 1;
        }
        let overlapping = extents[first..]
            .iter()
            .take_while(|e| e.start < end)
            .collect::<Vec<_>>();
        if overlapping.iter().all(|e| e.reads_zero()) {
            if len == BLOCK {
                total.update(&zero_block);
            } else {
                total.update(&sha256(&vec![0u8; len]));
            }
        } else {
            let block = &mut buf[..len];
            block.fill(0);
            for e in overlapping.iter().filter(|e| !e.reads_zero()) {
                let from = e.start.max(pos);
                let to = (e.start + e.length).min(end);
                let offset = e.offset.unwrap_or(0) + (from - e.start);
                read(
                    &mut block[(from - pos) as usize..(to - pos) as usize],
                    offset,
                )?;
            }
            total.update(&sha256(block));
        }
        pos = end;
    }
    let digest = total.finish();
    Ok(DiskSum {
        virtual_size: size,
        digest: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }

    fn sum(p: &Path) -> DiskSum {
        checksum(p, &AtomicBool::new(false)).unwrap()
    }

    #[test]
    fn the_sum_follows_the_content_not_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        run(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            &p("a.qcow2"),
            "8M",
        ]);
        run(&[
            "qemu-io",
            "-c",
            "write -P 0xab 100k 300k",
            "-c",
            "write -P 0x01 5M 4k",
            &p("a.qcow2"),
        ]);
        // Another cluster size and allocation order: the same guest-visible bytes.
        run(&[
            "qemu-img",
            "convert",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4096",
            &p("a.qcow2"),
            &p("b.qcow2"),
        ]);
        let a = sum(&dir.path().join("a.qcow2"));
        assert_eq!(a.virtual_size, 8 << 20);
        assert_eq!(a, sum(&dir.path().join("b.qcow2")));
        // Zeros written as data read the same as unallocated space.
        run(&["qemu-io", "-c", "write -P 0 6M 512k", &p("b.qcow2")]);
        assert_eq!(a, sum(&dir.path().join("b.qcow2")));
        // One changed byte does not.
        run(&["qemu-io", "-c", "write -P 0xac 200k 1", &p("b.qcow2")]);
        assert_ne!(a.digest, sum(&dir.path().join("b.qcow2")).digest);
        // Nor does the size.
        run(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            &p("c.qcow2"),
            "4M",
        ]);
        run(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            &p("d.qcow2"),
            "8M",
        ]);
        assert_ne!(
            sum(&dir.path().join("c.qcow2")).digest,
            sum(&dir.path().join("d.qcow2")).digest
        );
    }

    #[test]
    fn maps_that_cannot_be_read_plainly_are_refused() {
        let e = |start, length, data, offset| Extent {
            start,
            length,
            data,
            zero: false,
            compressed: false,
            offset,
        };
        assert_eq!(
            check_map(&[e(0, 10, false, None), e(10, 5, true, Some(0))]),
            Ok(15)
        );
        assert!(check_map(&[e(0, 10, false, None), e(12, 5, false, None)]).is_err());
        assert!(check_map(&[e(0, 10, true, None)]).is_err());
        let mut c = e(0, 10, true, Some(4096));
        c.compressed = true;
        assert!(check_map(&[c]).unwrap_err().contains("compressed"));
    }

    #[test]
    fn a_partial_last_block_and_a_cancel() {
        let ext = [Extent {
            start: 0,
            length: BLOCK as u64 + 512,
            data: true,
            zero: false,
            compressed: false,
            offset: Some(0),
        }];
        let bytes = vec![7u8; BLOCK + 512];
        let read = |buf: &mut [u8], at: u64| {
            buf.copy_from_slice(&bytes[at as usize..at as usize + buf.len()]);
            Ok(())
        };
        let stop = AtomicBool::new(false);
        let s = sum_extents(&ext, BLOCK as u64 + 512, read, &stop).unwrap();
        assert_eq!(s.virtual_size, BLOCK as u64 + 512);
        assert_eq!(s.digest.len(), 64);
        stop.store(true, Ordering::Relaxed);
        assert!(sum_extents(&ext, BLOCK as u64 + 512, read, &stop).is_err());
    }
}
