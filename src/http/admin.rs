//! `/admin/...`: operator routes (run-time fault injection for tests and
//! drills).
//!
//! Off unless the operator turns them on (`[admin] enabled = true` and a
//! token in `HOLISTREAM_ADMIN_TOKEN`): fault injection can stop inference for
//! everyone, so an ordinary login, which anyone given the demo's entry code
//! has, must not reach it. Disabled, every `/admin/...` path answers 404, as
//! if it did not exist. Enabled, each request needs
//! `Authorization: Bearer <token>`, compared in constant time.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::auth::password_matches;
use super::{AppState, Error};
use crate::config::FaultPlan;

/// Body of `POST /admin/faults`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsRequest {
    /// A fault plan such as `panic=0.1,stall=0.01:2s`; `none` or `""` clears it.
    pub faults: String,
}

/// Registers the admin routes when enabled; otherwise a 404 for the whole
/// `/admin/` tree (before the static files, which would answer other codes
/// for a POST).
pub(super) fn routes(cfg: &mut web::ServiceConfig, enabled: bool) {
    if enabled {
        cfg.route("/admin/faults", web::post().to(set_faults));
    }
    cfg.route("/admin", web::to(not_found))
        .route("/admin/{rest:.*}", web::to(not_found));
}

async fn not_found() -> Result<HttpResponse, Error> {
    Err(Error::NotFound)
}

/// 401 unless the request carries the admin token.
fn authorize_admin(req: &HttpRequest, state: &AppState) -> Result<(), Error> {
    // Enabled without a token is refused by `Config::validate`; treat it as
    // no access all the same.
    let Some(expected) = state.config.admin.token.as_deref() else {
        return Err(Error::Unauthorized);
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Error::Unauthorized)?;
    if password_matches(expected, given.trim()) {
        Ok(())
    } else {
        tracing::warn!(ip = %state.auth.client_ip(req), "admin request with a wrong token");
        Err(Error::Unauthorized)
    }
}

/// Replaces the inference workers' fault plan: 401 without the admin token;
/// a malformed plan, or a stall longer than `pool.stall_deadline_ms`, is a
/// 400 that says what is wrong. Answers `{"faults":"<plan in force>"}`.
pub async fn set_faults(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<FaultsRequest>,
) -> Result<HttpResponse, Error> {
    authorize_admin(&req, &state)?;
    let plan: FaultPlan = body
        .faults
        .parse()
        .map_err(|e| Error::BadRequest(format!("faults: {e}")))?;
    state
        .config
        .pool
        .check_faults(&plan)
        .map_err(|e| Error::BadRequest(format!("faults: {e}")))?;
    state.pool.set_faults(plan);
    tracing::warn!(ip = %state.auth.client_ip(&req), faults = %plan, "fault injection changed");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "faults": plan.to_string() })))
}
