//! Serde types for the QMP commands this crate wraps.
//!
//! Only the fields Ferry uses are modelled, under QEMU's names (QAPI schema of QEMU 10.0:
//! `qapi/control.json`, `run-state.json`, `migration.json`, `machine.json`, `machine-target.json`,
//! `sockets.json`, `block-core.json`). Unknown fields are ignored, and enums keep values they do
//! not know in an `Other` variant, so a newer QEMU does not break decoding.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A QAPI string enum with a fallback for values this crate does not know.
macro_rules! qapi_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this crate does not know (from a newer QEMU).
            Other(String),
        }

        impl $name {
            /// The name QEMU uses on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $wire, )*
                    $name::Other(other) => other,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( $wire => $name::$variant, )*
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                Ok($name::from(&*s))
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Greeting, version, status

/// QEMU's version triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Reply of `query-version`, also part of the greeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub qemu: QemuVersion,
    /// Distribution package string, e.g. `Debian 1:10.0.2+ds-2+deb13u1~bpo12+1`; may be empty.
    #[serde(default)]
    pub package: String,
}

/// The QMP greeting (`{"QMP": {...}}`) QEMU sends on connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greeting {
    pub version: VersionInfo,
    /// Capabilities QEMU offers (`oob`); this client enables none of them.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

qapi_enum! {
    /// The VM's run state (`RunState`).
    pub enum RunState {
        Debug = "debug",
        /// Waiting for an incoming migration (`-incoming`).
        InMigrate = "inmigrate",
        InternalError = "internal-error",
        IoError = "io-error",
        Paused = "paused",
        /// Stopped after migrating its state away.
        PostMigrate = "postmigrate",
        /// Started with `-S`, not yet run.
        Prelaunch = "prelaunch",
        /// Stopped to finish a migration (the switch-over).
        FinishMigrate = "finish-migrate",
        RestoreVm = "restore-vm",
        Running = "running",
        SaveVm = "save-vm",
        Shutdown = "shutdown",
        Suspended = "suspended",
        Watchdog = "watchdog",
        GuestPanicked = "guest-panicked",
        Colo = "colo",
    }
}

/// Reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// True if the vCPUs are running.
    pub running: bool,
    pub status: RunState,
}

/// Reply of `query-kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmInfo {
    /// KVM is in use for this VM.
    pub enabled: bool,
    /// This QEMU binary supports KVM.
    pub present: bool,
}

/// Arguments of `announce-self` (`AnnounceParameters`). QEMU 10 requires all four timing
/// fields; [`Default`] gives QEMU's defaults (the `announce-*` migration parameters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceParameters {
    /// Delay before the first announcement, ms.
    pub initial: u64,
    /// Maximum delay between announcements, ms.
    pub max: u64,
    /// Number of self-announcement rounds.
    pub rounds: u64,
    /// Increase of the delay per round, ms.
    pub step: u64,
    /// Restrict to these network interfaces (netdev ids); all if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    /// Names this announce timer, so a new call with the same id replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Default for AnnounceParameters {
    fn default() -> Self {
        AnnounceParameters {
            initial: 50,
            max: 550,
            rounds: 5,
            step: 100,
            interfaces: None,
            id: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Migration

qapi_enum! {
    /// Migration status (`MigrationStatus`), as in `query-migrate` and the `MIGRATION` event.
    pub enum MigrationStatus {
        None = "none",
        Setup = "setup",
        Cancelling = "cancelling",
        Cancelled = "cancelled",
        Active = "active",
        PostcopyActive = "postcopy-active",
        PostcopyPaused = "postcopy-paused",
        PostcopyRecoverSetup = "postcopy-recover-setup",
        PostcopyRecover = "postcopy-recover",
        Completed = "completed",
        Failed = "failed",
        Colo = "colo",
        /// Paused before switch-over (`pause-before-switchover` capability); continue with
        /// `migrate-continue`.
        PreSwitchover = "pre-switchover",
        /// Migrating device state (after pre-switchover).
        Device = "device",
        WaitUnplug = "wait-unplug",
    }
}

impl MigrationStatus {
    /// `completed`, `failed` or `cancelled`: nothing will change any more.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }
}

/// RAM statistics of `query-migrate` (`MigrationStats`). Counters are bytes unless said otherwise.
/// Missing fields read as 0 (QEMU has added and removed some over the years).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct RamStats {
    /// Bytes sent so far (all channels).
    pub transferred: u64,
    /// Bytes still to send (an estimate while dirty pages keep coming).
    pub remaining: u64,
    /// Guest RAM size.
    pub total: u64,
    /// Pages found to be zero (sent as a flag only).
    pub duplicate: u64,
    /// Pages sent in full.
    pub normal: u64,
    pub normal_bytes: u64,
    /// Pages dirtied per second.
    pub dirty_pages_rate: u64,
    /// Throughput, megabits per second.
    pub mbps: f64,
    /// Number of dirty-bitmap synchronizations (≈ passes).
    pub dirty_sync_count: u64,
    /// Page requests from the destination during post-copy.
    pub postcopy_requests: u64,
    /// Target page size.
    pub page_size: u64,
    pub multifd_bytes: u64,
    pub pages_per_second: u64,
    pub precopy_bytes: u64,
    pub downtime_bytes: u64,
    pub postcopy_bytes: u64,
    pub dirty_sync_missed_zero_copy: u64,
}

/// XBZRLE cache statistics of `query-migrate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct XbzrleCacheStats {
    pub cache_size: u64,
    pub bytes: u64,
    pub pages: u64,
    pub cache_miss: u64,
    pub cache_miss_rate: f64,
    pub encoding_rate: f64,
    pub overflow: u64,
}

/// VFIO device state statistics of `query-migrate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct VfioStats {
    pub transferred: u64,
}

/// Reply of `query-migrate` (`MigrationInfo`). Which fields are present depends on the status and
/// on the side (source or destination).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// Absent before any migration was started on this QEMU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MigrationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<RamStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xbzrle_cache: Option<XbzrleCacheStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio: Option<VfioStats>,
    /// Milliseconds since the migration started (total, once finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time: Option<u64>,
    /// Estimated downtime while active, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_downtime: Option<u64>,
    /// Actual downtime once completed, ms (QEMU's own measure: stop to end of transfer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<u64>,
    /// Time spent in the setup phase, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_time: Option<u64>,
    /// Current auto-converge throttle, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_percentage: Option<u64>,
    /// Why it failed (status `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_desc: Option<String>,
    /// Why migration is not possible right now (e.g. a device that blocks migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_reasons: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcopy_blocktime: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcopy_vcpu_blocktime: Option<Vec<u64>>,
    /// Destination only: where `migrate-incoming` listens, with the real port when port 0 was
    /// asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_address: Option<Vec<SocketAddress>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_limit_throttle_time_per_round: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_limit_ring_full_time: Option<u64>,
}

impl MigrationInfo {
    /// The first TCP port in `socket-address` (where the destination listens).
    pub fn listening_port(&self) -> Option<u16> {
        self.socket_address.iter().flatten().find_map(|a| match a {
            SocketAddress::Inet(inet) => inet.port.parse().ok(),
            _ => None,
        })
    }
}

/// An IP socket address (`InetSocketAddress`). The port is a string in QAPI (it may be a
/// service name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InetSocketAddress {
    pub host: String,
    pub port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric: Option<bool>,
    /// Try ports up to this one if `port` is busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mptcp: Option<bool>,
}

impl InetSocketAddress {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        InetSocketAddress {
            host: host.into(),
            port: port.to_string(),
            ..Default::default()
        }
    }
}

/// A socket address (`SocketAddress`, flat union on `type`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SocketAddress {
    Inet(InetSocketAddress),
    Unix {
        path: String,
    },
    Vsock {
        cid: String,
        port: String,
    },
    /// A file descriptor passed with `getfd`, by name.
    Fd {
        #[serde(rename = "str")]
        name: String,
    },
}

/// Where a migration stream goes (`MigrationAddress`, flat union on `transport`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "transport", rename_all = "lowercase")]
pub enum MigrationAddress {
    Socket(SocketAddress),
    Exec { args: Vec<String> },
    Rdma(InetSocketAddress),
    File { filename: String, offset: u64 },
}

qapi_enum! {
    /// `MigrationChannelType`.
    pub enum MigrationChannelType {
        Main = "main",
        /// CPR transfer side channel.
        Cpr = "cpr",
    }
}

/// One channel of `migrate` / `migrate-incoming` (`MigrationChannel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationChannel {
    pub channel_type: MigrationChannelType,
    pub addr: MigrationAddress,
}

impl MigrationChannel {
    /// The main channel over TCP.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        MigrationChannel {
            channel_type: MigrationChannelType::Main,
            addr: MigrationAddress::Socket(SocketAddress::Inet(InetSocketAddress::new(host, port))),
        }
    }
}

/// Arguments of `migrate`: exactly one of `uri` and `channels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrateArgs {
    /// E.g. `tcp:HOST:PORT`, `unix:PATH`, `exec:CMD`, `file:PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<MigrationChannel>>,
    /// Resume a paused post-copy migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<bool>,
}

/// Arguments of `migrate-incoming`: exactly one of `uri` and `channels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrateIncomingArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<MigrationChannel>>,
    /// QEMU's default (`true`) makes the destination QEMU exit when the incoming migration
    /// fails; with `false` it stays, reports `failed` in `query-migrate` and can be told to quit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_on_error: Option<bool>,
}

/// One entry of `query-migrate-capabilities` / `migrate-set-capabilities`
/// (`MigrationCapabilityStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCapabilityStatus {
    /// E.g. `events`, `multifd`, `postcopy-ram`, `auto-converge`, `xbzrle`, `return-path`,
    /// `pause-before-switchover`, `dirty-bitmaps`, `late-block-activate`, `switchover-ack`.
    pub capability: String,
    pub state: bool,
}

qapi_enum! {
    /// `MultiFDCompression` (`qatzip`, `qpl`, `uadk` exist only in builds with those libraries).
    pub enum MultifdCompression {
        None = "none",
        Zlib = "zlib",
        Zstd = "zstd",
        Qatzip = "qatzip",
        Qpl = "qpl",
        Uadk = "uadk",
    }
}

qapi_enum! {
    /// `ZeroPageDetection`.
    pub enum ZeroPageDetection {
        None = "none",
        Legacy = "legacy",
        Multifd = "multifd",
    }
}

qapi_enum! {
    /// `MigMode`.
    pub enum MigMode {
        Normal = "normal",
        CprReboot = "cpr-reboot",
        CprTransfer = "cpr-transfer",
    }
}

/// Dirty-bitmap alias of `block-bitmap-mapping` (`BitmapMigrationNodeAlias`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BitmapMigrationNodeAlias {
    pub node_name: String,
    pub alias: String,
    pub bitmaps: Vec<BitmapMigrationBitmapAlias>,
}

/// Bitmap entry of [`BitmapMigrationNodeAlias`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapMigrationBitmapAlias {
    pub name: String,
    pub alias: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Value>,
}

/// Migration parameters: argument of `migrate-set-parameters` (only the `Some` fields are sent
/// and changed) and reply of `query-migrate-parameters` (all fields present).
///
/// Units: bandwidths in bytes per second, times in milliseconds, throttles in percent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_initial: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_rounds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_step: Option<u64>,
    /// Percentage of dirtied vs transferred bytes in a period that triggers throttling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_trigger_threshold: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_initial: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_increment: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttle_tailslow: Option<bool>,
    /// TLS credentials object id; `""` disables TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_creds: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_authz: Option<String>,
    /// Bytes per second; 0 = unlimited (QEMU's default is 128 MiB/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
    /// Bandwidth available for the switch-over, used to estimate downtime (bytes/s; 0 = measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avail_switchover_bandwidth: Option<u64>,
    /// Maximum tolerated downtime, ms (QEMU's default is 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multifd_channels: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xbzrle_cache_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_postcopy_bandwidth: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu_throttle: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multifd_compression: Option<MultifdCompression>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multifd_zlib_level: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multifd_qatzip_level: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multifd_zstd_level: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_bitmap_mapping: Option<Vec<BitmapMigrationNodeAlias>>,
    /// Dirty page rate limit per vCPU, MB/s (`dirty-limit` capability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_dirty_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MigMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_page_detection: Option<ZeroPageDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_io: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// CPUs and machines

/// One entry of `query-cpu-definitions` (`CpuDefinitionInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuDefinitionInfo {
    pub name: String,
    /// Whether the model's definition is stable across QEMU versions and hosts (absent on some
    /// targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_safe: Option<bool>,
    /// Static models never change with the machine type.
    #[serde(rename = "static")]
    pub is_static: bool,
    /// Features this host/accelerator cannot provide, making the model unusable here; absent if
    /// QEMU cannot tell, empty if usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_features: Option<Vec<String>>,
    #[serde(default)]
    pub typename: String,
    /// For an alias, the versioned model it resolves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_of: Option<String>,
    #[serde(default)]
    pub deprecated: bool,
}

/// A CPU model with property overrides (`CpuModelInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuModelInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub props: Option<Map<String, Value>>,
}

impl CpuModelInfo {
    pub fn named(name: impl Into<String>) -> Self {
        CpuModelInfo {
            name: name.into(),
            props: None,
        }
    }
}

qapi_enum! {
    /// `CpuModelExpansionType`.
    pub enum CpuModelExpansionType {
        /// Expand to a static base model plus property changes.
        Static = "static",
        /// Expand to the model with all properties.
        Full = "full",
    }
}

/// Reply of `query-cpu-model-expansion`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuModelExpansionInfo {
    pub model: CpuModelInfo,
}

/// One entry of `query-machines` (`MachineInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MachineInfo {
    /// Versioned name, e.g. `pc-q35-10.0`.
    pub name: String,
    /// Unversioned alias, e.g. `q35`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// QEMU omits it unless true.
    #[serde(default)]
    pub is_default: bool,
    #[serde(default)]
    pub cpu_max: u64,
    #[serde(default)]
    pub deprecated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cpu_type: Option<String>,
}

/// Topology of a vCPU (`CpuInstanceProperties`, subset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInstanceProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub die_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<u64>,
}

/// One entry of `query-cpus-fast` (`CpuInfoFast`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInfoFast {
    pub cpu_index: u64,
    pub qom_path: String,
    /// Host thread id (TID) of the vCPU thread (for pinning, `taskset`, per-thread stats).
    pub thread_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub props: Option<CpuInstanceProperties>,
    /// Target architecture, e.g. `x86_64`.
    #[serde(default)]
    pub target: String,
}

// ---------------------------------------------------------------------------------------------
// Block

/// Image information of a block node (`BlockDeviceInfo`, subset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockDeviceInfo {
    /// File name (or JSON description) of the image.
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub ro: bool,
    /// Format driver, e.g. `qcow2`, `raw`, `file`, `nbd`.
    pub drv: String,
    #[serde(
        rename = "backing_file",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backing_file: Option<String>,
    #[serde(rename = "backing_file_depth", default)]
    pub backing_file_depth: u64,
    /// False while the node is inactive (e.g. on the destination before the migration ends).
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub encrypted: bool,
}

fn yes() -> bool {
    true
}

/// One entry of `query-block` (`BlockInfo`, subset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockInfo {
    /// The legacy device (drive) name; empty for `-blockdev` based devices.
    pub device: String,
    /// The qdev id or QOM path of the guest device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub removable: bool,
    #[serde(default)]
    pub locked: bool,
    /// The medium, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserted: Option<BlockDeviceInfo>,
    /// `ok`, `failed` or `nospace` (with `werror`/`rerror` = stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_status: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Dirty page rate (`calc-dirty-rate`, `query-dirty-rate`)

qapi_enum! {
    /// `DirtyRateStatus`: where the last `calc-dirty-rate` is.
    pub enum DirtyRateStatus {
        Unstarted = "unstarted",
        Measuring = "measuring",
        Measured = "measured",
    }
}

qapi_enum! {
    /// `DirtyRateMeasureMode`. Page sampling hashes a few pages per GiB and needs nothing
    /// of the accelerator; dirty-ring needs KVM's dirty ring, and the dirty bitmap
    /// cannot be used while a migration runs.
    pub enum DirtyRateMeasureMode {
        PageSampling = "page-sampling",
        DirtyRing = "dirty-ring",
        DirtyBitmap = "dirty-bitmap",
    }
}

/// The largest dirty rate taken as real, MiB/s (1 TiB/s: far above any memory bus).
pub const MAX_DIRTY_RATE_MIB_S: i64 = 1 << 20;

/// `query-dirty-rate`: the result of the most recent `calc-dirty-rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DirtyRateInfo {
    /// MiB/s; present once measured.
    #[serde(default)]
    pub dirty_rate: Option<i64>,
    pub status: DirtyRateStatus,
    #[serde(default)]
    pub start_time: Option<i64>,
    /// How long it measured, in `calc_time_unit` (seconds when absent).
    #[serde(default)]
    pub calc_time: Option<i64>,
    #[serde(default)]
    pub calc_time_unit: Option<String>,
    #[serde(default)]
    pub sample_pages: Option<u64>,
    #[serde(default)]
    pub mode: Option<DirtyRateMeasureMode>,
}

impl DirtyRateInfo {
    /// The measured rate, MiB/s; `Ok(None)` while QEMU still measures. QEMU's reply is
    /// not trusted: a measurement that never started, a "measured" without a rate, a
    /// negative or implausible rate, or a status this crate does not know is an error.
    pub fn rate_mib_s(&self) -> Result<Option<u64>, String> {
        match (&self.status, self.dirty_rate) {
            (DirtyRateStatus::Measuring, _) => Ok(None),
            (DirtyRateStatus::Measured, Some(r)) if (0..=MAX_DIRTY_RATE_MIB_S).contains(&r) => {
                Ok(Some(r as u64))
            }
            (DirtyRateStatus::Measured, Some(r)) => Err(format!(
                "QEMU reports a dirty rate of {r} MiB/s, outside 0..={MAX_DIRTY_RATE_MIB_S}"
            )),
            (DirtyRateStatus::Measured, None) => {
                Err("QEMU reports the dirty rate measured but gives no rate".into())
            }
            (DirtyRateStatus::Unstarted, _) => {
                Err("QEMU reports no dirty rate measurement started".into())
            }
            (DirtyRateStatus::Other(s), _) => {
                Err(format!("QEMU reports an unknown dirty rate status '{s}'"))
            }
        }
    }

    /// How long the measurement ran, milliseconds (None: a unit this crate does not know,
    /// or no or a negative time).
    pub fn calc_time_ms(&self) -> Option<u64> {
        let t = u64::try_from(self.calc_time?).ok()?;
        match self.calc_time_unit.as_deref() {
            None | Some("second") => t.checked_mul(1000),
            Some("millisecond") => Some(t),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn enums_round_trip_and_keep_unknown_values() {
        let s: RunState = serde_json::from_value(json!("finish-migrate")).unwrap();
        assert_eq!(s, RunState::FinishMigrate);
        let s: RunState = serde_json::from_value(json!("brand-new")).unwrap();
        assert_eq!(s, RunState::Other("brand-new".into()));
        assert_eq!(serde_json::to_value(&s).unwrap(), json!("brand-new"));
        assert_eq!(
            serde_json::to_value(MigrationStatus::PostcopyRecoverSetup).unwrap(),
            json!("postcopy-recover-setup")
        );
    }

    #[test]
    fn migration_parameters_send_only_what_is_set() {
        let p = MigrationParameters {
            downtime_limit: Some(500),
            max_bandwidth: Some(0),
            multifd_compression: Some(MultifdCompression::Zstd),
            cpu_throttle_tailslow: Some(true),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"downtime-limit": 500, "max-bandwidth": 0,
                   "multifd-compression": "zstd", "cpu-throttle-tailslow": true})
        );
    }

    #[test]
    fn migration_info_with_socket_address() {
        let info: MigrationInfo = serde_json::from_value(json!({
            "status": "setup",
            "socket-address": [{"port": "40123", "ipv4": true, "host": "127.0.0.1", "type": "inet"}]
        }))
        .unwrap();
        assert_eq!(info.status, Some(MigrationStatus::Setup));
        assert_eq!(info.listening_port(), Some(40123));
        assert!(info.ram.is_none());
    }

    #[test]
    fn migration_channel_wire_format() {
        let ch = MigrationChannel::tcp("10.0.0.2", 4444);
        assert_eq!(
            serde_json::to_value(&ch).unwrap(),
            json!({"channel-type": "main",
                   "addr": {"transport": "socket", "type": "inet",
                            "host": "10.0.0.2", "port": "4444"}})
        );
        let back: MigrationChannel =
            serde_json::from_value(serde_json::to_value(&ch).unwrap()).unwrap();
        assert_eq!(back, ch);
        let file = MigrationAddress::File {
            filename: "/tmp/x".into(),
            offset: 0,
        };
        assert_eq!(
            serde_json::to_value(&file).unwrap(),
            json!({"transport": "file", "filename": "/tmp/x", "offset": 0})
        );
    }

    #[test]
    fn dirty_rate_replies_are_checked() {
        let info = |v: serde_json::Value| serde_json::from_value::<DirtyRateInfo>(v).unwrap();
        let measured = info(
            json!({"status": "measured", "sample-pages": 512, "dirty-rate": 108,
            "mode": "page-sampling", "start-time": 3665220, "calc-time": 1,
            "calc-time-unit": "second"}),
        );
        assert_eq!(measured.rate_mib_s(), Ok(Some(108)));
        assert_eq!(measured.calc_time_ms(), Some(1000));
        assert_eq!(measured.mode, Some(DirtyRateMeasureMode::PageSampling));
        let measuring = info(json!({"status": "measuring", "start-time": 1, "calc-time": 1}));
        assert_eq!(measuring.rate_mib_s(), Ok(None));
        for bad in [
            json!({"status": "measured"}),
            json!({"status": "measured", "dirty-rate": -1}),
            json!({"status": "measured", "dirty-rate": MAX_DIRTY_RATE_MIB_S + 1}),
            json!({"status": "unstarted", "dirty-rate": 5}),
            json!({"status": "guessed", "dirty-rate": 5}),
        ] {
            assert!(info(bad.clone()).rate_mib_s().is_err(), "{bad}");
        }
        // Shapes QEMU never sends do not decode at all.
        for bad in [
            json!({"dirty-rate": 5}),
            json!({"status": "measured", "dirty-rate": "5"}),
        ] {
            assert!(serde_json::from_value::<DirtyRateInfo>(bad).is_err());
        }
        let ms = info(
            json!({"status": "measured", "dirty-rate": 0, "calc-time": 500,
            "calc-time-unit": "millisecond"}),
        );
        assert_eq!(ms.calc_time_ms(), Some(500));
        assert_eq!(
            info(json!({"status": "measured", "calc-time": -1})).calc_time_ms(),
            None
        );
    }
}
