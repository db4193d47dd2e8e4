//! What a migration does with each of the VM's disks, decided from data alone.
//!
//! - shared pool: nothing moves; the destination must see the same pool at the same path;
//! - local pool: the disk is copied (storage migration) into the destination's pool of the
//!   same name, which must be local, must not hold an image of that name already, and must
//!   have room for the data with a margin.

use std::collections::BTreeMap;

pub use ferry_api::PlannedCopy;
use ferry_api::{ApiError, DiskImage, PoolInfo, VmSpec};

/// Free space kept beyond the data to copy: a tenth of it, and at least this.
pub const MIN_MARGIN_BYTES: u64 = 64 << 20;

/// What each side reports about its storage.
pub struct StorageView<'a> {
    pub host: &'a str,
    pub pools: &'a [PoolInfo],
    /// Images in the pools the VM uses (local pools only need to be listed).
    pub images: &'a [DiskImage],
}

/// The margin kept free on the destination for `bytes` of data.
pub fn margin_for(bytes: u64) -> u64 {
    (bytes / 10).max(MIN_MARGIN_BYTES)
}

/// The disks to copy, or the reason the VM's storage cannot move to `dest`.
pub fn plan_storage(
    spec: &VmSpec,
    source: &StorageView,
    dest: &StorageView,
) -> Result<Vec<PlannedCopy>, ApiError> {
    let mut copies = Vec::new();
    for (index, d) in spec.disks.iter().enumerate() {
        let Some(p) = source.pools.iter().find(|p| p.name == d.pool) else {
            return Err(ApiError::conflict(format!(
                "disk {} is in pool {}, which host {} does not report",
                d.image, d.pool, source.host
            )));
        };
        if p.shared {
            let same = dest
                .pools
                .iter()
                .any(|q| q.name == p.name && q.shared && q.path == p.path);
            if !same {
                return Err(ApiError::conflict(format!(
                    "disk {} is in shared pool {} ({}), which destination {} does not have at the same path",
                    d.image, p.name, p.path, dest.host
                )));
            }
            continue;
        }
        let Some(q) = dest.pools.iter().find(|q| q.name == d.pool) else {
            return Err(ApiError::conflict(format!(
                "disk {} is in local pool {} on {}; destination {} has no pool named {} to copy it into",
                d.image, d.pool, source.host, dest.host, d.pool
            )));
        };
        if q.shared {
            return Err(ApiError::conflict(format!(
                "disk {} is in local pool {} on {}, but pool {} on {} is shared; a copied disk needs a local pool",
                d.image, d.pool, source.host, d.pool, dest.host
            )));
        }
        let Some(img) = source
            .images
            .iter()
            .find(|i| i.pool == d.pool && i.name == d.image)
        else {
            return Err(ApiError::conflict(format!(
                "disk {} is missing from pool {} on {}",
                d.image, d.pool, source.host
            )));
        };
        if dest
            .images
            .iter()
            .any(|i| i.pool == d.pool && i.name == d.image)
        {
            return Err(ApiError::conflict(format!(
                "pool {} on {} already has a disk named {} (a copy kept from an earlier move?); delete it there first",
                d.pool, dest.host, d.image
            )));
        }
        copies.push(PlannedCopy {
            index,
            pool: d.pool.clone(),
            image: d.image.clone(),
            virtual_size: img.virtual_size,
            actual_size: img.actual_size,
        });
    }
    let mut per_pool: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &copies {
        *per_pool.entry(c.pool.as_str()).or_default() += c.actual_size;
    }
    for (pool, bytes) in per_pool {
        let free = dest
            .pools
            .iter()
            .find(|q| q.name == pool)
            .map(|q| q.free_bytes)
            .unwrap_or(0);
        let need = bytes + margin_for(bytes);
        if free < need {
            return Err(ApiError::conflict(format!(
                "pool {pool} on {} has {} MiB free; copying {} MiB of disk data needs {} MiB (with a {} MiB margin)",
                dest.host,
                free >> 20,
                bytes >> 20,
                need >> 20,
                margin_for(bytes) >> 20
            )));
        }
    }
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::DiskRef;

    fn pool(name: &str, shared: bool, free_mib: u64) -> PoolInfo {
        PoolInfo {
            name: name.into(),
            path: format!("/pools/{name}"),
            shared,
            total_bytes: 100 << 30,
            free_bytes: free_mib << 20,
        }
    }

    fn image(pool: &str, name: &str, actual_mib: u64) -> DiskImage {
        DiskImage {
            pool: pool.into(),
            name: name.into(),
            format: "qcow2".into(),
            virtual_size: 4 << 30,
            actual_size: actual_mib << 20,
            in_use_by: None,
        }
    }

    fn spec(disks: &[(&str, &str)]) -> VmSpec {
        let mut s = VmSpec {
            ha: None,
            name: "vm1".into(),
            vcpus: 1,
            memory_mib: 512,
            boot: ferry_api::Boot::Image {
                image: "test-guest".into(),
                cmdline: String::new(),
            },
            accel: ferry_api::Accel::Tcg,
            machine: "q35".into(),
            cpu_model: "qemu64".into(),
            nics: vec![],
            disks: vec![],
        };
        s.disks = disks
            .iter()
            .map(|(p, i)| DiskRef {
                pool: p.to_string(),
                image: i.to_string(),
            })
            .collect();
        s
    }

    fn view<'a>(host: &'a str, pools: &'a [PoolInfo], images: &'a [DiskImage]) -> StorageView<'a> {
        StorageView {
            host,
            pools,
            images,
        }
    }

    #[test]
    fn local_disks_are_copied_and_shared_ones_are_not() {
        let sp = [pool("local", false, 1000), pool("san", true, 1000)];
        let dp = [pool("local", false, 5000), pool("san", true, 5000)];
        let si = [image("local", "d1", 2048), image("san", "d2", 100)];
        let plan = plan_storage(
            &spec(&[("local", "d1"), ("san", "d2")]),
            &view("a", &sp, &si),
            &view("b", &dp, &[]),
        )
        .unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].index, 0);
        assert_eq!(plan[0].label(), "local/d1");
        assert_eq!(plan[0].target().virtual_size, 4 << 30);
    }

    #[test]
    fn refusals_name_the_reason() {
        let sp = [pool("local", false, 1000)];
        let si = [image("local", "d1", 2048)];
        let s = spec(&[("local", "d1")]);
        let cases: Vec<(Vec<PoolInfo>, Vec<DiskImage>, &str)> = vec![
            (vec![], vec![], "has no pool named local"),
            (vec![pool("local", true, 9000)], vec![], "is shared"),
            (
                vec![pool("local", false, 9000)],
                vec![image("local", "d1", 1)],
                "already has a disk named d1",
            ),
            // 2048 MiB of data + 204 MiB margin does not fit in 2100 MiB.
            (vec![pool("local", false, 2100)], vec![], "2100 MiB free"),
        ];
        for (dp, di, want) in cases {
            let err = plan_storage(&s, &view("a", &sp, &si), &view("b", &dp, &di)).unwrap_err();
            assert!(err.message.contains(want), "{} vs {want}", err.message);
        }
        assert!(plan_storage(
            &s,
            &view("a", &sp, &si),
            &view("b", &[pool("local", false, 2300)], &[])
        )
        .is_ok());
    }

    #[test]
    fn shared_pools_must_match_by_path() {
        let sp = [pool("san", true, 1000)];
        let mut other = pool("san", true, 1000);
        other.path = "/mnt/elsewhere".into();
        let s = spec(&[("san", "d2")]);
        let err = plan_storage(&s, &view("a", &sp, &[]), &view("b", &[other], &[])).unwrap_err();
        assert!(err.message.contains("at the same path"));
        assert!(plan_storage(&s, &view("a", &sp, &[]), &view("b", &sp, &[]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_margin_has_a_floor() {
        assert_eq!(margin_for(0), MIN_MARGIN_BYTES);
        assert_eq!(margin_for(10 << 30), 1 << 30);
    }
}
