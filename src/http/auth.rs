//! The admin token check for writes: `Authorization: Bearer <ADMIN_TOKEN>`.
//!
//! Without a configured token every write is refused (403): an admin API must not be open by
//! default. A missing or wrong token is a 401. The scheme is matched in any case (`bearer`,
//! `BEARER`: RFC 9110 makes auth schemes case-insensitive), and surrounding whitespace is ignored
//! on both sides, so a token read from a file-mounted secret with its trailing newline still
//! matches (a token that is only whitespace counts as none). Both sides are hashed before a
//! constant-time comparison, so neither the token's bytes nor its length leak through timing.

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a write was refused; answers as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No admin token is configured: writes are off (403).
    Disabled,
    /// No bearer token in the request (401).
    Missing,
    /// A bearer token that is not the admin token (401).
    Wrong,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Disabled => refusal(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "admin writes are disabled: no ADMIN_TOKEN is configured",
            ),
            Refusal::Missing => unauthorized("missing bearer token"),
            Refusal::Wrong => unauthorized("wrong bearer token"),
        }
    }
}

/// `Ok` if `headers` carry the admin token.
pub(crate) fn authorize(headers: &HeaderMap, token: Option<&SecretString>) -> Result<(), Refusal> {
    let Some(token) = token
        .map(|t| t.expose_secret().trim())
        .filter(|t| !t.is_empty())
    else {
        return Err(Refusal::Disabled);
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    let Some(offered) = offered else {
        return Err(Refusal::Missing);
    };
    let expected = Sha256::digest(token.as_bytes());
    let offered = Sha256::digest(offered.as_bytes());
    if bool::from(expected.ct_eq(&offered)) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// The credentials of a `Bearer` authorization, the scheme in any case; `None` for any other
/// scheme or for an empty token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once([' ', '\t'])?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
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
        let refused = |h: HeaderMap, t: Option<&SecretString>| authorize(&h, t).unwrap_err();
        let bearer = |t: &str| headers(Some(&format!("Bearer {t}")));
        assert_eq!(refused(bearer("nope"), Some(&token)), Refusal::Wrong);
        assert_eq!(refused(bearer("s3cret2"), Some(&token)), Refusal::Wrong);
        assert_eq!(
            refused(headers(Some("s3cret")), Some(&token)),
            Refusal::Missing
        );
        assert_eq!(refused(headers(None), Some(&token)), Refusal::Missing);
        assert_eq!(refused(bearer("s3cret"), None), Refusal::Disabled);
        let status = |r: Refusal| r.into_response().status();
        assert_eq!(status(Refusal::Disabled), StatusCode::FORBIDDEN);
        assert_eq!(status(Refusal::Missing), StatusCode::UNAUTHORIZED);
        assert_eq!(status(Refusal::Wrong), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn the_scheme_is_matched_in_any_case() {
        let token = SecretString::from("s3cret");
        for accepted in [
            "bearer s3cret",
            "BEARER s3cret",
            "BeArEr s3cret",
            "Bearer  s3cret ",
            "Bearer\ts3cret",
        ] {
            assert!(
                authorize(&headers(Some(accepted)), Some(&token)).is_ok(),
                "{accepted:?}"
            );
        }
        for missing in [
            "Basic s3cret",
            "Bearers3cret",
            "Bearer ",
            "bearer",
            "Token s3cret",
        ] {
            assert_eq!(
                authorize(&headers(Some(missing)), Some(&token)),
                Err(Refusal::Missing),
                "{missing:?}"
            );
        }
        assert_eq!(
            authorize(&headers(Some("bearer S3CRET")), Some(&token)),
            Err(Refusal::Wrong),
            "the token itself is case-sensitive"
        );
    }

    #[test]
    fn a_configured_token_from_a_file_is_trimmed() {
        // As a file-mounted secret reads: with its trailing newline.
        let token = SecretString::from("s3cret\n");
        assert!(authorize(&headers(Some("Bearer s3cret")), Some(&token)).is_ok());
        let token = SecretString::from("  s3cret\r\n");
        assert!(authorize(&headers(Some("bearer s3cret")), Some(&token)).is_ok());
        assert_eq!(
            authorize(
                &headers(Some("Bearer s3cret\n".trim())),
                Some(&SecretString::from("other\n"))
            ),
            Err(Refusal::Wrong)
        );
        // Only whitespace is no token at all: writes stay off rather than open to an empty one.
        let blank = SecretString::from("\n");
        assert_eq!(
            authorize(&headers(Some("Bearer x")), Some(&blank)),
            Err(Refusal::Disabled)
        );
    }
}
