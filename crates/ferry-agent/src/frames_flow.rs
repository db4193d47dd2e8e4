//! The agent's part in [`crate::frames`]: a session per migrating VM with a NIC on each
//! side, the source's drain after QEMU completed, the destination's route for the frames,
//! and the report the server asks for after the switch-over.

use std::os::fd::OwnedFd;
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
use crate::frames::{
    as_forwarded, parse_mac, tun_fds_of, DrainWindow, Session, Side, Tap, DRAIN_MAX,
};
use crate::frames_sys::{ifindex, read_nonblocking, take_fd, tun_vnet_hdr_len, wait_readable};
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

/// Waits for QEMU to report the migration completed (never acts before: until then the
/// source may still run the guest again), then drains every tap and sends each batch to
/// the destination as it comes.
async fn drain_when_completed(
    s: Arc<Session>,
    vm: Arc<QemuVm>,
    mut events: broadcast::Receiver<QmpEvent>,
    client: Result<AgentClient, String>,
) {
    loop {
        match vm.qmp.query_migrate().await.map(|i| i.status) {
            Ok(Some(MigrationStatus::Completed)) => break,
            Ok(Some(st)) if st.is_finished() => {
                // Failed or cancelled: the guest runs on here, nothing to forward or time.
                s.stop();
                return;
            }
            Err(e) if e.is_disconnected() => {
                s.note(format!("QEMU went before its migration completed: {e}"));
                s.settle();
                return;
            }
            _ => {}
        }
        next_event(&mut events).await;
    }
    let client = match client {
        Ok(c) if s.forwarding => c,
        Ok(_) => {
            s.settle();
            return;
        }
        Err(e) => {
            if s.forwarding {
                s.note(format!("frames not forwarded: {e}"));
            }
            s.settle();
            return;
        }
    };
    let mut fds = Vec::new();
    for (nic, tap) in s.taps.iter().enumerate() {
        for fd in tun_fds_of(vm.pid(), &tap.name) {
            match take_fd(vm.pid(), fd).and_then(|o| Ok((tun_vnet_hdr_len(&o)?, o))) {
                Ok((hdr, owned)) => fds.push((nic, owned, hdr)),
                Err(e) => s.note(format!(
                    "cannot take QEMU's descriptor of {}: {e}",
                    tap.name
                )),
            }
        }
    }
    if fds.is_empty() {
        s.note("no tun descriptor of the VM's taps found in QEMU".into());
        s.settle();
        return;
    }
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Vec<Vec<u8>>)>(64);
    let reader = tokio::task::spawn_blocking(move || drain(fds, DrainWindow::default(), tx));
    let b64 = base64::engine::general_purpose::STANDARD;
    while let Some((nic, frames)) = rx.recv().await {
        let batch = FrameBatch {
            nic: nic as u32,
            frames: frames.iter().map(|f| b64.encode(f)).collect(),
        };
        match client.send_frames(&vm.name, &batch).await {
            Ok(a) => s.add_forwarded(frames.len() as u64, a.injected),
            Err(e) => s.note(format!(
                "the destination did not take {} frame(s): {e}",
                frames.len()
            )),
        }
    }
    if let Ok(Err(e)) = reader.await {
        s.note(format!("draining stopped: {e}"));
    }
    s.facts().drain_ms = started.elapsed().as_millis() as u64;
    tracing::info!(vm = %vm.name, report = ?s.report(), "frames drained after the switch-over");
    s.settle();
}

/// Reads every queued frame of `fds` (nic, descriptor, vnet header length) until the
/// window closes, handing each batch on at once.
fn drain(
    fds: Vec<(usize, OwnedFd, usize)>,
    window: DrainWindow,
    tx: tokio::sync::mpsc::Sender<(usize, Vec<Vec<u8>>)>,
) -> std::io::Result<()> {
    let refs: Vec<&OwnedFd> = fds.iter().map(|f| &f.1).collect();
    let mut buf = vec![0u8; MAX_FRAME_BYTES + 64];
    let start = Instant::now();
    let mut last = start;
    while let Some(wait) = window.wait(start.elapsed(), last.elapsed()) {
        for i in wait_readable(&refs, wait)? {
            let (nic, fd, hdr) = &fds[i];
            let mut batch: Vec<Vec<u8>> = Vec::new();
            let mut bytes = 0;
            while let Some(n) = read_nonblocking(fd, &mut buf)?.filter(|&n| n > 0) {
                if let Some(f) = as_forwarded(&buf[..n], *hdr) {
                    bytes += f.len();
                    batch.push(f);
                }
                if batch.len() >= MAX_FRAMES_PER_BATCH || bytes >= MAX_BATCH_BYTES {
                    break;
                }
            }
            if !batch.is_empty() {
                last = Instant::now();
                if tx.blocking_send((*nic, batch)).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// The next QMP event, or 100 ms, whichever first (a missed event costs at most a tick).
async fn next_event(events: &mut broadcast::Receiver<QmpEvent>) {
    let tick = tokio::time::sleep(Duration::from_millis(100));
    tokio::pin!(tick);
    tokio::select! {
        r = events.recv() => {
            if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                (&mut tick).await;
            }
        }
        _ = &mut tick => {}
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
