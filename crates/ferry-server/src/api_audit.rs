//! The audit trail's routes (merged into [`crate::api::router`]). No logic here.
//!
//! ```text
//! GET    /v1/events/checkpoints       Checkpoints {public_key, checkpoints} oldest first
//! POST   /v1/events/checkpoints       Checkpoint | null: sign the log's head now (verify,
//!                                      export); not an Action: it changes no cluster state
//! ```

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ferry_api::audit::{Checkpoint, Checkpoints};
use ferry_api::http::Failure;

use crate::core::Server;

pub(crate) fn routes() -> Router<Arc<Server>> {
    Router::new().route(
        "/v1/events/checkpoints",
        get(checkpoints).post(checkpoint_now),
    )
}

async fn checkpoints(State(s): State<Arc<Server>>) -> Result<Json<Checkpoints>, Failure> {
    Ok(Json(s.checkpoints()?))
}

async fn checkpoint_now(State(s): State<Arc<Server>>) -> Result<Json<Option<Checkpoint>>, Failure> {
    Ok(Json(s.checkpoint_now()?))
}
