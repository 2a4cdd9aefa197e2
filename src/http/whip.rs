//! WHIP (RFC 9725): `POST /whip` with an SDP offer opens a WebRTC session;
//! `DELETE /whip/{id}` ends it. ICE-lite with the one candidate in the
//! answer, so no trickle: `PATCH` is 405.
//!
//! Admission as `/ws` (the page's session cookie, `Origin` checked), or, as
//! stock WHIP clients authenticate, `Authorization: Bearer <token>` with the
//! entry code or one of `rtc.ingest_tokens`, through the login rate limiter.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use uuid::Uuid;

use super::auth::Ingester;
use super::ws::open_session;
use super::{AppState, Error};
use crate::actors::rtc::{CloseReason, OpenError, RtcEngine, sdp};
use crate::actors::{RtcSession, RtcSessionMsg};
use crate::session_id::SessionTag;

fn engine(state: &AppState) -> Result<&RtcEngine, Error> {
    state.rtc.as_ref().ok_or(Error::NotFound)
}

/// `POST /whip`: 201 with the SDP answer and the session's `Location`.
///
/// Refusals: 404 when WebRTC is off; 401/403/429/503 as `/ws` (or 401 for a
/// wrong bearer token, 429 after too many); 415 unless the body is
/// `application/sdp`; 413 above `rtc.max_offer_bytes`; 400 for SDP that does
/// not parse or negotiate; 422 for an offer without H.264 or VP8 video; 503
/// at `server.max_sessions`.
pub async fn post(
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let engine = engine(&state)?.clone();
    let ingester = state.authorize_ingest(&req).await?;
    let is_sdp = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/sdp"));
    if !is_sdp {
        return Err(Error::UnsupportedMediaType("application/sdp"));
    }
    let limit = state.config.rtc.max_offer_bytes;
    let mut offer = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| Error::BadRequest("request body interrupted".into()))?;
        if offer.len() + chunk.len() > limit {
            return Err(Error::PayloadTooLarge { limit });
        }
        offer.extend_from_slice(&chunk);
    }
    let offer = std::str::from_utf8(&offer)
        .map_err(|_| Error::BadRequest("the SDP offer is not UTF-8".into()))?;
    let (offer, codecs) = sdp::check_offer(offer).map_err(open_error)?;

    let (session, login) = match ingester {
        Ingester::Login(id) => (id, true),
        Ingester::Token => (Uuid::new_v4(), false),
    };
    let core = open_session(&state, session, "WHIP")?;
    let conn = core.conn();
    let peer = Uuid::new_v4();
    let mut actor = RtcSession::new(core, peer, engine.clone())
        .close_when(state.shutdown.clone().cancelled_owned());
    if login {
        let store = state.store.clone();
        actor = actor.close_when(async move { store.wait_until_invalid(session).await });
    }
    let addr = actix::Actor::start(actor);
    state.sessions.attach(conn, addr.clone().recipient());
    match engine
        .open(peer, offer, codecs, addr.clone().recipient())
        .await
    {
        Ok(answer) => {
            tracing::info!(session = %SessionTag::of(session), "WebRTC session opened");
            Ok(HttpResponse::Created()
                .insert_header((header::LOCATION, resource_path(&state, peer)))
                .content_type("application/sdp")
                .body(answer))
        }
        Err(e) => {
            addr.do_send(RtcSessionMsg::OpenFailed);
            Err(open_error(e))
        }
    }
}

/// The session's resource: `/whip/<peer>`, or `/whip/<gateway>/<peer>`
/// when this server has a gateway id (`pool.remote.gateway_id`), so a
/// proxy in front of several gateways routes the `DELETE` to the one that
/// holds the peer (docker/nginx/locations.conf).
fn resource_path(state: &AppState, peer: Uuid) -> String {
    match &state.config.pool.remote.gateway_id {
        Some(gateway) => format!("/whip/{gateway}/{}", peer.simple()),
        None => format!("/whip/{}", peer.simple()),
    }
}

/// `DELETE /whip/{id}` (or `/whip/{gateway}/{id}`): 200 when the session
/// was open, 404 otherwise.
pub async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let engine = engine(&state)?.clone();
    state.authorize_ingest(&req).await?;
    let id = Uuid::try_parse(&path).map_err(|_| Error::NotFound)?;
    if engine.close(id, CloseReason::Delete).await {
        Ok(HttpResponse::Ok().finish())
    } else {
        Err(Error::NotFound)
    }
}

/// `DELETE /whip/{gateway}/{id}`: as [`delete`] when `gateway` is this
/// server's; 404 otherwise.
pub async fn delete_on(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let (gateway, id) = path.into_inner();
    if state.config.pool.remote.gateway_id.as_deref() != Some(gateway.as_str()) {
        engine(&state)?;
        return Err(Error::NotFound);
    }
    delete(req, web::Path::from(id), state).await
}

/// `PATCH /whip/{id}` (trickle ICE, ICE restart): not supported, as RFC 9725
/// has a server without them answer.
pub async fn patch(state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    engine(&state)?;
    Ok(HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, HeaderValue::from_static("DELETE")))
        .finish())
}

fn open_error(e: OpenError) -> Error {
    match e {
        OpenError::BadOffer(why) => Error::BadRequest(why),
        OpenError::Unsupported(why) => Error::Unprocessable(why),
        OpenError::Unavailable => Error::AtCapacity,
    }
}
