//! Load balancing: the facts [`crate::balance::plan`] decides on, gathered from the store
//! and the load history; what a run does with the plan (recommendations, or migrations
//! through the queue); and the background loop that runs it every interval.
//!
//! Host load is the sum of its VMs' measured load (CPU in CPUs, resident memory) over the
//! host's capacity: what a move changes is exactly what the plan moves, and hosts that
//! share a machine (the lab) are still told apart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ferry_api::*;
use uuid::Uuid;

use super::Server;
use crate::admission::Demand;
use crate::balance::{plan, BalanceConfig, HostLoad, VmLoad};
use crate::store::NewEvent;

/// Load is averaged over this long.
const LOAD_WINDOW: chrono::Duration = chrono::Duration::minutes(2);
/// Assumed for a link nobody measured or configured: 1 Gbit/s.
const DEFAULT_LINK_BYTES_S: u64 = 125_000_000;
/// How often the background loop looks whether a run is due.
const LOOP_TICK: Duration = Duration::from_secs(5);
const ACTOR: &str = "balancer";

/// The hosts, the VMs with a measured load, and what was left out and why.
type BalanceInputs = (Vec<HostLoad>, Vec<VmLoad>, Vec<String>);

impl Server {
    pub(super) fn balance_settings(&self) -> Result<BalanceSettings, ApiError> {
        Ok(self.store.balance_settings()?)
    }

    pub(super) fn set_balance(
        &self,
        u: &BalanceSettingsUpdate,
    ) -> Result<BalanceSettings, ApiError> {
        let s = u.apply(self.store.balance_settings()?)?;
        self.store.set_balance_settings(&s)?;
        Ok(s)
    }

    /// The plan now (moves nothing), at the configured level or `level`.
    pub(super) fn balance_plan(&self, level: Option<u8>) -> Result<BalancePlanView, ApiError> {
        let mut settings = self.store.balance_settings()?;
        if let Some(l) = level {
            settings = BalanceSettingsUpdate {
                level: Some(l),
                ..Default::default()
            }
            .apply(settings)?;
        }
        let (hosts, vms, left_out) = self.balance_inputs()?;
        let cfg = BalanceConfig {
            level: settings.level,
            min_stay: chrono::Duration::minutes(i64::from(settings.min_stay_minutes)),
            max_moves: settings.max_moves as usize,
            now: Utc::now(),
            default_link_bytes_s: DEFAULT_LINK_BYTES_S,
        };
        let rules = self.store.rules()?;
        let p = plan(&hosts, &vms, &rules, &cfg);
        let after: HashMap<&str, f64> = p
            .loads_after
            .iter()
            .map(|(h, l)| (h.as_str(), *l))
            .collect();
        let by_name: HashMap<&str, &VmLoad> = vms.iter().map(|v| (v.name.as_str(), v)).collect();
        Ok(BalancePlanView {
            settings,
            imbalance_before: p.imbalance_before,
            imbalance_after: p.imbalance_after,
            threshold: cfg.threshold(),
            hosts: hosts
                .iter()
                .zip(&p.loads_before)
                .map(|(h, (_, before))| HostBalance {
                    host: h.name.clone(),
                    load_before: *before,
                    load_after: after.get(h.name.as_str()).copied().unwrap_or(*before),
                    cpu_used: h.cpu_used,
                    cpus: h.cpus,
                    memory_used_mib: h.memory_used_mib,
                    memory_capacity_mib: h.capacity.memory_mib,
                    unavailable: h.unavailable.clone(),
                })
                .collect(),
            moves: p
                .moves
                .iter()
                .map(|m| {
                    let v = by_name.get(m.vm.as_str());
                    PlannedMove {
                        vm: m.vm.clone(),
                        from: m.from.clone(),
                        to: m.to.clone(),
                        gain: m.gain,
                        cost_s: m.cost_s,
                        memory_mib: v.map(|v| v.memory_mib).unwrap_or(0),
                        dirty_rate_mib_s: v
                            .map(|v| v.dirty_bytes_s as f64 / (1u64 << 20) as f64)
                            .unwrap_or(0.0),
                    }
                })
                .collect(),
            reason: p.reason,
            left_out,
        })
    }

    /// What the plan decides on: every connected host (in maintenance: it may give VMs
    /// away, takes none), and every VM on them with a measured load.
    fn balance_inputs(&self) -> Result<BalanceInputs, ApiError> {
        let view = self.store.view()?;
        let facts = self.host_facts(&view, None, "")?;
        let live: HashMap<String, Host> = self
            .hosts()?
            .into_iter()
            .map(|h| (h.name.clone(), h))
            .collect();
        let migrations = self.store.migrations(1000)?;
        let mut moved_at = HashMap::new();
        let mut busy: HashMap<&str, u64> = HashMap::new();
        for m in &migrations {
            if m.phase == Phase::Completed {
                if let Some(t) = m.finished_at {
                    let e = moved_at.entry(m.vm.clone()).or_insert(t);
                    *e = (*e).max(t);
                }
            }
            if !m.phase.is_terminal() && m.phase != Phase::Queued {
                *busy.entry(m.source.as_str()).or_default() += 1;
                *busy.entry(m.destination.as_str()).or_default() += 1;
            }
        }
        let now = Utc::now();
        let book = self.load.lock().unwrap_or_else(|p| p.into_inner());
        let mut hosts = Vec::new();
        let mut vms = Vec::new();
        let mut left_out = Vec::new();
        for f in facts {
            let Some(h) = live.get(&f.name) else { continue };
            if h.state != HostState::Connected {
                left_out.push(format!("host {} is {}: left out", h.name, h.state));
                continue;
            }
            let (mut cpu, mut mem) = (0.0, 0u64);
            for v in view.vms.iter().filter(|v| v.host == h.name) {
                let Some(r) = book.recent_vm(&v.spec.name, &h.name, LOAD_WINDOW, now) else {
                    if v.state == VmState::Running {
                        left_out.push(format!("VM {}: no load measured yet", v.spec.name));
                    }
                    continue;
                };
                cpu += r.cpu_used;
                mem += r.memory_mib;
                let movable = v.state == VmState::Running && v.migration.is_none();
                if !movable && v.state == VmState::Running {
                    left_out.push(format!("VM {}: migrating", v.spec.name));
                }
                vms.push(VmLoad {
                    name: v.spec.name.clone(),
                    host: h.name.clone(),
                    demand: Demand::of(&v.spec),
                    cpu_used: r.cpu_used,
                    memory_mib: r.memory_mib,
                    dirty_bytes_s: r
                        .dirty_rate_mib_s
                        .map(|d| (d * (1u64 << 20) as f64) as u64)
                        .unwrap_or(0),
                    moved_at: moved_at.get(&v.spec.name).copied(),
                    movable,
                });
            }
            // What the link carries now: running migrations share it.
            let link = self
                .link_capacity(&h.name)
                .map(|l| l / (1 + busy.get(h.name.as_str()).copied().unwrap_or(0)));
            hosts.push(HostLoad {
                name: h.name.clone(),
                capacity: f.capacity,
                committed: f.used,
                cpus: f64::from(h.inventory.cpus.max(1)),
                cpu_used: cpu,
                memory_used_mib: mem,
                link_bytes_s: link,
                unavailable: f.unavailable,
            });
        }
        Ok((hosts, vms, left_out))
    }

    /// One run now in `mode` (the configured one unless given): recommend mode records
    /// the moves as recommendations, automatic mode requests them through the queue.
    pub(super) async fn balance_run(
        self: &Arc<Self>,
        actor: &str,
        mode: Option<BalanceMode>,
    ) -> Result<BalanceRun, ApiError> {
        let plan = self.balance_plan(None)?;
        let mode = mode.unwrap_or(plan.settings.mode);
        let mut run = BalanceRun {
            plan,
            recommendations: Vec::new(),
            migrations: Vec::new(),
            refused: Vec::new(),
        };
        let p = &run.plan;
        self.event(
            NewEvent {
                actor: actor.to_string(),
                kind: EventKind::BalancePlan,
                vm: None,
                host: None,
                migration: None,
                outcome: Some(Outcome::Info),
                message: format!(
                    "balancing ({mode}, level {}): imbalance {:.3} -> {:.3} with {} move(s); {}",
                    p.settings.level,
                    p.imbalance_before,
                    p.imbalance_after,
                    p.moves.len(),
                    p.reason
                ),
                data: serde_json::Value::Null,
            }
            .with_data(serde_json::to_value(p).unwrap_or_default()),
        );
        match mode {
            BalanceMode::Off => {
                return Err(ApiError::conflict(
                    "the balancer is off: set a mode (`ferry cluster balance --mode recommend`) \
                     or look at the plan with --dry-run",
                ))
            }
            BalanceMode::Recommend => {
                let now = Utc::now();
                run.recommendations = p
                    .moves
                    .iter()
                    .map(|m| Recommendation {
                        id: Uuid::new_v4(),
                        created_at: now,
                        state: RecommendationState::Open,
                        planned: m.clone(),
                        imbalance_before: p.imbalance_before,
                        imbalance_after: p.imbalance_after,
                        migration: None,
                        updated_at: None,
                        actor: None,
                    })
                    .collect();
                self.store.replace_recommendations(&run.recommendations)?;
                for r in &run.recommendations {
                    self.event(move_event(actor, &r.planned, "recommended", None));
                }
            }
            BalanceMode::Automatic => {
                let moves = p.moves.clone();
                for m in moves {
                    match self.request_move(actor, &m).await {
                        Ok(mig) => {
                            self.event(move_event(actor, &m, "requested", Some(mig.id)));
                            run.migrations.push(mig.id);
                        }
                        Err(e) => run.refused.push(format!("{}: {}", m.vm, e.message)),
                    }
                }
            }
        }
        Ok(run)
    }

    async fn request_move(
        self: &Arc<Self>,
        actor: &str,
        m: &PlannedMove,
    ) -> Result<Migration, ApiError> {
        let req = MigrateRequest {
            vm: m.vm.clone(),
            to: Some(m.to.clone()),
            options: MigrationOptions::default(),
            priority: Some(BALANCE_PRIORITY),
        };
        self.start_migration(actor, req, None).await
    }

    pub(super) fn recommendations(&self) -> Result<Vec<Recommendation>, ApiError> {
        Ok(self.store.recommendations(200)?)
    }

    fn open_recommendation(&self, id: Uuid) -> Result<Recommendation, ApiError> {
        let r = self
            .store
            .recommendation(id)?
            .ok_or_else(|| ApiError::not_found(format!("no recommendation {id}")))?;
        if r.state != RecommendationState::Open {
            return Err(ApiError::conflict(format!(
                "recommendation {id} is {}; only open ones can be applied or dismissed",
                r.state
            )));
        }
        Ok(r)
    }

    /// Requests the recommended migration (through the queue, with the usual checks).
    pub(super) async fn apply_recommendation(
        self: &Arc<Self>,
        actor: &str,
        id: Uuid,
    ) -> Result<Migration, ApiError> {
        let mut r = self.open_recommendation(id)?;
        let vm = self.find_vm(&r.planned.vm)?;
        if vm.host != r.planned.from {
            return Err(ApiError::conflict(format!(
                "VM {} runs on {} now, not on {} as when this was recommended; run the \
                 balancer again",
                vm.spec.name, vm.host, r.planned.from
            )));
        }
        let m = self.request_move(actor, &r.planned).await?;
        r.state = RecommendationState::Applied;
        r.migration = Some(m.id);
        r.updated_at = Some(Utc::now());
        r.actor = Some(actor.to_string());
        if !self.store.settle_recommendation(&r)? {
            tracing::warn!(%id, "recommendation settled meanwhile; its migration runs anyway");
        }
        Ok(m)
    }

    pub(super) fn dismiss_recommendation(
        &self,
        actor: &str,
        id: Uuid,
    ) -> Result<Recommendation, ApiError> {
        let mut r = self.open_recommendation(id)?;
        r.state = RecommendationState::Dismissed;
        r.updated_at = Some(Utc::now());
        r.actor = Some(actor.to_string());
        if !self.store.settle_recommendation(&r)? {
            return Err(ApiError::conflict(format!(
                "recommendation {id} was settled meanwhile"
            )));
        }
        Ok(r)
    }

    /// Runs the balancer every configured interval while its mode is not off. An
    /// automatic run waits while migrations run (what they move changes the load).
    pub fn spawn_balancer(self: &Arc<Self>) {
        let server = self.clone();
        tokio::spawn(async move {
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(LOOP_TICK).await;
                let Ok(s) = server.store.balance_settings() else {
                    continue;
                };
                if s.mode == BalanceMode::Off
                    || last.elapsed() < Duration::from_secs(u64::from(s.interval_s))
                {
                    continue;
                }
                if s.mode == BalanceMode::Automatic && server.migrations_unfinished() {
                    continue;
                }
                last = tokio::time::Instant::now();
                if let Err(e) = server.balance_run(ACTOR, Some(s.mode)).await {
                    tracing::warn!("balancing run: {}", e.message);
                }
            }
        });
    }

    fn migrations_unfinished(&self) -> bool {
        self.store
            .migrations(200)
            .map(|ms| ms.iter().any(|m| !m.phase.is_terminal()))
            .unwrap_or(true)
    }
}

fn move_event(actor: &str, m: &PlannedMove, what: &str, migration: Option<Uuid>) -> NewEvent {
    NewEvent {
        actor: actor.to_string(),
        kind: EventKind::BalanceMove,
        vm: Some(m.vm.clone()),
        host: Some(m.to.clone()),
        migration,
        outcome: Some(Outcome::Info),
        message: format!(
            "balancing: VM {} {what} from {} to {} (imbalance -{:.3}, about {:.0} s of \
             migration)",
            m.vm, m.from, m.to, m.gain, m.cost_s
        ),
        data: serde_json::to_value(m).unwrap_or_default(),
    }
}
