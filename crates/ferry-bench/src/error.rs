//! What a benchmark, a lab command or the demo can fail with. The binary maps each kind to
//! its exit status (ferry-cli's `exit.rs`): a refusal is bad input, a failure is a run that
//! did not work out, and a server client's error keeps the class the API gave it.

use ferry_api::client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad input (an option out of range, an unknown name, a lab slot in use).
    #[error("{0}")]
    Refused(String),
    /// The run itself went wrong (a lab did not start, a migration did not complete).
    #[error("{0}")]
    Failed(String),
    /// The server answered with an error or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl BenchError {
    pub fn refused(message: impl Into<String>) -> BenchError {
        BenchError::Refused(message.into())
    }
    pub fn failed(message: impl Into<String>) -> BenchError {
        BenchError::Failed(message.into())
    }
}

/// A failure from anything that displays (a lab's, QEMU's or a task's error).
pub(crate) fn fail(e: impl std::fmt::Display) -> BenchError {
    BenchError::failed(e.to_string())
}

pub type BenchResult = Result<(), BenchError>;
