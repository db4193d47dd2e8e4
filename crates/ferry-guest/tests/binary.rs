//! Runs the real `ferry-guest` binary on the host with a command-line file, as `/init` would in
//! the VM, and parses its console output with the library's own parsers.

use std::process::Command;

use ferry_guest::ConsoleSummary;

fn run_with_cmdline(cmdline: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cmdline");
    std::fs::write(&path, cmdline).expect("write cmdline");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-guest"))
        .arg("--cmdline")
        .arg(&path)
        .args(extra)
        .output()
        .expect("run ferry-guest");
    assert!(
        out.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code(),
        String::from_utf8(out.stdout).expect("utf-8 output"),
    )
}

#[test]
fn runs_fills_and_reports() {
    let (code, text) = run_with_cmdline(
        "console=ttyS0 ferry.mem_mib=2 ferry.rate_mib=4 ferry.future_key=1\n",
        &["--ticks", "3"],
    );
    assert_eq!(code, Some(0), "{text}");
    let s = ConsoleSummary::parse(&text);
    let ready = s.ready.expect("ready line");
    assert_eq!((ready.mem_mib, ready.rate_mib), (2, 4.0));
    assert_eq!(s.status_lines, 3, "{text}");
    assert!(s.status_lines_after_ready >= 2, "{text}");
    let last = s.last.expect("status line");
    assert_eq!(
        (last.tick, last.mismatches, last.mem_mib, last.rate_mib),
        (3, 0, 2, 4.0)
    );
    // Fill (512 pages) + at least ~1 s of writes at 4 MiB/s (1024 pages/s).
    assert!(last.written >= 512 + 900, "{text}");
    assert!(last.verified >= 512, "{text}");
    assert_eq!(s.mismatch_lines, 0);
}

#[test]
fn bad_settings_are_reported_and_exit_2() {
    let (code, text) = run_with_cmdline("ferry.mem_mib=0 ferry.rate_mib=fast", &[]);
    assert_eq!(code, Some(2));
    assert!(
        text.contains("FERRY-GUEST config-error key=ferry.mem_mib value=\"0\""),
        "{text}"
    );
    assert!(text.contains("key=ferry.rate_mib"), "{text}");
}

#[test]
fn missing_cmdline_file_is_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-guest"))
        .args(["--cmdline", "/nonexistent/ferry-cmdline"])
        .output()
        .expect("run ferry-guest");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cannot read /nonexistent/ferry-cmdline"),
        "{text}"
    );
}
