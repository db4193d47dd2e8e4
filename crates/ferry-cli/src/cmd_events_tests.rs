//! The CLI side of the audit trail: options, and verifying an export file offline.

use chrono::TimeZone;
use clap::Parser;
use ferry_api::audit::{self, Problem, SigningKey};
use ferry_api::{EventKind, Outcome};

use super::*;
use crate::cli::{Cli, Command};

fn key() -> SigningKey {
    SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap()
}

/// An export of `n` chained events with a checkpoint at the last, as `ferry events export`
/// writes it.
fn export_lines(key: &SigningKey, n: i64) -> Vec<String> {
    let mut prev = audit::GENESIS;
    let mut lines = Vec::new();
    let mut last = None;
    for id in 1..=n {
        let mut e = Event {
            id,
            at: chrono::Utc.timestamp_opt(1_767_225_600 + id, 0).unwrap(),
            actor: "cli:alice@ops".into(),
            kind: EventKind::VmStop,
            vm: Some("web1".into()),
            host: None,
            migration: None,
            outcome: Outcome::Ok,
            message: format!("event {id}"),
            data: serde_json::json!({"id": id}),
            hash: None,
        };
        prev = audit::event_hash(&prev, &e);
        e.hash = Some(audit::to_hex(&prev));
        last = Some(e.clone());
        lines.push(serde_json::to_string(&ExportRecord::Event(e)).unwrap());
    }
    let last = last.unwrap();
    let cp = key.checkpoint(1, last.id, &prev, last.at);
    lines.push(serde_json::to_string(&ExportRecord::Checkpoint(cp)).unwrap());
    lines.push(
        serde_json::to_string(&ExportRecord::PublicKey {
            public_key: key.public_key().to_hex(),
        })
        .unwrap(),
    );
    lines
}

fn write(dir: &tempfile::TempDir, lines: &[String]) -> PathBuf {
    let path = dir.path().join("export.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn events_keeps_its_listing_options_and_gains_verify_and_export() {
    let hex = "ab".repeat(32);
    let cli = Cli::try_parse_from([
        "ferry", "events", "verify", "--key", &hex, "--expect", "3:00", "--expect", "4:11",
        "--json",
    ])
    .unwrap();
    match cli.command {
        Command::Events(a) => match a.audit {
            Some(EventsCmd::Verify(v)) => {
                assert_eq!(v.key.as_deref(), Some(hex.as_str()));
                assert_eq!(v.expect, vec!["3:00", "4:11"]);
                assert!(v.json.json && v.file.is_none());
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let cli = Cli::try_parse_from(["ferry", "events", "export", "--to", "-"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Events(a) if matches!(&a.audit, Some(EventsCmd::Export(e)) if e.to == Path::new("-"))
    ));
    let cli = Cli::try_parse_from(["ferry", "events", "--vm", "web1", "--limit", "5"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Events(a) if a.audit.is_none() && a.limit == 5 && a.vm.as_deref() == Some("web1")
    ));
    assert!(Cli::try_parse_from(["ferry", "events", "--vm", "web1", "verify"]).is_err());
    assert!(
        Cli::try_parse_from(["ferry", "events", "export"]).is_err(),
        "--to is required"
    );
}

#[test]
fn expected_hashes_are_id_colon_64_hex_digits() {
    let hash = "0f".repeat(32);
    assert_eq!(
        parse_expect(&format!("12:{hash}")).unwrap(),
        (12, hash.clone())
    );
    for bad in [
        "12",
        &format!("x:{hash}"),
        "12:abcd",
        &format!("12:{}", "zz".repeat(32)),
    ] {
        let err = parse_expect(bad).unwrap_err();
        assert_eq!(err.exit, crate::exit::Exit::Refused, "{bad}");
    }
}

#[test]
fn an_intact_export_verifies_offline_with_the_pinned_key() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let path = write(&dir, &export_lines(&k, 5));
    let v = verify_file(&path, Some(&k.public_key().to_hex()), &[], true).unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!((v.report.events, v.report.signed_through), (5, Some(5)));
    assert!(v.key.pinned && v.key.published_other.is_none());
    // Without --key, the export's own key is used (and says so).
    let v = verify_file(&path, None, &[], true).unwrap();
    assert!(v.ok && !v.key.pinned);
}

#[test]
fn a_tampered_export_names_the_first_bad_event() {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let mut lines = export_lines(&k, 6);
    lines[2] = lines[2].replace("event 3", "event 3, nothing to see");
    let path = write(&dir, &lines);
    let v = verify_file(&path, Some(&k.public_key().to_hex()), &[], true).unwrap();
    assert!(!v.ok);
    assert!(
        matches!(
            v.report.first_problem(),
            Some(Problem::HashMismatch { event: 3, .. })
        ),
        "{v:?}"
    );
    assert!(v.first_problem.unwrap().contains("event #3"));

    // A line removed: found at the next one.
    let mut lines = export_lines(&k, 6);
    lines.remove(3);
    let path = write(&dir, &lines);
    let v = verify_file(&path, None, &[], true).unwrap();
    assert!(
        matches!(
            v.report.first_problem(),
            Some(Problem::HashMismatch { event: 5, .. })
        ),
        "{v:?}"
    );
}

#[test]
fn an_export_re_signed_with_another_key_fails_against_the_pinned_one() {
    let dir = tempfile::tempdir().unwrap();
    let (real, forger) = (key(), key());
    let path = write(&dir, &export_lines(&forger, 4));
    let v = verify_file(&path, Some(&real.public_key().to_hex()), &[], true).unwrap();
    assert!(!v.ok);
    assert!(
        matches!(
            v.report.first_problem(),
            Some(Problem::BadSignature { event: 4, .. })
        ),
        "{v:?}"
    );
    assert_eq!(
        v.key.published_other.as_deref(),
        Some(forger.public_key().to_hex().as_str())
    );
}

#[test]
fn a_garbled_export_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = export_lines(&key(), 3);
    lines[1] = "{\"record\":\"event\",".into();
    let path = write(&dir, &lines);
    let err = verify_file(&path, None, &[], true).unwrap_err();
    assert_eq!(err.exit, crate::exit::Exit::Failed);
    assert!(err.message.contains("line 2"), "{}", err.message);
}
