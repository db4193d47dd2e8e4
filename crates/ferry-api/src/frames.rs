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
    /// Frames handed to the guest's tap, or kept for it until the guest resumes.
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

/// The migration report's network part from what the two sides saw: None when neither
/// side has a record (no NIC, or agents that do not time frames) or no frame was seen.
pub fn network_report(
    source: Option<&FrameReport>,
    destination: Option<&FrameReport>,
) -> Option<crate::NetworkReport> {
    let last = source.and_then(|s| s.last_guest_frame_unix_ms);
    let first = destination.and_then(|d| d.first_guest_frame_unix_ms);
    let forwarded = source.map(|s| s.forwarded).unwrap_or(0);
    if last.is_none() && first.is_none() && forwarded == 0 {
        return None;
    }
    let mut note = source
        .and_then(|s| s.note.clone())
        .or_else(|| destination.and_then(|d| d.note.clone()));
    let client_gap_ms = match (last, first) {
        (Some(l), Some(f)) if f >= l => Some(f - l),
        (Some(_), Some(_)) => {
            // The destination's first frame before the source's last: the two hosts'
            // clocks disagree by more than the gap.
            note.get_or_insert("the hosts' clocks disagree; no gap measured".into());
            None
        }
        _ => None,
    };
    Some(crate::NetworkReport {
        client_gap_ms,
        source_last_frame_unix_ms: last,
        destination_first_frame_unix_ms: first,
        forwarding: source.or(destination).is_some_and(|r| r.forwarding),
        frames_forwarded: forwarded,
        frames_injected: destination
            .map(|d| d.injected)
            .or(source.map(|s| s.injected))
            .unwrap_or(0),
        drain_ms: source.map(|s| s.drain_ms).unwrap_or(0),
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(last: Option<u64>, first: Option<u64>, forwarded: u64, injected: u64) -> FrameReport {
        FrameReport {
            last_guest_frame_unix_ms: last,
            first_guest_frame_unix_ms: first,
            forwarding: true,
            forwarded,
            injected,
            settled: true,
            ..Default::default()
        }
    }

    #[test]
    fn the_gap_is_the_destinations_first_frame_minus_the_sources_last() {
        let s = side(Some(1_000), None, 12, 12);
        let d = side(None, Some(1_180), 0, 11);
        let n = network_report(Some(&s), Some(&d)).unwrap();
        assert_eq!(n.client_gap_ms, Some(180));
        assert_eq!(n.frames_forwarded, 12);
        assert_eq!(n.frames_injected, 11, "the destination's own count wins");
        assert!(n.forwarding);
        assert_eq!(n.note, None);
    }

    #[test]
    fn no_record_or_no_frame_is_no_report_and_skewed_clocks_are_said() {
        assert_eq!(network_report(None, None), None);
        let quiet = side(None, None, 0, 0);
        assert_eq!(network_report(Some(&quiet), Some(&quiet)), None);
        let s = side(Some(2_000), None, 0, 0);
        let d = side(None, Some(1_990), 0, 0);
        let n = network_report(Some(&s), Some(&d)).unwrap();
        assert_eq!(n.client_gap_ms, None);
        assert!(n.note.unwrap().contains("clocks"));
        let only_source = network_report(Some(&s), None).unwrap();
        assert_eq!(only_source.client_gap_ms, None);
        assert_eq!(only_source.source_last_frame_unix_ms, Some(2_000));
    }
}
