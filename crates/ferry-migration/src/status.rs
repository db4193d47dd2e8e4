//! QEMU's own statuses, typed once where they enter Ferry (the agent reads them over QMP)
//! and carried as enums on the wire from there: nobody downstream compares strings.
//!
//! Each serializes as QEMU spells it (`postcopy-active`, `pre-switchover`, `concluded`), so
//! the wire and the event log read like QEMU's documentation. A value this build does not
//! know (a newer QEMU) becomes `Unknown` instead of an error: the agent must still answer,
//! and every decision treats `Unknown` as "not proven" (see [`crate::recovery`]).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! qemu_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value this build does not know (QEMU newer than Ferry).
            #[default]
            Unknown,
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// QEMU's spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Unknown => "unknown",
                }
            }

            /// From QEMU's spelling; anything else is `Unknown`.
            pub fn parse(text: &str) -> $name {
                match text {
                    $($text => $name::$variant,)*
                    _ => $name::Unknown,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Ok($name::parse(&text))
            }
        }
    };
}

qemu_enum! {
    /// A QEMU's migration status (`query-migrate`'s `status`), on either side.
    pub enum MigrationStatus {
        /// No migration was ever started in this QEMU.
        None => "none",
        Setup => "setup",
        Cancelling => "cancelling",
        Cancelled => "cancelled",
        /// Pre-copy: RAM passes (source), or receiving (destination).
        Active => "active",
        /// Post-copy is being set up (QEMU 10.1+).
        PostcopyDevice => "postcopy-device",
        /// Post-copy: the guest runs on the destination, pages still flow.
        PostcopyActive => "postcopy-active",
        /// Post-copy with the connection dropped; waits for a recovery.
        PostcopyPaused => "postcopy-paused",
        PostcopyRecoverSetup => "postcopy-recover-setup",
        PostcopyRecover => "postcopy-recover",
        /// Source: everything sent (the guest is paused here, `postmigrate`).
        /// Destination: everything received and loaded.
        Completed => "completed",
        Failed => "failed",
        Colo => "colo",
        /// Source with `pause-before-switchover`: vCPUs stopped, waiting for
        /// `migrate-continue` (disk copies finish here).
        PreSwitchover => "pre-switchover",
        /// Source: vCPUs stopped, the last pages and the device state go out.
        Device => "device",
        WaitUnplug => "wait-unplug",
    }
}

impl MigrationStatus {
    /// One of the post-copy states: the guest's memory is split between the two hosts.
    pub fn is_postcopy(self) -> bool {
        matches!(
            self,
            MigrationStatus::PostcopyDevice
                | MigrationStatus::PostcopyActive
                | MigrationStatus::PostcopyPaused
                | MigrationStatus::PostcopyRecoverSetup
                | MigrationStatus::PostcopyRecover
        )
    }

    /// The migration ended, one way or the other (a new one may start).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }

    /// QEMU gave up on it (a failure, or a cancel): a pre-copy source then runs again.
    pub fn is_failed(self) -> bool {
        matches!(self, MigrationStatus::Failed | MigrationStatus::Cancelled)
    }

    /// A source still in the iterative part of pre-copy: the vCPUs run here and the
    /// destination cannot have received the device state yet.
    pub fn is_iterating(self) -> bool {
        matches!(
            self,
            MigrationStatus::None
                | MigrationStatus::Setup
                | MigrationStatus::Active
                | MigrationStatus::WaitUnplug
        )
    }

    /// A source in the final pause of pre-copy (vCPUs stopped, not yet completed).
    pub fn is_switching(self) -> bool {
        matches!(
            self,
            MigrationStatus::Device | MigrationStatus::PreSwitchover
        )
    }
}

qemu_enum! {
    /// A QEMU block job's status (`query-block-jobs`), as a disk copy reports it.
    pub enum BlockJobStatus {
        Undefined => "undefined",
        Created => "created",
        Running => "running",
        Paused => "paused",
        /// A mirror in sync: source and target held the same data when last checked.
        Ready => "ready",
        Standby => "standby",
        Waiting => "waiting",
        Pending => "pending",
        Aborting => "aborting",
        /// Finished (successfully or not); waits to be dismissed.
        Concluded => "concluded",
        /// Dismissed: gone.
        Null => "null",
        /// Not started yet (Ferry's own: the copy was asked for, QEMU has no job yet).
        Starting => "starting",
    }
}

impl BlockJobStatus {
    /// The job is over (or gone).
    pub fn is_concluded(self) -> bool {
        matches!(self, BlockJobStatus::Concluded | BlockJobStatus::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_qemus_spelling() {
        for s in MigrationStatus::ALL {
            assert_eq!(MigrationStatus::parse(s.as_str()), *s);
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<MigrationStatus>(&json).unwrap(), *s);
        }
        for s in BlockJobStatus::ALL {
            assert_eq!(BlockJobStatus::parse(s.as_str()), *s);
        }
    }

    #[test]
    fn unknown_values_are_kept_as_unknown_not_refused() {
        let s: MigrationStatus = serde_json::from_str("\"teleporting\"").unwrap();
        assert_eq!(s, MigrationStatus::Unknown);
        assert!(!s.is_postcopy() && !s.is_finished() && !s.is_iterating());
        let j: BlockJobStatus = serde_json::from_str("\"sleeping\"").unwrap();
        assert_eq!(j, BlockJobStatus::Unknown);
    }

    #[test]
    fn classes_do_not_overlap() {
        for s in MigrationStatus::ALL {
            let classes = [
                s.is_postcopy(),
                s.is_iterating(),
                s.is_switching(),
                *s == MigrationStatus::Completed,
                s.is_failed(),
            ];
            assert!(
                classes.iter().filter(|c| **c).count() <= 1,
                "{s} is in more than one class"
            );
        }
    }
}
