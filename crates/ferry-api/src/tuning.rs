//! How a migration streams and converges: the options both QEMUs must agree on before the
//! stream starts ([`StreamSettings`]), and the live changes the convergence controller
//! makes to a running one ([`TuneRequest`]).

use serde::{Deserialize, Serialize};

pub use ferry_migration::convergence::{PostcopyPolicy, Step as ControllerStep, SwitchoverPolicy};

use crate::{ApiError, MigrationOptions};

/// Stream compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    /// multifd with zstd (needs streams >= 2).
    Zstd,
    /// multifd with zlib (needs streams >= 2).
    Zlib,
    /// XBZRLE delta encoding of re-sent hot pages (single stream only).
    Xbzrle,
}

/// Who finds zero pages (QEMU's `zero-page-detection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroPage {
    /// Send every page as it is.
    None,
    /// The main migration thread (QEMU's default without multifd).
    Legacy,
    /// The multifd threads (needs streams >= 2).
    Multifd,
}

pub const MAX_STREAMS: u8 = 16;

/// What the source and the destination QEMU are set up with before the stream starts
/// (capabilities and parameters QEMU refuses to change mid-stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// Parallel streams; 1 = the classic single stream, more = multifd channels.
    pub streams: u8,
    pub compression: Compression,
    #[serde(default)]
    pub zero_page: Option<ZeroPage>,
    /// `postcopy-ram` on both sides (needed to switch to post-copy later).
    pub postcopy: bool,
    /// `auto-converge` on the source, its ceiling held at the controller's step.
    pub throttle: bool,
    /// XBZRLE cache, bytes (with `Compression::Xbzrle`).
    #[serde(default)]
    pub xbzrle_cache_bytes: u64,
    /// Not a QEMU setting: the source forwards the frames queued for the paused guest to
    /// the destination (see [`MigrationOptions::forward_frames`]). Carried with the stream
    /// settings because both agents receive these from the same options.
    #[serde(default = "yes")]
    pub forward_frames: bool,
}

fn yes() -> bool {
    true
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            streams: 1,
            compression: Compression::None,
            zero_page: None,
            postcopy: false,
            throttle: false,
            xbzrle_cache_bytes: 0,
            forward_frames: true,
        }
    }
}

impl StreamSettings {
    /// The settings a migration's options ask for; `ram_bytes` sizes the XBZRLE cache.
    pub fn from_options(o: &MigrationOptions, ram_bytes: u64) -> StreamSettings {
        let compression = o.compression.unwrap_or_default();
        StreamSettings {
            streams: o.streams.unwrap_or(1),
            compression,
            zero_page: o.zero_page,
            postcopy: o.postcopy.unwrap_or_default() != PostcopyPolicy::Never,
            throttle: o.max_throttle_pct.unwrap_or(0) > 0,
            xbzrle_cache_bytes: if compression == Compression::Xbzrle {
                // A quarter of RAM, rounded to a power of two as QEMU wants.
                (ram_bytes / 4).max(64 << 20).next_power_of_two()
            } else {
                0
            },
            forward_frames: o.forward_frames.unwrap_or(true),
        }
    }

    /// Migration capabilities, set identically on both sides.
    pub fn capabilities(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("events", true),
            ("multifd", self.streams > 1),
            ("xbzrle", self.compression == Compression::Xbzrle),
            ("postcopy-ram", self.postcopy),
            // The destination's page requests and its recovery handshake travel on it.
            ("return-path", self.postcopy),
            ("auto-converge", self.throttle),
        ]
    }
}

impl MigrationOptions {
    /// These options with every unset field taken from `defaults` (the cluster's).
    /// `mode`, `keep_source` and `force` are per migration and never defaulted.
    pub fn with_defaults(&self, d: &MigrationOptions) -> MigrationOptions {
        MigrationOptions {
            mode: self.mode,
            max_bandwidth_mib: self.max_bandwidth_mib.or(d.max_bandwidth_mib),
            downtime_limit_ms: self.downtime_limit_ms.or(d.downtime_limit_ms),
            progress_timeout_s: self.progress_timeout_s.or(d.progress_timeout_s),
            keep_source: self.keep_source,
            force: self.force,
            streams: self.streams.or(d.streams),
            compression: self.compression.or(d.compression),
            zero_page: self.zero_page.or(d.zero_page),
            max_throttle_pct: self.max_throttle_pct.or(d.max_throttle_pct),
            postcopy: self.postcopy.or(d.postcopy),
            completion_timeout_s_per_gib: self
                .completion_timeout_s_per_gib
                .or(d.completion_timeout_s_per_gib),
            switchover: self.switchover.or(d.switchover),
            forward_frames: self.forward_frames.or(d.forward_frames),
        }
    }

    /// The streaming options that must agree with each other (see [`MigrationOptions::validate`]).
    pub(crate) fn validate_stream(&self) -> Result<(), ApiError> {
        let streams = self.streams.unwrap_or(1);
        if !(1..=MAX_STREAMS).contains(&streams) {
            return Err(ApiError::bad_request(format!(
                "streams is {streams}; it must be between 1 and {MAX_STREAMS}"
            )));
        }
        match (self.compression.unwrap_or_default(), streams) {
            (Compression::Zstd | Compression::Zlib, 1) => {
                return Err(ApiError::bad_request(
                    "zstd and zlib compression run in multifd streams: set streams to 2 or more",
                ))
            }
            (Compression::Xbzrle, s) if s > 1 => {
                return Err(ApiError::bad_request(
                    "xbzrle works on a single stream: set streams to 1 or use zstd",
                ))
            }
            _ => {}
        }
        if self.postcopy.unwrap_or_default() != PostcopyPolicy::Never && streams > 1 {
            return Err(ApiError::bad_request(
                "QEMU cannot combine post-copy with parallel streams (multifd): \
                 set streams to 1 or postcopy to never",
            ));
        }
        if self.zero_page == Some(ZeroPage::Multifd) && streams == 1 {
            return Err(ApiError::bad_request(
                "zero_page multifd needs streams of 2 or more",
            ));
        }
        if let Some(t) = self.max_throttle_pct {
            if t > 99 {
                return Err(ApiError::bad_request(format!(
                    "max_throttle_pct is {t}; it must be between 0 (never) and 99"
                )));
            }
        }
        if let Some(c) = self.completion_timeout_s_per_gib {
            if !(1..=3600).contains(&c) {
                return Err(ApiError::bad_request(format!(
                    "completion_timeout_s_per_gib is {c}; it must be between 1 and 3600"
                )));
            }
        }
        Ok(())
    }
}

/// `POST /v1/vms/{name}/migration/tune` on the source agent: live changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneRequest {
    /// Hold the guest's vCPU throttle at (up to) this percentage.
    #[serde(default)]
    pub throttle_pct: Option<u8>,
    /// Switch the running pre-copy to post-copy.
    #[serde(default)]
    pub start_postcopy: bool,
    /// The migration's bandwidth cap, bytes/s (QEMU's `max-bandwidth`, and its post-copy
    /// one, as at the start). None: leave it as it is. `Some(0)`: no cap, QEMU's "no
    /// limit" and what Ferry sets at the start without `--max-bandwidth`. To lift a fair
    /// share (`link_share` says None), pass the operator's cap if the migration has one,
    /// else `Some(0)`.
    #[serde(default)]
    pub max_bandwidth_bytes_s: Option<u64>,
    /// The switch-over target QEMU aims at (its `downtime-limit`), ms.
    #[serde(default)]
    pub downtime_limit_ms: Option<u64>,
    /// Bound the bytes the stream's sockets hold unsent (`TCP_NOTSENT_LOWAT`), so the
    /// pause does not start behind a backlog.
    #[serde(default)]
    pub unsent_limit_bytes: Option<u32>,
}

/// The range of [`TuneRequest::unsent_limit_bytes`].
pub const UNSENT_LIMIT_RANGE: std::ops::RangeInclusive<u32> = (16 << 10)..=(64 << 20);

/// The smallest bandwidth cap the tune route sets, bytes/s: below it a migration makes no
/// useful progress (the operator's `--max-bandwidth` starts at 1 MiB/s too).
pub const MIN_TUNE_BANDWIDTH_BYTES_S: u64 = 1 << 20;
/// The largest, bytes/s (the operator's `--max-bandwidth` limit, 1 TiB/s).
pub const MAX_TUNE_BANDWIDTH_BYTES_S: u64 = 1 << 40;

impl TuneRequest {
    /// The throttle is clamped where it is applied (1-99), as before this check existed.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(b) = self.unsent_limit_bytes {
            if !UNSENT_LIMIT_RANGE.contains(&b) {
                return Err(ApiError::bad_request(format!(
                    "unsent_limit_bytes is {b}; it must be between {} and {}",
                    UNSENT_LIMIT_RANGE.start(),
                    UNSENT_LIMIT_RANGE.end()
                )));
            }
        }
        if let Some(d) = self.downtime_limit_ms {
            if !(1..=60_000).contains(&d) {
                return Err(ApiError::bad_request(format!(
                    "downtime_limit_ms is {d}; it must be between 1 and 60000"
                )));
            }
        }
        match self.max_bandwidth_bytes_s {
            None | Some(0) => Ok(()),
            Some(b) if (MIN_TUNE_BANDWIDTH_BYTES_S..=MAX_TUNE_BANDWIDTH_BYTES_S).contains(&b) => {
                Ok(())
            }
            Some(b) => Err(ApiError::bad_request(format!(
                "max_bandwidth_bytes_s is {b}; it must be 0 (no cap) or between \
                 {MIN_TUNE_BANDWIDTH_BYTES_S} and {MAX_TUNE_BANDWIDTH_BYTES_S}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_that_cannot_work_together_are_refused() {
        let ok = |o: MigrationOptions| o.validate().map(|_| ()).map_err(|e| e.message);
        assert!(ok(MigrationOptions::default()).is_ok());
        let bad = [
            MigrationOptions {
                streams: Some(0),
                ..Default::default()
            },
            MigrationOptions {
                streams: Some(17),
                ..Default::default()
            },
            MigrationOptions {
                compression: Some(Compression::Zstd),
                ..Default::default()
            },
            MigrationOptions {
                compression: Some(Compression::Xbzrle),
                streams: Some(4),
                ..Default::default()
            },
            MigrationOptions {
                zero_page: Some(ZeroPage::Multifd),
                ..Default::default()
            },
            MigrationOptions {
                max_throttle_pct: Some(100),
                ..Default::default()
            },
            MigrationOptions {
                postcopy: Some(PostcopyPolicy::Automatic),
                streams: Some(2),
                ..Default::default()
            },
            MigrationOptions {
                completion_timeout_s_per_gib: Some(0),
                ..Default::default()
            },
        ];
        for o in bad {
            assert!(ok(o.clone()).is_err(), "{o:?} should be refused");
        }
        assert!(ok(MigrationOptions {
            streams: Some(4),
            compression: Some(Compression::Zstd),
            zero_page: Some(ZeroPage::Multifd),
            ..Default::default()
        })
        .is_ok());
    }

    #[test]
    fn a_tune_request_s_bandwidth_is_checked_and_defaults_to_unchanged() {
        let old: TuneRequest = serde_json::from_str(r#"{"throttle_pct": 20}"#).unwrap();
        assert_eq!(old.max_bandwidth_bytes_s, None, "absent: left as it is");
        assert!(old.validate().is_ok());
        let ok = |b: u64| {
            TuneRequest {
                max_bandwidth_bytes_s: Some(b),
                ..Default::default()
            }
            .validate()
            .is_ok()
        };
        assert!(ok(0) && ok(1 << 20) && ok(125_000_000) && ok(1 << 40));
        assert!(!ok(1) && !ok((1 << 20) - 1) && !ok((1 << 40) + 1) && !ok(u64::MAX));
        assert!(serde_json::from_str::<TuneRequest>(r#"{"max_bandwidth": 5}"#).is_err());
    }

    #[test]
    fn a_migration_s_own_options_win_over_the_defaults() {
        let defaults = MigrationOptions {
            downtime_limit_ms: Some(200),
            max_throttle_pct: Some(80),
            streams: Some(4),
            keep_source: true,
            ..Default::default()
        };
        let own = MigrationOptions {
            streams: Some(2),
            force: true,
            ..Default::default()
        };
        let m = own.with_defaults(&defaults);
        assert_eq!(m.streams, Some(2));
        assert_eq!(m.downtime_limit_ms, Some(200));
        assert_eq!(m.max_throttle_pct, Some(80));
        assert!(
            m.force && !m.keep_source,
            "per-migration flags are not defaulted"
        );
    }

    #[test]
    fn settings_map_to_qemu_capabilities() {
        let s = StreamSettings::from_options(
            &MigrationOptions {
                streams: Some(4),
                compression: Some(Compression::Zstd),
                max_throttle_pct: Some(80),
                ..Default::default()
            },
            1 << 30,
        );
        let caps = s.capabilities();
        for (cap, on) in [
            ("multifd", true),
            ("postcopy-ram", false),
            ("return-path", false),
            ("auto-converge", true),
            ("xbzrle", false),
        ] {
            assert!(caps.contains(&(cap, on)), "{cap}: {caps:?}");
        }
        let pc = StreamSettings::from_options(
            &MigrationOptions {
                postcopy: Some(PostcopyPolicy::Allowed),
                ..Default::default()
            },
            1 << 30,
        );
        for cap in ["postcopy-ram", "return-path"] {
            assert!(pc.capabilities().contains(&(cap, true)), "{cap}");
        }
        let x = StreamSettings::from_options(
            &MigrationOptions {
                compression: Some(Compression::Xbzrle),
                ..Default::default()
            },
            1 << 30,
        );
        assert_eq!(x.xbzrle_cache_bytes, 256 << 20);
        assert!(x.capabilities().contains(&("xbzrle", true)));
    }
}
