//! `ferry-guest`: the memory integrity workload run by the test VM's `/init`.
//!
//! Usage: `ferry-guest [--cmdline PATH] [--ticks N]`
//! - `--cmdline PATH`: read settings from PATH instead of `/proc/cmdline` (for tests);
//! - `--ticks N`: exit 0 after N status lines instead of running forever.
//!
//! Exit status: 0 after `--ticks`, 2 for bad settings or arguments, 3 when the memory area
//! cannot be allocated. All diagnostics go to stdout, which is the serial console in the VM.
//!
//! With `ferry.ip` set (networking configured by `/init`) and `ferry.port` not 0, the TCP
//! service (`ferry_guest::service`) listens on `0.0.0.0:<port>` before the workload starts.
//! With `ferry.disk` set, the disk workload (`ferry_guest::disk`) runs in its own thread; if
//! it fails it prints `FERRY-GUEST disk error reason=...` and stops, the memory workload goes on.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use ferry_guest::disk::{self, DiskRunOptions};
use ferry_guest::service::Service;
use ferry_guest::status::{DiskLine, TcpLine, PREFIX};
use ferry_guest::workload::{run, RunOptions};
use ferry_guest::Config;

const DEFAULT_CMDLINE: &str = "/proc/cmdline";

struct Args {
    cmdline: String,
    ticks: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        cmdline: DEFAULT_CMDLINE.to_string(),
        ticks: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--cmdline" => {
                args.cmdline = it.next().ok_or("--cmdline needs a file path")?;
            }
            "--ticks" => {
                let v = it.next().ok_or("--ticks needs a number")?;
                let n = v
                    .parse()
                    .map_err(|_| format!("--ticks: {v:?} is not a whole number"))?;
                args.ticks = Some(n);
            }
            "-h" | "--help" => {
                return Err("usage: ferry-guest [--cmdline PATH] [--ticks N]".to_string())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PREFIX} {line}");
    let _ = out.flush();
}

fn say_line(line: &dyn std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            say(format_args!("error {e}"));
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(&args.cmdline) {
        Ok(t) => t,
        Err(e) => {
            say(format_args!("error cannot read {}: {e}", args.cmdline));
            return ExitCode::from(2);
        }
    };
    let cfg = match Config::parse(&text) {
        Ok(c) => c,
        Err(errors) => {
            let mut out = std::io::stdout().lock();
            for e in errors {
                let _ = writeln!(out, "{e}");
            }
            let _ = out.flush();
            return ExitCode::from(2);
        }
    };
    let opts = RunOptions {
        max_ticks: args.ticks,
        ..RunOptions::default()
    };
    // Kept alive for as long as the workload runs.
    let _service = cfg.service_port().and_then(|port| {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        match Service::bind(addr, opts.counters.clone()) {
            Ok(s) => {
                say_line(&TcpLine::Listening { port });
                Some(s)
            }
            // The memory workload is still worth running; the host sees the error line.
            Err(e) => {
                say_line(&TcpLine::Error {
                    reason: format!("cannot listen on {addr}: {e}"),
                });
                None
            }
        }
    });
    // Its own thread: disk I/O and verification must not disturb the memory workload's timing.
    if let Some(settings) = cfg.disk_settings() {
        let spawned = std::thread::Builder::new()
            .name("ferry-disk".into())
            .spawn(move || {
                let mut out = std::io::stdout();
                if let Err(e) = disk::run(&settings, &mut out, &DiskRunOptions::default()) {
                    say_line(&DiskLine::Error {
                        reason: e.to_string(),
                    });
                }
            });
        if let Err(e) = spawned {
            say_line(&DiskLine::Error {
                reason: format!("cannot start the disk thread: {e}"),
            });
        }
    }
    // Not `stdout().lock()`: the disk thread prints too, each line under its own lock.
    let mut out = std::io::stdout();
    match run(&cfg, &mut out, &opts) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            say(format_args!("error {e}"));
            ExitCode::from(3)
        }
    }
}
