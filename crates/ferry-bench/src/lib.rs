//! Ferry's benchmarks, the network lab's commands and the demo: what `ferry bench`,
//! `ferry lab` and `ferry demo` run. The `ferry` binary parses their flags into the plain
//! configs here (`MigrateConfig`, `ConvergenceConfig`, ...), calls one function and maps a
//! [`BenchError`] to its exit status; nothing here knows about the command line.
//!
//! Each benchmark prints a table (or JSON) and writes its result file under `out`
//! (`bench/results/` by default). The labs they run on are `ferry_lab`'s.
//!
//! [`console`] (tables, JSON, sizes, durations) and [`progress`] (following a migration to
//! its end with a progress bar) are shared with the rest of the binary's commands.

pub mod api;
pub mod console;
pub mod converge;
pub mod demo;
pub mod error;
pub mod evacuate;
pub mod faults;
pub mod ha;
pub mod lab;
pub mod migrate;
pub mod net;
pub mod placement;
mod plain;
pub mod progress;
pub mod quick;
mod results;
mod setup;
pub mod storage;
pub mod switchover;
pub mod tls;

pub use error::{BenchError, BenchResult};
