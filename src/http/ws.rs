//! `GET /ws`: admission, then the upgrade into a [`SessionActor`].
//!
//! Admission only: the socket's traffic is the session actor's.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use uuid::Uuid;

use super::{AppState, Error};
use crate::actors::{SessionActor, SessionsFull};
use crate::session_id::SessionTag;

/// A refused session slot as the HTTP error: 503 at `server.max_sessions`,
/// 429 past `server.max_sockets_per_session`; logged with what asked
/// (`WebSocket`, `WHIP`).
pub fn session_refused(session: Uuid, refused: SessionsFull, what: &str) -> Error {
    let tag = SessionTag::of(session);
    match refused {
        SessionsFull::Server { max } => {
            tracing::warn!(session = %tag, max, "{what} refused: at max sessions");
            Error::AtCapacity
        }
        SessionsFull::PerSession { max } => {
            tracing::info!(session = %tag, max, "{what} refused: session holds its share");
            Error::TooManySockets
        }
    }
}

/// Upgrades an authorised request to a WebSocket served by a new session
/// actor.
///
/// Refusals, before any upgrade: 403 from a foreign `Origin`, 401 without a
/// valid session cookie, 503 when the session store cannot tell, when the
/// server is shutting down, or when it holds `server.max_sessions` sessions;
/// 429 when this login session already holds
/// `server.max_sockets_per_session` sockets.
pub async fn ws_route(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let session = state.authorize_ws(&req).await?;
    let ticket = state
        .sessions
        .try_open(session)
        .map_err(|refused| session_refused(session, refused, "WebSocket"))?;
    let conn = ticket.conn();
    let cfg = Arc::new(state.config.session.clone());
    let max_message_bytes = cfg.max_message_bytes;
    let store = state.store.clone();
    let actor = SessionActor::new(
        session,
        ticket,
        cfg,
        state.pool.clone(),
        state.metrics.clone(),
    )
    .close_when(
        state.shutdown.clone().cancelled_owned(),
        ws::CloseCode::Away,
        "server shutting down",
    )
    .close_when(
        async move { store.wait_until_invalid(session).await },
        ws::CloseCode::Policy,
        "session ended (logged out or expired)",
    );
    let registry = state.sessions.clone();
    let (addr, response) = ws::WsResponseBuilder::new(actor, &req, stream)
        .frame_size(max_message_bytes)
        .start_with_addr()
        .map_err(|e| Error::BadRequest(format!("WebSocket handshake failed: {e}")))?;
    registry.attach(conn, addr.recipient());
    Ok(response)
}
