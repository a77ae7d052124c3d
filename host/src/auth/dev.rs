//! Dev mode: the user is the JSON in the `X-Trellis-User` header, trusted as is.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

use super::{AuthError, DEV_USER_HEADER};
use crate::policy::UserContext;

/// Reads `X-Trellis-User: {"user_id", "tenant_id", "email", "roles", "attributes"}`.
pub(super) fn user_from_headers(headers: &HeaderMap) -> Result<UserContext, AuthError> {
    let mut values = headers.get_all(DEV_USER_HEADER).iter();
    let Some(value) = values.next() else {
        return Err(if headers.contains_key(AUTHORIZATION) {
            AuthError::BearerInDevMode
        } else {
            AuthError::MissingDevUser
        });
    };
    if values.next().is_some() {
        return Err(AuthError::DuplicateHeader("X-Trellis-User"));
    }
    let text = std::str::from_utf8(value.as_bytes())
        .map_err(|_| AuthError::InvalidDevUser("the header is not UTF-8".into()))?;
    let user: UserContext =
        serde_json::from_str(text).map_err(|e| AuthError::InvalidDevUser(e.to_string()))?;
    if user.user_id.trim().is_empty() {
        return Err(AuthError::InvalidDevUser("`user_id` is empty".into()));
    }
    Ok(user)
}
