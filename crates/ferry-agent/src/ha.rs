//! High availability on the host's side: the lease the server grants with each heartbeat,
//! the probes of the peer hosts, and the isolation response (see [`ferry_api::ha`] for
//! the protocol and its timing).
//!
//! When the lease is about to run out (`fence_at`: the server has not answered a heartbeat
//! for a lease less the fence margin) the host asks itself whether it is isolated: fewer
//! than half of its peers answered the last probe round ([`ferry_api::is_isolated`], the
//! rule the server applies too). Isolated: it stops every HA VM whose isolation response is
//! `stop`, so the server can restart it elsewhere without it ever running twice. Not
//! isolated (the server alone is away): everything keeps running.
//!
//! The lease's deadlines are kept on disk (`ha-lease.json`), so an agent restarted while
//! cut off still fences on time rather than starting a fresh lease the server never gave.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_api::client::{AgentClient, ClientError};
use ferry_api::{is_isolated, HostLease, IsolationResponse, PeerInfo, PeerView};
use serde::{Deserialize, Serialize};

use crate::host::Agent;
use crate::persist::Role;

/// How often the monitor looks.
const TICK: Duration = Duration::from_secs(1);
/// Peers are probed every this many ticks, each probe bounded by [`PROBE_TIMEOUT`].
const PROBE_EVERY: u32 = 2;
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A probe round older than this does not count (the decision waits for a fresh one).
const VIEW_FRESH: chrono::Duration = chrono::Duration::seconds(5);

/// The lease as last granted, kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// When the lease runs out.
    pub until: DateTime<Utc>,
    /// When an isolated host stops its HA VMs.
    pub fence_at: DateTime<Utc>,
    pub peers: Vec<PeerInfo>,
}

impl Lease {
    /// The lease a heartbeat sent at `sent_at` earned.
    pub fn granted(sent_at: DateTime<Utc>, g: &HostLease) -> Lease {
        let ms = |s: f64| chrono::Duration::milliseconds((s.clamp(0.0, 86_400.0) * 1000.0) as i64);
        let until = sent_at + ms(g.lease_s);
        Lease {
            until,
            fence_at: until - ms(g.fence_margin_s),
            peers: g.peers.clone(),
        }
    }
}

/// What the monitor does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The lease holds (or this episode was already handled).
    Nothing,
    /// The lease is out and the host is isolated: stop HA VMs.
    Fence,
    /// The lease is out but the peers answer: a server outage; keep running.
    KeepRunning,
    /// The lease is out and no fresh probe round is known yet.
    Wait,
}

/// The monitor's rule (pure).
pub fn decide(
    now: DateTime<Utc>,
    lease: Option<&Lease>,
    view: Option<&(DateTime<Utc>, PeerView)>,
    handled: bool,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Nothing; // never granted: the server never counted on it
    };
    if now < lease.fence_at || handled {
        return Decision::Nothing;
    }
    let Some((at, v)) = view.filter(|(at, _)| now - *at < VIEW_FRESH) else {
        return Decision::Wait;
    };
    let _ = at;
    let reachable = lease
        .peers
        .iter()
        .filter(|p| v.reachable.contains(&p.name))
        .count();
    if is_isolated(reachable, lease.peers.len()) {
        Decision::Fence
    } else {
        Decision::KeepRunning
    }
}

#[derive(Debug, Default)]
struct Inner {
    lease: Option<Lease>,
    view: Option<(DateTime<Utc>, PeerView)>,
    /// What this silence was answered with (reset when the server answers again).
    handled: Option<Decision>,
}

/// The agent's HA state.
#[derive(Debug)]
pub struct HaState {
    inner: Mutex<Inner>,
    file: PathBuf,
}

impl HaState {
    /// Loads the lease kept on disk, if any (a restarted agent honours it).
    pub fn load(state_dir: &Path) -> HaState {
        let file = state_dir.join("ha-lease.json");
        let lease = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<Lease>(&t).ok());
        if let Some(l) = &lease {
            tracing::info!(until = %l.until, "HA lease from before the restart kept");
        }
        HaState {
            inner: Mutex::new(Inner {
                lease,
                ..Default::default()
            }),
            file,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A heartbeat sent at `sent_at` was answered with `g`.
    pub fn granted(&self, sent_at: DateTime<Utc>, g: &HostLease) {
        let lease = Lease::granted(sent_at, g);
        let changed = {
            let mut i = self.inner();
            if i.handled.take() == Some(Decision::KeepRunning) {
                tracing::info!("the server answers again");
            }
            let changed = i.lease.as_ref() != Some(&lease);
            i.lease = Some(lease.clone());
            changed
        };
        if changed {
            if let Err(e) = write_atomic(&self.file, &lease) {
                tracing::warn!("cannot keep the HA lease on disk: {e}");
            }
        }
    }

    /// Which peers answered the last round (for the next heartbeat).
    pub fn view(&self) -> Option<PeerView> {
        self.inner().view.as_ref().map(|(_, v)| v.clone())
    }

    pub(crate) fn peers(&self) -> Vec<PeerInfo> {
        self.inner()
            .lease
            .as_ref()
            .map(|l| l.peers.clone())
            .unwrap_or_default()
    }
}

fn write_atomic(file: &Path, lease: &Lease) -> Result<(), String> {
    let text = serde_json::to_string(lease).map_err(|e| e.to_string())?;
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| format!("{}: {e}", file.display()))
}

impl Agent {
    /// One probe round: which peers' agents answer (any HTTP answer counts: the host and
    /// its agent are up and reachable).
    async fn probe_peers(&self, peers: &[PeerInfo]) -> PeerView {
        let creds = self
            .identity
            .as_ref()
            .map(|id| id.credentials())
            .unwrap_or_default();
        let secured = self.identity.is_some();
        let mut probes = tokio::task::JoinSet::new();
        for p in peers.iter().cloned() {
            let creds = creds.clone();
            probes.spawn(async move {
                let client = if secured {
                    AgentClient::connect(&p.url, &p.name, &creds, PROBE_TIMEOUT)
                } else {
                    AgentClient::with_timeout(&p.url, PROBE_TIMEOUT)
                };
                let ok = match client {
                    Ok(c) => matches!(
                        tokio::time::timeout(PROBE_TIMEOUT * 2, c.health()).await,
                        Ok(Ok(_)) | Ok(Err(ClientError::Api(_)))
                    ),
                    Err(_) => false,
                };
                (p.name, ok)
            });
        }
        let mut view = PeerView::default();
        while let Some(done) = probes.join_next().await {
            match done {
                Ok((name, true)) => view.reachable.push(name),
                Ok((name, false)) => view.unreachable.push(name),
                Err(e) => tracing::warn!("a peer probe failed to run: {e}"),
            }
        }
        view.reachable.sort();
        view.unreachable.sort();
        view
    }

    /// Stops this host's HA VMs whose isolation response is `stop` (not those migrating:
    /// their migration's own recovery decides).
    async fn fence(&self) {
        for vm in self.running_vms().await {
            let rec = vm.record();
            let stop = rec
                .spec
                .ha
                .is_some_and(|h| h.isolation_response == IsolationResponse::Stop);
            if !stop || rec.role != Role::Normal {
                continue;
            }
            let name = rec.spec.name.clone();
            match self.remove(&name).await {
                Ok(()) => {
                    tracing::warn!(vm = %name, "isolated: HA VM stopped (isolation response stop)")
                }
                Err(e) => tracing::error!(vm = %name, "isolated: cannot stop HA VM: {e}"),
            }
        }
    }
}

/// Probes the peers and applies the isolation response when the lease runs out.
pub async fn run_monitor(agent: Arc<Agent>) {
    let mut ticks: u32 = 0;
    loop {
        tokio::time::sleep(TICK).await;
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(PROBE_EVERY) {
            let peers = agent.ha.peers();
            if !peers.is_empty() {
                let view = agent.probe_peers(&peers).await;
                agent.ha.inner().view = Some((Utc::now(), view));
            }
        }
        let decision = {
            let i = agent.ha.inner();
            decide(
                Utc::now(),
                i.lease.as_ref(),
                i.view.as_ref(),
                i.handled.is_some(),
            )
        };
        match decision {
            Decision::Nothing | Decision::Wait => {}
            Decision::KeepRunning => {
                let v = agent.ha.view().unwrap_or_default();
                tracing::warn!(
                    reachable = v.reachable.len(),
                    peers = v.reachable.len() + v.unreachable.len(),
                    "the server has not answered for a lease, but the peers do: not isolated, \
                     every VM keeps running"
                );
                agent.ha.inner().handled = Some(Decision::KeepRunning);
            }
            Decision::Fence => {
                tracing::error!(
                    "isolated: no answer from the server for a lease and from most peers; \
                     stopping HA VMs (they restart on other hosts)"
                );
                agent.ha.inner().handled = Some(Decision::Fence);
                agent.fence().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(now: DateTime<Utc>, peers: &[&str]) -> Lease {
        Lease::granted(
            now,
            &HostLease {
                lease_s: 15.0,
                fence_margin_s: 5.0,
                peers: peers
                    .iter()
                    .map(|p| PeerInfo {
                        name: p.to_string(),
                        url: format!("https://{p}"),
                    })
                    .collect(),
            },
        )
    }

    fn view(at: DateTime<Utc>, reach: &[&str]) -> (DateTime<Utc>, PeerView) {
        (
            at,
            PeerView {
                reachable: reach.iter().map(|s| s.to_string()).collect(),
                unreachable: Vec::new(),
            },
        )
    }

    #[test]
    fn fences_only_when_the_lease_is_out_and_most_peers_are_lost() {
        let t0 = Utc::now();
        let l = lease(t0, &["b", "c"]);
        assert_eq!(l.fence_at, t0 + chrono::Duration::seconds(10));
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        // Within the lease: nothing, whatever the peers say.
        assert_eq!(
            decide(at(9), Some(&l), Some(&view(at(9), &[])), false),
            Decision::Nothing
        );
        // Out, nobody answers: fence.
        assert_eq!(
            decide(at(10), Some(&l), Some(&view(at(10), &[])), false),
            Decision::Fence
        );
        // Out, half answer: a server outage, keep running.
        assert_eq!(
            decide(at(11), Some(&l), Some(&view(at(11), &["b"])), false),
            Decision::KeepRunning
        );
        // A stale round does not decide.
        assert_eq!(
            decide(at(20), Some(&l), Some(&view(at(1), &[])), false),
            Decision::Wait
        );
        // Handled once per silence; never granted: never fenced.
        assert_eq!(
            decide(at(20), Some(&l), Some(&view(at(20), &[])), true),
            Decision::Nothing
        );
        assert_eq!(
            decide(at(99), None, Some(&view(at(99), &[])), false),
            Decision::Nothing
        );
        // Answers from hosts that are not peers do not count.
        assert_eq!(
            decide(at(12), Some(&l), Some(&view(at(12), &["x", "y"])), false),
            Decision::Fence
        );
        // No peers at all: never isolated.
        let alone = lease(t0, &[]);
        assert_eq!(
            decide(at(30), Some(&alone), Some(&view(at(30), &[])), false),
            Decision::KeepRunning
        );
    }

    #[test]
    fn the_lease_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let st = HaState::load(dir.path());
        assert!(st.inner().lease.is_none());
        let g = HostLease {
            lease_s: 15.0,
            fence_margin_s: 5.0,
            peers: vec![PeerInfo {
                name: "b".into(),
                url: "https://b".into(),
            }],
        };
        let t0 = Utc::now();
        st.granted(t0, &g);
        let again = HaState::load(dir.path());
        assert_eq!(again.inner().lease, Some(Lease::granted(t0, &g)));
        assert_eq!(again.peers().len(), 1);
    }
}
