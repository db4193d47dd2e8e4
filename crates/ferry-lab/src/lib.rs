//! A Ferry cluster on one machine: one server and N agents on loopback, each in its own
//! temporary directory, plus helpers that read the test guest's integrity verdict from its
//! console. Used by `ferry demo`, the end-to-end tests and the benchmarks.
//!
//! Everything a [`Lab`] starts it stops: daemons get SIGTERM (then SIGKILL), QEMUs found
//! under the lab's directory are killed, and the directory is removed — also when a test
//! panics, because this happens in `Drop`.

pub mod guest;
pub mod lab;
pub mod testvm;

pub use guest::{verdict_after, wait_ready, GuestVerdict, Observer};
pub use lab::{Lab, LabConfig, LabError};
pub use testvm::{ensure_test_image, test_vm_spec};
