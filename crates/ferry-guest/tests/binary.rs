//! Runs the real `ferry-guest` binary on the host with a command-line file, as `/init` would in
//! the VM, and parses its console output with the library's own parsers.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_guest::service::Answer;
use ferry_guest::{ConsoleSummary, TcpLine};

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

    // Disk settings are refused before any device is opened (this runs on the host: the
    // binary must never get a valid ferry.disk here).
    let (code, text) = run_with_cmdline(
        "ferry.mem_mib=1 ferry.disk=../vda ferry.disk_mib=0 ferry.disk_rate_mib=-1",
        &["--ticks", "1"],
    );
    assert_eq!(code, Some(2), "{text}");
    for key in ["ferry.disk", "ferry.disk_mib", "ferry.disk_rate_mib"] {
        assert!(
            text.contains(&format!("config-error key={key} ")),
            "{key}: {text}"
        );
    }
    assert!(!text.contains("FERRY-GUEST disk "), "{text}");
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

/// Kills the guest process however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serves_tcp_when_networking_is_configured() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cmdline");
    std::fs::write(
        &path,
        format!("ferry.mem_mib=2 ferry.rate_mib=4 ferry.ip=10.9.9.9/24 ferry.port={port}\n"),
    )
    .expect("write cmdline");
    let mut guest = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_ferry-guest"))
            .arg("--cmdline")
            .arg(&path)
            .args(["--ticks", "3"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run ferry-guest"),
    );
    let mut out = BufReader::new(guest.0.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("read stdout");
    assert_eq!(
        TcpLine::parse(&first),
        Some(TcpLine::Listening { port }),
        "{first}"
    );

    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut ask = |req: &str| {
        writer.write_all(req.as_bytes()).expect("send");
        let mut l = String::new();
        reader.read_line(&mut l).expect("answer");
        l
    };
    let a = Answer::parse(&ask("hello\n")).expect("answer");
    assert_eq!((a.token.as_str(), a.mismatches), ("hello", 0));
    assert!(ask("two words\n").starts_with("error "));
    // The tick advances while the connection is held.
    std::thread::sleep(Duration::from_millis(1500));
    let b = Answer::parse(&ask("later\n")).expect("answer");
    assert!(b.tick > a.tick, "{a:?} then {b:?}");

    let status = guest.0.wait().expect("wait");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("read stdout");
    assert_eq!(status.code(), Some(0), "{first}{rest}");
    let s = ConsoleSummary::parse(&format!("{first}{rest}"));
    assert_eq!(s.tcp_port, Some(port));
    assert_eq!(s.status_lines, 3);
}

#[test]
fn no_tcp_without_address_and_bad_address_is_reported() {
    let (code, text) = run_with_cmdline("ferry.mem_mib=1 ferry.port=7000", &["--ticks", "1"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("tcp"), "{text}");
    let (code, text) = run_with_cmdline("ferry.mem_mib=1 ferry.ip=10.0.2.15", &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("FERRY-GUEST config-error key=ferry.ip value=\"10.0.2.15\""),
        "{text}"
    );
}
