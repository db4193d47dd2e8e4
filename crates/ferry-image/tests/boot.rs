//! End to end: build the test guest image from the real Debian kernel package, boot it under
//! QEMU (TCG), and watch the workload run clean.
//!
//! Needs: apt/dpkg with package lists (the kernel is downloaded), busybox-static,
//! qemu-system-x86_64, and the static guest binary, built first with
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build -p ferry-guest --release --target x86_64-unknown-linux-gnu
//! ```
//!
//! (found by `find_guest_binary`, or name it with `FERRY_GUEST_BIN`).

mod common;

use common::{read_lossy, KillOnDrop};
use std::fs;

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_guest::status::{status_lines, ConsoleSummary, ReadyLine};
use ferry_image::{build, kernel_cmdline, load, DEFAULT_IMAGE_NAME};

const MEM_MIB: u64 = 64;
const RATE_MIB: f64 = 5.0;
/// Generous for TCG on a busy 2-core CI machine; a quiet machine needs a fraction of it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const WANT_STATUS_AFTER_READY: usize = 3;

#[test]
fn build_boot_and_run_workload() {
    let cache = tempfile::tempdir().expect("temp dir");
    let opts = common::build_options(cache.path());

    let t = Instant::now();
    let image = build(&opts, &mut |m| eprintln!("build: {m}")).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("image built in {:.1} s", t.elapsed().as_secs_f64());
    let m = &image.manifest;
    assert!(m.kernel_package.starts_with("linux-image-"), "{m:?}");
    assert!(m.kernel_package.ends_with("-cloud-amd64"), "{m:?}");
    assert_eq!(
        m.kernel_package,
        format!("linux-image-{}", m.kernel_release)
    );
    for module in [
        "virtio_pci",
        "virtio_net",
        "virtio_blk",
        "failover",
        "net_failover",
    ] {
        assert!(
            m.modules.iter().any(|x| x == module),
            "{module} missing: {m:?}"
        );
    }
    let pos = |n: &str| m.modules.iter().position(|x| x == n);
    assert!(pos("failover") < pos("net_failover") && pos("net_failover") < pos("virtio_net"));
    image.verify().expect("checksums match the manifest");
    assert_eq!(load(&opts.cache_dir, DEFAULT_IMAGE_NAME).unwrap(), image);

    // Idempotent: a second build changes nothing (same build time) and leaves no temp files.
    let again = build(&opts, &mut |m| eprintln!("build again: {m}")).unwrap();
    assert_eq!(again, image);
    let mut leftovers: Vec<String> = fs::read_dir(&opts.cache_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    leftovers.sort();
    assert_eq!(leftovers, [".test-guest.lock", "test-guest"]);

    let console = cache.path().join("console.log");
    let qemu_err = cache.path().join("qemu.stderr");
    let stderr = fs::File::create(&qemu_err).unwrap();
    let cmdline = kernel_cmdline(MEM_MIB, RATE_MIB);
    let boot_start = Instant::now();
    let mut qemu = KillOnDrop(
        common::guest_command(&image.kernel, &image.initrd, &cmdline, &console)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start qemu-system-x86_64 (is QEMU installed?)"),
    );

    let mut ready_at = None;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let text = read_lossy(&console);
        let fail = |why: &str| -> ! {
            panic!(
                "{why}\n--- console ---\n{text}\n--- qemu stderr ---\n{}",
                read_lossy(&qemu_err)
            )
        };
        if let Ok(Some(status)) = qemu.0.try_wait() {
            fail(&format!("QEMU exited early: {status}"));
        }
        let s = ConsoleSummary::parse(&text);
        if s.mismatch_lines > 0 || s.last.is_some_and(|l| l.mismatches > 0) {
            fail("the guest reported memory mismatches");
        }
        if let Some(code) = s.exited {
            fail(&format!("ferry-guest exited with status {code}"));
        }
        if text.contains("insmod-failed") {
            fail("a module failed to load");
        }
        if ready_at.is_none() && s.ready.is_some() {
            let t = boot_start.elapsed();
            eprintln!("boot to ready: {:.1} s", t.as_secs_f64());
            ready_at = Some(t);
        }
        if s.status_lines_after_ready >= WANT_STATUS_AFTER_READY {
            assert_eq!(s.boot_kernel.as_deref(), Some(m.kernel_release.as_str()));
            assert_eq!(
                s.ready,
                Some(ReadyLine {
                    mem_mib: MEM_MIB,
                    rate_mib: RATE_MIB
                })
            );
            let ready_pos = text.find("FERRY-GUEST ready").unwrap();
            let after: Vec<_> = status_lines(&text[ready_pos..]).collect();
            for pair in after.windows(2) {
                assert_eq!(pair[1].tick, pair[0].tick + 1, "{text}");
                assert!(pair[1].written > pair[0].written, "{text}");
                assert!(pair[1].verified > pair[0].verified, "{text}");
            }
            for st in &after {
                assert_eq!(
                    (st.mem_mib, st.rate_mib, st.mismatches),
                    (MEM_MIB, RATE_MIB, 0)
                );
                assert!(
                    st.written >= MEM_MIB * 256,
                    "fill counted in written: {st:?}"
                );
            }
            // The write rate holds under TCG: 5 MiB/s = 1280 pages/s, allow for slow machines.
            let (first, last) = (after[0], after[after.len() - 1]);
            let per_tick = (last.written - first.written) / (last.tick - first.tick);
            assert!(per_tick >= 640, "only {per_tick} pages/s written:\n{text}");
            eprintln!(
                "after ready: {} status lines, {per_tick} pages written/s, last: {last}",
                after.len()
            );
            break;
        }
        if boot_start.elapsed() > BOOT_TIMEOUT {
            fail(&format!(
                "no {WANT_STATUS_AFTER_READY} status lines after `ready` within {BOOT_TIMEOUT:?}"
            ));
        }
    }
}
