//! `ferry events` (the log, filtered or followed), and `ferry events verify` and
//! `ferry events export`: the audit trail checked here, with the same pure code the server
//! writes it with (`ferry_api::audit`), from the server or from an export file.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use ferry_api::audit::{Checkpoint, Checkpoints, ExportRecord, PublicKey, Report, Verifier};
use ferry_api::client::{ClientError, ServerClient};
use ferry_api::{ErrorCode, Event, EventQuery};
use serde::Serialize;

use crate::cli::{EventsArgs, JsonFlag};
use crate::cmd_cluster::client;
use crate::exit::{CliError, CliResult};
use crate::output::print_json;

/// Events per page when reading the whole log.
const PAGE: u32 = 1000;

#[derive(Subcommand, Debug)]
pub enum EventsCmd {
    /// Check the audit trail: the hash chain and the signed checkpoints.
    ///
    /// Every event's hash is recomputed from the one before it, every checkpoint's signature
    /// is checked against the key and its hash against the chain; the first event that does
    /// not fit is named, with why.
    #[command(after_help = "\
Pinning the key is what makes this tamper-evident against someone holding the server's data
directory: without --key, the key the server publishes is trusted, and whoever can replace the
database can replace that key and re-sign a rewritten history. Keep the key (printed by every
verify, and logged by the server when it creates it) somewhere the server's admins cannot change.
Someone who can also read the key file can re-sign a rewritten history with the real key; a head
recorded elsewhere earlier (--expect) or an export kept elsewhere catches that.

Exit status: 0 the log verifies, 1 it does not (or cannot be read), 2 bad input, 3 unreachable.

Examples:
  ferry events verify --key 3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29
  ferry events verify --key KEY --expect 1234:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
  ferry events verify --file /mnt/audit/ferry-2026-05-01.jsonl --key KEY --json")]
    Verify(VerifyArgs),
    /// Write the audit trail as JSON lines for an external store.
    ///
    /// Every event with its hash, then the checkpoints, then the public key; `ferry events
    /// verify --file` checks it offline.
    #[command(after_help = "\
The server signs the log's head first, so the export ends on a signed checkpoint. It is written
to FILE.partial and renamed when complete.

Examples:
  ferry events export --to /mnt/audit/ferry-$(date +%F).jsonl
  ferry events export --to - | ssh archive 'cat > ferry.jsonl'")]
    Export(ExportArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The server's audit public key (64 hex digits), pinned from a copy kept elsewhere.
    #[arg(long, value_name = "PUBLIC_KEY_HEX")]
    pub key: Option<String>,
    /// Check an export (`ferry events export`) offline instead of the server's log.
    #[arg(long, value_name = "EXPORT")]
    pub file: Option<PathBuf>,
    /// The chain must have this hash at this event (a head recorded earlier); repeatable.
    #[arg(long, value_name = "ID:HASH")]
    pub expect: Vec<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The file to write (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Print the summary as JSON (when the export goes to a file).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(server: &crate::connection::ConnOpts, cmd: EventsCmd) -> CliResult {
    match cmd {
        EventsCmd::Verify(a) => verify(server, a).await,
        EventsCmd::Export(a) => export(server, a).await,
    }
}

/// Which key the checkpoints were checked against, and where it came from.
#[derive(Debug, Serialize)]
struct KeyUse {
    public_key: String,
    pinned: bool,
    /// The key the server (or the export) publishes, when it is not the one used.
    #[serde(skip_serializing_if = "Option::is_none")]
    published_other: Option<String>,
}

#[derive(Debug, Serialize)]
struct Verdict {
    ok: bool,
    /// The server's URL or the export's path.
    source: String,
    key: KeyUse,
    /// The first problem, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    first_problem: Option<String>,
    report: Report,
}

fn parse_expect(text: &str) -> Result<(i64, String), CliError> {
    let bad = || {
        CliError::refused(format!(
            "--expect '{text}' is not ID:HASH (an event id and 64 hex digits)"
        ))
    };
    let (id, hash) = text.split_once(':').ok_or_else(bad)?;
    let id: i64 = id.trim().parse().map_err(|_| bad())?;
    ferry_api::audit::from_hex::<32>(hash.trim()).map_err(|_| bad())?;
    Ok((id, hash.trim().to_string()))
}

/// The key to check with: `--key` if given, else the published one (with a warning).
fn choose_key(
    pinned: Option<&str>,
    published: &str,
    json: bool,
) -> Result<(PublicKey, KeyUse), CliError> {
    let published_key = PublicKey::parse(published).ok();
    match pinned {
        Some(text) => {
            let key =
                PublicKey::parse(text).map_err(|e| CliError::refused(format!("--key: {e}")))?;
            Ok((
                key,
                KeyUse {
                    public_key: key.to_hex(),
                    pinned: true,
                    published_other: (published_key != Some(key)).then(|| published.to_string()),
                },
            ))
        }
        None => {
            let key = published_key.ok_or_else(|| {
                CliError::failed(format!(
                    "the published audit key '{published}' is not a key"
                ))
            })?;
            if !json {
                eprintln!(
                    "warning: no --key: checking against the key the log itself publishes. Whoever \
                     can replace the server's database can replace that key too; pin it \
                     (--key {}) from a copy kept elsewhere.",
                    key.to_hex()
                );
            }
            Ok((
                key,
                KeyUse {
                    public_key: key.to_hex(),
                    pinned: false,
                    published_other: None,
                },
            ))
        }
    }
}

fn new_verifier(
    key: &PublicKey,
    checkpoints: &[Checkpoint],
    expect: &[String],
) -> Result<Verifier, CliError> {
    let mut v = Verifier::new(key, checkpoints);
    for text in expect {
        let (id, hash) = parse_expect(text)?;
        v.expect(id, &hash);
    }
    Ok(v)
}

fn unsupported(e: ClientError) -> CliError {
    match e {
        ClientError::Api(api) if api.code == ErrorCode::NotFound => CliError::failed(format!(
            "the server publishes no audit checkpoints (older than this ferry?): {}",
            api.message
        )),
        other => other.into(),
    }
}

/// Every event from the server, oldest first, page by page (up to `until` if given).
async fn each_event(
    c: &ServerClient,
    until: Option<i64>,
    mut f: impl FnMut(Event) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let mut after = 0;
    loop {
        let page = c
            .events(&EventQuery {
                after: Some(after),
                limit: Some(PAGE),
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last().map(|e| e.id) else {
            return Ok(());
        };
        if last <= after {
            return Err(CliError::failed(format!(
                "the server answered events up to #{last} when asked for those after #{after}"
            )));
        }
        after = last;
        for e in page {
            if until.is_some_and(|u| e.id > u) {
                return Ok(());
            }
            f(e)?;
        }
    }
}

async fn verify(server: &crate::connection::ConnOpts, a: VerifyArgs) -> CliResult {
    let verdict = match &a.file {
        Some(path) => verify_file(path, a.key.as_deref(), &a.expect, a.json.json)?,
        None => {
            let c = client(server)?;
            // Sign the head first, so everything read below up to it is covered.
            c.checkpoint_now().await.map_err(unsupported)?;
            let published = c.checkpoints().await.map_err(unsupported)?;
            let (key, key_use) = choose_key(a.key.as_deref(), &published.public_key, a.json.json)?;
            let mut v = new_verifier(&key, &published.checkpoints, &a.expect)?;
            each_event(&c, None, |e| {
                v.push(&e);
                Ok(())
            })
            .await?;
            verdict(c.base_url().to_string(), key_use, v.finish())
        }
    };
    if a.json.json {
        print_json(&verdict)?;
    } else {
        print_verdict(&verdict);
    }
    match verdict.first_problem {
        None => Ok(()),
        Some(p) => Err(CliError::failed(format!(
            "the audit log does not verify ({} problem(s)); first: {p}",
            verdict.report.problems_total
        ))),
    }
}

fn verdict(source: String, key: KeyUse, report: Report) -> Verdict {
    Verdict {
        ok: report.ok(),
        source,
        key,
        first_problem: report.first_problem().map(|p| p.to_string()),
        report,
    }
}

fn print_verdict(v: &Verdict) {
    let r = &v.report;
    println!("source:      {}", v.source);
    match (r.first_event, r.last_event) {
        (Some(first), Some(last)) => println!("events:      {} (#{first} .. #{last})", r.events),
        _ => println!("events:      none"),
    }
    println!(
        "checkpoints: {} ({} good){}",
        r.checkpoints,
        r.checkpoints_ok,
        match (r.signed_through, r.last_event) {
            (Some(s), Some(l)) if s < l => format!(
                "; signed through #{s} (#{} .. #{l} are chained but not yet signed)",
                s + 1
            ),
            (Some(s), _) => format!("; signed through #{s}"),
            (None, Some(_)) if r.ok() => "; no event is covered by a good checkpoint".to_string(),
            (None, Some(_)) => {
                "; nothing is vouched for: a problem comes before the first good checkpoint"
                    .to_string()
            }
            (None, None) => String::new(),
        }
    );
    println!(
        "key:         {} ({})",
        v.key.public_key,
        if v.key.pinned {
            "pinned"
        } else {
            "as published, NOT pinned"
        }
    );
    if let Some(other) = &v.key.published_other {
        println!("             the log publishes another key: {other}");
    }
    if let (Some(last), Some(head)) = (r.last_event, &r.head) {
        println!("head:        #{last} {head}");
        if r.ok() {
            println!("             (record it elsewhere; later: --expect {last}:{head})");
        }
    }
    if r.ok() {
        println!("verdict:     OK: every event fits the chain and every checkpoint matches");
        return;
    }
    let first = r.first_problem().map(|p| p.event()).unwrap_or_default();
    println!("verdict:     BROKEN at event #{first}");
    for p in &r.problems {
        println!("  - {p}");
    }
    if r.problems_total > r.problems.len() as u64 {
        println!(
            "  ... and {} more",
            r.problems_total - r.problems.len() as u64
        );
    }
}

fn read_records(
    path: &Path,
    mut f: impl FnMut(usize, ExportRecord) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let file = std::fs::File::open(path)
        .map_err(|e| CliError::failed(format!("cannot open {}: {e}", path.display())))?;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line =
            line.map_err(|e| CliError::failed(format!("cannot read {}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|e| {
            CliError::failed(format!(
                "{} line {}: not an export record: {e}",
                path.display(),
                n + 1
            ))
        })?;
        f(n + 1, record)?;
    }
    Ok(())
}

/// Checks an export offline: first the checkpoints and key (at its end), then the events.
fn verify_file(
    path: &Path,
    key: Option<&str>,
    expect: &[String],
    json: bool,
) -> Result<Verdict, CliError> {
    let mut checkpoints = Vec::new();
    let mut published = None;
    read_records(path, |_, r| {
        match r {
            ExportRecord::Checkpoint(c) => checkpoints.push(c),
            ExportRecord::PublicKey { public_key } => published = Some(public_key),
            ExportRecord::Event(_) => {}
        }
        Ok(())
    })?;
    let published = match (published, key) {
        (Some(p), _) => p,
        (None, Some(k)) => k.to_string(),
        (None, None) => {
            return Err(CliError::failed(format!(
                "{} has no public_key record and no --key was given",
                path.display()
            )))
        }
    };
    let (key, key_use) = choose_key(key, &published, json)?;
    let mut v = new_verifier(&key, &checkpoints, expect)?;
    read_records(path, |_, r| {
        if let ExportRecord::Event(e) = r {
            v.push(&e);
        }
        Ok(())
    })?;
    Ok(verdict(path.display().to_string(), key_use, v.finish()))
}

#[derive(Debug, Serialize)]
struct Exported {
    to: String,
    events: u64,
    checkpoints: u64,
    public_key: String,
    /// The export ends on this signed event.
    signed_through: Option<i64>,
}

/// Writes the export records to `out`: events up to `until`, then the checkpoints up to
/// it, then the key. Returns how many events and checkpoints.
async fn write_export<W: Write>(
    c: &ServerClient,
    until: i64,
    published: &Checkpoints,
    out: &mut W,
    name: &str,
) -> Result<(u64, u64), CliError> {
    let line = |out: &mut W, r: &ExportRecord| -> Result<(), CliError> {
        let text = serde_json::to_string(r)
            .map_err(|e| CliError::failed(format!("cannot encode an export record: {e}")))?;
        writeln!(out, "{text}").map_err(|e| CliError::failed(format!("cannot write {name}: {e}")))
    };
    let mut events = 0u64;
    each_event(c, Some(until), |e| {
        events += 1;
        line(out, &ExportRecord::Event(e))
    })
    .await?;
    let mut checkpoints = 0u64;
    for cp in published
        .checkpoints
        .iter()
        .filter(|cp| cp.event_id <= until)
    {
        checkpoints += 1;
        line(out, &ExportRecord::Checkpoint(cp.clone()))?;
    }
    line(
        out,
        &ExportRecord::PublicKey {
            public_key: published.public_key.clone(),
        },
    )?;
    out.flush()
        .map_err(|e| CliError::failed(format!("cannot write {name}: {e}")))?;
    Ok((events, checkpoints))
}

async fn export(server: &crate::connection::ConnOpts, a: ExportArgs) -> CliResult {
    let c = client(server)?;
    // Sign the head first: the export ends on a signed event (later ones are left for the
    // next export).
    let head = c.checkpoint_now().await.map_err(unsupported)?;
    let published = c.checkpoints().await.map_err(unsupported)?;
    let until = head.as_ref().map_or(0, |h| h.event_id);
    let to_stdout = a.to.as_os_str() == "-";
    let (events, checkpoints) = if to_stdout {
        let mut out = BufWriter::new(std::io::stdout());
        write_export(&c, until, &published, &mut out, "standard output").await?
    } else {
        // Written under another name and renamed when complete and on disk: a file named
        // FILE is always a whole export.
        let partial = PathBuf::from(format!("{}.partial", a.to.display()));
        let name = partial.display().to_string();
        let fail = |e: std::io::Error| CliError::failed(format!("cannot write {name}: {e}"));
        let file = std::fs::File::create(&partial).map_err(fail)?;
        let mut out = BufWriter::new(file);
        let counts = write_export(&c, until, &published, &mut out, &name).await?;
        let file = out.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&partial, &a.to).map_err(|e| {
            CliError::failed(format!("cannot rename {name} to {}: {e}", a.to.display()))
        })?;
        counts
    };
    let summary = Exported {
        to: a.to.display().to_string(),
        events,
        checkpoints,
        public_key: published.public_key,
        signed_through: head.map(|h| h.event_id),
    };
    if a.json && !to_stdout {
        return print_json(&summary);
    }
    let text = format!(
        "exported {} events and {} checkpoints to {} (signed through #{}; key {})",
        summary.events,
        summary.checkpoints,
        summary.to,
        summary.signed_through.unwrap_or(0),
        summary.public_key
    );
    // On stderr when the export itself goes to stdout.
    if to_stdout {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}

/// `ferry events`: the log, filtered, once or followed.
pub async fn list(server: &crate::connection::ConnOpts, a: EventsArgs) -> CliResult {
    let c = client(server)?;
    let migration = a
        .migration
        .as_deref()
        .map(|m| {
            uuid::Uuid::parse_str(m)
                .map_err(|_| CliError::refused(format!("'{m}' is not a migration id")))
        })
        .transpose()?;
    let operation = a
        .operation
        .as_deref()
        .map(|m| {
            uuid::Uuid::parse_str(m)
                .map_err(|_| CliError::refused(format!("'{m}' is not an operation id")))
        })
        .transpose()?;
    let mut q = EventQuery {
        vm: a.vm,
        migration,
        operation,
        kind: a.kind,
        after: None,
        limit: Some(a.limit),
    };
    loop {
        let events = c.events(&q).await?;
        if let Some(last) = events.last() {
            q.after = Some(last.id);
        }
        if a.json.json {
            if a.follow {
                for e in &events {
                    // One JSON document per line when following, so a script can stream it.
                    println!("{}", serde_json::to_string(e).unwrap_or_default());
                }
            } else {
                print_json(&events)?;
            }
        } else {
            for e in &events {
                println!(
                    "{} #{:<5} {:<6} {:<24} {:<18} {}",
                    e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    e.id,
                    e.outcome.as_str(),
                    e.kind,
                    e.actor,
                    e.message
                );
            }
        }
        if !a.follow {
            return Ok(());
        }
        q.limit = Some(1000);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
#[path = "cmd_events_tests.rs"]
mod tests;
