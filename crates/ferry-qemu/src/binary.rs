//! The QEMU binary: where it is, which version, which machine types.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::QemuError;

pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// Oldest QEMU Ferry runs. See [`QemuError::TooOld`] for why.
pub const MIN_MAJOR: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

impl QemuVersion {
    /// Parses the first line of `qemu-system-x86_64 --version`:
    /// "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)".
    pub fn parse_version_output(text: &str) -> Result<QemuVersion, QemuError> {
        let rest = text
            .split("version ")
            .nth(1)
            .ok_or_else(|| QemuError::Parse(format!("no version in {:?}", first_line(text))))?;
        let token: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = token.split('.').map(|p| p.parse::<u32>());
        let mut next = || -> Result<u32, QemuError> {
            match parts.next() {
                Some(Ok(n)) => Ok(n),
                Some(Err(_)) => Err(QemuError::Parse(format!("bad version '{token}'"))),
                None => Ok(0),
            }
        };
        let major = next()?;
        let minor = next()?;
        let micro = next()?;
        if major == 0 {
            return Err(QemuError::Parse(format!("bad version '{token}'")));
        }
        Ok(QemuVersion {
            major,
            minor,
            micro,
        })
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Machine types this QEMU offers, and the aliases among them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineInfo {
    /// (alias, concrete type), e.g. ("q35", "pc-q35-10.0").
    pub aliases: Vec<(String, String)>,
    pub types: Vec<String>,
}

impl MachineInfo {
    /// Parses `qemu-system-x86_64 -machine help`. Lines look like
    /// `pc-q35-10.0          Standard PC (Q35 + ICH9, 2009) (default)` and
    /// `q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)`.
    pub fn parse_help(text: &str) -> MachineInfo {
        let mut info = MachineInfo::default();
        for line in text.lines().skip_while(|l| l.starts_with("Supported")) {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if let Some(idx) = line.find("(alias of ") {
                let target: String = line[idx + "(alias of ".len()..]
                    .chars()
                    .take_while(|c| *c != ')')
                    .collect();
                info.aliases.push((name.to_string(), target));
            } else if name != "none" {
                info.types.push(name.to_string());
            }
        }
        info
    }

    /// The concrete machine type for `wanted` (an alias or a concrete type).
    pub fn resolve(&self, wanted: &str, version: &str) -> Result<String, QemuError> {
        if let Some((_, target)) = self.aliases.iter().find(|(a, _)| a == wanted) {
            return Ok(target.clone());
        }
        if self.types.iter().any(|t| t == wanted) {
            return Ok(wanted.to_string());
        }
        Err(QemuError::UnknownMachine {
            wanted: wanted.to_string(),
            version: version.to_string(),
            some: self
                .aliases
                .iter()
                .map(|(a, _)| a.as_str())
                .take(6)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// A checked QEMU binary.
#[derive(Debug, Clone)]
pub struct QemuBinary {
    pub path: PathBuf,
    pub version: QemuVersion,
    pub machines: MachineInfo,
}

impl QemuBinary {
    /// Finds and checks the binary: runs `--version` and `-machine help` (arguments, no
    /// shell), refuses QEMU older than [`MIN_MAJOR`].
    pub fn detect(path: &Path) -> Result<QemuBinary, QemuError> {
        let version_text = run(path, &["--version"])?;
        let version = QemuVersion::parse_version_output(&version_text)?;
        if version.major < MIN_MAJOR {
            return Err(QemuError::TooOld {
                found: version.to_string(),
            });
        }
        let machines = MachineInfo::parse_help(&run(path, &["-machine", "help"])?);
        if machines.types.is_empty() {
            return Err(QemuError::Parse(format!(
                "'{} -machine help' listed no machine types",
                path.display()
            )));
        }
        Ok(QemuBinary {
            path: path.to_path_buf(),
            version,
            machines,
        })
    }
}

fn run(path: &Path, args: &[&str]) -> Result<String, QemuError> {
    let out = Command::new(path)
        .args(args)
        .output()
        .map_err(|e| QemuError::Binary {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(QemuError::Binary {
            path: path.display().to_string(),
            reason: format!(
                "'{}' exited with {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_version_lines() {
        let v = QemuVersion::parse_version_output(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright",
        )
        .unwrap();
        assert_eq!(v.to_string(), "10.0.2");
        let old =
            QemuVersion::parse_version_output("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7)")
                .unwrap();
        assert!(old.major < MIN_MAJOR);
        assert!(QemuVersion::parse_version_output("garbage").is_err());
    }

    #[test]
    fn too_old_error_says_why() {
        let e = QemuError::TooOld {
            found: "7.2.15".into(),
        };
        let text = e.to_string();
        assert!(text.contains("loses dirty pages"), "{text}");
        assert!(text.contains("bookworm-backports"), "{text}");
    }

    #[test]
    fn parses_machine_help_and_resolves_aliases() {
        let help = "Supported machines are:\n\
            microvm              microvm (i386)\n\
            pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.0)\n\
            pc-i440fx-10.0       Standard PC (i440FX + PIIX, 1996) (default)\n\
            q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)\n\
            pc-q35-10.0          Standard PC (Q35 + ICH9, 2009)\n\
            pc-q35-9.2           Standard PC (Q35 + ICH9, 2009)\n\
            none                 empty machine\n";
        let info = MachineInfo::parse_help(help);
        assert_eq!(info.resolve("q35", "10.0.2").unwrap(), "pc-q35-10.0");
        assert_eq!(info.resolve("pc-q35-9.2", "10.0.2").unwrap(), "pc-q35-9.2");
        let err = info
            .resolve("pc-q35-11.0", "10.0.2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pc-q35-11.0") && err.contains("q35"), "{err}");
        assert!(!info.types.contains(&"none".to_string()));
    }
}
