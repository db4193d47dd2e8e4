//! Ferry's guest workload and its console protocol.
//!
//! The `ferry-guest` binary runs inside the test VM (started by the initramfs `/init` that
//! `ferry-image` builds). It fills `ferry.mem_mib` MiB with self-verifying pages, rewrites them
//! at `ferry.rate_mib` MiB/s and re-verifies all of them continuously, printing one status line
//! per second on the serial console. A migration that loses or corrupts a page shows up as a
//! `MISMATCH` line and a non-zero `mismatches=` count. When the guest has an address
//! (`ferry.ip`, configured by `/init`), it also serves a small TCP protocol on `ferry.port`
//! (default 7000) so tests can hold connections into the VM across a migration.
//!
//! The library holds the pure parts, testable on the host and used by the host side to read the
//! console:
//! - [`pattern`]: fill and verify one page;
//! - [`config`]: parse the kernel command line;
//! - [`status`]: the console line formats and parsers ([`status::StatusLine`],
//!   [`status::last_status`], [`status::ConsoleSummary`], ...);
//! - [`workload`]: the fill / rewrite / verify loop itself;
//! - [`service`]: the TCP service (token echo with the workload's counters);
//! - [`disk`]: the disk workload (`ferry.disk`): self-verifying blocks on a block device,
//!   rewritten and verified continuously in its own thread, and verified completely after the
//!   VM restarts.
//!
//! The crate has no dependencies so the binary links statically:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!   cargo build -p ferry-guest --release --target x86_64-unknown-linux-gnu
//! ```

pub mod config;
pub mod disk;
pub mod pattern;
pub mod service;
pub mod status;
pub mod workload;

pub use config::{Config, Ipv4Cidr};
pub use status::{
    disk_mismatch_line_count, last_status, mismatch_line_count, ConsoleSummary, DiskLine,
    DiskReadyLine, DiskStatusLine, NetLine, ReadyLine, StatusLine, TcpLine,
};
