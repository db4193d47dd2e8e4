//! Ferry's wire types and HTTP clients.
//!
//! Everything that crosses a process boundary lives here: the VM spec (what the operator asks
//! for), the agent's and server's resources, migration records and progress, the event log,
//! and the one [`ApiError`] type that every endpoint returns on failure (mapped to an HTTP
//! status with a machine-readable code and a human reason).
//!
//! The crate has no I/O except the thin [`client`] module, so the server and agent cores can
//! be tested without HTTP.

pub mod audit;
pub mod auth;
pub mod balance;
pub mod checks;
pub mod client;
pub mod error;
pub mod events;
pub mod frames;
pub mod ha;
pub mod host;
#[cfg(feature = "server")]
pub mod http;
pub mod load;
pub mod migration;
pub mod modes;
pub mod names;
pub mod operation;
pub mod placement;
pub mod queue;
pub mod rate;
pub mod schedule;
pub mod spec;
pub mod storage;
pub mod tuning;
pub mod vm;

pub use auth::*;
pub use balance::*;
pub use checks::*;
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use events::*;
pub use frames::{FrameBatch, FrameBatchAnswer, FrameReport};
pub use ha::*;
pub use host::*;
pub use load::*;
pub use migration::*;
pub use modes::*;
pub use names::validate_name;
pub use operation::*;
pub use placement::*;
pub use queue::*;
pub use schedule::*;
pub use spec::*;
pub use storage::*;
pub use tuning::*;
pub use vm::*;
