//! A lab cluster's trust, set up the way an operator would: `ferry ca init` on the
//! server's data directory (the CA, the server's certificate, an admin and its token),
//! then one join token per agent, handed over in the agent's environment (never on its
//! command line, where `ps` shows it).
//!
//! The lab keeps a client config (`client.toml`: server URL, CA, admin token) so the CLI
//! can be pointed at it with `FERRY_CONFIG`, and it can act as the server towards agents
//! (tests that call an agent directly need the server's certificate: agents take orders
//! from nobody else).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::client::{AgentClient, Credentials, ServerClient, TlsCredentials};
use ferry_api::JoinTokenRequest;

use crate::lab::LabError;

#[derive(Debug, Clone)]
pub struct Trust {
    /// The client config (0600): server URL, CA path, admin token.
    pub config_path: PathBuf,
    pub ca_path: PathBuf,
    ca_pem: String,
    admin_token: String,
    server: ferry_pki::Material,
}

#[derive(serde::Deserialize)]
struct InitOutput {
    admin_token: String,
    ca_path: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ClientFile {
    server: String,
    ca: PathBuf,
    token: String,
}

impl Trust {
    /// Runs `ferry ca init` for the server data directory `data_dir`.
    pub fn init(ferry_bin: &Path, data_dir: &Path, config_path: &Path) -> Result<Trust, LabError> {
        let out = std::process::Command::new(ferry_bin)
            .args(["ca", "init", "--json", "--data-dir"])
            .arg(data_dir)
            .env("NO_COLOR", "1")
            .output()
            .map_err(|e| LabError::Start {
                what: "ferry ca init".into(),
                reason: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(LabError::Start {
                what: "ferry ca init".into(),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let init: InitOutput =
            serde_json::from_slice(&out.stdout).map_err(|e| LabError::Start {
                what: "ferry ca init".into(),
                reason: format!("unreadable output: {e}"),
            })?;
        let trust = Trust::load_parts(data_dir, config_path, init.ca_path, init.admin_token)?;
        Ok(trust)
    }

    /// The trust of a lab made earlier (its data directory and client config).
    pub fn load(data_dir: &Path, config_path: &Path) -> Result<Trust, LabError> {
        let text = std::fs::read_to_string(config_path)
            .map_err(|e| LabError::Io(format!("cannot read {}: {e}", config_path.display())))?;
        let file: ClientFile = toml::from_str(&text)
            .map_err(|e| LabError::Io(format!("{}: {e}", config_path.display())))?;
        Trust::load_parts(data_dir, config_path, file.ca, file.token)
    }

    fn load_parts(
        data_dir: &Path,
        config_path: &Path,
        ca_path: PathBuf,
        admin_token: String,
    ) -> Result<Trust, LabError> {
        let pki = data_dir.join("pki");
        let server = ferry_pki::Material::load(&pki, "server")
            .map_err(|e| LabError::Io(format!("{}: {e}", pki.display())))?;
        Ok(Trust {
            config_path: config_path.to_path_buf(),
            ca_pem: server.ca_pem.clone(),
            ca_path,
            admin_token,
            server,
        })
    }

    /// Reads the CA bundle and the server's certificate again (after a CA rotation).
    pub fn reload(&mut self) -> Result<(), LabError> {
        let pki = self
            .ca_path
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| LabError::Io("the CA path has no directory".into()))?;
        let server = ferry_pki::Material::load(&pki, "server")
            .map_err(|e| LabError::Io(format!("{}: {e}", pki.display())))?;
        self.ca_pem = server.ca_pem.clone();
        self.server = server;
        Ok(())
    }

    /// Writes the client config for the server at `url`.
    pub fn write_config(&self, url: &str) -> Result<(), LabError> {
        let text = toml::to_string(&ClientFile {
            server: url.to_string(),
            ca: self.ca_path.clone(),
            token: self.admin_token.clone(),
        })
        .map_err(|e| LabError::Io(e.to_string()))?;
        ferry_pki::files::write_atomic(&self.config_path, &text, 0o600)
            .map_err(|e| LabError::Io(e.to_string()))
    }

    /// The admin's client for the server at `url`.
    pub fn client(&self, url: &str) -> ServerClient {
        self.client_with_token(url, Some(self.admin_token.clone()))
    }

    /// A client for the server at `url` with `token` (None: no credentials at all).
    pub fn client_with_token(&self, url: &str, token: Option<String>) -> ServerClient {
        let creds = Credentials {
            tls: Some(TlsCredentials {
                ca_pem: self.ca_pem.clone(),
                me: None,
            }),
            token,
        };
        match ServerClient::connect(url, &creds) {
            Ok(c) => c,
            // The lab built the URL and the CA itself; an error here is a lab bug, and
            // the call will fail with this client's reason.
            Err(e) => panic!("lab client for {url}: {e}"),
        }
    }

    /// A raw HTTP client that trusts the lab's CA (expecting the server's certificate) and,
    /// if `token` is given, sends it as `Authorization: Bearer` on every request: for
    /// tests that send what the typed client cannot (malformed bodies, no credentials).
    pub fn raw_http(&self, token: Option<&str>) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")) {
                headers.insert(reqwest::header::AUTHORIZATION, v);
            }
        }
        let tls = ferry_pki::client_config(&self.ca_pem, None, &ferry_pki::Identity::Server);
        let builder = reqwest::Client::builder().default_headers(headers);
        let builder = match tls {
            Ok(cfg) => builder.use_preconfigured_tls(cfg),
            Err(e) => panic!("lab TLS settings: {e}"),
        };
        match builder.build() {
            Ok(c) => c,
            Err(e) => panic!("lab HTTP client: {e}"),
        }
    }

    /// The admin's API token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A client for host `host`'s agent at `url`, presenting the server's certificate.
    pub fn agent_client(&self, url: &str, host: &str) -> Result<AgentClient, LabError> {
        AgentClient::connect(
            url,
            host,
            &Credentials::daemon(self.server.clone()),
            Duration::from_secs(120),
        )
        .map_err(|e| LabError::Io(format!("agent client for {host}: {e}")))
    }

    /// A join token for `host` from the server at `url`.
    pub async fn join_token(&self, url: &str, host: &str) -> Result<String, LabError> {
        self.client(url)
            .join_token(&JoinTokenRequest {
                host: host.to_string(),
                ttl_s: Some(600),
            })
            .await
            .map(|t| t.token)
            .map_err(|e| LabError::Start {
                what: format!("join token for {host}"),
                reason: e.to_string(),
            })
    }
}
