//! Frames forwarded from a migration's source to its destination: the frames that reached
//! the source's tap while the guest was paused (see `ferry_agent::frames`), and what each
//! side measured of the switch-over on its taps.

use serde::{Deserialize, Serialize};

/// Bytes of the virtio-net header that precedes every forwarded frame (`struct
/// virtio_net_hdr`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset). It keeps
/// what the kernel knows of a frame whose checksum is left to the receiver, or that is a
/// GSO super-frame, so the destination can hand it to its tap unchanged.
pub const VNET_HDR_LEN: usize = 10;
/// The largest frame accepted: a 64 KiB GSO super-frame plus its Ethernet header.
pub const MAX_FRAME_BYTES: usize = 65_536 + 14;
/// The most frames in one batch.
pub const MAX_FRAMES_PER_BATCH: usize = 256;
/// The most frame bytes in one batch (before base64), below the agent's body limit.
pub const MAX_BATCH_BYTES: usize = 512 << 10;

/// `POST /v1/vms/{name}/frames`: sent by the source's agent to the destination's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameBatch {
    /// Which of the VM's NICs (index into its spec's NICs) the frames are for.
    pub nic: u32,
    /// Each frame base64-encoded: [`VNET_HDR_LEN`] bytes of virtio-net header, then the
    /// Ethernet frame.
    pub frames: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameBatchAnswer {
    /// Frames handed to the guest's tap.
    pub injected: u64,
}

/// `GET /v1/vms/{name}/frames?wait_ms=N`: what this side saw of the switch-over on the VM's
/// taps. The answer waits up to `wait_ms` for the side to be `settled`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameReport {
    /// `source` or `destination`.
    pub side: String,
    /// Source: the last IP frame the guest sent on its taps, Unix ms.
    pub last_guest_frame_unix_ms: Option<u64>,
    /// Destination: the first IP frame the guest sent on its taps, Unix ms.
    pub first_guest_frame_unix_ms: Option<u64>,
    /// Whether forwarding was asked for.
    pub forwarding: bool,
    /// Source: frames drained and sent to the destination.
    pub forwarded: u64,
    /// Destination: frames handed to the guest's taps.
    pub injected: u64,
    /// Destination: frames refused (bad length or a MAC not the VM's).
    pub refused: u64,
    /// Source: how long the drain lasted, ms.
    pub drain_ms: u64,
    /// Nothing more will change (the drain ended; the first frame was seen or waited for).
    pub settled: bool,
    /// Why something did not happen, when it did not.
    pub note: Option<String>,
}
