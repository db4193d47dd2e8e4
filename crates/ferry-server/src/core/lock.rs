//! The data directory lock: one server per data directory. Two servers on one SQLite file
//! would each run the same migrations and each act on them; the second refuses to start,
//! naming the holder.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The lock file inside the data directory.
pub const LOCK_FILE: &str = "server.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot use the data directory {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("the data directory {path} is in use by another Ferry server ({holder}); stop it first or choose another --data-dir")]
    Held { path: PathBuf, holder: String },
}

/// Held while the server runs; the kernel releases it when the process exits, however it
/// exits (no stale lock after a crash).
pub struct DataDirLock {
    _file: Flock<File>,
}

impl DataDirLock {
    /// Creates the directory if needed and takes its lock without waiting. `listen`: where
    /// this server listens (written into the lock file for whoever finds it held).
    pub fn acquire(dir: &Path, listen: &str) -> Result<DataDirLock, LockError> {
        let io = |e: std::io::Error| LockError::Io {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    path: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "holder unknown".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
        };
        let who = format!(
            "pid {} on {}, listening on {listen}, since {}",
            std::process::id(),
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "this host".into()),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(who.as_bytes()).map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), "127.0.0.1:7700").unwrap();
        let err = DataDirLock::acquire(dir.path(), "127.0.0.1:7701")
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("in use by another Ferry server"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("127.0.0.1:7700"), "{err}");
        drop(first);
        DataDirLock::acquire(dir.path(), "127.0.0.1:7701").expect("free again");
    }
}
