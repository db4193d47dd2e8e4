//! ferry-qmp: a small, typed, async client for the QEMU Machine Protocol (QMP).
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_qmp::QmpError> {
//! use std::time::Duration;
//! use ferry_qmp::{QmpClient, RunState};
//!
//! let qmp = QmpClient::connect_with_retry("/run/vm/qmp.sock".as_ref(), Duration::from_secs(5)).await?;
//! println!("QEMU {}", qmp.version().qemu);
//! qmp.stop().await?;
//! assert_eq!(qmp.query_status().await?.status, RunState::Paused);
//! # Ok(()) }
//! ```
//!
//! One connection per QEMU; [`QmpClient`] is a cheap clonable handle. A background task reads
//! QEMU's messages and hands each reply to its caller (matched by `id`) and each event to the
//! [`QmpClient::events`] subscribers. Every call has a timeout (default
//! [`DEFAULT_COMMAND_TIMEOUT`]). When QEMU goes away, pending and later calls fail with
//! [`QmpError::Disconnected`] and [`QmpClient::closed`] resolves.
//!
//! Tracing: each command runs in a `qmp` debug span (command name, id) and logs its duration at
//! debug level; payloads are only logged, truncated, at trace level.

mod block;
mod client;
mod commands;
mod error;
mod events;
mod tls;
mod types;

#[cfg(test)]
mod fuzz_tests;

pub use block::{BlockJobInfo, MirrorArgs};
pub use client::{QmpClient, QmpOptions, DEFAULT_COMMAND_TIMEOUT, DEFAULT_EVENT_CAPACITY};
pub use error::QmpError;
pub use events::{
    event_names, wait_for_event_on, MigrationEventData, MigrationPassEventData, QmpEvent,
    QmpTimestamp, ShutdownEventData,
};
pub use tls::{NbdClientTls, NbdServerTls, TlsCredsX509, TlsEndpoint};
pub use types::*;
