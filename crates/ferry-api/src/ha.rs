//! High availability: the lease a host holds while the server hears from it, how a host
//! judges itself isolated, and the VM's HA policy.
//!
//! ```text
//!   agent                                   server
//!   heartbeat sent at s ──────────────────► received at r (≥ s): last_seen = r
//!   lease until s + L   ◄── reply: L, peers
//!   probes its peers every 2 s, reports which answer in the next heartbeat
//!
//!   no successful heartbeat since s:
//!   at s + L − F   isolated? (fewer than half its peers answer)         since r + 6 s: suspected
//!                  yes: stop its HA VMs whose isolation response        since r + L + G: failed,
//!                       is `stop` (the host fences itself)              unless at least half of its
//!                  no:  keep everything running (a server outage)       peers still reach it
//!                                                                       (then: partitioned, nothing
//!                                                                       restarts); HA VMs restart
//! ```
//!
//! The host stops its VMs by s + L − F and the server restarts them no earlier than
//! r + L + G ≥ s + L + G: F + G seconds apart, for killing QEMU and for the two clocks'
//! drift over one lease. Both sides apply the same rule ([`is_isolated`]) to the same
//! reachability (a TCP connection between two hosts either works or not, both ways), so a
//! host the server restarts VMs from has fenced itself, or is down. A server outage alone
//! never stops a VM: a host that still reaches its peers keeps running.

use serde::{Deserialize, Serialize};

/// What an isolated host does with a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationResponse {
    /// Stop it, so it can be restarted elsewhere without ever running twice (the default,
    /// for VMs on shared storage).
    #[default]
    Stop,
    /// Keep it running: it is never restarted elsewhere while its host may still run it.
    KeepRunning,
}

impl IsolationResponse {
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationResponse::Stop => "stop",
            IsolationResponse::KeepRunning => "keep_running",
        }
    }
}

/// A VM's HA policy (`ferry vm create --ha`): restart it on another host when its host
/// fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaPolicy {
    /// Restart order: higher first.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub isolation_response: IsolationResponse,
}

/// Another host, as the server names it in a heartbeat's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: String,
    /// Its agent's URL (probed at `/v1/health`).
    pub url: String,
}

/// What the server grants a host with each heartbeat it receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostLease {
    /// The lease runs this long from when the heartbeat was sent.
    pub lease_s: f64,
    /// The host fences itself this long before its lease ends, if isolated.
    pub fence_margin_s: f64,
    /// The other hosts.
    pub peers: Vec<PeerInfo>,
}

/// Which peers answered a host's last probes (sent with its heartbeats).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerView {
    pub reachable: Vec<String>,
    pub unreachable: Vec<String>,
}

/// How the server judges a host from its heartbeats and its peers' views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostHealth {
    #[default]
    Alive,
    /// Heartbeats stopped; the lease has not run out.
    Suspected,
    /// The lease ran out but at least half of its peers still reach it: it is alive and
    /// keeps its VMs (nothing is restarted).
    Partitioned,
    /// The lease ran out and it is down or isolated (fenced): its HA VMs restart elsewhere.
    Failed,
}

impl HostHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            HostHealth::Alive => "alive",
            HostHealth::Suspected => "suspected",
            HostHealth::Partitioned => "partitioned",
            HostHealth::Failed => "failed",
        }
    }
}

impl std::fmt::Display for HostHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one rule both sides apply: a host is isolated when fewer than half of its `peers`
/// reach it (or it them). A host with no peers is never isolated: nobody could take its
/// VMs, so stopping them would only lose them.
pub fn is_isolated(reachable: usize, peers: usize) -> bool {
    peers > 0 && reachable.min(peers) * 2 < peers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_is_fewer_than_half_of_the_peers() {
        assert!(!is_isolated(0, 0));
        assert!(is_isolated(0, 1));
        assert!(!is_isolated(1, 1));
        assert!(is_isolated(0, 2));
        assert!(!is_isolated(1, 2), "half is enough");
        assert!(is_isolated(1, 3));
        assert!(!is_isolated(2, 3));
        assert!(!is_isolated(5, 3), "more answers than peers count as all");
        for peers in 1..20 {
            // Monotone: more answers never make a host more isolated.
            let v: Vec<bool> = (0..=peers).map(|r| is_isolated(r, peers)).collect();
            assert!(v.windows(2).all(|w| w[0] || !w[1]), "{peers}: {v:?}");
            assert!(!is_isolated(peers, peers));
        }
    }

    #[test]
    fn policies_default_to_stop_and_round_trip() {
        let p: HaPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p.isolation_response, IsolationResponse::Stop);
        let k: HaPolicy =
            serde_json::from_str(r#"{"priority":5,"isolation_response":"keep_running"}"#).unwrap();
        assert_eq!(
            (k.priority, k.isolation_response),
            (5, IsolationResponse::KeepRunning)
        );
        assert!(serde_json::from_str::<HaPolicy>(r#"{"isolation_response":"maybe"}"#).is_err());
    }
}
