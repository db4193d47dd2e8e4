//! `ferry bench storage`: a VM whose disk lives in a local pool moves to another host over
//! a migration network shaped to 1 Gbit/s, against a raw copy of the same image over the
//! same link; and what the guest's disk writes do before and during the copy.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_api::*;
use ferry_guest::status::DiskStatusLine;
use ferry_lab::netlab::{NetLab, NetLabConfig, Shape};
use ferry_lab::{test_vm_spec, wait_ready, Observer};
use serde::Serialize;

use crate::console::{bytes, millis, print_json, print_table};
use crate::error::{fail, BenchError, BenchResult};
use crate::setup::{own_binary, test_image};

/// The options of `ferry bench storage`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Virtual size of the VM's disk, GiB.
    pub disk_gib: u64,
    /// GiB of data on it.
    pub data_gib: u64,
    /// Guest memory, MiB.
    pub memory: u64,
    /// How fast the guest rewrites its disk area, MiB/s.
    pub guest_write_rate: f64,
    /// Where to write the result file.
    pub out: PathBuf,
    /// Print JSON (for scripts) instead of a table.
    pub json: bool,
}

const VM: &str = "storage-bench";
/// The guest's self-verifying area at the start of its disk.
const GUEST_AREA_MIB: u64 = 64;

#[derive(Serialize, Default)]
struct Results {
    disk_virtual_mib: u64,
    disk_data_mib: u64,
    image_file_bytes: u64,
    link: String,
    raw_copy_ms: u64,
    raw_copy_mib_s: f64,
    migration_completed: bool,
    migration_total_ms: u64,
    disk_copy_ms: u64,
    /// The mirror jobs' length: the whole virtual disk (unallocated ranges are sent as
    /// write-zeroes requests, not data).
    disk_bytes_copied: u64,
    /// Bytes the source host sent on its migration interface during the migration (disk
    /// data, memory, protocol overhead).
    migration_link_bytes: u64,
    raw_copy_link_bytes: u64,
    memory_bytes_sent: u64,
    downtime_ms: u64,
    /// Storage migration total time / raw copy time.
    ratio_total_to_raw: f64,
    guest_write_rate_set_mib_s: f64,
    guest_write_mib_s_before: f64,
    guest_write_mib_s_during_copy: f64,
    guest_mismatches_after: u64,
    error: Option<String>,
}

/// A removable work directory for the pools and the raw copy.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes host `host` has sent on its migration interface (from `/proc/net/dev` in its
/// namespace).
fn link_tx_bytes(lab: &NetLab, host: &str) -> Result<u64, BenchError> {
    let out = lab
        .exec_in(lab.host_ns(host), "cat", &["/proc/net/dev"])
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ifname = ferry_lab::netlab::HOST_MIGRATION_IF;
    text.lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            if name.trim() != ifname {
                return None;
            }
            // receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
            rest.split_whitespace().nth(8)?.parse().ok()
        })
        .ok_or_else(|| fail(format!("no {ifname} in /proc/net/dev of host {host}")))
}

/// MiB/s the guest wrote between two of its disk status lines (one per second).
fn write_rate(a: &DiskStatusLine, b: &DiskStatusLine) -> f64 {
    let ticks = b.tick.saturating_sub(a.tick);
    if ticks == 0 {
        return 0.0;
    }
    (b.written.saturating_sub(a.written) * 4096) as f64 / ticks as f64 / (1 << 20) as f64
}

async fn disk_line(obs: &Observer<'_>) -> Option<DiskStatusLine> {
    obs.summary().await.ok().and_then(|s| s.disk_last)
}

/// Sends `file` from `from`'s namespace to `to`'s migration address over plain TCP and
/// writes it to `dest` there: the same bytes over the same shaped link, with no
/// hypervisor involved.
fn raw_copy(
    lab: &NetLab,
    from: &str,
    to: &str,
    file: &Path,
    dest: &Path,
) -> Result<Duration, BenchError> {
    let ip = lab.migration_ip(to);
    let listener = lab
        .in_ns(lab.host_ns(to), move || {
            std::net::TcpListener::bind((ip, 0))
        })
        .map_err(fail)?
        .map_err(fail)?;
    let port = listener.local_addr().map_err(fail)?.port();
    let dest = dest.to_path_buf();
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut f = std::fs::File::create(&dest)?;
        let n = std::io::copy(&mut s, &mut f)?;
        f.sync_all()?;
        Ok(n)
    });
    let file = file.to_path_buf();
    let started = Instant::now();
    lab.in_ns(lab.host_ns(from), move || -> std::io::Result<u64> {
        let mut s = std::net::TcpStream::connect((ip, port))?;
        let mut f = std::fs::File::open(&file)?;
        let n = std::io::copy(&mut f, &mut s)?;
        s.flush()?;
        Ok(n)
    })
    .map_err(fail)?
    .map_err(fail)?;
    receiver
        .join()
        .map_err(|_| fail("the receiving thread panicked"))?
        .map_err(fail)?;
    Ok(started.elapsed())
}

pub async fn storage(a: StorageConfig) -> BenchResult {
    if a.data_gib == 0 || a.data_gib >= a.disk_gib {
        return Err(BenchError::refused(format!(
            "--data-gib {} must be at least 1 and less than --disk-gib {}",
            a.data_gib, a.disk_gib
        )));
    }
    let image_dir = test_image().await?;
    let work =
        WorkDir(std::env::temp_dir().join(format!("ferry-bench-storage-{}", std::process::id())));
    std::fs::create_dir_all(&work.0).map_err(fail)?;
    let pool_dir = |h: &str| work.0.join(format!("pool-{h}"));
    let exe = own_binary()?;
    let mut cfg = NetLabConfig::new(exe, &["a", "b"]);
    cfg.image_dir = Some(image_dir);
    cfg.host_args = ["a", "b"]
        .iter()
        .map(|h| {
            (
                h.to_string(),
                vec![
                    "--pool".to_string(),
                    format!("local={}", pool_dir(h).display()),
                ],
            )
        })
        .collect();
    let lab = NetLab::start(cfg).await.map_err(fail)?;
    for h in ["a", "b"] {
        lab.shape_migration(h, Shape::Gbit1).map_err(fail)?;
    }
    let c = lab.client();
    let mut r = Results {
        disk_virtual_mib: a.disk_gib << 10,
        disk_data_mib: a.data_gib << 10,
        link: "1 Gbit/s (tbf on the migration network)".into(),
        guest_write_rate_set_mib_s: a.guest_write_rate,
        ..Default::default()
    };

    eprintln!(
        "bench: {} GiB disk on a, filling {} GiB with data",
        a.disk_gib, a.data_gib
    );
    c.create_disk(
        "a",
        "local",
        &CreateDiskRequest {
            name: "data".into(),
            size_mib: a.disk_gib << 10,
        },
    )
    .await?;
    let image = pool_dir("a").join("data.qcow2");
    // The guest's area is rewritten by the guest; the rest of the data is a fixed pattern.
    let fill = format!(
        "write -P 0x5a {}M {}M",
        GUEST_AREA_MIB,
        (a.data_gib << 10) - GUEST_AREA_MIB
    );
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &fill])
        .arg(&image)
        .output()
        .map_err(fail)?;
    if !out.status.success() {
        return Err(fail(format!(
            "qemu-io: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    r.image_file_bytes = std::fs::metadata(&image).map_err(fail)?.len();

    eprintln!("bench: raw copy of the image file a -> b over the shaped link");
    let tx0 = link_tx_bytes(&lab, "a")?;
    let raw = raw_copy(&lab, "a", "b", &image, &work.0.join("raw-copy.bin"))?;
    r.raw_copy_link_bytes = link_tx_bytes(&lab, "a")?.saturating_sub(tx0);
    let _ = std::fs::remove_file(work.0.join("raw-copy.bin"));
    r.raw_copy_ms = raw.as_millis() as u64;
    r.raw_copy_mib_s = r.image_file_bytes as f64 / (1 << 20) as f64 / raw.as_secs_f64();
    eprintln!(
        "bench: raw copy {} in {} ({:.0} MiB/s)",
        bytes(r.image_file_bytes),
        millis(r.raw_copy_ms),
        r.raw_copy_mib_s
    );

    let mut spec = test_vm_spec(VM, a.memory, a.memory / 4, 1.0);
    spec.disks = vec![DiskRef {
        pool: "local".into(),
        image: "data".into(),
    }];
    if let Boot::Image { cmdline, .. } = &mut spec.boot {
        *cmdline = ferry_image::with_disk(cmdline, "vda", GUEST_AREA_MIB, a.guest_write_rate);
    }
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec,
    })
    .await?;
    wait_ready(&c, VM, Duration::from_secs(600))
        .await
        .map_err(BenchError::failed)?;
    let obs = Observer { client: &c, vm: VM };
    // Let the initialisation finish and the rewrite rate settle, then measure it.
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while first.is_none() {
        first = disk_line(&obs).await;
        if Instant::now() > deadline {
            return Err(fail("the guest's disk workload never reported"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_a = disk_line(&obs).await.ok_or_else(|| fail("no disk line"))?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before_b = disk_line(&obs).await.ok_or_else(|| fail("no disk line"))?;
    r.guest_write_mib_s_before = write_rate(&before_a, &before_b);

    eprintln!("bench: migrating {VM} a -> b with its disk");
    let tx0 = link_tx_bytes(&lab, "a")?;
    let m = c
        .migrate(&MigrateRequest {
            vm: VM.into(),
            to: Some("b".into()),
            options: Default::default(),
            priority: None,
        })
        .await?;
    let (mut during_first, mut during_last) = (None, None);
    let (mut copy_start, mut copy_end) = (None, None);
    let m = loop {
        let cur = c.migration(m.id).await?;
        if cur.phase == Phase::CopyingDisks {
            copy_start.get_or_insert_with(Instant::now);
            if let Some(l) = disk_line(&obs).await {
                during_first.get_or_insert(l);
                during_last = Some(l);
            }
        } else if copy_start.is_some() && copy_end.is_none() {
            copy_end = Some(Instant::now());
        }
        if cur.phase.is_terminal() {
            break cur;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    r.migration_link_bytes = link_tx_bytes(&lab, "a")?.saturating_sub(tx0);
    if let (Some(f), Some(l)) = (during_first, during_last) {
        r.guest_write_mib_s_during_copy = write_rate(&f, &l);
    }
    if let (Some(s), Some(e)) = (copy_start, copy_end) {
        r.disk_copy_ms = e.duration_since(s).as_millis() as u64;
    }
    r.migration_completed = m.phase == Phase::Completed;
    r.error = m.error.clone();
    let rep = m.report.clone().unwrap_or_default();
    r.migration_total_ms = rep.total_time_ms;
    r.disk_bytes_copied = rep.disk_bytes_copied;
    r.memory_bytes_sent = rep.bytes_sent;
    r.downtime_ms = rep.downtime_ms;
    r.ratio_total_to_raw = rep.total_time_ms as f64 / r.raw_copy_ms.max(1) as f64;
    if r.migration_completed {
        // The guest carries on on b: a few more lines, all clean.
        tokio::time::sleep(Duration::from_secs(4)).await;
        r.guest_mismatches_after = obs
            .summary()
            .await
            .ok()
            .and_then(|s| {
                s.disk_last
                    .map(|d| d.mismatches + s.disk_mismatch_lines as u64)
            })
            .unwrap_or(u64::MAX);
    }
    let _ = c.stop_vm(VM).await;
    let _ = c.delete_vm(VM).await;
    drop(lab);
    report(&a, &r)
}

fn report(a: &StorageConfig, r: &Results) -> BenchResult {
    let doc = serde_json::json!({
        "benchmark": "storage",
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": crate::results::machine_json("tcg"),
        "guest_memory_mib": a.memory,
        "results": r,
    });
    let file = crate::results::write_result(&a.out, "storage", &doc)?;
    if a.json {
        print_json(&doc)?;
    } else {
        let rows = vec![
            vec![
                "disk".into(),
                format!(
                    "{} GiB virtual, {} GiB data (image file {})",
                    a.disk_gib,
                    a.data_gib,
                    bytes(r.image_file_bytes)
                ),
            ],
            vec!["link".into(), r.link.clone()],
            vec![
                "raw copy (TCP, same link)".into(),
                format!(
                    "{} ({:.0} MiB/s, {} on the link)",
                    millis(r.raw_copy_ms),
                    r.raw_copy_mib_s,
                    bytes(r.raw_copy_link_bytes)
                ),
            ],
            vec![
                "storage migration total".into(),
                millis(r.migration_total_ms),
            ],
            vec!["  disk copy phase".into(), millis(r.disk_copy_ms)],
            vec![
                "  mirror length (virtual disk)".into(),
                bytes(r.disk_bytes_copied),
            ],
            vec![
                "  sent on the link (all)".into(),
                bytes(r.migration_link_bytes),
            ],
            vec!["  memory sent".into(), bytes(r.memory_bytes_sent)],
            vec!["  downtime (QEMU)".into(), millis(r.downtime_ms)],
            vec![
                "ratio total / raw copy".into(),
                format!("{:.2}", r.ratio_total_to_raw),
            ],
            vec![
                "guest disk writes before".into(),
                format!(
                    "{:.1} MiB/s (set {} MiB/s)",
                    r.guest_write_mib_s_before, r.guest_write_rate_set_mib_s
                ),
            ],
            vec![
                "guest disk writes during copy".into(),
                format!("{:.1} MiB/s", r.guest_write_mib_s_during_copy),
            ],
            vec![
                "guest mismatches on b".into(),
                r.guest_mismatches_after.to_string(),
            ],
        ];
        print_table(&["", "RESULT"], &rows);
        println!("results written to {}", file.display());
    }
    if r.migration_completed && r.guest_mismatches_after == 0 {
        Ok(())
    } else {
        Err(BenchError::failed(format!(
            "the migration did not complete cleanly: {}",
            r.error.as_deref().unwrap_or("guest reported mismatches")
        )))
    }
}
