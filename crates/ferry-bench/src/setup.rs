//! What the benchmarks that boot guests start with: the test guest image, and this binary
//! (which their labs run as the server and the agents).

use std::path::PathBuf;

use ferry_lab::ensure_test_image;

use crate::error::{fail, BenchError};

/// Builds the test guest image unless it is up to date, telling stderr; its directory.
pub(crate) async fn test_image() -> Result<PathBuf, BenchError> {
    eprintln!("bench: preparing the test guest image");
    tokio::task::spawn_blocking(|| ensure_test_image(&mut |s: &str| eprintln!("  {s}")))
        .await
        .map_err(fail)?
        .map_err(BenchError::failed)
}

/// The running `ferry` binary.
pub(crate) fn own_binary() -> Result<PathBuf, BenchError> {
    std::env::current_exe().map_err(fail)
}
