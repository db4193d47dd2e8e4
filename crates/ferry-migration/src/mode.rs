//! How a VM moves: live (the default), quick (save to shared storage, restore on the
//! destination) or cold (a stopped VM, its local disks copied).

use serde::{Deserialize, Serialize};

/// The kind of move a migration makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMode {
    /// The guest keeps running while its memory (and local disks) move; it pauses only for
    /// the switch-over ([`crate::phase`]).
    #[default]
    Live,
    /// The guest is paused, its state saved to a file on a storage pool both hosts share,
    /// and restored on the destination ([`crate::quick`]). Downtime is the save plus the
    /// restore; nothing crosses the migration network.
    Quick,
    /// A stopped VM: its record moves to the destination and its local-pool disks are
    /// copied there and verified first ([`crate::cold`]).
    Cold,
}

impl MigrationMode {
    pub const ALL: [MigrationMode; 3] = [
        MigrationMode::Live,
        MigrationMode::Quick,
        MigrationMode::Cold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MigrationMode::Live => "live",
            MigrationMode::Quick => "quick",
            MigrationMode::Cold => "cold",
        }
    }

    pub fn parse(text: &str) -> Option<MigrationMode> {
        Self::ALL.into_iter().find(|m| m.as_str() == text)
    }

    /// Whether the guest must run for this mode (quick and live), or must not (cold).
    pub fn needs_running_vm(self) -> bool {
        self != MigrationMode::Cold
    }
}

impl std::fmt::Display for MigrationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_live_is_the_default() {
        for m in MigrationMode::ALL {
            assert_eq!(MigrationMode::parse(m.as_str()), Some(m));
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
        }
        assert_eq!(MigrationMode::default(), MigrationMode::Live);
        assert!(MigrationMode::parse("warm").is_none());
    }
}
