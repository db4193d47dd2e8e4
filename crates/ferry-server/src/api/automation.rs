//! Routes of the cluster's own automation: load histories, balancing, schedules.

use super::*;

pub(super) async fn host_load(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<LoadHistory> {
    ask(&s, &c, Query::HostLoad(name), pick!(QueryOutcome::Load)).await
}

pub(super) async fn vm_load(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<LoadHistory> {
    ask(&s, &c, Query::VmLoad(name), pick!(QueryOutcome::Load)).await
}

pub(super) async fn balance(
    State(s): Shared,
    Authenticated(c): Authenticated,
) -> Answer<BalanceSettings> {
    ask(&s, &c, Query::Balance, pick!(QueryOutcome::Balance)).await
}

pub(super) async fn set_balance(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<BalanceSettingsUpdate>,
) -> Answer<BalanceSettings> {
    act(
        &s,
        &c,
        Action::SetBalance(req),
        pick!(ActionOutcome::Balance),
    )
    .await
}

pub(super) async fn balance_plan(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<BalancePlanRequest>,
) -> Answer<BalancePlanView> {
    ask(
        &s,
        &c,
        Query::BalancePlan(req),
        pick!(QueryOutcome::BalancePlan),
    )
    .await
}

/// `POST /v1/cluster/balance/run`: body `{"mode": ...}` (optional; the configured mode
/// otherwise).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunBody {
    #[serde(default)]
    mode: Option<BalanceMode>,
}

pub(super) async fn balance_run(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<RunBody>,
) -> Answer<BalanceRun> {
    act(
        &s,
        &c,
        Action::RunBalance(req.mode),
        pick!(ActionOutcome::BalanceRun),
    )
    .await
}

pub(super) async fn recommendations(
    State(s): Shared,
    Authenticated(c): Authenticated,
) -> Answer<Vec<Recommendation>> {
    ask(
        &s,
        &c,
        Query::Recommendations,
        pick!(QueryOutcome::Recommendations),
    )
    .await
}

pub(super) async fn apply_recommendation(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(id): Path<String>,
) -> Answer<Migration> {
    let action = Action::ApplyRecommendation(parse_id(&id)?);
    act(&s, &c, action, pick!(ActionOutcome::Migration)).await
}

pub(super) async fn dismiss_recommendation(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(id): Path<String>,
) -> Answer<Recommendation> {
    let action = Action::DismissRecommendation(parse_id(&id)?);
    act(&s, &c, action, pick!(ActionOutcome::Recommendation)).await
}

pub(super) async fn schedules(
    State(s): Shared,
    Authenticated(c): Authenticated,
) -> Answer<Vec<Schedule>> {
    ask(&s, &c, Query::Schedules, pick!(QueryOutcome::Schedules)).await
}

pub(super) async fn add_schedule(
    State(s): Shared,
    Authenticated(c): Authenticated,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> Answer<Schedule> {
    act(
        &s,
        &c,
        Action::AddSchedule(req),
        pick!(ActionOutcome::Schedule),
    )
    .await
}

pub(super) async fn remove_schedule(
    State(s): Shared,
    Authenticated(c): Authenticated,
    Path(name): Path<String>,
) -> Answer<serde_json::Value> {
    act(&s, &c, Action::RemoveSchedule(name), deleted).await
}
