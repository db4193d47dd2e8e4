//! HTTP clients for the server API (used by the CLI) and the agent API (used by the server).
//! Thin: one generic request function, then a method per endpoint.

use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::*;

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

#[derive(Debug, Clone)]
struct Http {
    base: String,
    http: reqwest::Client,
    actor: Option<String>,
}

impl Http {
    fn new(base: &str, timeout: Duration) -> Result<Http, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Api(ApiError::bad_request(format!(
                "'{base}' is not an http:// or https:// URL"
            ))));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Http {
            base,
            http,
            actor: None,
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
        if let Some(actor) = &self.actor {
            req = req.header(ACTOR_HEADER, actor);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
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

    /// Records `actor` as the requester in the server's event log.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.http.actor = Some(actor.into());
        self
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
    pub async fn set_maintenance(&self, host: &str, on: bool) -> Result<Host, ClientError> {
        self.http
            .post(
                &format!("/v1/hosts/{}/maintenance", seg(host)),
                &MaintenanceRequest { on },
            )
            .await
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

    /// A client for quick liveness probes, which must not hang on a dead host.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<AgentClient, ClientError> {
        Ok(AgentClient {
            http: Http::new(base_url, timeout)?,
        })
    }

    pub async fn inventory(&self) -> Result<HostInventory, ClientError> {
        self.http.get("/v1/inventory").await
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
        self.http
            .get(&format!("/v1/vms/{}/migration", seg(name)))
            .await
    }
    /// Destination: accept one probe connection on the migration address.
    pub async fn probe_listen(&self) -> Result<ProbeListenResponse, ClientError> {
        self.http.post("/v1/probe/listen", &()).await
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

    /// Makes the VM's NICs announce their MACs (after a switch-over).
    pub async fn announce(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.http
            .post(&format!("/v1/vms/{}/announce", seg(name)), &())
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
}
