//! `ferry bench api`: what TLS and authentication cost an operator. Two labs (a secured
//! one, as every cluster runs, and one with `--insecure`), each with two agents; the same
//! reads against both: `ferry host list` as a process (what an operator types: a new
//! connection and handshake every time) and `GET /v1/hosts` from one client that keeps its
//! connection. Prints p50/p99 per arm and writes bench/results/api-latency.json.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_lab::{Lab, LabConfig};

use crate::console::print_table;
use crate::error::{fail, BenchError, BenchResult};
use crate::results::{machine_json, write_result};
use crate::setup::own_binary;

/// The options of `ferry bench api`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Requests per arm.
    pub samples: usize,
    /// Where to write the result file.
    pub out: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Arm {
    cluster: &'static str,
    how: &'static str,
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
}

fn arm(cluster: &'static str, how: &'static str, mut ms: Vec<f64>) -> Arm {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((ms.len() as f64 - 1.0) * q).round() as usize;
        ms.get(i).copied().unwrap_or(f64::NAN)
    };
    Arm {
        cluster,
        how,
        samples: ms.len(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        mean_ms: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
    }
}

async fn measure(
    lab: &Lab,
    exe: &std::path::Path,
    insecure: bool,
    n: usize,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    let mut cli = Vec::with_capacity(n);
    for _ in 0..n {
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["host", "list", "--json"])
            .env_remove("FERRY_CA")
            .env_remove("FERRY_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        match lab.trust() {
            Ok(t) if !insecure => {
                cmd.env("FERRY_CONFIG", &t.config_path)
                    .env_remove("FERRY_SERVER");
            }
            _ => {
                cmd.env("FERRY_SERVER", &lab.server_url)
                    .env("FERRY_CONFIG", "/dev/null");
            }
        }
        let t0 = Instant::now();
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(fail)?
            .map_err(fail)?;
        cli.push(t0.elapsed().as_secs_f64() * 1e3);
        if !out.status.success() {
            return Err(BenchError::failed(format!(
                "ferry host list failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    let c = lab.client();
    c.hosts().await?; // the connection, before timing
    let mut kept = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        c.hosts().await?;
        kept.push(t0.elapsed().as_secs_f64() * 1e3);
        // Stay under the per-identity rate limit (50/s): this measures latency, not it.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok((cli, kept))
}

pub async fn api(a: ApiConfig) -> BenchResult {
    let exe = own_binary()?;
    let n = a.samples.clamp(10, 10_000);
    let mut arms = Vec::new();
    for insecure in [false, true] {
        let cluster = if insecure {
            "insecure (plain HTTP)"
        } else {
            "TLS + token"
        };
        eprintln!("bench: {cluster}: starting a server and two agents");
        let mut cfg = LabConfig::new(exe.clone(), &["a", "b"]);
        cfg.insecure = insecure;
        let lab = Lab::start(cfg).await.map_err(fail)?;
        eprintln!(
            "bench: {cluster}: {n} x `ferry host list`, then {n} x GET /v1/hosts on one connection"
        );
        let (cli, kept) = measure(&lab, &exe, insecure, n).await?;
        arms.push(arm(
            cluster,
            "ferry host list (new process, new connection)",
            cli,
        ));
        arms.push(arm(cluster, "GET /v1/hosts (kept connection)", kept));
    }
    let rows: Vec<Vec<String>> = arms
        .iter()
        .map(|r| {
            vec![
                r.cluster.to_string(),
                r.how.to_string(),
                r.samples.to_string(),
                format!("{:.1}", r.p50_ms),
                format!("{:.1}", r.p99_ms),
                format!("{:.1}", r.mean_ms),
            ]
        })
        .collect();
    print_table(
        &["CLUSTER", "REQUEST", "N", "P50 MS", "P99 MS", "MEAN MS"],
        &rows,
    );
    let doc = serde_json::json!({
        "bench": "api-latency",
        "when": chrono::Utc::now().to_rfc3339(),
        "machine": machine_json("n/a"),
        "command": format!("ferry bench api --samples {n}"),
        "arms": arms,
    });
    let file = write_result(&a.out, "api-latency", &doc)?;
    eprintln!("bench: wrote {}", file.display());
    Ok(())
}
