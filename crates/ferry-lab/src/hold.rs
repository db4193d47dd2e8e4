//! The lab's side of the server's hold points (`ferry server --test-hold-at POINTS
//! --test-hold-dir DIR`): a migration reaching a configured point writes
//! `DIR/<migration id>.<point>` and waits until that file is removed. A fault test waits
//! for the file, injects its fault at exactly that moment, and releases the run by removing
//! the file: timing by an event, never by a guessed sleep.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The points a server can hold at, in the order a migration passes them.
pub const POINTS: [&str; 6] = [
    "preparing",
    "copying_disks",
    "transferring",
    "switching_over",
    "post_copy",
    "quick_saved",
];

/// The server arguments that hold every migration at `points`, writing into `dir`.
pub fn server_args(points: &[&str], dir: &Path) -> Vec<String> {
    vec![
        "--test-hold-at".into(),
        points.join(","),
        "--test-hold-dir".into(),
        dir.display().to_string(),
    ]
}

/// The file a migration held at `point` writes.
pub fn hold_file(dir: &Path, id: Uuid, point: &str) -> PathBuf {
    dir.join(format!("{id}.{point}"))
}

/// Waits until migration `id` is held at `point` (its file exists). `still_going` is asked
/// between looks: when it says the migration can no longer get there (it ended, or passed
/// the point), the wait gives up with its reason.
pub async fn wait_held<F, Fut>(
    dir: &Path,
    id: Uuid,
    point: &str,
    timeout: Duration,
    mut still_going: F,
) -> Result<PathBuf, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let file = hold_file(dir, id, point);
    let deadline = Instant::now() + timeout;
    let mut looks = 0u32;
    loop {
        if file.exists() {
            return Ok(file);
        }
        // The server is asked every 20th look (a second), the file every 50 ms.
        if looks.is_multiple_of(20) {
            still_going().await?;
        }
        looks += 1;
        if Instant::now() > deadline {
            return Err(format!(
                "migration {id} was not held at {point} within {} s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lets a held run go on. Removing a file that is already gone is not an error.
pub fn release(file: &Path) -> Result<(), String> {
    match std::fs::remove_file(file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot release {}: {e}", file.display())),
    }
}

/// The hold files in `dir` now (runs waiting at a point).
pub fn held(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| POINTS.contains(&x))
        })
        .collect()
}

/// Releases every run held in `dir`; returns how many there were.
pub fn release_all(dir: &Path) -> usize {
    held(dir).iter().filter(|f| release(f).is_ok()).count()
}
