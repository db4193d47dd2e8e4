//! Every route has a role, and the core enforces it: this walks the router's own route
//! table ([`ferry_server::api::routes`], the list the router is built from) and calls each
//! route as nobody, as a user of each role and as two hosts, through the real router with
//! a real secured server (its CA made by `pki::init`, its users in SQLite).
//!
//! Expected, per route role: nobody gets 401 (public routes excepted); a user below the
//! role gets 403, at or above it anything but 401/403; hosts get 403 except on their own
//! host routes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use chrono::Utc;
use ferry_api::Role;
use ferry_pki::{new_key_and_csr, ApiToken, Identity, Peer, Transport};
use ferry_server::api::{routes, RouteRole, RouteSpec};
use ferry_server::{Server, ServerConfig};
use tower::ServiceExt;

static NEXT_ADDR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

struct World {
    /// Anonymous calls all come from one address (the rate-limit test).
    same_address: bool,
    _dir: tempfile::TempDir,
    server: Arc<Server>,
    tokens: Vec<(Role, String)>,
    /// Host h1's certificate fingerprint (issued and recorded); h2 has one too.
    hosts: Vec<(String, String)>,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let init = ferry_server::pki::init(dir.path(), "admin").unwrap();
    let server = Arc::new(
        Server::open(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            host_timeout: Duration::from_secs(10),
            orchestrator: Default::default(),
            ready_file: None,
            insecure: false,
            host_cert_validity: Duration::from_secs(3600),
            ha: Default::default(),
        })
        .unwrap(),
    );
    let mut tokens = vec![(Role::Admin, init.admin_token)];
    for (name, role) in [("v", Role::Viewer), ("o", Role::Operator)] {
        let t = ApiToken::generate().unwrap();
        server
            .store
            .add_user(name, role, &t.id, &t.secret_hash(), Utc::now())
            .unwrap();
        tokens.push((role, t.to_string()));
    }
    let pki = server.pki.as_ref().unwrap();
    let signing = pki.signing_fingerprint().unwrap();
    let mut hosts = Vec::new();
    for h in ["h1", "h2"] {
        let id = Identity::host(h).unwrap();
        let (_key, csr) = new_key_and_csr(&id).unwrap();
        let (_pem, info) = pki.issue(&csr, &id).unwrap();
        server
            .store
            .record_host_cert(h, &info, &signing, Utc::now())
            .unwrap();
        hosts.push((h.to_string(), info.fingerprint));
    }
    World {
        same_address: false,
        _dir: dir,
        server,
        tokens,
        hosts,
    }
}

#[derive(Debug, Clone)]
enum Who {
    Nobody,
    User(Role),
    Host(usize),
}

/// A request for `spec` with every path parameter filled in and a body the handler can
/// parse, so what answers is the core, not a parse error.
fn request(w: &World, spec: &RouteSpec, who: &Who) -> Request<Body> {
    let own_host = spec.role == RouteRole::HostSelf;
    let path = spec
        .path
        // A host's own routes name h1; others name nothing that exists (nothing real is
        // removed by the admin's calls).
        .replace("{name}", if own_host { "h1" } else { "zz" })
        .replace("{id}", "6c1f3c56-7a4e-4f3e-9a1f-0c8b9f0f2e11")
        .replace("{host}", "zz")
        .replace("{pool}", "local")
        .replace("{disk}", "d1");
    let body = sample_body(spec);
    let mut req = Request::builder()
        .method(spec.method.clone())
        .uri(&path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let transport = match who {
        Who::Host(i) => Transport::Certificate {
            identity: Some(Identity::Host(w.hosts[*i].0.clone())),
            fingerprint: w.hosts[*i].1.clone(),
            not_after: i64::MAX,
        },
        _ => Transport::Anonymous,
    };
    // Each anonymous call from its own address: the walk tests roles, not the rate limit
    // (which keys anonymous callers by address).
    let n = NEXT_ADDR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let addr = match who {
        Who::Nobody if !w.same_address => format!("127.1.{}.{}:1", n / 250, n % 250 + 1),
        _ => "127.0.0.1:1".to_string(),
    };
    req.extensions_mut().insert(Peer {
        addr: addr.parse().unwrap(),
        transport,
    });
    if let Who::User(role) = who {
        let token = &w.tokens.iter().find(|(r, _)| r == role).unwrap().1;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    req
}

fn sample_body(spec: &RouteSpec) -> String {
    if spec.method != Method::POST {
        return String::new();
    }
    let csr = new_key_and_csr(&Identity::host("h1").unwrap()).unwrap().1;
    let json = match spec.path {
        "/v1/join" => serde_json::json!({"token": "ferry-join1.x", "csr_pem": csr}),
        "/v1/hosts" => serde_json::json!({
            "name": "h1", "url": "https://127.0.0.1:1", "migration_address": "127.0.0.1",
            "inventory": ferry_api::HostInventory::default(), "vms": []
        }),
        "/v1/hosts/join-tokens" => serde_json::json!({"host": "zz"}),
        // Finishing a rotation that never started: refused (409) by the core, after the role.
        "/v1/ca/rotate" => serde_json::json!({"finish": true}),
        "/v1/hosts/{name}/certificate" => serde_json::json!({"csr_pem": csr}),
        "/v1/hosts/{name}/maintenance" => serde_json::json!({"on": true}),
        "/v1/users" => serde_json::json!({"name": "sample", "role": "viewer"}),
        "/v1/vms" => serde_json::json!({
            "host": "zz",
            "spec": {
                "name": "x", "memory_mib": 256,
                "boot": {"type": "image", "image": "test-guest", "cmdline": ""}
            }
        }),
        "/v1/migrations" | "/v1/migrations/check" => {
            serde_json::json!({"vm": "nope", "to": "zz"})
        }
        "/v1/migrations/{id}/resolve" => serde_json::json!({"keep": "source"}),
        "/v1/rules" => serde_json::json!({
            "name": "sample", "strength": "must", "kind": "anti_affinity", "vms": ["x1", "x2"]
        }),
        "/v1/placement" => serde_json::json!({"vm": "nope"}),
        "/v1/cluster/baseline" => serde_json::json!({"mode": "auto"}),
        "/v1/cluster/migration-defaults" => serde_json::json!({}),
        "/v1/cluster/limits" => serde_json::json!({}),
        "/v1/hosts/{name}/maintenance/enter" => serde_json::json!({"dry_run": true}),
        "/v1/cluster/balance" => serde_json::json!({"level": 3}),
        "/v1/cluster/balance/plan" | "/v1/cluster/balance/run" => serde_json::json!({}),
        "/v1/hosts/{host}/pools/{pool}/disks" => serde_json::json!({"name": "d1", "size_mib": 1}),
        // An unknown VM: refused (404) by the core, after the role; nothing is added.
        "/v1/schedules" => serde_json::json!({
            "name": "sample", "when": {"at": "2099-01-01T00:00:00Z"},
            "task": {"kind": "migrate", "vm": "nope"}
        }),
        _ => serde_json::json!(null),
    };
    json.to_string()
}

async fn call(w: &World, spec: &RouteSpec, who: &Who) -> (u16, String) {
    let router = ferry_server::api::router(w.server.clone());
    let resp = router.oneshot(request(w, spec, who)).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether the answer is a refusal of the caller. On a public route a 401 may be the
/// route's own answer about what the body carries (a join token that is no good), so only
/// a refusal of the caller's identity counts there.
fn is_denied(spec: &RouteSpec, status: u16, body: &str) -> bool {
    match spec.role {
        RouteRole::Public => status == 403 || body.contains("authentication required"),
        _ => status == 401 || status == 403,
    }
}

#[tokio::test]
async fn every_route_has_a_role_and_the_core_enforces_it() {
    let w = world();
    let table = routes();
    assert!(table.len() >= 30, "the table lists {} routes", table.len());
    let mut failures = Vec::new();
    for spec in &table {
        let route = format!("{} {}", spec.method, spec.path);
        // Nobody.
        let (status, body) = call(&w, spec, &Who::Nobody).await;
        match spec.role {
            RouteRole::Public => {
                if body.contains("authentication required") || status == 403 {
                    failures.push(format!("{route}: public, but nobody got {status} {body}"));
                }
            }
            _ => {
                if status != 401 {
                    failures.push(format!("{route}: nobody got {status}, not 401: {body}"));
                }
            }
        }
        // Each user role.
        for role in Role::ALL {
            let (status, body) = call(&w, spec, &Who::User(role)).await;
            let allowed = match spec.role {
                RouteRole::Public => true,
                RouteRole::Role(needed) => role >= needed,
                RouteRole::HostSelf => false,
            };
            let denied = is_denied(spec, status, &body);
            if allowed == denied {
                failures.push(format!(
                    "{route}: {role} got {status} (expected {}): {body}",
                    if allowed { "allowed" } else { "403" }
                ));
            }
        }
        // Host h1 (the host its own routes name) and host h2 (another host).
        for (i, own) in [(0usize, true), (1, false)] {
            let (status, body) = call(&w, spec, &Who::Host(i)).await;
            let allowed = match spec.role {
                RouteRole::Public => true,
                RouteRole::HostSelf => own,
                RouteRole::Role(_) => false,
            };
            let denied = is_denied(spec, status, &body);
            if allowed == denied {
                failures.push(format!(
                    "{route}: host {} got {status} (expected {}): {body}",
                    w.hosts[i].0,
                    if allowed { "allowed" } else { "403" }
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_revoked_host_and_an_unknown_token_are_refused() {
    let w = world();
    let reg = routes()
        .into_iter()
        .find(|r| r.path == "/v1/hosts" && r.method == Method::POST)
        .unwrap();
    let (status, _) = call(&w, &reg, &Who::Host(0)).await;
    assert_eq!(status, 200, "h1 registers itself");
    // Removing h1 revokes its certificate: the next heartbeat is refused.
    w.server.store.remove_host("h1", Utc::now()).unwrap();
    let (status, body) = call(&w, &reg, &Who::Host(0)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");

    let list = routes()
        .into_iter()
        .find(|r| r.path == "/v1/vms" && r.method == Method::GET)
        .unwrap();
    let mut req = request(&w, &list, &Who::Nobody);
    let forged = ApiToken::generate().unwrap().to_string();
    req.headers_mut()
        .insert("authorization", format!("Bearer {forged}").parse().unwrap());
    let resp = ferry_server::api::router(w.server.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn every_event_names_the_authenticated_caller() {
    let w = world();
    let spec = routes()
        .into_iter()
        .find(|r| r.path == "/v1/cluster/migration-defaults")
        .unwrap();
    let (status, body) = call(&w, &spec, &Who::User(Role::Admin)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(&w, &spec, &Who::User(Role::Viewer)).await;
    assert_eq!(status, 403);
    let events = w
        .server
        .events(&ferry_api::EventQuery {
            kind: Some("cluster.migration_defaults".into()),
            ..Default::default()
        })
        .unwrap();
    let actors: Vec<&str> = events.iter().map(|e| e.actor.as_str()).collect();
    assert!(actors.contains(&"user:admin"), "{actors:?}");
    // The refused attempt is on the record too, by who tried.
    assert!(
        events
            .iter()
            .any(|e| e.actor == "user:v" && e.outcome == ferry_api::Outcome::Error),
        "{actors:?}"
    );
}

#[tokio::test]
async fn a_caller_past_its_rate_is_told_to_wait_and_others_are_not() {
    let mut w = world();
    w.same_address = true;
    let health = routes()
        .into_iter()
        .find(|r| r.path == "/v1/health")
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(call(&w, &health, &Who::Nobody).await.0);
    }
    assert!(statuses[..20].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "no limit for an anonymous caller: {statuses:?}"
    );
    // An identified caller has its own bucket.
    assert_eq!(call(&w, &health, &Who::User(Role::Viewer)).await.0, 200);
}

/// Arbitrary JSON bodies, sent as the admin to every route that takes one, through the
/// real router: every answer is a verdict on the request (never a 5xx), and comes back
/// within a bound (no hang). Fixed case count: bounded time in CI.
#[test]
fn arbitrary_bodies_never_get_a_server_error_or_hang() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let posts: Vec<RouteSpec> = routes()
        .into_iter()
        .filter(|r| r.method == Method::POST)
        .collect();
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z0-9./:-]{0,16}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "name",
                    "host",
                    "spec",
                    "vm",
                    "to",
                    "on",
                    "role",
                    "keep",
                    "token",
                    "csr_pem",
                    "mode",
                    "model",
                    "size_mib",
                    "ttl_s",
                    "memory_mib",
                    "boot",
                    "type",
                    "when",
                    "task",
                    "kind",
                    "cron",
                    "at",
                    "missed",
                ])
                .prop_map(str::to_string),
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let mut runner = TestRunner::new(Config::with_cases(48));
    for spec in &posts {
        // A fresh server per route: 48 calls stay within the admin's burst, so every
        // answer is the handler's, not the rate limit's.
        let w = rt.block_on(async { world() });
        let result = runner.run(&value, |body| {
            let spec = spec.clone();
            let answer = rt.block_on(async {
                let mut req = request(&w, &spec, &Who::User(Role::Admin));
                *req.body_mut() = Body::from(body.to_string());
                let router = ferry_server::api::router(w.server.clone());
                tokio::time::timeout(Duration::from_secs(10), router.oneshot(req)).await
            });
            let resp = answer.map_err(|_| {
                proptest::test_runner::TestCaseError::fail(format!(
                    "{} {} hung on {body}",
                    spec.method, spec.path
                ))
            })?;
            let status = resp.unwrap().status().as_u16();
            prop_assert!(
                status < 500 && status != 429,
                "{} {} answered {status} to {body}",
                spec.method,
                spec.path
            );
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
