//! Which host files a VM may boot from by path. QEMU runs as root, so a spec naming
//! `/etc/shadow` as a boot disk, or a kernel anywhere on the host, must be refused: a path
//! is accepted only if, with every symlink resolved, it lies under an allowed directory
//! (the image cache, the pools, and the operator's `--boot-path-allow` directories).
//! QEMU then gets the resolved path, so a symlink swapped afterwards does not redirect it.

use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// `path` resolved, if it is a file under one of `roots`; otherwise the refusal, naming
/// the allowed directories.
pub fn confine(path: &Path, roots: &[PathBuf], what: &str) -> Result<PathBuf, AgentError> {
    let real = path.canonicalize().map_err(|e| {
        AgentError::bad_request(format!("{what} {} cannot be used: {e}", path.display()))
    })?;
    if !real.is_file() {
        return Err(AgentError::bad_request(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    let inside = roots
        .iter()
        .filter_map(|r| r.canonicalize().ok())
        .any(|root| real.starts_with(&root) && real != root);
    if inside {
        return Ok(real);
    }
    let allowed: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    Err(AgentError::bad_request(format!(
        "{what} {} is outside the directories this host boots from ({}); an operator can \
         allow its directory with `ferry agent --boot-path-allow DIR`",
        path.display(),
        allowed.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_under_an_allowed_directory_pass_symlinks_resolved() {
        let allowed = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let ok = allowed.path().join("disk.qcow2");
        std::fs::write(&ok, b"x").unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"x").unwrap();
        let roots = vec![allowed.path().to_path_buf()];

        let real = confine(&ok, &roots, "boot disk").unwrap();
        assert_eq!(real, ok.canonicalize().unwrap());

        let e = confine(&secret, &roots, "boot disk").unwrap_err();
        assert!(e.to_string().contains("outside the directories"), "{e}");
        // A symlink inside the allowed directory pointing out of it is refused.
        let link = allowed.path().join("innocent.qcow2");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(confine(&link, &roots, "boot disk").is_err());
        // So is climbing out with "..", and the directory itself.
        let climb = allowed
            .path()
            .join("..")
            .join(outside.path().file_name().unwrap())
            .join("secret");
        assert!(confine(&climb, &roots, "boot disk").is_err());
        assert!(confine(allowed.path(), &roots, "boot disk").is_err());
        // And a file that is not there says so.
        let e = confine(&allowed.path().join("nope"), &roots, "boot disk").unwrap_err();
        assert!(e.to_string().contains("cannot be used"), "{e}");
    }
}
