//! Finding and checking the static `ferry-guest` binary that goes into the image.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::{elf, ImageError};

/// How to build the guest binary so that it can run in the initramfs (no libc there).
pub const GUEST_BUILD_COMMAND: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build -p ferry-guest --release --target x86_64-unknown-linux-gnu";
/// Environment variable naming the guest binary explicitly.
pub const GUEST_BIN_ENV: &str = "FERRY_GUEST_BIN";
const TARGET_TRIPLE: &str = "x86_64-unknown-linux-gnu";
const BIN_NAME: &str = "ferry-guest";

/// Checks that `path` is an x86-64 executable without a dynamic loader (`PT_INTERP`); the
/// initramfs has no libc, so a dynamic binary would fail with a confusing "not found".
pub fn check_static_executable(path: &Path) -> Result<Vec<u8>, ImageError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
    let bad = |reason: String| ImageError::BadBinary {
        path: path.to_path_buf(),
        reason,
    };
    let info = elf::parse(&bytes).map_err(bad)?;
    if info.machine != elf::EM_X86_64 {
        return Err(bad(format!(
            "built for ELF machine {}, the guest is x86-64",
            info.machine
        )));
    }
    if !matches!(info.elf_type, 2 | 3) {
        return Err(bad("not an executable".to_string()));
    }
    if info.has_interp {
        return Err(ImageError::NotStatic {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Places to look for the guest binary, in order, given `$FERRY_GUEST_BIN`, the current
/// executable and `$CARGO_TARGET_DIR`.
pub fn candidates(
    env_bin: Option<OsString>,
    exe: Option<&Path>,
    cargo_target_dir: Option<OsString>,
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    if let Some(p) = env_bin.filter(|p| !p.is_empty()) {
        push(PathBuf::from(p));
    }
    let profiles = |dir: &Path| {
        ["release", "debug"].map(|prof| dir.join(TARGET_TRIPLE).join(prof).join(BIN_NAME))
    };
    if let Some(dir) = exe.and_then(Path::parent) {
        // Installed side by side, e.g. /usr/local/bin/{ferry,ferry-guest}.
        push(dir.join(BIN_NAME));
        // `target/debug/ferry` next to `target/x86_64-unknown-linux-gnu/release/ferry-guest`.
        if let Some(up) = dir.parent() {
            for p in profiles(up) {
                push(p);
            }
        }
    }
    if let Some(t) = cargo_target_dir.filter(|t| !t.is_empty()) {
        for p in profiles(Path::new(&t)) {
            push(p);
        }
    }
    // Test binaries live deeper (target/debug/deps): try every ancestor, both as a target
    // directory itself and as a workspace holding `target/`.
    if let Some(dir) = exe.and_then(Path::parent) {
        for a in dir.ancestors() {
            for p in profiles(a) {
                push(p);
            }
            for p in profiles(&a.join("target")) {
                push(p);
            }
        }
    }
    out
}

/// Finds the static `ferry-guest` binary: `$FERRY_GUEST_BIN` (which, when set, must be right),
/// then next to the current executable, then the cargo target directories around it (see
/// [`candidates`]). Dynamically linked copies (e.g. a plain `cargo build`) are skipped; if only
/// such copies exist, the error says so and how to build a static one.
pub fn find_guest_binary() -> Result<PathBuf, ImageError> {
    let env_bin = std::env::var_os(GUEST_BIN_ENV).filter(|p| !p.is_empty());
    if let Some(p) = &env_bin {
        let path = PathBuf::from(p);
        if !path.is_file() {
            return Err(ImageError::GuestNotFound {
                searched: vec![path],
                note: format!(" (named by ${GUEST_BIN_ENV})"),
            });
        }
        check_static_executable(&path)?;
        return Ok(path);
    }
    let exe = std::env::current_exe().ok();
    let list = candidates(None, exe.as_deref(), std::env::var_os("CARGO_TARGET_DIR"));
    let mut dynamic = None;
    for p in &list {
        if !p.is_file() {
            continue;
        }
        match check_static_executable(p) {
            Ok(_) => return Ok(p.clone()),
            Err(e @ ImageError::NotStatic { .. }) => {
                dynamic.get_or_insert(e);
            }
            Err(_) => {}
        }
    }
    Err(dynamic.unwrap_or(ImageError::GuestNotFound {
        searched: list,
        note: String::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_check() {
        assert!(check_static_executable(Path::new("/bin/busybox")).is_ok());
        let err = check_static_executable(Path::new("/bin/ls")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("dynamically linked"), "{msg}");
        assert!(msg.contains("crt-static"), "{msg}");
        let err = check_static_executable(Path::new("/etc/hostname")).unwrap_err();
        assert!(err.to_string().contains("not an ELF"), "{err}");
        assert!(check_static_executable(Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn candidate_order() {
        let c = candidates(
            Some("/opt/g".into()),
            Some(Path::new("/w/target/debug/deps/ferry_image-123")),
            Some("/ct".into()),
        );
        let s: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(s[0], "/opt/g");
        assert_eq!(s[1], "/w/target/debug/deps/ferry-guest");
        assert_eq!(
            s[2],
            "/w/target/debug/x86_64-unknown-linux-gnu/release/ferry-guest"
        );
        assert_eq!(s[4], "/ct/x86_64-unknown-linux-gnu/release/ferry-guest");
        assert_eq!(s[5], "/ct/x86_64-unknown-linux-gnu/debug/ferry-guest");
        let pos = |p: &str| {
            s.iter()
                .position(|x| x == p)
                .unwrap_or_else(|| panic!("{p}"))
        };
        // The workspace target dir, found from the test binary's ancestors.
        let rel = pos("/w/target/x86_64-unknown-linux-gnu/release/ferry-guest");
        let dbg = pos("/w/target/x86_64-unknown-linux-gnu/debug/ferry-guest");
        assert!(rel < dbg);
        // No duplicates.
        let unique: std::collections::BTreeSet<_> = s.iter().collect();
        assert_eq!(unique.len(), s.len());
    }

    #[test]
    fn candidates_for_installed_cli() {
        let c = candidates(None, Some(Path::new("/usr/local/bin/ferry")), None);
        assert_eq!(c[0], PathBuf::from("/usr/local/bin/ferry-guest"));
        assert_eq!(
            c[1],
            PathBuf::from("/usr/local/x86_64-unknown-linux-gnu/release/ferry-guest")
        );
    }
}
