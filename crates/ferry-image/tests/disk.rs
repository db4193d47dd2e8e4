//! End to end with a data disk: boot the test guest under QEMU (TCG) with a 64 MiB qcow2 on
//! virtio-blk and `ferry.disk=vda ferry.disk_mib=32 ferry.disk_rate_mib=2`, watch the disk
//! workload initialise the area and run clean, kill QEMU with SIGKILL (a crash, in the middle
//! of the rewrites), boot again with the same disk and check that the workload resumes,
//! verifies every block once with zero mismatches and runs clean again. The memory workload
//! must keep printing its own status lines throughout. Finally, as a control that the check
//! is not vacuous, one data block is overwritten behind the guest's back (`qemu-io` on the
//! stopped image) and a third boot must report exactly that block.
//!
//! Needs what `boot.rs` needs (apt/dpkg with package lists, busybox-static,
//! qemu-system-x86_64, `qemu-img`, `qemu-io`, and the static guest binary built with
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build -p ferry-guest --release --target x86_64-unknown-linux-gnu
//! ```
//!
//! found by `find_guest_binary` or named by `FERRY_GUEST_BIN`).

mod common;

use common::{read_lossy, KillOnDrop};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_guest::status::{disk_status_lines, ConsoleSummary, DiskReadyLine, DiskStatusLine};
use ferry_image::{build, kernel_cmdline, with_disk, Image};

const MEM_MIB: u64 = 32;
const RATE_MIB: f64 = 2.0;
const DISK_MIB: u64 = 32;
const DISK_RATE_MIB: f64 = 2.0;
/// 32 MiB = 8192 blocks: 1 header, 17 table blocks, 8174 data blocks.
const DISK_BLOCKS: u64 = 8174;
const TABLE_BLOCKS: u64 = 17;
/// The block the control overwrites.
const DAMAGED_BLOCK: u64 = 1000;
/// Generous for TCG on a busy 2-core CI machine; a quiet machine needs a fraction of it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const WANT_DISK_STATUS: usize = 3;

fn boot(image: &Image, disk: &Path, console: &Path, stderr: &Path) -> KillOnDrop {
    let cmdline = with_disk(
        &kernel_cmdline(MEM_MIB, RATE_MIB),
        "vda",
        DISK_MIB,
        DISK_RATE_MIB,
    );
    let file_node = serde_json::json!({
        "driver": "file",
        "filename": disk.to_str().expect("temp path is UTF-8"),
        "node-name": "f0",
    })
    .to_string();
    let fmt_node = r#"{"driver":"qcow2","file":"f0","node-name":"d0"}"#;
    let stderr = fs::File::create(stderr).expect("create qemu stderr file");
    KillOnDrop(
        common::guest_command(&image.kernel, &image.initrd, &cmdline, console)
            .args(["-blockdev", file_node.as_str(), "-blockdev", fmt_node])
            .args(["-device", "virtio-blk-pci,drive=d0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start qemu-system-x86_64 (is QEMU installed?)"),
    )
}

/// Polls the console until `done` says so, failing on any mismatch (disk mismatches only
/// if `disk_clean`), error or early exit.
fn watch(
    qemu: &mut KillOnDrop,
    console: &Path,
    qemu_err: &Path,
    what: &str,
    disk_clean: bool,
    done: &dyn Fn(&ConsoleSummary) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let text = read_lossy(console);
        let fail = |why: &str| -> ! {
            panic!(
                "{what}: {why}\n--- console ---\n{text}\n--- qemu stderr ---\n{}",
                read_lossy(qemu_err)
            )
        };
        if let Ok(Some(status)) = qemu.0.try_wait() {
            fail(&format!("QEMU exited early: {status}"));
        }
        let s = ConsoleSummary::parse(&text);
        if s.mismatch_lines > 0 || s.last.is_some_and(|l| l.mismatches > 0) {
            fail("the guest reported memory mismatches");
        }
        if disk_clean {
            if s.disk_mismatch_lines > 0 || s.disk_last.is_some_and(|l| l.mismatches > 0) {
                fail("the guest reported disk mismatches");
            }
            if let Some((_, m)) = s.disk_verified_after_restart {
                if m > 0 {
                    fail("mismatches in the post-restart verification");
                }
            }
        }
        if let Some(reason) = &s.disk_error {
            fail(&format!("the disk workload failed: {reason}"));
        }
        if let Some(code) = s.exited {
            fail(&format!("ferry-guest exited with status {code}"));
        }
        if text.contains("config-error") || text.contains("insmod-failed") {
            fail("bad configuration or module");
        }
        if done(&s) {
            eprintln!("{what}: done in {:.1} s", start.elapsed().as_secs_f64());
            return text;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            fail(&format!("not done within {BOOT_TIMEOUT:?}"));
        }
    }
}

/// Disk status lines after `marker`, checked for steady progress and no mismatches; returns
/// blocks written and verified per second.
fn steady_rates(text: &str, marker: &str) -> (u64, u64) {
    let at = text.find(marker).expect("marker line present");
    let after: Vec<DiskStatusLine> = disk_status_lines(&text[at..]).collect();
    assert!(after.len() >= WANT_DISK_STATUS, "{text}");
    for pair in after.windows(2) {
        assert_eq!(pair[1].tick, pair[0].tick + 1, "{text}");
        assert!(pair[1].verified > pair[0].verified, "{text}");
        assert!(pair[1].written > pair[0].written, "{text}");
    }
    for st in &after {
        assert_eq!(
            (st.mib, st.rate_mib, st.mismatches),
            (DISK_MIB, DISK_RATE_MIB, 0),
            "{st:?}"
        );
    }
    let (first, last) = (after[0], after[after.len() - 1]);
    let secs = last.tick - first.tick;
    (
        (last.written - first.written) / secs,
        (last.verified - first.verified) / secs,
    )
}

#[test]
fn disk_workload_survives_a_crash_and_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = common::build_options(dir.path());
    let image = build(&opts, &mut |m| eprintln!("build: {m}")).unwrap_or_else(|e| panic!("{e}"));

    let disk = dir.path().join("data.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .output()
        .expect("run qemu-img (is qemu-utils installed?)");
    assert!(
        out.status.success(),
        "qemu-img create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // First boot: a fresh disk is initialised, then rewritten and verified.
    let console1 = dir.path().join("console1.log");
    let err1 = dir.path().join("qemu1.stderr");
    let mut qemu = boot(&image, &disk, &console1, &err1);
    let text = watch(&mut qemu, &console1, &err1, "first boot", true, &|s| {
        s.disk_status_lines_after_ready >= WANT_DISK_STATUS && s.ready.is_some()
    });
    let s = ConsoleSummary::parse(&text);
    assert_eq!(
        s.disk_ready,
        Some(DiskReadyLine {
            mib: DISK_MIB,
            rate_mib: DISK_RATE_MIB
        })
    );
    assert_eq!(
        (s.disk_resumed, s.disk_verified_after_restart),
        (None, None)
    );
    assert!(s.status_lines >= 2, "memory status lines go on: {text}");
    assert_eq!(s.last.map(|l| l.mismatches), Some(0));
    let (w1, v1) = steady_rates(&text, "FERRY-GUEST disk ready");
    let init_line = disk_status_lines(&text).next();
    eprintln!(
        "first boot: disk {w1} blocks/s written, {v1} blocks/s verified; first disk line: \
         {init_line:?}; last memory line: {:?}",
        s.last
    );

    // A crash: SIGKILL, no chance to finish a batch or flush anything.
    let _ = qemu.0.kill();
    let _ = qemu.0.wait();
    drop(qemu);

    // Second boot with the same disk: resume, verify everything once, carry on.
    let console2 = dir.path().join("console2.log");
    let err2 = dir.path().join("qemu2.stderr");
    let mut qemu = boot(&image, &disk, &console2, &err2);
    let text = watch(&mut qemu, &console2, &err2, "second boot", true, &|s| {
        s.disk_status_lines_after_ready >= WANT_DISK_STATUS && s.status_lines >= 2
    });
    let s = ConsoleSummary::parse(&text);
    assert_eq!(
        s.disk_ready, None,
        "the disk must not be initialised again: {text}"
    );
    assert_eq!(s.disk_resumed, Some(DISK_BLOCKS), "{text}");
    assert_eq!(
        s.disk_verified_after_restart,
        Some((DISK_BLOCKS, 0)),
        "{text}"
    );
    assert!(s.ready.is_some() && s.last.is_some_and(|l| l.mismatches == 0));
    let resume_at = text.find("FERRY-GUEST disk resume").unwrap();
    let verified_at = text
        .find("FERRY-GUEST disk verified-after-restart")
        .unwrap();
    assert!(resume_at < verified_at);
    let (w2, v2) = steady_rates(&text, "FERRY-GUEST disk verified-after-restart");
    // 2 MiB/s is 512 blocks/s; allow for a slow machine.
    assert!(w1 >= 256 && w2 >= 256, "write rate: {w1} and {w2} blocks/s");
    eprintln!(
        "second boot: ahead={:?}, disk {w2} blocks/s written, {v2} blocks/s verified",
        s.disk_ahead_after_restart
    );

    // Control: damage one data block while the VM is down; the next boot must find it.
    let _ = qemu.0.kill();
    let _ = qemu.0.wait();
    drop(qemu);
    let offset = (1 + TABLE_BLOCKS + DAMAGED_BLOCK) * 4096;
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P 0xab {offset} 4k"))
        .arg(&disk)
        .output()
        .expect("run qemu-io (is qemu-utils installed?)");
    assert!(
        out.status.success(),
        "qemu-io failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console3 = dir.path().join("console3.log");
    let err3 = dir.path().join("qemu3.stderr");
    let mut qemu = boot(&image, &disk, &console3, &err3);
    let text = watch(&mut qemu, &console3, &err3, "third boot", false, &|s| {
        s.disk_status_lines_after_ready >= 1
    });
    let s = ConsoleSummary::parse(&text);
    assert_eq!(
        s.disk_verified_after_restart,
        Some((DISK_BLOCKS, 1)),
        "{text}"
    );
    assert_eq!(s.disk_mismatch_lines, 1, "{text}");
    let want = format!("FERRY-GUEST DISK-MISMATCH block={DAMAGED_BLOCK} ");
    let hit = text
        .lines()
        .find(|l| l.contains(&want))
        .unwrap_or_else(|| panic!("no mismatch line for block {DAMAGED_BLOCK}:\n{text}"));
    assert!(hit.contains("found_gen=? kind=garbage"), "{hit}");
    // Counted once and repaired: the running sweeps after it are clean.
    assert_eq!(s.disk_last.map(|l| l.mismatches), Some(1), "{text}");
    assert_eq!(s.last.map(|l| l.mismatches), Some(0), "memory unaffected");
}
