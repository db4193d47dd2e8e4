//! QMP events and helpers to wait for them.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tracing::warn;

use crate::client::QmpClient;
use crate::error::QmpError;
use crate::types::MigrationStatus;

/// An asynchronous event from QEMU, e.g. `STOP`, `RESUME`, `SHUTDOWN`, `MIGRATION`,
/// `MIGRATION_PASS`, `BLOCK_JOB_READY`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QmpEvent {
    /// Event name, upper case as QEMU sends it.
    pub event: String,
    /// The event's data; `Null` for events without data (STOP, RESUME, ...).
    #[serde(default)]
    pub data: Value,
    /// When QEMU emitted the event (host wall clock).
    pub timestamp: QmpTimestamp,
}

/// Event time stamp: wall-clock time of the QEMU host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpTimestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

impl QmpTimestamp {
    /// As time since the Unix epoch (`None` for the `-1` QEMU uses when the clock failed).
    pub fn since_epoch(&self) -> Option<Duration> {
        let secs = u64::try_from(self.seconds).ok()?;
        let micros = u64::try_from(self.microseconds).ok()?;
        Some(Duration::from_secs(secs) + Duration::from_micros(micros))
    }
}

impl QmpEvent {
    /// Deserializes the event's data into `T` (e.g. [`MigrationEventData`]).
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }

    /// For a `MIGRATION` event, the new migration status.
    pub fn migration_status(&self) -> Option<MigrationStatus> {
        if self.event != event_names::MIGRATION {
            return None;
        }
        self.data_as::<MigrationEventData>().ok().map(|d| d.status)
    }

    /// For a `MIGRATION_PASS` event, the number of the RAM pass that starts.
    pub fn migration_pass(&self) -> Option<u64> {
        if self.event != event_names::MIGRATION_PASS {
            return None;
        }
        self.data_as::<MigrationPassEventData>()
            .ok()
            .map(|d| d.pass)
    }
}

/// Names of the events Ferry cares about.
pub mod event_names {
    /// Migration status changed (needs the `events` migration capability).
    pub const MIGRATION: &str = "MIGRATION";
    /// A new RAM pass starts (needs the `events` migration capability).
    pub const MIGRATION_PASS: &str = "MIGRATION_PASS";
    pub const STOP: &str = "STOP";
    pub const RESUME: &str = "RESUME";
    pub const SHUTDOWN: &str = "SHUTDOWN";
    pub const POWERDOWN: &str = "POWERDOWN";
    pub const BLOCK_JOB_READY: &str = "BLOCK_JOB_READY";
    pub const BLOCK_JOB_COMPLETED: &str = "BLOCK_JOB_COMPLETED";
    pub const BLOCK_JOB_ERROR: &str = "BLOCK_JOB_ERROR";
    pub const JOB_STATUS_CHANGE: &str = "JOB_STATUS_CHANGE";
}

/// Data of the `MIGRATION` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationEventData {
    pub status: MigrationStatus,
}

/// Data of the `MIGRATION_PASS` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationPassEventData {
    pub pass: u64,
}

/// Data of the `SHUTDOWN` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownEventData {
    /// True if the guest initiated the shutdown.
    pub guest: bool,
    /// E.g. `host-qmp-quit`, `host-signal`, `guest-shutdown`, `guest-reset`, `guest-panic`.
    pub reason: String,
}

/// Waits on an existing subscription for the first event that satisfies `matches`.
///
/// This is the race-free way to observe the effect of a command: subscribe with
/// [`QmpClient::events`], send the command, then wait here. Events that do not match are
/// skipped; if the receiver lagged, the lost events are logged and waiting continues.
pub async fn wait_for_event_on<F>(
    events: &mut broadcast::Receiver<QmpEvent>,
    what: &str,
    timeout: Duration,
    mut matches: F,
) -> Result<QmpEvent, QmpError>
where
    F: FnMut(&QmpEvent) -> bool,
{
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) if matches(&event) => return Ok(event),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    warn!(lost = n, waiting_for = what, "QMP event subscriber lagged")
                }
                Err(RecvError::Closed) => return Err(()),
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(event)) => Ok(event),
        // The client is gone; the path is not known here.
        Ok(Err(())) => Err(QmpError::Disconnected {
            path: "(event stream)".into(),
        }),
        Err(_) => Err(QmpError::EventTimeout {
            event: what.into(),
            timeout,
        }),
    }
}

impl QmpClient {
    /// Waits for the next event named `name`, at most `timeout`.
    ///
    /// Race: this subscribes when called, so an event emitted before the call is missed. To wait
    /// for the consequence of a command, subscribe first with [`QmpClient::events`], then send the
    /// command, then use [`wait_for_event_on`] (or [`QmpClient::wait_for_event_where`] only for
    /// events that cannot have happened yet).
    pub async fn wait_for_event(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<QmpEvent, QmpError> {
        self.wait_for_event_where(name, timeout, |_| true).await
    }

    /// Waits for the next event named `name` that satisfies `matches` (same race as
    /// [`QmpClient::wait_for_event`]).
    pub async fn wait_for_event_where<F>(
        &self,
        name: &str,
        timeout: Duration,
        mut matches: F,
    ) -> Result<QmpEvent, QmpError>
    where
        F: FnMut(&QmpEvent) -> bool,
    {
        let mut events = self.events();
        wait_for_event_on(&mut events, name, timeout, |e| {
            e.event == name && matches(e)
        })
        .await
        .map_err(|e| match e {
            QmpError::Disconnected { .. } => QmpError::Disconnected {
                path: self.path().to_owned(),
            },
            other => other,
        })
    }
}
