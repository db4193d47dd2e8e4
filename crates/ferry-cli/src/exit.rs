//! Exit statuses, one per class of failure, so scripts can tell them apart.

use ferry_api::client::ClientError;
use ferry_api::ErrorCode;
use ferry_bench::BenchError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    /// The operation ran and failed (a migration failed, the demo's verdict is bad).
    Failed = 1,
    /// Bad input, or the server refused the request (unknown name, conflict).
    Refused = 2,
    /// The server (or an agent) could not be reached.
    Unreachable = 3,
    /// A migration stopped because it needs an operator (`ferry migration resolve`).
    NeedsAttention = 4,
    /// The caller is not known (no or a revoked token) or its role does not allow this.
    Denied = 5,
}

/// An error with the exit status it should produce.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl CliError {
    pub fn failed(message: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::Failed,
            message: message.into(),
        }
    }
    pub fn attention(message: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::NeedsAttention,
            message: message.into(),
        }
    }
    pub fn refused(message: impl Into<String>) -> CliError {
        CliError {
            exit: Exit::Refused,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        let exit = match &e {
            ClientError::Unreachable { .. } => Exit::Unreachable,
            ClientError::Api(api) => match api.code {
                ErrorCode::BadRequest | ErrorCode::NotFound | ErrorCode::Conflict => Exit::Refused,
                ErrorCode::Unauthorized | ErrorCode::Forbidden => Exit::Denied,
                ErrorCode::TooManyRequests
                | ErrorCode::Unavailable
                | ErrorCode::Upstream
                | ErrorCode::Internal => Exit::Failed,
            },
            ClientError::Decode { .. } => Exit::Failed,
        };
        CliError {
            exit,
            message: e.to_string(),
        }
    }
}

/// A benchmark's, a lab command's or the demo's error: a refusal is bad input, a server
/// client's error keeps its class, anything else failed.
impl From<BenchError> for CliError {
    fn from(e: BenchError) -> CliError {
        match e {
            BenchError::Refused(message) => CliError::refused(message),
            BenchError::Failed(message) => CliError::failed(message),
            BenchError::Client(e) => e.into(),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> CliError {
        CliError::failed(format!("{e:#}"))
    }
}

pub type CliResult = Result<(), CliError>;
