//! The admin token check for writes: `Authorization: Bearer <ADMIN_TOKEN>`.
//!
//! Without a configured token every write is refused (403): an admin API must not be open by
//! default. A missing or wrong token is a 401. Both sides are hashed before a constant-time
//! comparison, so neither the token's bytes nor its length leak through timing.

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `Ok` if `headers` carry the admin token; otherwise the response to send.
pub fn authorize(headers: &HeaderMap, token: Option<&SecretString>) -> Result<(), Response> {
    let Some(token) = token else {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "admin writes are disabled: no ADMIN_TOKEN is configured",
        ));
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(offered) = offered else {
        return Err(unauthorized("missing bearer token"));
    };
    let expected = Sha256::digest(token.expose_secret().as_bytes());
    let offered = Sha256::digest(offered.as_bytes());
    if bool::from(expected.ct_eq(&offered)) {
        Ok(())
    } else {
        Err(unauthorized("wrong bearer token"))
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = refusal(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

fn refusal(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({"error": error, "message": message}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn checks_the_bearer_token() {
        let token = SecretString::from("s3cret");
        assert!(authorize(&headers(Some("Bearer s3cret")), Some(&token)).is_ok());
        let status =
            |h: HeaderMap, t: Option<&SecretString>| authorize(&h, t).unwrap_err().status();
        assert_eq!(
            status(headers(Some("Bearer nope")), Some(&token)),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(headers(Some("Bearer s3cret2")), Some(&token)),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(headers(Some("s3cret")), Some(&token)),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(headers(None), Some(&token)),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(headers(Some("Bearer s3cret")), None),
            StatusCode::FORBIDDEN
        );
    }
}
