//! Error type of the QMP client.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong talking to QEMU over QMP.
///
/// The variants say *why* a call failed, so callers can react differently to "QEMU refused the
/// command" ([`QmpError::Command`]), "QEMU is gone" ([`QmpError::Disconnected`]) and "QEMU did not
/// answer in time" ([`QmpError::Timeout`]).
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be opened, read or written.
    #[error("QMP socket {}: {source}", path.display())]
    Io {
        /// Socket path (or the label given to [`crate::QmpClient::from_stream`]).
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// QEMU sent something that is not valid QMP (or not what this crate expects at that point).
    #[error("QMP protocol error on {}: {reason}; message: {snippet}", path.display())]
    Protocol {
        path: PathBuf,
        reason: String,
        /// The start of the offending message (at most a few hundred bytes).
        snippet: String,
    },

    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        /// QMP error class, nowadays nearly always `GenericError`; also e.g. `CommandNotFound`,
        /// `DeviceNotFound`, `DeviceNotActive`, `KVMMissingCap`.
        class: String,
        /// QEMU's own human-readable description.
        desc: String,
    },

    /// QEMU answered, but the answer does not have the shape this crate expects for the command.
    #[error("QMP command {command}: cannot decode the reply: {source}; reply: {snippet}")]
    Decode {
        command: String,
        #[source]
        source: serde_json::Error,
        snippet: String,
    },

    /// The command's arguments could not be serialized (a bug in the caller's types).
    #[error("QMP command {command}: cannot encode the arguments: {source}")]
    Encode {
        command: String,
        #[source]
        source: serde_json::Error,
    },

    /// No answer within the per-call timeout. QEMU may still execute the command later; its late
    /// answer is discarded.
    #[error("QMP command {command} timed out after {timeout:?}")]
    Timeout { command: String, timeout: Duration },

    /// A waited-for event did not arrive in time.
    #[error("QMP event {event} did not arrive within {timeout:?}")]
    EventTimeout { event: String, timeout: Duration },

    /// `connect_with_retry` gave up.
    #[error("QMP socket {} not ready within {timeout:?}: {last}", path.display())]
    ConnectTimeout {
        path: PathBuf,
        timeout: Duration,
        /// The last error seen while retrying.
        last: Box<QmpError>,
    },

    /// The connection is closed: QEMU exited, closed the socket, or the socket failed. Every call
    /// pending at that moment and every later call fails with this error.
    #[error("QMP connection to {} is closed (QEMU exited or closed the socket)", path.display())]
    Disconnected { path: PathBuf },
}

impl QmpError {
    /// True for [`QmpError::Disconnected`].
    pub fn is_disconnected(&self) -> bool {
        matches!(self, QmpError::Disconnected { .. })
    }

    /// For [`QmpError::Command`], QEMU's error class.
    pub fn command_error_class(&self) -> Option<&str> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// The start of a message, for error messages and logs (never the whole of a huge payload).
pub(crate) fn snippet(text: &str) -> String {
    const MAX: usize = 300;
    let text = text.trim_end();
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::snippet;

    #[test]
    fn snippet_is_bounded_and_char_safe() {
        assert_eq!(snippet("abc\r\n"), "abc");
        let long = "é".repeat(1000);
        let s = snippet(&long);
        assert!(s.len() < 400, "{}", s.len());
        assert!(s.ends_with("(2000 bytes)"));
    }
}
