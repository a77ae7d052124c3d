//! One tracing span per request, and its `X-Request-Id`: the caller's when it is well formed
//! (1-128 of `A-Z a-z 0-9 . _ : -`), else a new random id; either way echoed on the response. The
//! span carries the request id, method and route; handlers record the user id, workflow and run
//! id on it (`Span::current().record`). Values that come from callers are recorded with `Debug`
//! formatting, so a control character can never forge a log line.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing::field::Empty;

/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether `id` may be taken from a caller as it is.
fn well_formed(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The middleware: see the module docs.
pub async fn span(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| well_formed(id))
        .map_or_else(crate::workflow::new_run_id, str::to_owned);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        route = %route,
        user_id = Empty,
        workflow = Empty,
        run_id = Empty,
    );
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_are_taken_from_callers() {
        assert!(well_formed("abc-123_x.y:z"));
        assert!(well_formed(&"a".repeat(128)));
        assert!(!well_formed(""));
        assert!(!well_formed(&"a".repeat(129)));
        assert!(!well_formed("a\nb"));
        assert!(!well_formed("a b"));
        assert!(!well_formed("a\"b"));
    }
}
