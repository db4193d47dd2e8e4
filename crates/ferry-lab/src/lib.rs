//! A Ferry cluster on one machine: one server and N agents on loopback, each in its own
//! temporary directory, plus helpers that read the test guest's integrity verdict from its
//! console. Used by `ferry demo`, the end-to-end tests and the benchmarks.
//!
//! Everything a [`Lab`] starts it stops: daemons get SIGTERM (then SIGKILL), QEMUs found
//! under the lab's directory are killed, and the directory is removed — also when a test
//! panics, because this happens in `Drop`.
//!
//! [`NetLab`] is the same with real networks: each host a network namespace with its own
//! agent, joined by separate management, migration and VM segments, links shaped with
//! `tc tbf`, long distances emulated by the delaying TCP relay ([`relay`]); see [`netlab`].

mod cluster;
pub mod faults;
pub mod guest;
pub mod hold;
pub mod lab;
pub mod probe;
pub mod soak;
pub mod testvm;
pub mod trust;

pub use guest::{verdict_after, wait_ready, GuestVerdict, Observer};
pub use lab::{Lab, LabConfig, LabError};
pub use testvm::{ensure_test_image, networked_vm_spec, test_vm_spec};
pub use trust::Trust;

mod daemon;
pub mod netlab;
pub mod relay;

pub use netlab::{NetHost, NetLab, NetLabConfig, NetLabError, Shape};
pub use relay::{Relay, RelayConfig, RelayStats};
