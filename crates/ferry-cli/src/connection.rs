//! Where the server is and how to prove who we are: flags, then the environment (clap
//! reads FERRY_SERVER, FERRY_CA, FERRY_TOKEN into the same flags), then the config file.
//!
//! ```toml
//! # ~/.config/ferry/config.toml (or --config / FERRY_CONFIG)
//! server = "https://10.0.0.1:7700"
//! ca = "/etc/ferry/ca.crt"          # relative paths are relative to this file
//! token = "ferry-api1.<id>.<secret>"
//! ```

use std::path::{Path, PathBuf};

use ferry_api::client::{Credentials, ServerClient, TlsCredentials};
use serde::{Deserialize, Serialize};

use crate::cli::DEFAULT_SERVER;
use crate::exit::CliError;

/// The connection options as given (resolved only by commands that talk to the server).
#[derive(Debug, Clone, Default)]
pub struct ConnOpts {
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    pub token: Option<String>,
    pub config: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `$XDG_CONFIG_HOME/ferry/config.toml`, else `~/.config/ferry/config.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("ferry/config.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/ferry/config.toml"))
}

pub fn read_config(path: &Path) -> Result<FileConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::refused(format!("cannot read {}: {e}", path.display())))?;
    let mut c: FileConfig =
        toml::from_str(&text).map_err(|e| CliError::refused(format!("{}: {e}", path.display())))?;
    if let (Some(ca), Some(dir)) = (&c.ca, path.parent()) {
        if ca.is_relative() {
            c.ca = Some(dir.join(ca));
        }
    }
    Ok(c)
}

/// Writes a client config readable by its owner only (it holds a token).
pub fn write_config(path: &Path, c: &FileConfig) -> Result<(), CliError> {
    let text = toml::to_string(c).map_err(|e| CliError::failed(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    ferry_pki::files::write_atomic(path, &text, 0o600).map_err(|e| CliError::failed(e.to_string()))
}

impl ConnOpts {
    /// The file's settings: an explicitly named file must exist; the default may not.
    fn file(&self) -> Result<FileConfig, CliError> {
        match &self.config {
            Some(p) => read_config(p),
            None => match default_config_path() {
                Some(p) if p.exists() => read_config(&p),
                _ => Ok(FileConfig::default()),
            },
        }
    }

    /// The server URL and credentials.
    pub fn resolve(&self) -> Result<(String, Credentials), CliError> {
        let file = self.file()?;
        let server = self
            .server
            .clone()
            .or(file.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let token = self.token.clone().or(file.token);
        let tls = if server.starts_with("https://") {
            let ca = self.ca.clone().or(file.ca).ok_or_else(|| {
                CliError::refused(format!(
                    "{server} is https: say which CA to trust with --ca, FERRY_CA or `ca` in \
                     the config file (`ferry ca init` wrote it to <data dir>/pki/ca.crt)"
                ))
            })?;
            let ca_pem = std::fs::read_to_string(&ca).map_err(|e| {
                CliError::refused(format!("cannot read the CA file {}: {e}", ca.display()))
            })?;
            Some(TlsCredentials { ca_pem, me: None })
        } else {
            None
        };
        Ok((server, Credentials { tls, token }))
    }

    /// The server URL only (for the agent, which brings its own certificate).
    pub fn server_url(&self) -> Result<String, CliError> {
        let file = self.file()?;
        Ok(self
            .server
            .clone()
            .or(file.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_string()))
    }
}

/// A client for the server, as the resolved identity.
pub fn client(opts: &ConnOpts) -> Result<ServerClient, CliError> {
    let (server, creds) = opts.resolve()?;
    Ok(ServerClient::connect(&server, &creds)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_relative_ca_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
        let path = dir.path().join("config.toml");
        write_config(
            &path,
            &FileConfig {
                server: Some("https://file:7700".into()),
                ca: Some("ca.crt".into()),
                token: Some("t-file".into()),
            },
        )
        .unwrap();
        let opts = ConnOpts {
            token: Some("t-flag".into()),
            config: Some(path.clone()),
            ..Default::default()
        };
        let (server, creds) = opts.resolve().unwrap();
        assert_eq!(server, "https://file:7700");
        assert_eq!(creds.token.as_deref(), Some("t-flag"));
        assert_eq!(creds.tls.unwrap().ca_pem, "x");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "a config with a token is readable by others"
        );
    }

    #[test]
    fn https_without_a_ca_says_how_to_give_one() {
        let opts = ConnOpts {
            server: Some("https://x:1".into()),
            config: None,
            ..Default::default()
        };
        // The default config may exist on a developer's machine; name a missing one instead.
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("c.toml");
        std::fs::write(&empty, "").unwrap();
        let opts = ConnOpts {
            config: Some(empty),
            ..opts
        };
        let e = opts.resolve().unwrap_err();
        assert!(e.message.contains("--ca"), "{}", e.message);
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "servr = \"https://x\"\n").unwrap();
        assert!(read_config(&path).is_err());
    }
}
