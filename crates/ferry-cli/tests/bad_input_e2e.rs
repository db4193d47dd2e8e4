//! Bad input gets a clear error, a distinct exit status, and changes nothing.

mod common;

use common::*;
use ferry_api::*;

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_with_reasons_and_change_nothing() {
    let (lab, _) = start_lab(&["a", "b"]).await;
    boot_guest(&lab, "web1", "a", 32, 1.0).await;
    let c = lab.client();
    let events_before = c
        .events(&EventQuery {
            limit: Some(10_000),
            ..Default::default()
        })
        .await
        .unwrap();

    let cases: &[(&[&str], &str)] = &[
        (
            &["vm", "migrate", "nosuchvm", "--to", "b"],
            "no VM named 'nosuchvm'",
        ),
        (
            &["vm", "migrate", "web1", "--to", "nosuchhost"],
            "no host named 'nosuchhost'",
        ),
        (&["vm", "migrate", "web1", "--to", "a"], "already runs on a"),
        (
            &["vm", "migrate", "../etc", "--to", "b"],
            "must start with a lowercase letter",
        ),
        (
            &[
                "vm",
                "migrate",
                "web1",
                "--to",
                "b",
                "--downtime-limit",
                "0",
            ],
            "downtime_limit_ms",
        ),
        (&["vm", "create", "web1", "--host", "a"], "already exists"),
        (
            &["vm", "create", "x", "--host", "a", "--memory", "1"],
            "memory_mib",
        ),
        (
            &["vm", "create", "x", "--host", "nosuchhost"],
            "no host named 'nosuchhost'",
        ),
        (&["vm", "stop", "nosuchvm"], "no VM named"),
        (
            &["vm", "create", "x", "--host", "a", "--nic", "vmnet"],
            "host a has no network 'vmnet'",
        ),
        (
            &[
                "vm",
                "create",
                "x",
                "--host",
                "a",
                "--nic",
                "vmnet=01:00:5e:00:00:01",
            ],
            "multicast",
        ),
        (&["migration", "show", "not-a-uuid"], "not a migration id"),
    ];
    for (args, needle) in cases {
        let out = ferry(&lab, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(needle),
            "{args:?}: expected '{needle}' in: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");
    }

    // Malformed specs from a file.
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        ("{not json", "invalid VM spec"),
        (
            r#"{"name":"x","memory_mib":256,"boot":{"type":"image","image":"test-guest","cmdline":""},"disk":"/etc/passwd"}"#,
            "unknown field",
        ),
        (
            r#"{"name":"x","memory_mib":256,"vcpus":0,"boot":{"type":"image","image":"test-guest","cmdline":""}}"#,
            "vcpus",
        ),
        (
            r#"{"name":"x","memory_mib":256,"boot":{"type":"kernel","kernel":"relative/vmlinuz"}}"#,
            "absolute",
        ),
        (
            r#"{"name":"x","memory_mib":256,"machine":"q35,accel=kvm","boot":{"type":"image","image":"test-guest","cmdline":""}}"#,
            "machine",
        ),
    ] {
        let f = dir.path().join("spec.json");
        std::fs::write(&f, text).unwrap();
        let out = ferry(
            &lab,
            &[
                "vm",
                "create",
                "x",
                "--host",
                "a",
                "--spec",
                f.to_str().unwrap(),
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{text}: {}", stderr(&out));
    }

    // The API itself refuses malformed bodies with the documented error shape (bypassing
    // the CLI's own checks).
    let trust = lab.trust().unwrap();
    let http = trust.raw_http(Some(trust.admin_token()));
    for body in [
        "{",
        r#"{"host":"a","spec":{"name":"x","memory_mib":1,"boot":{"type":"image","image":"t","cmdline":""}}}"#,
    ] {
        let resp = http
            .post(format!("{}/v1/vms", lab.server_url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{body}");
        let err: ErrorBody = resp.json().await.unwrap();
        assert_eq!(err.error.code, ErrorCode::BadRequest);
    }
    let resp = http
        .get(format!("{}/v1/nope", lab.server_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // Nothing changed: one VM on a, still running, no migration, no QEMU on b.
    let vms = c.vms().await.unwrap();
    assert_eq!(vms.len(), 1);
    assert_eq!(
        (vms[0].host.as_str(), vms[0].state, vms[0].migration),
        ("a", VmState::Running, None)
    );
    assert!(c.migrations().await.unwrap().is_empty());
    assert!(lab.qemus_on("b").is_empty());
    // Refused state-changing requests are logged as errors, with who asked.
    let events = c
        .events(&EventQuery {
            limit: Some(10_000),
            ..Default::default()
        })
        .await
        .unwrap();
    let new: Vec<&Event> = events
        .iter()
        .filter(|e| e.id > events_before.last().map(|e| e.id).unwrap_or(0))
        .collect();
    assert!(
        new.iter().any(|e| e.kind == EventKind::MigrationRequest
            && e.outcome == Outcome::Error
            && e.message.contains("already runs on a")
            && e.actor == "user:admin"),
        "{new:?}"
    );

    // The agent sends a VM only to tcp:IP:PORT: a URI that would have QEMU run a command,
    // write a file or reach a local socket is refused before QEMU sees it, and nothing
    // happens (the guest runs on, not migrating).
    let agent = lab.agent_client(&lab.agents[0].name).unwrap();
    let marker = lab.dir().join("owned-by-exec");
    for uri in [
        format!("exec:touch {}", marker.display()),
        format!("file:{}", marker.display()),
        "unix:/run/ferry-nothing.sock".to_string(),
        "fd:3".to_string(),
        "tcp:not-an-address:4444".to_string(),
    ] {
        let req = OutgoingRequest {
            uri: uri.clone(),
            max_bandwidth_bytes: 0,
            downtime_limit_ms: 300,
            stream: Default::default(),
            peer_host: None,
        };
        match agent.start_outgoing("web1", &req).await {
            Err(ferry_api::client::ClientError::Api(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest, "{uri}: {}", e.message);
                assert!(
                    e.message.contains("only tcp:IP:PORT"),
                    "{uri}: {}",
                    e.message
                );
            }
            other => panic!("{uri} was not refused: {other:?}"),
        }
    }
    assert!(!marker.exists(), "QEMU ran the exec: URI");
    let rt = agent.vm("web1").await.unwrap();
    assert_eq!(rt.state, VmState::Running);
    let status = agent.migration_status("web1").await.unwrap();
    assert_eq!(status.progress.qemu_status, MigrationStatus::None);

    // The operator's resolve and the agent's reclaim check what they are given: a malformed
    // id, an unknown migration, a VM that is not a completed source are refused with the
    // reason and nothing changes.
    let out = ferry(
        &lab,
        &["migration", "resolve", "not-an-id", "--keep", "source"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a migration id"),
        "{}",
        stderr(&out)
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    let out = ferry(
        &lab,
        &["migration", "resolve", &unknown, "--keep", "destination"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no migration with id"),
        "{}",
        stderr(&out)
    );
    let out = ferry(&lab, &["migration", "resolve", &unknown, "--keep", "both"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    match agent.reclaim("web1").await {
        Err(ferry_api::client::ClientError::Api(e)) => {
            assert_eq!(e.code, ErrorCode::Conflict, "{}", e.message);
        }
        other => panic!("reclaiming a VM that never migrated was not refused: {other:?}"),
    }
    match agent.reclaim("../web1").await {
        Err(ferry_api::client::ClientError::Api(e)) => {
            assert!(
                matches!(e.code, ErrorCode::BadRequest | ErrorCode::NotFound),
                "{}",
                e.message
            );
        }
        other => panic!("a bad VM name was not refused: {other:?}"),
    }
    assert_eq!(agent.vm("web1").await.unwrap().state, VmState::Running);
    assert!(c.migrations().await.unwrap().is_empty());

    // An unreachable server is its own exit status.
    let out = std::process::Command::new(ferry_bin())
        .args(["--server", "http://127.0.0.1:9", "host", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
}
