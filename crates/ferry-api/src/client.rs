//! HTTP clients for the server API (used by the CLI) and the agent API (used by the server).
//! Thin: one generic request function, then a method per endpoint.

use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::*;

#[path = "client_modes.rs"]
mod modes;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the URL (not running, wrong address, network down).
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The service answered with an error.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// The service answered something we cannot read (version skew or a bug).
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
}

impl ClientError {
    /// The error as an API error, for a service passing on a downstream failure.
    pub fn into_api_error(self, what: &str) -> ApiError {
        match self {
            ClientError::Api(e) => ApiError::new(e.code, format!("{what}: {}", e.message)),
            other => ApiError::upstream(format!("{what}: {other}")),
        }
    }
}

/// How a client proves who it is and checks whom it reached.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The cluster CA to trust and, for daemons, their own certificate. None: plain
    /// `http://` (a cluster run with `--insecure`).
    pub tls: Option<TlsCredentials>,
    /// An operator's API token, sent as `Authorization: Bearer`.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TlsCredentials {
    /// PEM: the CA certificate(s) to trust.
    pub ca_pem: String,
    /// This party's certificate and key (agents and the server; operators have none).
    pub me: Option<ferry_pki::Material>,
}

impl Credentials {
    /// A daemon's credentials: trust its CA bundle, present its certificate.
    pub fn daemon(material: ferry_pki::Material) -> Credentials {
        Credentials {
            tls: Some(TlsCredentials {
                ca_pem: material.ca_pem.clone(),
                me: Some(material),
            }),
            token: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Http {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Http {
    fn new(base: &str, timeout: Duration) -> Result<Http, ClientError> {
        Http::secured(
            base,
            timeout,
            &Credentials::default(),
            &ferry_pki::Identity::Server,
        )
    }

    /// A client for `base` that, over TLS, accepts only `expect`'s certificate.
    fn secured(
        base: &str,
        timeout: Duration,
        creds: &Credentials,
        expect: &ferry_pki::Identity,
    ) -> Result<Http, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let bad = |m: String| ClientError::Api(ApiError::bad_request(m));
        let https = base.starts_with("https://");
        if !(base.starts_with("http://") || https) {
            return Err(bad(format!("'{base}' is not an http:// or https:// URL")));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3));
        match (&creds.tls, https) {
            (Some(tls), true) => {
                let config = ferry_pki::client_config(&tls.ca_pem, tls.me.as_ref(), expect)
                    .map_err(|e| bad(format!("TLS settings: {e}")))?;
                builder = builder.use_preconfigured_tls(config);
            }
            (None, true) => {
                return Err(bad(format!(
                    "{base} is https: give the cluster CA (--ca, FERRY_CA or `ca` in the \
                     config file)"
                )))
            }
            (Some(_), false) => {
                return Err(bad(format!(
                    "{base} is plain http but TLS credentials are set: use https:// (only a \
                     cluster run with --insecure speaks http)"
                )))
            }
            (None, false) => {
                if creds.token.is_some() {
                    return Err(bad(format!(
                        "refusing to send an API token over plain http to {base}: use https://"
                    )));
                }
            }
        }
        let http = builder.build().map_err(|e| ClientError::Unreachable {
            url: base.clone(),
            reason: e.to_string(),
        })?;
        Ok(Http {
            base,
            http,
            token: creds.token.clone(),
        })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        let status = resp.status();
        let bytes = read_bounded(resp, &url).await?;
        if status.is_success() {
            let text: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(text).map_err(|e| ClientError::Decode {
                url,
                reason: e.to_string(),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api(body.error)),
            Err(_) => Err(ClientError::Api(ApiError::new(
                ErrorCode::from_http_status(status.as_u16()),
                format!(
                    "HTTP {} from {url}: {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&bytes)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
            ))),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }
    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }
    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::DELETE, path, None).await
    }
}

/// The largest answer a client reads: nothing Ferry's services send comes near it, and a
/// peer that sends more (a bug, or not a Ferry service) cannot make the caller buffer
/// without bound.
pub const MAX_REPLY_BYTES: usize = 16 << 20;

async fn read_bounded(mut resp: reqwest::Response, url: &str) -> Result<Vec<u8>, ClientError> {
    let too_big = || ClientError::Decode {
        url: url.to_string(),
        reason: format!("the answer is larger than {} MiB", MAX_REPLY_BYTES >> 20),
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_REPLY_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_REPLY_BYTES {
                    return Err(too_big());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(ClientError::Unreachable {
                    url: url.to_string(),
                    reason: error_chain(&e),
                })
            }
        }
    }
}

/// reqwest hides the useful part ("connection refused") in the source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The server's API, for the CLI and scripts.
#[derive(Debug, Clone)]
pub struct ServerClient {
    http: Http,
}

impl ServerClient {
    pub fn new(base_url: &str) -> Result<ServerClient, ClientError> {
        Ok(ServerClient {
            http: Http::new(base_url, Duration::from_secs(60))?,
        })
    }

    /// A client that checks it reached the cluster's server and proves who it is.
    pub fn connect(base_url: &str, creds: &Credentials) -> Result<ServerClient, ClientError> {
        Ok(ServerClient {
            http: Http::secured(
                base_url,
                Duration::from_secs(60),
                creds,
                &ferry_pki::Identity::Server,
            )?,
        })
    }

    /// A client for one thing only: fetching the CA bundle when joining, before the agent
    /// can verify anything. It accepts any server certificate; the caller must check what
    /// it fetched against the fingerprint its join token carries.
    pub fn bootstrap(base_url: &str) -> Result<ServerClient, ClientError> {
        let base = base_url.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            return Err(ClientError::Api(ApiError::bad_request(format!(
                "joining needs the server's https:// URL, not '{base}'"
            ))));
        }
        let config = ferry_pki::tls::pinned_bootstrap_config()
            .map_err(|e| ClientError::Api(ApiError::internal(e.to_string())))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .use_preconfigured_tls(config)
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(ServerClient {
            http: Http {
                base,
                http,
                token: None,
            },
        })
    }

    /// How the server sees this client.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.http.get("/v1/whoami").await
    }
    pub async fn ca_bundle(&self) -> Result<CaBundle, ClientError> {
        self.http.get("/v1/ca").await
    }
    pub async fn rules(&self) -> Result<Vec<Rule>, ClientError> {
        self.http.get("/v1/rules").await
    }
    pub async fn add_rule(&self, rule: &Rule) -> Result<Rule, ClientError> {
        self.http.post("/v1/rules", rule).await
    }
    pub async fn delete_rule(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.http.delete(&format!("/v1/rules/{}", seg(name))).await
    }
    pub async fn placement(&self, req: &PlacementRequest) -> Result<PlacementReport, ClientError> {
        self.http.post("/v1/placement", req).await
    }
    pub async fn ca_rotation(&self) -> Result<CaRotation, ClientError> {
        self.http.get("/v1/ca/rotation").await
    }
    pub async fn rotate_ca(&self, req: &RotateRequest) -> Result<CaRotation, ClientError> {
        self.http.post("/v1/ca/rotate", req).await
    }
    pub async fn join(&self, req: &JoinRequest) -> Result<IssuedCertificate, ClientError> {
        self.http.post("/v1/join", req).await
    }
    pub async fn join_token(
        &self,
        req: &JoinTokenRequest,
    ) -> Result<JoinTokenResponse, ClientError> {
        self.http.post("/v1/hosts/join-tokens", req).await
    }
    pub async fn renew_certificate(
        &self,
        host: &str,
        req: &RenewRequest,
    ) -> Result<IssuedCertificate, ClientError> {
        self.http
            .post(&format!("/v1/hosts/{}/certificate", seg(host)), req)
            .await
    }
    pub async fn remove_host(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.http.delete(&format!("/v1/hosts/{}", seg(name))).await
    }
    pub async fn users(&self) -> Result<Vec<User>, ClientError> {
        self.http.get("/v1/users").await
    }
    pub async fn add_user(&self, req: &CreateUserRequest) -> Result<UserToken, ClientError> {
        self.http.post("/v1/users", req).await
    }
    pub async fn remove_user(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.http.delete(&format!("/v1/users/{}", seg(name))).await
    }
    pub async fn new_user_token(&self, name: &str) -> Result<UserToken, ClientError> {
        self.http
            .post(&format!("/v1/users/{}/tokens", seg(name)), &())
            .await
    }

    pub fn base_url(&self) -> &str {
        &self.http.base
    }

    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.http.get("/v1/health").await
    }
    pub async fn hosts(&self) -> Result<Vec<Host>, ClientError> {
        self.http.get("/v1/hosts").await
    }
    pub async fn host(&self, name: &str) -> Result<Host, ClientError> {
        self.http.get(&format!("/v1/hosts/{}", seg(name))).await
    }
    pub async fn register_host(&self, reg: &HostRegistration) -> Result<Host, ClientError> {
        self.http.post("/v1/hosts", reg).await
    }
    pub async fn vms(&self) -> Result<Vec<Vm>, ClientError> {
        self.http.get("/v1/vms").await
    }
    pub async fn vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.http.get(&format!("/v1/vms/{}", seg(name))).await
    }
    pub async fn create_vm(&self, req: &CreateVmRequest) -> Result<Vm, ClientError> {
        self.http.post("/v1/vms", req).await
    }
    pub async fn stop_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/stop", seg(name)), &())
            .await
    }
    pub async fn start_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/start", seg(name)), &())
            .await
    }
    pub async fn delete_vm(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.http.delete(&format!("/v1/vms/{}", seg(name))).await
    }
    pub async fn console(&self, name: &str, bytes: u64) -> Result<ConsoleTail, ClientError> {
        self.http
            .get(&format!("/v1/vms/{}/console?bytes={bytes}", seg(name)))
            .await
    }
    pub async fn migrate(&self, req: &MigrateRequest) -> Result<Migration, ClientError> {
        self.http.post("/v1/migrations", req).await
    }
    /// The pre-migration checks for `req`, without migrating.
    pub async fn check_migration(&self, req: &MigrateRequest) -> Result<CheckReport, ClientError> {
        self.http.post("/v1/migrations/check", req).await
    }
    pub async fn cluster(&self) -> Result<ClusterInfo, ClientError> {
        self.http.get("/v1/cluster").await
    }
    pub async fn set_baseline(&self, s: &BaselineSetting) -> Result<ClusterInfo, ClientError> {
        self.http.post("/v1/cluster/baseline", s).await
    }
    pub async fn set_migration_defaults(
        &self,
        o: &MigrationOptions,
    ) -> Result<ClusterInfo, ClientError> {
        self.http.post("/v1/cluster/migration-defaults", o).await
    }
    pub async fn limits(&self) -> Result<MigrationLimits, ClientError> {
        self.http.get("/v1/cluster/limits").await
    }
    pub async fn set_limits(&self, u: &LimitsUpdate) -> Result<MigrationLimits, ClientError> {
        self.http.post("/v1/cluster/limits", u).await
    }
    /// Marks `host` for maintenance and evacuates it (or, with `dry_run`, only plans).
    pub async fn enter_maintenance(
        &self,
        host: &str,
        req: &EnterMaintenanceRequest,
    ) -> Result<EvacuationPlan, ClientError> {
        self.http
            .post(&format!("/v1/hosts/{}/maintenance/enter", seg(host)), req)
            .await
    }
    pub async fn cancel_maintenance(&self, host: &str) -> Result<Operation, ClientError> {
        self.http
            .post(&format!("/v1/hosts/{}/maintenance/cancel", seg(host)), &())
            .await
    }
    pub async fn exit_maintenance(&self, host: &str) -> Result<Host, ClientError> {
        self.http
            .post(&format!("/v1/hosts/{}/maintenance/exit", seg(host)), &())
            .await
    }
    pub async fn balance(&self) -> Result<BalanceSettings, ClientError> {
        self.http.get("/v1/cluster/balance").await
    }
    pub async fn set_balance(
        &self,
        u: &BalanceSettingsUpdate,
    ) -> Result<BalanceSettings, ClientError> {
        self.http.post("/v1/cluster/balance", u).await
    }
    /// What the balancer would do now (moves nothing).
    pub async fn balance_plan(
        &self,
        req: &BalancePlanRequest,
    ) -> Result<BalancePlanView, ClientError> {
        self.http.post("/v1/cluster/balance/plan", req).await
    }
    /// One balancing run now, in the configured mode or `mode`.
    pub async fn balance_run(&self, mode: Option<BalanceMode>) -> Result<BalanceRun, ClientError> {
        self.http
            .post(
                "/v1/cluster/balance/run",
                &serde_json::json!({ "mode": mode }),
            )
            .await
    }
    pub async fn recommendations(&self) -> Result<Vec<Recommendation>, ClientError> {
        self.http.get("/v1/recommendations").await
    }
    pub async fn apply_recommendation(&self, id: Uuid) -> Result<Migration, ClientError> {
        self.http
            .post(&format!("/v1/recommendations/{id}/apply"), &())
            .await
    }
    pub async fn dismiss_recommendation(&self, id: Uuid) -> Result<Recommendation, ClientError> {
        self.http
            .post(&format!("/v1/recommendations/{id}/dismiss"), &())
            .await
    }
    /// A host's load over the last hour (at most).
    pub async fn host_load(&self, host: &str) -> Result<LoadHistory, ClientError> {
        self.http
            .get(&format!("/v1/hosts/{}/load", seg(host)))
            .await
    }
    /// A VM's load over the last hour (at most).
    pub async fn vm_load(&self, vm: &str) -> Result<LoadHistory, ClientError> {
        self.http.get(&format!("/v1/vms/{}/load", seg(vm))).await
    }
    pub async fn schedules(&self) -> Result<Vec<Schedule>, ClientError> {
        self.http.get("/v1/schedules").await
    }
    pub async fn add_schedule(&self, req: &ScheduleRequest) -> Result<Schedule, ClientError> {
        self.http.post("/v1/schedules", req).await
    }
    pub async fn remove_schedule(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.http
            .delete(&format!("/v1/schedules/{}", seg(name)))
            .await
    }
    pub async fn operations(&self) -> Result<Vec<Operation>, ClientError> {
        self.http.get("/v1/operations").await
    }
    pub async fn operation(&self, id: Uuid) -> Result<Operation, ClientError> {
        self.http.get(&format!("/v1/operations/{id}")).await
    }
    pub async fn migrations(&self) -> Result<Vec<Migration>, ClientError> {
        self.http.get("/v1/migrations").await
    }
    pub async fn migration(&self, id: Uuid) -> Result<Migration, ClientError> {
        self.http.get(&format!("/v1/migrations/{id}")).await
    }
    pub async fn cancel_migration(&self, id: Uuid) -> Result<Migration, ClientError> {
        self.http
            .post(&format!("/v1/migrations/{id}/cancel"), &())
            .await
    }
    /// Settles a migration that needs attention by keeping one side.
    pub async fn resolve_migration(
        &self,
        id: Uuid,
        req: &ResolveRequest,
    ) -> Result<Migration, ClientError> {
        self.http
            .post(&format!("/v1/migrations/{id}/resolve"), req)
            .await
    }
    pub async fn disks(&self, host: &str, pool: &str) -> Result<Vec<DiskImage>, ClientError> {
        self.http
            .get(&format!(
                "/v1/hosts/{}/pools/{}/disks",
                seg(host),
                seg(pool)
            ))
            .await
    }
    pub async fn create_disk(
        &self,
        host: &str,
        pool: &str,
        req: &CreateDiskRequest,
    ) -> Result<DiskImage, ClientError> {
        self.http
            .post(
                &format!("/v1/hosts/{}/pools/{}/disks", seg(host), seg(pool)),
                req,
            )
            .await
    }
    pub async fn delete_disk(
        &self,
        host: &str,
        pool: &str,
        disk: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.http
            .delete(&format!(
                "/v1/hosts/{}/pools/{}/disks/{}",
                seg(host),
                seg(pool),
                seg(disk)
            ))
            .await
    }
    pub async fn events(&self, q: &EventQuery) -> Result<Vec<Event>, ClientError> {
        let mut params = Vec::new();
        if let Some(vm) = &q.vm {
            params.push(format!("vm={}", seg(vm)));
        }
        if let Some(m) = q.migration {
            params.push(format!("migration={m}"));
        }
        if let Some(k) = &q.kind {
            params.push(format!("kind={}", seg(k)));
        }
        if let Some(o) = q.operation {
            params.push(format!("operation={o}"));
        }
        if let Some(a) = q.after {
            params.push(format!("after={a}"));
        }
        if let Some(l) = q.limit {
            params.push(format!("limit={l}"));
        }
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        self.http.get(&format!("/v1/events{query}")).await
    }
    /// The audit log's signing key and signed checkpoints (see [`crate::audit`]).
    pub async fn checkpoints(&self) -> Result<crate::audit::Checkpoints, ClientError> {
        self.http.get("/v1/events/checkpoints").await
    }
    /// Asks the server to sign the log's current head now (it returns the newest
    /// checkpoint; `None` while the log is empty).
    pub async fn checkpoint_now(&self) -> Result<Option<crate::audit::Checkpoint>, ClientError> {
        self.http.post("/v1/events/checkpoints", &()).await
    }
}

/// A host agent's API, for the server.
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: Http,
}

impl AgentClient {
    pub fn new(base_url: &str) -> Result<AgentClient, ClientError> {
        Ok(AgentClient {
            http: Http::new(base_url, Duration::from_secs(120))?,
        })
    }

    /// A client for host `host`'s agent: over TLS, only that host's certificate is accepted.
    pub fn connect(
        base_url: &str,
        host: &str,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<AgentClient, ClientError> {
        let expect = ferry_pki::Identity::host(host)
            .map_err(|e| ClientError::Api(ApiError::bad_request(e.to_string())))?;
        Ok(AgentClient {
            http: Http::secured(base_url, timeout, creds, &expect)?,
        })
    }

    /// A client for quick liveness probes, which must not hang on a dead host.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<AgentClient, ClientError> {
        Ok(AgentClient {
            http: Http::new(base_url, timeout)?,
        })
    }

    pub async fn inventory(&self) -> Result<HostInventory, ClientError> {
        self.http.get("/v1/inventory").await
    }
    /// Liveness (peer hosts may ask this too).
    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.http.get("/v1/health").await
    }
    pub async fn vms(&self) -> Result<Vec<VmRuntime>, ClientError> {
        self.http.get("/v1/vms").await
    }
    pub async fn vm(&self, name: &str) -> Result<VmRuntime, ClientError> {
        self.http.get(&format!("/v1/vms/{}", seg(name))).await
    }
    pub async fn launch(&self, spec: &VmSpec) -> Result<VmRuntime, ClientError> {
        self.http
            .post("/v1/vms", &LaunchRequest { spec: spec.clone() })
            .await
    }
    pub async fn stop(&self, name: &str) -> Result<VmRuntime, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/stop", seg(name)), &())
            .await
    }
    pub async fn remove(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.http.delete(&format!("/v1/vms/{}", seg(name))).await
    }
    pub async fn console(&self, name: &str, bytes: u64) -> Result<ConsoleTail, ClientError> {
        self.http
            .get(&format!("/v1/vms/{}/console?bytes={bytes}", seg(name)))
            .await
    }
    pub async fn prepare_incoming(
        &self,
        req: &IncomingRequest,
    ) -> Result<IncomingResponse, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/incoming", seg(&req.spec.name)), req)
            .await
    }
    pub async fn start_outgoing(
        &self,
        name: &str,
        req: &OutgoingRequest,
    ) -> Result<AgentMigrationStatus, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/migration", seg(name)), req)
            .await
    }
    pub async fn migration_status(&self, name: &str) -> Result<AgentMigrationStatus, ClientError> {
        self.migration_status_after(name, 0).await
    }
    /// The migration status once QEMU reports a change, or after `wait_ms` (at most 1 s):
    /// a long poll.
    pub async fn migration_status_after(
        &self,
        name: &str,
        wait_ms: u64,
    ) -> Result<AgentMigrationStatus, ClientError> {
        let q = if wait_ms > 0 {
            format!("?wait_ms={wait_ms}")
        } else {
            String::new()
        };
        self.http
            .get(&format!("/v1/vms/{}/migration{q}", seg(name)))
            .await
    }
    /// Destination: accept one probe connection on the migration address.
    pub async fn probe_listen(
        &self,
        req: &ProbeListenRequest,
    ) -> Result<ProbeListenResponse, ClientError> {
        self.http.post("/v1/probe/listen", req).await
    }
    /// Source: connect to a destination's probe listener and send data for a while.
    pub async fn probe_send(
        &self,
        req: &ProbeSendRequest,
    ) -> Result<ProbeSendResponse, ClientError> {
        self.http.post("/v1/probe/send", req).await
    }
    /// Source: mirror local-pool disks to the destination's export (before memory).
    pub async fn start_disk_copy(
        &self,
        name: &str,
        req: &DiskCopyRequest,
    ) -> Result<AgentMigrationStatus, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/migration/disks", seg(name)), req)
            .await
    }
    /// Source: live changes to a running migration (throttle, switch to post-copy).
    pub async fn tune(
        &self,
        name: &str,
        req: &TuneRequest,
    ) -> Result<AgentMigrationStatus, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/migration/tune", seg(name)), req)
            .await
    }
    /// What moving the VM's memory costs: RAM, QEMU's resident memory, the dirty rate
    /// (takes about a second: QEMU samples the guest's pages).
    pub async fn memory_facts(&self, name: &str) -> Result<VmMemoryFacts, ClientError> {
        self.http
            .get(&format!("/v1/vms/{}/memory", seg(name)))
            .await
    }
    /// Either side, during post-copy: drop the migration connection so it can be
    /// re-established (QEMU's `migrate-pause`); a no-op on a side already paused.
    pub async fn pause_postcopy(&self, name: &str) -> Result<AgentMigrationStatus, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/migration/pause", seg(name)), &())
            .await
    }
    /// Destination, post-copy paused: listen again on the migration address.
    pub async fn recover_incoming(
        &self,
        name: &str,
        req: &RecoverRequest,
    ) -> Result<IncomingResponse, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/migration/recover", seg(name)), req)
            .await
    }
    /// Source, post-copy paused: reconnect to the destination's recovery listener.
    pub async fn resume_outgoing(
        &self,
        name: &str,
        req: &ResumeRequest,
    ) -> Result<AgentMigrationStatus, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/migration/resume", seg(name)), req)
            .await
    }
    /// Source: cancel an outgoing migration and make sure the guest runs here. Refused
    /// once QEMU completed the stream (the destination may run the guest).
    pub async fn cancel_outgoing(&self, name: &str) -> Result<VmRuntime, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/migration/cancel", seg(name)), &())
            .await
    }
    /// Source whose QEMU completed the stream: resume the guest here. Only on an
    /// operator's resolution, after the destination was proven stopped.
    pub async fn reclaim(&self, name: &str) -> Result<VmRuntime, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/migration/reclaim", seg(name)), &())
            .await
    }
    pub async fn pools(&self) -> Result<Vec<PoolInfo>, ClientError> {
        self.http.get("/v1/pools").await
    }
    pub async fn disks(&self, pool: &str) -> Result<Vec<DiskImage>, ClientError> {
        self.http
            .get(&format!("/v1/pools/{}/disks", seg(pool)))
            .await
    }
    pub async fn create_disk(
        &self,
        pool: &str,
        req: &CreateDiskRequest,
    ) -> Result<DiskImage, ClientError> {
        self.http
            .post(&format!("/v1/pools/{}/disks", seg(pool)), req)
            .await
    }
    pub async fn delete_disk(
        &self,
        pool: &str,
        disk: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.http
            .delete(&format!("/v1/pools/{}/disks/{}", seg(pool), seg(disk)))
            .await
    }

    /// QEMU's checkpoints of the VM's last switch-over pause on this host.
    pub async fn pause_checkpoints(
        &self,
        name: &str,
    ) -> Result<Vec<ferry_migration::pause::Checkpoint>, ClientError> {
        self.http
            .get(&format!("/v1/vms/{}/migration/checkpoints", seg(name)))
            .await
    }

    /// Makes the VM's NICs announce their MACs (after a switch-over).
    pub async fn announce(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/announce", seg(name)), &())
            .await
    }

    /// Destination, called by the source's agent: frames that reached the paused source,
    /// for the guest.
    pub async fn send_frames(
        &self,
        name: &str,
        batch: &crate::FrameBatch,
    ) -> Result<crate::FrameBatchAnswer, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/frames", seg(name)), batch)
            .await
    }

    /// Either side: what it saw of the switch-over on the VM's taps, waiting up to
    /// `wait_ms` for it to settle.
    pub async fn frame_report(
        &self,
        name: &str,
        wait_ms: u64,
    ) -> Result<crate::FrameReport, ClientError> {
        self.http
            .get(&format!("/v1/vms/{}/frames?wait_ms={wait_ms}", seg(name)))
            .await
    }

    /// Source: the destination runs; shut this QEMU down and forget the VM.
    pub async fn hand_over(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/migration/handover", seg(name)), &())
            .await
    }
}

/// Names are validated before they reach a client, but a URL segment is escaped anyway.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_segments_are_escaped() {
        assert_eq!(seg("web-1.a_b"), "web-1.a_b");
        assert_eq!(seg("../x y"), "..%2Fx%20y");
    }

    #[test]
    fn non_http_urls_are_refused() {
        assert!(ServerClient::new("127.0.0.1:7700").is_err());
        assert!(ServerClient::new("http://127.0.0.1:7700/").is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_server_says_so() {
        // Port 9 (discard) on loopback is closed on a normal host.
        let c = ServerClient::new("http://127.0.0.1:9").unwrap();
        match c.hosts().await {
            Err(ClientError::Unreachable { url, .. }) => assert!(url.contains("/v1/hosts")),
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    /// Serves one HTTP answer of `len` bytes (chunked when `chunked`) on loopback.
    async fn huge_answer(len: usize, chunked: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = if chunked {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")
            };
            let _ = s.write_all(head.as_bytes()).await;
            let block = vec![b' '; 1 << 20];
            let mut sent = 0;
            while sent < len {
                let r = if chunked {
                    let mut c = format!("{:x}\r\n", block.len()).into_bytes();
                    c.extend_from_slice(&block);
                    c.extend_from_slice(b"\r\n");
                    s.write_all(&c).await
                } else {
                    s.write_all(&block).await
                };
                if r.is_err() {
                    return;
                }
                sent += block.len();
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_answer_larger_than_the_bound_is_refused_not_buffered() {
        for chunked in [false, true] {
            let url = huge_answer(MAX_REPLY_BYTES + (4 << 20), chunked).await;
            let c = ServerClient::new(&url).unwrap();
            match c.hosts().await {
                Err(ClientError::Decode { reason, .. }) => {
                    assert!(reason.contains("larger than"), "{reason}")
                }
                other => panic!("chunked={chunked}: expected a refusal, got {other:?}"),
            }
        }
    }
}
