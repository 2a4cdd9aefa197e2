//! `GET /ws`: admission, then the upgrade into a [`SessionActor`].
//!
//! Admission only: the socket's traffic is the session actor's.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use uuid::Uuid;

use super::{AppState, Error};
use crate::actors::{SessionActor, SessionCore, SessionsFull};
use crate::session_id::SessionTag;

/// A session slot for the client `session` and its core (fps cap, slot,
/// tracking state), or the refusal as the HTTP error: 503 at
/// `server.max_sessions`, 429 past `server.max_sockets_per_session`; logged
/// with what asked (`WebSocket`, `WHIP`).
pub fn open_session(state: &AppState, session: Uuid, what: &str) -> Result<SessionCore, Error> {
    let ticket = state.sessions.try_open(session).map_err(|refused| {
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
    })?;
    Ok(SessionCore::new(
        session,
        ticket,
        Arc::new(state.config.session.clone()),
        state.pool.clone(),
        state.metrics.clone(),
    ))
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
    let core = open_session(&state, session, "WebSocket")?;
    let conn = core.conn();
    let max_message_bytes = state.config.session.max_message_bytes;
    let store = state.store.clone();
    let actor = SessionActor::new(core)
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
