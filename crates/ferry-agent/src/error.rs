//! The agent's own failures. Everything below the HTTP routes returns [`AgentError`]; only
//! [`crate::api`] turns it into the wire's [`ApiError`], so which HTTP code a failure gets
//! is decided in one place ([`AgentError::code`]) rather than at every call site.

use ferry_api::{ApiError, ErrorCode};

use crate::persist::PersistError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The request names something invalid or is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The named VM, pool or disk is not on this host.
    #[error("{0}")]
    NotFound(String),
    /// Refused: the request conflicts with the current state (a VM already migrating, a
    /// migration QEMU reports completed, an image that already exists...).
    #[error("{0}")]
    Refused(String),
    /// The caller may not ask this (a peer host sending frames for a VM it is not the
    /// source of).
    #[error("{0}")]
    Forbidden(String),
    /// Another host could not be reached or refused (a destination's disk export, a probe
    /// target).
    #[error("{0}")]
    Upstream(String),
    /// QEMU's monitor answered a command with an error.
    #[error("QMP command {command} failed: {reason}")]
    Qmp { command: String, reason: String },
    /// QEMU's monitor is closed: the QEMU is gone or going.
    #[error("QMP command {command} failed because QEMU is not running ({reason})")]
    QemuGone { command: String, reason: String },
    /// Starting, adopting or watching a QEMU process failed.
    #[error("{0}")]
    Process(String),
    /// A pool or image operation failed (qemu-img, the file system).
    #[error("{0}")]
    Storage(String),
    /// A host network operation failed (taps, bridges).
    #[error("{0}")]
    Net(String),
    /// The VM's record in the state directory could not be read or written.
    #[error("{0}")]
    Persist(String),
    /// Anything else that should not happen.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        AgentError::BadRequest(message.into())
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        AgentError::NotFound(message.into())
    }
    pub fn refused(message: impl Into<String>) -> Self {
        AgentError::Refused(message.into())
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        AgentError::Forbidden(message.into())
    }
    pub fn upstream(message: impl Into<String>) -> Self {
        AgentError::Upstream(message.into())
    }
    pub fn process(message: impl Into<String>) -> Self {
        AgentError::Process(message.into())
    }
    pub fn storage(message: impl Into<String>) -> Self {
        AgentError::Storage(message.into())
    }
    pub fn net(message: impl Into<String>) -> Self {
        AgentError::Net(message.into())
    }
    pub fn internal(message: impl Into<String>) -> Self {
        AgentError::Internal(message.into())
    }

    /// A QMP command's failure; a closed monitor is told apart because it means the QEMU
    /// is gone (a conflict with the request, not a bug).
    pub fn qmp(command: &str, e: ferry_qmp::QmpError) -> Self {
        if e.is_disconnected() {
            AgentError::QemuGone {
                command: command.to_string(),
                reason: e.to_string(),
            }
        } else {
            AgentError::Qmp {
                command: command.to_string(),
                reason: e.to_string(),
            }
        }
    }

    /// The HTTP code this failure answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            AgentError::BadRequest(_) => ErrorCode::BadRequest,
            AgentError::NotFound(_) => ErrorCode::NotFound,
            AgentError::Refused(_) | AgentError::QemuGone { .. } => ErrorCode::Conflict,
            AgentError::Upstream(_) => ErrorCode::Upstream,
            AgentError::Forbidden(_) => ErrorCode::Forbidden,
            AgentError::Qmp { .. }
            | AgentError::Process(_)
            | AgentError::Storage(_)
            | AgentError::Net(_)
            | AgentError::Persist(_)
            | AgentError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The same failure with `prefix` in front of its message (e.g. the host name), same
    /// kind.
    pub fn prefixed(self, prefix: &str) -> Self {
        let add = |m: String| format!("{prefix}: {m}");
        match self {
            AgentError::BadRequest(m) => AgentError::BadRequest(add(m)),
            AgentError::NotFound(m) => AgentError::NotFound(add(m)),
            AgentError::Refused(m) => AgentError::Refused(add(m)),
            AgentError::Upstream(m) => AgentError::Upstream(add(m)),
            AgentError::Forbidden(m) => AgentError::Forbidden(add(m)),
            AgentError::Process(m) => AgentError::Process(add(m)),
            AgentError::Storage(m) => AgentError::Storage(add(m)),
            AgentError::Net(m) => AgentError::Net(add(m)),
            AgentError::Persist(m) => AgentError::Persist(add(m)),
            AgentError::Internal(m) => AgentError::Internal(add(m)),
            AgentError::Qmp { command, reason } => AgentError::Qmp {
                command,
                reason: add(reason),
            },
            AgentError::QemuGone { command, reason } => AgentError::QemuGone {
                command,
                reason: add(reason),
            },
        }
    }
}

impl From<PersistError> for AgentError {
    fn from(e: PersistError) -> Self {
        AgentError::Persist(e.to_string())
    }
}

/// ferry-api's own validators (names, specs) answer in its error type; their code says
/// which kind of failure it is.
impl From<ApiError> for AgentError {
    fn from(e: ApiError) -> Self {
        match e.code {
            ErrorCode::BadRequest => AgentError::BadRequest(e.message),
            ErrorCode::NotFound => AgentError::NotFound(e.message),
            ErrorCode::Conflict
            | ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::TooManyRequests => AgentError::Refused(e.message),
            ErrorCode::Upstream => AgentError::Upstream(e.message),
            ErrorCode::Unavailable | ErrorCode::Internal => AgentError::Internal(e.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_their_kind_both_ways() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::Upstream,
            ErrorCode::Internal,
        ] {
            let back = AgentError::from(ApiError::new(code, "why"));
            assert_eq!(back.code(), code);
            assert_eq!(back.to_string(), "why");
        }
    }

    #[test]
    fn a_prefix_keeps_the_kind() {
        let e = AgentError::refused("image 'd1' already exists").prefixed("host a");
        assert_eq!(e.code(), ErrorCode::Conflict);
        assert_eq!(e.to_string(), "host a: image 'd1' already exists");
    }
}
