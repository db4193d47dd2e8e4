//! Running host tools (apt-get, apt-cache, dpkg-deb, xz, zstd) with argument vectors, never
//! through a shell, and turning failures into errors that say what ran and why it failed.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::ImageError;

/// What to install when a tool is missing.
fn hint(program: &str) -> &'static str {
    match program {
        "apt-get" | "apt-cache" => "the image builder needs Debian's apt",
        "dpkg-deb" => "install dpkg",
        "xz" => "install xz-utils",
        "zstd" => "install zstd",
        _ => "is it installed and in PATH?",
    }
}

/// Runs `program args...` (in `cwd` if given) and returns its stdout. The locale is forced to
/// C because we parse apt's output, which is translated otherwise.
pub fn run_bytes<I, S>(program: &str, args: I, cwd: Option<&Path>) -> Result<Vec<u8>, ImageError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|source| ImageError::Spawn {
        program: program.to_string(),
        hint: hint(program),
        source,
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    // Only for the message: the command itself never goes through a shell.
    let mut shown = program.to_string();
    for a in &args {
        shown.push(' ');
        shown.push_str(&a.to_string_lossy());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // apt prints a sandbox warning when run as root in a private temp dir; it is noise here.
    let stderr: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("Download is performed unsandboxed"))
        .collect();
    Err(ImageError::CommandFailed {
        command: shown,
        status: out.status.to_string(),
        stderr: stderr.join("\n").trim().to_string(),
    })
}

/// Like [`run_bytes`], for text output.
pub fn run<I, S>(program: &str, args: I, cwd: Option<&Path>) -> Result<String, ImageError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_bytes(program, args, cwd).map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_failure() {
        assert_eq!(run("echo", ["a b", "c"], None).unwrap(), "a b c\n");
        let err = run("ls", ["/nonexistent-ferry-path"], None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`ls /nonexistent-ferry-path` failed"), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
        let err = run("ferry-no-such-tool", ["x"], None).unwrap_err();
        assert!(
            err.to_string().contains("cannot run `ferry-no-such-tool`"),
            "{err}"
        );
    }

    #[test]
    fn runs_in_the_given_directory() {
        assert_eq!(
            run("pwd", [] as [&str; 0], Some(Path::new("/tmp"))).unwrap(),
            "/tmp\n"
        );
    }
}
