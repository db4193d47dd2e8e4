//! Nobody gets in (issue 11): a lab cluster set up as an operator would (`ferry ca init`,
//! join tokens, agents with `--join`), then everything a stranger, a viewer, or another
//! host's certificate might try.

mod common;

use std::time::{Duration, Instant};

use ferry_api::client::{AgentClient, ClientError, Credentials, ServerClient, TlsCredentials};
use ferry_api::*;
use ferry_pki::{new_key_and_csr, Identity, Material};

use common::*;

fn material(lab: &ferry_lab::Lab, host: &str) -> Material {
    let a = lab.agents.iter().find(|a| a.name == host).expect("host");
    Material::load(&a.state_dir.join("tls"), "host").expect("the host's TLS files")
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Api(a) => Some(a.code),
        _ => None,
    }
}

fn ca_only(lab: &ferry_lab::Lab) -> Credentials {
    Credentials {
        tls: Some(TlsCredentials {
            ca_pem: material(lab, "a").ca_pem,
            me: None,
        }),
        token: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_without_the_right_identity_gets_in() {
    let mut cfg = lab_config(&["a", "b"]);
    // Short-lived host certificates: the agents renew them during this test.
    cfg.server_args = vec!["--host-cert-validity-s".into(), "60".into()];
    let lab = ferry_lab::Lab::start(cfg).await.expect("lab");
    let started = Instant::now();
    let admin = lab.client();

    // A stranger with the CA but no token: public routes only.
    let stranger = ServerClient::connect(&lab.server_url, &ca_only(&lab)).unwrap();
    assert!(stranger.health().await.is_ok());
    assert_eq!(
        code(&stranger.vms().await.unwrap_err()),
        Some(ErrorCode::Unauthorized)
    );
    assert_eq!(
        code(&stranger.events(&EventQuery::default()).await.unwrap_err()),
        Some(ErrorCode::Unauthorized)
    );
    // Plain http to a TLS server gets nothing at all.
    let plain = ServerClient::new(&lab.server_url.replacen("https://", "http://", 1)).unwrap();
    assert!(matches!(
        plain.hosts().await,
        Err(ClientError::Unreachable { .. })
    ));

    // A viewer reads but changes nothing; the CLI says so with exit status 5.
    let viewer = admin
        .add_user(&CreateUserRequest {
            name: "val".into(),
            role: Role::Viewer,
        })
        .await
        .expect("admin adds a viewer");
    let out = ferry_as(&lab, &["host", "list"], &[("FERRY_TOKEN", &viewer.token)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferry_as(
        &lab,
        &["vm", "stop", "anything"],
        &[("FERRY_TOKEN", &viewer.token)],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("needs operator"), "{}", stderr(&out));
    let out = ferry_as(
        &lab,
        &["whoami", "--json"],
        &[("FERRY_TOKEN", &viewer.token)],
    );
    let who: WhoAmI = serde_json::from_str(&stdout(&out)).expect("whoami JSON");
    assert_eq!(
        (who.actor.as_str(), who.role),
        ("user:val", Some(Role::Viewer))
    );
    // A removed user's token stops working at once.
    admin.remove_user("val").await.unwrap();
    let out = ferry_as(&lab, &["host", "list"], &[("FERRY_TOKEN", &viewer.token)]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    // The last admin cannot be removed.
    assert_eq!(
        code(&admin.remove_user("admin").await.unwrap_err()),
        Some(ErrorCode::Conflict)
    );

    // An agent takes orders from the server's certificate only.
    let a_url = &lab.agents[0].url;
    let as_b = AgentClient::connect(
        a_url,
        "a",
        &Credentials::daemon(material(&lab, "b")),
        Duration::from_secs(10),
    )
    .unwrap();
    let e = as_b.vms().await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    let no_cert =
        AgentClient::connect(a_url, "a", &ca_only(&lab), Duration::from_secs(10)).unwrap();
    assert!(matches!(
        no_cert.vms().await,
        Err(ClientError::Unreachable { .. })
    ));
    // Calling a's address while expecting b's certificate fails: identities, not addresses.
    let wrong = lab.trust().unwrap().agent_client(a_url, "b").unwrap();
    assert!(matches!(
        wrong.vms().await,
        Err(ClientError::Unreachable { .. })
    ));
    assert!(
        lab.agent_client("a").unwrap().vms().await.is_ok(),
        "the server's certificate works"
    );

    // Host b's certificate cannot register as host a (someone else's name).
    let as_host_b =
        ServerClient::connect(&lab.server_url, &Credentials::daemon(material(&lab, "b"))).unwrap();
    let a_now = admin.host("a").await.unwrap();
    let hijack = HostRegistration {
        name: "a".into(),
        url: "https://127.0.0.1:1".into(),
        migration_address: "127.0.0.1".into(),
        inventory: a_now.inventory.clone(),
        vms: Vec::new(),
        load: None,
        peers: None,
    };
    assert_eq!(
        code(&as_host_b.register_host(&hijack).await.unwrap_err()),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        admin.host("a").await.unwrap().url,
        a_now.url,
        "a's record unchanged"
    );

    // Join tokens: single use, short-lived, and the certificate names the token's host.
    let t = admin
        .join_token(&JoinTokenRequest {
            host: "c".into(),
            ttl_s: Some(600),
        })
        .await
        .unwrap();
    let joiner = ServerClient::connect(&lab.server_url, &ca_only(&lab)).unwrap();
    // The request asks for host a's name; the server issues for c, the token's host.
    let (_key, csr) = new_key_and_csr(&Identity::host("a").unwrap()).unwrap();
    let issued = joiner
        .join(&JoinRequest {
            token: t.token.clone(),
            csr_pem: csr.clone(),
        })
        .await
        .expect("a good token joins");
    assert_eq!(issued.host, "c");
    let info = ferry_pki::cert_info_pem(&issued.cert_pem).unwrap();
    assert_eq!(info.identity, Some(Identity::host("c").unwrap()));
    let again = joiner
        .join(&JoinRequest {
            token: t.token.clone(),
            csr_pem: csr.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&again), Some(ErrorCode::Unauthorized), "{again}");
    assert!(again.to_string().contains("already used"), "{again}");
    let short = admin
        .join_token(&JoinTokenRequest {
            host: "d".into(),
            ttl_s: Some(1),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = joiner
        .join(&JoinRequest {
            token: short.token,
            csr_pem: csr,
        })
        .await
        .unwrap_err();
    assert!(expired.to_string().contains("expired"), "{expired}");
    // A host that holds a certificate cannot be given a second identity by a new token.
    assert_eq!(
        code(
            &admin
                .join_token(&JoinTokenRequest {
                    host: "a".into(),
                    ttl_s: None
                })
                .await
                .unwrap_err()
        ),
        Some(ErrorCode::Conflict)
    );

    // Renewal: both agents renew their 60 s certificates before expiry and stay connected.
    let first = material(&lab, "a").cert_pem;
    let deadline = started + Duration::from_secs(120);
    loop {
        let renewed = admin
            .events(&EventQuery {
                kind: Some("host.certificate".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let by = |h: &str| {
            renewed
                .iter()
                .any(|e| e.actor == format!("host:{h}") && e.outcome == Outcome::Ok)
        };
        if by("a") && by("b") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal within 120 s: {renewed:?}\n{}",
            lab.server_logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_ne!(
        material(&lab, "a").cert_pem,
        first,
        "a's certificate file was replaced"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hosts = admin.hosts().await.unwrap();
    assert!(
        hosts.iter().all(|h| h.state == HostState::Connected),
        "{hosts:?}"
    );
    assert!(
        lab.agent_client("a").unwrap().vms().await.is_ok(),
        "a serves after renewal"
    );

    // Removing host b revokes its certificates: its agent is shut out.
    let removed = admin.remove_host("b").await.expect("b holds no VM");
    assert!(removed.to_string().contains("revoked"), "{removed}");
    let refused = as_host_b.hosts().await.unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::Unauthorized), "{refused}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        admin.host("b").await.is_err(),
        "b's heartbeats did not bring it back"
    );

    // Every change above is in the log under who made it.
    let events = admin
        .events(&EventQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    for (kind, actor) in [
        ("user.add", "user:admin"),
        ("user.remove", "user:admin"),
        ("host.join_token", "user:admin"),
        ("host.remove", "user:admin"),
        ("host.register", "host:a"),
    ] {
        assert!(
            events
                .iter()
                .any(|e| e.kind.as_str() == kind && e.actor == actor),
            "no {kind} by {actor}"
        );
    }
    assert!(
        events.iter().any(|e| e.kind.as_str() == "host.register"
            && e.actor == "host:b"
            && e.outcome == Outcome::Error),
        "the hijack attempt is on the record"
    );
}

/// `ferry ca rotate`: the overlap, a finish refused while a host (its agent down) still
/// holds only old certificates, the agents renewing from the new CA on their own, the
/// finish, and a guest that then migrates over QEMU's TLS with the new certificates and
/// verifies clean.
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_ca_rotates_with_an_overlap_and_migrations_still_run() {
    let (mut lab, cfg) = start_lab(&["a", "b"]).await;
    boot_guest(&lab, "rot", "a", 64, 4.0).await;
    let admin = lab.client();
    let old = admin.ca_bundle().await.unwrap().fingerprints;
    assert_eq!(old.len(), 1);

    // b's agent is down while the rotation starts: b cannot renew yet.
    lab.kill_agent("b").expect("b stops");
    let started = admin
        .rotate_ca(&RotateRequest { finish: false })
        .await
        .expect("rotation starts");
    assert_eq!(started.state, "overlapping");
    assert_eq!(started.trusted.len(), 2);
    assert_eq!(started.trusted[1], old[0], "the old CA stays trusted");
    assert_eq!(
        code(
            &admin
                .rotate_ca(&RotateRequest { finish: false })
                .await
                .unwrap_err()
        ),
        Some(ErrorCode::Conflict),
        "one rotation at a time"
    );

    // a renews from the new CA on its own; b cannot: finishing is refused and names b.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = admin.ca_rotation().await.unwrap();
        if r.pending_hosts == vec!["b".to_string()] {
            break;
        }
        assert!(Instant::now() < deadline, "a did not renew: {r:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let refused = admin
        .rotate_ca(&RotateRequest { finish: true })
        .await
        .unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::Conflict));
    assert!(refused.to_string().contains('b'), "{refused}");

    // b comes back with its old certificate (still trusted), sees the new CA and renews.
    lab.restart_agent(&cfg, "b").await.expect("b restarts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = admin.ca_rotation().await.unwrap();
        if r.pending_hosts.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "b did not renew: {r:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let finished = admin
        .rotate_ca(&RotateRequest { finish: true })
        .await
        .expect("rotation finishes");
    assert_eq!(finished.state, "settled");
    assert_eq!(finished.trusted, vec![started.signing.clone()]);

    // The lab now trusts the new CA only (as an operator's CLI would after copying ca.crt).
    lab.reload_trust().unwrap();
    let admin = lab.client();
    // Both agents take the settled bundle and stay connected.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hosts = admin.hosts().await.unwrap();
        let fresh = |h: &str| {
            let pem = std::fs::read_to_string(
                lab.agents
                    .iter()
                    .find(|a| a.name == h)
                    .unwrap()
                    .state_dir
                    .join("tls/ca.crt"),
            )
            .unwrap_or_default();
            ferry_pki::tls::certs_from_pem(&pem)
                .map(|c| c.len())
                .unwrap_or(0)
                == 1
        };
        if hosts.iter().all(|h| h.state == HostState::Connected) && fresh("a") && fresh("b") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agents did not settle: {hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = ferry_lab::Observer {
        client: &admin,
        vm: "rot",
    }
    .last_status()
    .await
    .unwrap()
    .expect("status");
    let out = ferry(&lab, &["vm", "migrate", "rot", "--to", "b", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m: Migration = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(m.phase, Phase::Completed);
    let v = ferry_lab::verdict_after(&admin, "rot", &before, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(v.ok(), "{}", v.describe());
    let events = admin
        .events(&EventQuery {
            kind: Some("ca.rotate".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        events.iter().filter(|e| e.outcome == Outcome::Ok).count() >= 2,
        "{events:?}"
    );
}

/// `--qemu-user`: QEMU opens what it needs as root, then runs as an unprivileged user
/// (checked from /proc), and a guest still boots, migrates over QEMU's TLS (whose per-use
/// credentials the agent hands to that user) and verifies clean.
#[tokio::test(flavor = "multi_thread")]
async fn qemu_runs_as_an_unprivileged_user_and_still_migrates_over_tls() {
    let mut cfg = lab_config(&["a", "b"]);
    for h in ["a", "b"] {
        cfg.agent_args
            .insert(h.into(), vec!["--qemu-user".into(), "nobody".into()]);
    }
    let lab = ferry_lab::Lab::start(cfg).await.expect("lab");
    boot_guest(&lab, "low", "a", 64, 4.0).await;
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody")
        .uid
        .as_raw();
    let uid_of = |pid: u32| -> u32 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace().nth(2).unwrap().parse().unwrap() // effective uid
    };
    let on_a = lab.qemus_on("a");
    assert_eq!(on_a.len(), 1);
    assert_eq!(uid_of(on_a[0]), nobody, "QEMU on a runs as nobody");

    let admin = lab.client();
    let before = ferry_lab::Observer {
        client: &admin,
        vm: "low",
    }
    .last_status()
    .await
    .unwrap()
    .expect("status");
    let out = ferry(&lab, &["vm", "migrate", "low", "--to", "b", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m: Migration = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(m.phase, Phase::Completed);
    let v = ferry_lab::verdict_after(&admin, "low", &before, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(v.ok(), "{}", v.describe());
    let on_b = lab.qemus_on("b");
    assert_eq!(on_b.len(), 1);
    assert_eq!(uid_of(on_b[0]), nobody, "QEMU on b runs as nobody");
}
