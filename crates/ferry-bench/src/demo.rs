//! `ferry demo`: the whole story on one machine. A server and two agents on loopback, the
//! test guest on A dirtying memory, migrated A -> B -> A; after each hop the report and the
//! guest's own integrity verdict. Exits 0 only if every hop completed and the guest counted
//! on with zero mismatches. Everything it starts, it stops (also on Ctrl-C).

use std::time::Duration;

use ferry_api::*;
use ferry_lab::{
    ensure_test_image, test_vm_spec, verdict_after, wait_ready, GuestVerdict, Lab, LabConfig,
};
use serde::Serialize;

use crate::console::print_json;
use crate::error::{BenchError, BenchResult};
use crate::progress::follow;

/// The options of `ferry demo`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Guest memory, MiB.
    pub memory: u64,
    /// MiB the guest workload fills and verifies.
    pub workload_mem: u64,
    /// MiB/s the guest workload rewrites during the migrations.
    pub workload_rate: f64,
    /// Keep the lab directory (daemon logs) afterwards.
    pub keep: bool,
    /// Print the report as JSON (for scripts) instead of text.
    pub json: bool,
}

/// How the demo prints a migration's report after each hop: the binary's own report (the
/// one `ferry vm migrate` prints), so the demo shows what an operator would see.
pub type PrintReport = fn(&Migration);

const VM: &str = "demo";

#[derive(Serialize)]
struct Hop {
    from: String,
    to: String,
    migration: Migration,
    verdict: Option<GuestVerdict>,
    /// QEMU processes of the VM left on the source host afterwards (must be 0).
    qemus_left_on_source: usize,
    /// Where the server says the VM runs afterwards.
    server_says: String,
    ok: bool,
}

#[derive(Serialize)]
struct DemoReport {
    ok: bool,
    boot_seconds: f64,
    hops: Vec<Hop>,
}

pub async fn run(a: DemoConfig, print_report: PrintReport) -> BenchResult {
    tokio::select! {
        r = demo(a, print_report) => r,
        _ = tokio::signal::ctrl_c() => Err(BenchError::failed("interrupted; everything the demo started was stopped")),
    }
}

async fn demo(a: DemoConfig, print_report: PrintReport) -> BenchResult {
    let json = a.json;
    let say = |s: &str| {
        if !json {
            eprintln!("{s}");
        }
    };
    say("ferry demo: preparing the test guest image");
    let image_dir = tokio::task::spawn_blocking(move || {
        ensure_test_image(&mut |step: &str| {
            if !json {
                eprintln!("  {step}");
            }
        })
    })
    .await
    .map_err(|e| BenchError::failed(e.to_string()))?
    .map_err(BenchError::failed)?;

    let exe = std::env::current_exe()
        .map_err(|e| BenchError::failed(format!("cannot find my own binary: {e}")))?;
    let mut cfg = LabConfig::new(exe, &["a", "b"]);
    cfg.image_dir = Some(image_dir);
    cfg.keep = a.keep;
    say("ferry demo: starting a server and agents a and b on loopback");
    let lab = Lab::start(cfg)
        .await
        .map_err(|e| BenchError::failed(e.to_string()))?;
    let c = lab.client();

    say(&format!(
        "ferry demo: booting VM '{VM}' on a ({} MiB, workload {} MiB rewritten at {} MiB/s)",
        a.memory, a.workload_mem, a.workload_rate
    ));
    let started = std::time::Instant::now();
    let spec = test_vm_spec(VM, a.memory, a.workload_mem, a.workload_rate);
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec,
    })
    .await?;
    let ready = wait_ready(&c, VM, Duration::from_secs(300))
        .await
        .map_err(BenchError::failed)?;
    let boot_seconds = started.elapsed().as_secs_f64();
    say(&format!(
        "ferry demo: guest ready after {boot_seconds:.1}s: {ready}"
    ));

    let mut hops = Vec::new();
    for (from, to) in [("a", "b"), ("b", "a")] {
        say(&format!(
            "\nferry demo: migrating {VM} {from} -> {to} while the guest writes"
        ));
        let before = ferry_lab::Observer { client: &c, vm: VM }
            .last_status()
            .await
            .map_err(BenchError::failed)?
            .ok_or_else(|| BenchError::failed("the guest printed no status"))?;
        let m = c
            .migrate(&MigrateRequest {
                vm: VM.into(),
                to: Some(to.into()),
                options: Default::default(),
                priority: None,
            })
            .await?;
        let m = follow(&c, &m, !json).await?;
        if !json {
            print_report(&m);
        }
        let completed = m.phase == Phase::Completed;
        let verdict = if completed {
            Some(
                verdict_after(&c, VM, &before, Duration::from_secs(120))
                    .await
                    .map_err(BenchError::failed)?,
            )
        } else {
            None
        };
        let server_says = c
            .vm(VM)
            .await
            .map(|v| v.host)
            .unwrap_or_else(|e| format!("unknown ({e})"));
        let left = lab.qemus_on(from).len();
        let ok =
            completed && verdict.as_ref().is_some_and(|v| v.ok()) && left == 0 && server_says == to;
        if !json {
            if let Some(v) = &verdict {
                println!("  guest          {}", v.describe());
            }
            println!("  source         {left} QEMU left on {from}; server says the VM runs on {server_says}");
            println!("  verdict        {}", if ok { "OK" } else { "FAILED" });
        }
        hops.push(Hop {
            from: from.into(),
            to: to.into(),
            migration: m,
            verdict,
            qemus_left_on_source: left,
            server_says,
            ok,
        });
        if !ok {
            break;
        }
    }
    let ok = hops.len() == 2 && hops.iter().all(|h| h.ok);
    let report = DemoReport {
        ok,
        boot_seconds,
        hops,
    };
    if json {
        print_json(&report)?;
    } else {
        println!(
            "\nferry demo: {}",
            if ok {
                "PASSED: two live migrations, zero corrupt pages"
            } else {
                "FAILED"
            }
        );
    }
    drop(lab);
    if ok {
        Ok(())
    } else {
        Err(BenchError::failed("the demo failed (see the report above)"))
    }
}
