//! The one error type of the HTTP boundary.
//!
//! Every handler returns `Result<_, Error>`; the variant picks the status code
//! and the JSON body `{"error": "..."}`. Bodies carry only the fixed messages
//! below, never the text of an underlying error: that goes to the log.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use super::store::StoreError;

/// Errors answered to HTTP clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 401: the entry code is wrong.
    #[error("wrong code")]
    WrongPassword,
    /// 401: no session cookie, or the session is unknown, expired or revoked.
    #[error("not logged in")]
    Unauthorized,
    /// 403: a WebSocket upgrade from a page of another origin.
    #[error("origin not allowed")]
    ForbiddenOrigin,
    /// 404: a path that does not exist (or is switched off).
    #[error("not found")]
    NotFound,
    /// 429: the session already holds `server.max_sockets_per_session`
    /// WebSockets on this server.
    #[error("too many connections for this session")]
    TooManySockets,
    /// 429: too many wrong codes from this address.
    #[error("too many wrong codes, retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// 503: the session store (Redis) cannot be reached; fail closed.
    #[error("session store unavailable, try again shortly")]
    StoreUnavailable,
    /// 503: the server holds its maximum number of sessions.
    #[error("server at capacity, try again later")]
    AtCapacity,
    /// 503: the server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// 413: a body over its limit.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 415: a body of another type than the one named.
    #[error("content type must be {0}")]
    UnsupportedMediaType(&'static str),
    /// 422: a well-formed request this server cannot serve (an SDP offer
    /// without a codec it decodes); the message is written for the client.
    #[error("{0}")]
    Unprocessable(String),
    /// 400: a malformed request; the message is written for the client.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 500: anything else. The cause is logged, the body says only this.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Unavailable(_) => Error::StoreUnavailable,
            StoreError::InvalidUrl(_) => Error::Internal(e.into()),
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::WrongPassword | Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::ForbiddenOrigin => StatusCode::FORBIDDEN,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::TooManySockets => StatusCode::TOO_MANY_REQUESTS,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::StoreUnavailable | Error::AtCapacity | Error::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Error::Internal(cause) = self {
            tracing::error!(error = ?cause, "internal error answered as 500");
        }
        let mut resp = HttpResponse::build(self.status_code());
        if let Error::RateLimited { retry_after_s } = self {
            resp.insert_header((header::RETRY_AFTER, HeaderValue::from(*retry_after_s)));
        }
        resp.json(serde_json::json!({ "error": self.to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn bodies_are_json_and_never_leak_causes() {
        let e = Error::Internal(anyhow::anyhow!("secret path /etc/shadow"));
        let resp = e.error_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = to_bytes(resp.into_body()).await.unwrap();
        assert_eq!(&body[..], br#"{"error":"internal error"}"#);
    }

    #[actix_web::test]
    async fn rate_limit_carries_retry_after() {
        let resp = Error::RateLimited { retry_after_s: 42 }.error_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "42");
    }

    #[test]
    fn store_outage_is_503() {
        let e: Error = StoreError::Unavailable("PTTL: timeout".into()).into();
        assert_eq!(e.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.to_string(),
            "session store unavailable, try again shortly"
        );
    }
}
