//! `POST /admin/faults`: run-time fault injection for tests and drills.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::{AppState, Error};
use crate::actors::FaultPlan;

/// Body of `POST /admin/faults`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsRequest {
    /// A fault plan such as `panic=0.1,stall=0.01:2s`; `none` or `""` clears it.
    pub faults: String,
}

/// Replaces the inference workers' fault plan. Requires a valid session
/// cookie (401 otherwise); a malformed plan is a 400 that says what is wrong.
/// Answers `{"faults":"<plan in force>"}`.
pub async fn set_faults(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<FaultsRequest>,
) -> Result<HttpResponse, Error> {
    let session = state.authorize(&req).await?;
    let plan: FaultPlan = body
        .faults
        .parse()
        .map_err(|e| Error::BadRequest(format!("faults: {e}")))?;
    state.pool.set_faults(plan);
    tracing::warn!(%session, faults = %plan, "fault injection changed");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "faults": plan.to_string() })))
}
