//! The agent's part in [`crate::frames`]: a session per migrating VM with a NIC on each
//! side, the source's drain after QEMU completed, the destination's route for the frames,
//! and the report the server asks for after the switch-over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use ferry_api::client::AgentClient;
use ferry_api::frames::{MAX_BATCH_BYTES, MAX_FRAMES_PER_BATCH, MAX_FRAME_BYTES, VNET_HDR_LEN};
use ferry_api::{
    validate_name, FrameBatch, FrameBatchAnswer, FrameReport, IncomingRequest, OutgoingRequest,
};
use ferry_qmp::{MigrationStatus, QmpEvent};
use tokio::sync::broadcast;

use crate::error::AgentError;
use crate::frames::{parse_mac, unix_us, DrainWindow, Held, Session, Side, Tap, DRAIN_MAX};
use crate::frames_sys::ifindex;
use crate::host::Agent;
use crate::runtime::QemuVm;

/// Who sent a request, as the HTTP edge saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `--insecure`: no identities; anyone who reaches the agent.
    Anyone,
    Server,
    Host(String),
}

/// How long the source waits for the destination's answer to one batch.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

impl Agent {
    /// The VM's taps with their interface index and MAC; empty without NICs (or when a
    /// tap cannot be found, which is said in the log: the VM then runs without this).
    fn taps_of(&self, vm: &QemuVm) -> Vec<Tap> {
        let rec = vm.record();
        let mut taps = Vec::new();
        for (i, name) in rec.taps.iter().enumerate() {
            let mac = rec
                .spec
                .nics
                .get(i)
                .and_then(|n| n.mac.clone())
                .unwrap_or_else(|| ferry_api::stable_mac(&rec.spec.name, i));
            let (Some(mac), Ok(index)) = (parse_mac(&mac), ifindex(name)) else {
                tracing::warn!(vm = %vm.name, tap = %name, "frames: tap or MAC not usable");
                return Vec::new();
            };
            taps.push(Tap::new(name.clone(), index, mac));
        }
        taps
    }

    /// A client for host `peer`'s agent, from the peers the server names with each lease.
    fn peer_client(&self, peer: Option<&str>) -> Result<AgentClient, String> {
        let peer = peer.ok_or("the request does not name the destination host")?;
        let info = self
            .ha
            .peers()
            .into_iter()
            .find(|p| p.name == peer)
            .ok_or_else(|| format!("host {peer} is not among the peers the server named"))?;
        let client = match &self.identity {
            Some(id) => {
                AgentClient::connect(&info.url, &info.name, &id.credentials(), SEND_TIMEOUT)
            }
            None => AgentClient::with_timeout(&info.url, SEND_TIMEOUT),
        };
        client.map_err(|e| format!("cannot reach {peer}'s agent: {e}"))
    }

    /// Source, the stream just started: time the guest's frames; once QEMU completed,
    /// drain and forward. `events` was subscribed before `migrate`, so no event is missed.
    pub(crate) fn frames_outgoing(
        &self,
        vm: &Arc<QemuVm>,
        req: &OutgoingRequest,
        events: broadcast::Receiver<QmpEvent>,
    ) {
        let taps = self.taps_of(vm);
        if taps.is_empty() {
            return;
        }
        let forwarding = req.stream.forward_frames;
        let s = Session::new(Side::Source, req.peer_host.clone(), forwarding, taps);
        self.frames.open(&vm.name, s.clone());
        s.start_captures();
        let client = if forwarding {
            self.peer_client(req.peer_host.as_deref())
        } else {
            Err("frame forwarding is off for this migration".into())
        };
        tokio::spawn(drain_when_completed(s, vm.clone(), events, client));
    }

    /// Destination, its QEMU waits for the stream: time the guest's first frame here, take
    /// frames from the source until shortly after the guest resumed.
    pub(crate) fn frames_incoming(&self, vm: &Arc<QemuVm>, req: &IncomingRequest) {
        let taps = self.taps_of(vm);
        if taps.is_empty() {
            return;
        }
        let s = Session::new(
            Side::Destination,
            req.peer_host.clone(),
            req.stream.forward_frames,
            taps,
        );
        self.frames.open(&vm.name, s.clone());
        s.start_captures();
        let mut events = vm.qmp.events();
        tokio::spawn(async move {
            // Ends at RESUME, when QEMU's monitor closes, or when the session is closed.
            while !s.stopped() {
                let tick = tokio::time::sleep(Duration::from_secs(1));
                tokio::select! {
                    r = events.recv() => match r {
                        Ok(e) if e.event == ferry_qmp::event_names::RESUME => {
                            s.mark_resumed();
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                        _ => {}
                    },
                    _ = tick => {}
                }
            }
        });
    }

    /// Destination: frames for the guest from the VM's source host.
    pub async fn accept_frames(
        &self,
        name: &str,
        caller: &Caller,
        batch: &FrameBatch,
    ) -> Result<FrameBatchAnswer, AgentError> {
        validate_name("VM name", name)?;
        let here = &self.config.name;
        let s = self
            .frames
            .get(name)
            .filter(|s| s.side == Side::Destination)
            .ok_or_else(|| {
                AgentError::forbidden(format!("VM '{name}' is not migrating to host {here}"))
            })?;
        match caller {
            Caller::Anyone => {}
            Caller::Host(h) if s.peer.as_deref() == Some(h.as_str()) => {}
            Caller::Host(h) => {
                return Err(AgentError::forbidden(format!(
                    "host {h} is not the source of VM '{name}'; only it may send its frames"
                )))
            }
            Caller::Server => {
                return Err(AgentError::forbidden(
                    "frames come from the VM's source host, not from the server",
                ))
            }
        }
        if !s.forwarding {
            return Err(AgentError::refused(format!(
                "frame forwarding is off for VM '{name}''s migration"
            )));
        }
        if !s.accepting() {
            return Err(AgentError::refused(format!(
                "VM '{name}' resumed on host {here} more than {} s ago; frames are no longer \
                 taken",
                crate::frames::RESUME_GRACE.as_secs()
            )));
        }
        let vm = self.find(name).await?;
        if !vm.is_running_process() {
            return Err(AgentError::refused(format!(
                "VM '{name}''s QEMU is not running on host {here}"
            )));
        }
        let frames = decode(batch)?;
        let injected = s
            .inject(batch.nic as usize, &frames)
            .map_err(AgentError::bad_request)?;
        Ok(FrameBatchAnswer { injected })
    }

    /// Either side: what the taps showed, once settled or after `wait_ms`.
    pub async fn frame_report(&self, name: &str, wait_ms: u64) -> Result<FrameReport, AgentError> {
        validate_name("VM name", name)?;
        let s = self.frames.get(name).ok_or_else(|| {
            AgentError::not_found(format!(
                "no frame record of VM '{name}' on host {} (no NIC, or not migrating)",
                self.config.name
            ))
        })?;
        s.settled_within(Duration::from_millis(wait_ms.min(10_000)))
            .await;
        Ok(s.report())
    }

    /// Source, before its QEMU goes: let the drain finish (it holds the tap's queue).
    pub(crate) async fn frames_drained(&self, name: &str) {
        if let Some(s) = self.frames.get(name) {
            s.settled_within(DRAIN_MAX + Duration::from_secs(2)).await;
        }
    }
}

/// Every frame of a batch decoded and bounded; any error refuses the batch.
fn decode(batch: &FrameBatch) -> Result<Vec<Vec<u8>>, AgentError> {
    if batch.frames.len() > MAX_FRAMES_PER_BATCH {
        return Err(AgentError::bad_request(format!(
            "{} frames in one batch; at most {MAX_FRAMES_PER_BATCH}",
            batch.frames.len()
        )));
    }
    let mut total = 0usize;
    let mut out = Vec::with_capacity(batch.frames.len());
    for (i, f) in batch.frames.iter().enumerate() {
        // Base64 is 4/3 of the bytes: a longer text cannot be a frame.
        if f.len() > (VNET_HDR_LEN + MAX_FRAME_BYTES).div_ceil(3) * 4 {
            return Err(AgentError::bad_request(format!("frame {i} is too long")));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(f)
            .map_err(|e| AgentError::bad_request(format!("frame {i} is not base64: {e}")))?;
        total += bytes.len();
        if total > MAX_BATCH_BYTES + VNET_HDR_LEN + MAX_FRAME_BYTES {
            return Err(AgentError::bad_request(format!(
                "the batch holds more than {MAX_BATCH_BYTES} bytes of frames"
            )));
        }
        out.push(bytes);
    }
    Ok(out)
}

/// How far before QEMU's `STOP` time stamp copies count as not delivered: the stamp is
/// taken just after virtio-net stopped receiving; a copy too many is a duplicate TCP
/// ignores, one too few is the loss this is about.
const STOP_MARGIN_US: u64 = 2_000;
/// Held frames older than this at completion are not forwarded.
const STALE_US: u64 = 5_000_000;

/// Follows the migration's events: QEMU's `STOP` of the switch-over starts the hold (a
/// `RESUME` before completion undoes it: the guest got its frames on the source).
fn on_event(s: &Session, r: Result<QmpEvent, broadcast::error::TryRecvError>) -> bool {
    match r {
        Ok(e) if e.event == ferry_qmp::event_names::STOP => {
            if let Some(t) = e.timestamp.since_epoch() {
                let at = u64::try_from(t.as_micros()).unwrap_or(u64::MAX);
                s.hold().start_at(at.saturating_sub(STOP_MARGIN_US));
            }
            true
        }
        Ok(e) if e.event == ferry_qmp::event_names::RESUME => {
            s.hold().resumed();
            true
        }
        Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => true,
        Err(_) => false,
    }
}

/// Waits for QEMU to report the migration completed or in post-copy (never forwards
/// before: until then the source may still run the guest again, and the frames are its
/// own), then sends the copies held since the pause and every later one until the window
/// closes. Only copies are sent: should the destination fail after all, the originals are
/// still in the source tap's queue for its QEMU.
async fn drain_when_completed(
    s: Arc<Session>,
    vm: Arc<QemuVm>,
    mut events: broadcast::Receiver<QmpEvent>,
    client: Result<AgentClient, String>,
) {
    let downtime_ms = loop {
        while on_event(&s, events.try_recv()) {}
        match vm.qmp.query_migrate().await {
            Ok(info) if info.status == Some(MigrationStatus::Completed) => {
                while on_event(&s, events.try_recv()) {}
                break info.downtime.unwrap_or(0);
            }
            Ok(info)
                if info.status == Some(MigrationStatus::PostcopyActive) && s.hold().started() =>
            {
                // Post-copy: the guest stopped here for the last time; from the switch it
                // runs on the destination only (a broken link pauses it there, this side
                // never resumes it), so what reaches this tap is forwarded now, not when the
                // last page has moved seconds later, long after its senders retransmitted.
                break 0;
            }
            Ok(info) if info.status.as_ref().is_some_and(|st| st.is_finished()) => {
                // Failed or cancelled: the guest runs on here and gets its frames itself.
                s.hold().close();
                s.stop();
                return;
            }
            Err(e) if e.is_disconnected() => {
                s.hold().close();
                s.note(format!("QEMU went before its migration completed: {e}"));
                s.settle();
                return;
            }
            _ => {}
        }
        let tick = tokio::time::sleep(Duration::from_millis(100));
        tokio::select! {
            r = events.recv() => {
                if let Ok(e) = r {
                    on_event(&s, Ok(e));
                }
            }
            _ = tick => {}
        }
    };
    let client = match client {
        Ok(c) if s.forwarding => c,
        other => {
            if let (Err(e), true) = (other, s.forwarding) {
                s.note(format!("frames not forwarded: {e}"));
            }
            s.hold().close();
            s.settle();
            return;
        }
    };
    {
        // The STOP event was missed (a lagging subscriber): QEMU's own downtime says when.
        let mut h = s.hold();
        let now = unix_us(std::time::SystemTime::now());
        if !h.started() {
            h.start_at(now.saturating_sub(downtime_ms * 1000 + STOP_MARGIN_US));
        }
        // A pause that ended long ago (post-copy runs the guest on the destination from
        // its switch until the last page): its clients have retransmitted since.
        if h.from_us()
            .is_some_and(|f| now.saturating_sub(f) > STALE_US)
        {
            let stale = h.take().len();
            h.close();
            drop(h);
            s.note(format!(
                "the pause began more than {} s before completion; {stale} held frame(s) \
                 dropped as stale",
                STALE_US / 1_000_000
            ));
            s.settle();
            return;
        }
    }
    let window = DrainWindow::default();
    let started = Instant::now();
    let mut last = started;
    loop {
        let held = s.hold().take();
        if !held.is_empty() {
            last = Instant::now();
            forward(&s, &client, &vm.name, held).await;
            continue;
        }
        let Some(wait) = window.wait(started.elapsed(), last.elapsed()) else {
            break;
        };
        let _ = tokio::time::timeout(wait, s.arrived.notified()).await;
    }
    let dropped = {
        let mut h = s.hold();
        h.close();
        h.dropped
    };
    if dropped > 0 {
        s.note(format!(
            "{dropped} frame(s) beyond the hold's bound were not forwarded"
        ));
    }
    s.facts().drain_ms = started.elapsed().as_millis() as u64;
    tracing::info!(vm = %vm.name, report = ?s.report(), "frames of the pause forwarded");
    s.settle();
}

/// Sends `held` in batches (one NIC each, bounded), in the order captured.
async fn forward(s: &Session, client: &AgentClient, vm: &str, held: Vec<Held>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut rest = held.as_slice();
    while let Some(first) = rest.first() {
        let mut n = 0;
        let mut bytes = 0;
        while let Some(h) = rest.get(n) {
            if h.nic != first.nic
                || n >= MAX_FRAMES_PER_BATCH
                || (n > 0 && bytes + h.frame.len() > MAX_BATCH_BYTES)
            {
                break;
            }
            bytes += h.frame.len();
            n += 1;
        }
        let (batch, after) = rest.split_at(n);
        rest = after;

        let body = FrameBatch {
            nic: first.nic as u32,
            frames: batch.iter().map(|h| b64.encode(&h.frame)).collect(),
        };
        match client.send_frames(vm, &body).await {
            Ok(a) => s.add_forwarded(n as u64, a.injected),
            Err(e) => s.note(format!("the destination did not take {n} frame(s): {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_over_the_bounds_or_not_base64_is_refused_whole() {
        let one = base64::engine::general_purpose::STANDARD.encode([0u8; 80]);
        let many = FrameBatch {
            nic: 0,
            frames: vec![one.clone(); MAX_FRAMES_PER_BATCH + 1],
        };
        assert!(decode(&many).unwrap_err().to_string().contains("at most"));
        let bad = FrameBatch {
            nic: 0,
            frames: vec![one.clone(), "not base64!".into()],
        };
        assert!(decode(&bad).unwrap_err().to_string().contains("frame 1"));
        let long = FrameBatch {
            nic: 0,
            frames: vec!["A".repeat(100_000)],
        };
        assert!(decode(&long).unwrap_err().to_string().contains("too long"));
        let ok = FrameBatch {
            nic: 0,
            frames: vec![one; 3],
        };
        assert_eq!(decode(&ok).unwrap().len(), 3);
    }
}
