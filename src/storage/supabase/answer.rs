//! What Supabase Storage's error answers mean: the status the server means (it sends nearly all
//! of them as HTTP 400), whether the object is absent, and whether a retry can help.

use reqwest::{Response, StatusCode};
use serde::Deserialize;

use crate::storage::StorageError;

/// Supabase Storage's error body, e.g.
/// `{"statusCode": "404", "code": "NoSuchKey", "error": "not_found", "message": "Object not found"}`.
///
/// The server (v1.26.5 and v1.70.6 alike) answers nearly every error with HTTP 400 and puts the
/// status it means in `statusCode`, a string: "403" for a refused key, "404" for a missing object
/// or bucket, "409" for a duplicate. Only a 500 and a few explicit cases keep their own HTTP
/// status. Every field is optional: a gateway in front may answer with a body of its own, or none.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ApiError {
    #[serde(rename = "statusCode", default)]
    status_code: Option<serde_json::Value>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A failed answer: its HTTP status and what its body said.
#[derive(Debug)]
pub(super) struct Failure {
    http: StatusCode,
    body: ApiError,
}

impl Failure {
    pub(super) async fn read(response: Response) -> Failure {
        let http = response.status();
        let body = response.bytes().await.unwrap_or_default();
        Failure {
            http,
            body: serde_json::from_slice(&body).unwrap_or_default(),
        }
    }

    /// The status the server means: the body's `statusCode` where it gives one, else HTTP's.
    fn status(&self) -> u16 {
        let meant = match &self.body.status_code {
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            _ => None,
        };
        meant.unwrap_or(self.http.as_u16())
    }

    /// The object is not there — and only that: never a missing bucket or an unknown route,
    /// which are 404s too. Servers without `code` (before v1.x) said `"error": "not_found"`.
    pub(super) fn is_no_such_key(&self) -> bool {
        match self.body.code.as_deref() {
            Some(code) => code == "NoSuchKey",
            None => self.body.error.as_deref() == Some("not_found"),
        }
    }

    fn is_no_such_bucket(&self) -> bool {
        match self.body.code.as_deref() {
            Some(code) => code == "NoSuchBucket",
            None => self.body.error.as_deref() == Some("Bucket not found"),
        }
    }

    /// An HTTP 404 that names neither an object nor a bucket: the route does not exist, as when
    /// the URL is wrong. (The server sends missing objects and buckets as HTTP 400.)
    fn is_unknown_route(&self) -> bool {
        self.http == StatusCode::NOT_FOUND && !self.is_no_such_key() && !self.is_no_such_bucket()
    }

    /// Whether asking again may give another answer. A 4xx is a refusal that repeats — a key
    /// refused, a bucket missing, an image too large or of a type the bucket does not take —
    /// except the ones that mean "not now": a timeout, a conflict, a lock, a slow-down.
    fn retryable(&self) -> bool {
        if self.is_no_such_bucket() || self.is_unknown_route() {
            return false;
        }
        !matches!(self.status(), 400..=499) || matches!(self.status(), 408 | 409 | 423 | 429)
    }

    /// What to do about it, where the answer says.
    fn hint(&self, bucket: &str) -> Option<String> {
        if self.is_no_such_bucket() {
            return Some(format!(
                "bucket {bucket:?} does not exist: create it as a public bucket, or set \
                 storage.supabase.bucket"
            ));
        }
        if self.is_unknown_route() {
            return Some(
                "the server has no such route: SUPABASE_URL must be the project URL \
                 (https://<project>.supabase.co) — the worker adds /storage/v1 itself"
                    .to_owned(),
            );
        }
        matches!(self.status(), 401 | 403).then(|| {
            "the key was refused: use the project's service_role key \
             (SUPABASE_SERVICE_ROLE_KEY); an anon key is held back by row-level security"
                .to_owned()
        })
    }

    /// `supabase upload: HTTP 400 Bad Request (statusCode 403, error Unauthorized, code
    /// AccessDenied): signature verification failed; the key was refused: …`
    pub(super) fn into_error(self, what: &str, bucket: &str) -> StorageError {
        let mut fields = Vec::new();
        if self.body.status_code.is_some() {
            fields.push(format!("statusCode {}", self.status()));
        }
        if let Some(error) = &self.body.error {
            fields.push(format!("error {error}"));
        }
        if let Some(code) = self
            .body
            .code
            .as_ref()
            .filter(|c| self.body.error.as_ref() != Some(c))
        {
            fields.push(format!("code {code}"));
        }
        let mut text = format!("supabase {what}: HTTP {}", self.http);
        if !fields.is_empty() {
            text.push_str(&format!(" ({})", fields.join(", ")));
        }
        if let Some(message) = &self.body.message {
            text.push_str(": ");
            text.extend(message.chars().take(300));
        }
        if let Some(hint) = self.hint(bucket) {
            text.push_str("; ");
            text.push_str(&hint);
        }
        if self.retryable() {
            StorageError::Backend(text)
        } else {
            StorageError::Refused(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(http: u16, body: &str) -> Failure {
        Failure {
            http: StatusCode::from_u16(http).unwrap(),
            body: serde_json::from_str(body).unwrap_or_default(),
        }
    }

    /// The bodies are the servers' own (supabase/storage v1.70.6 `ERRORS.*` rendered by its error
    /// handler; v1.26.5 alike, but for its unknown-route answer, fastify's default).
    const NO_SUCH_KEY: &str = r#"{"statusCode":"404","code":"NoSuchKey","error":"not_found","message":"Object not found"}"#;
    const NO_SUCH_BUCKET: &str = r#"{"statusCode":"404","code":"NoSuchBucket","error":"Bucket not found","message":"Bucket not found"}"#;
    const DENIED: &str = r#"{"statusCode":"403","code":"AccessDenied","error":"Unauthorized","message":"signature verification failed"}"#;
    const UNKNOWN_ROUTE: &str = r#"{"statusCode":"404","code":"InvalidRequest","error":"Not Found","message":"Route DELETE:/storage/v1/storage/v1/object/b not found"}"#;
    const UNKNOWN_ROUTE_OLD: &str =
        r#"{"message":"Route DELETE:/x not found","error":"Not Found","statusCode":404}"#;

    #[test]
    fn only_no_such_key_means_the_object_is_absent() {
        assert!(failure(400, NO_SUCH_KEY).is_no_such_key());
        let before_codes =
            r#"{"statusCode":"404","error":"not_found","message":"Object not found"}"#;
        assert!(failure(400, before_codes).is_no_such_key());
        for (http, body) in [
            (400, NO_SUCH_BUCKET),
            (400, DENIED),
            (404, UNKNOWN_ROUTE),
            (404, UNKNOWN_ROUTE_OLD),
            (404, ""),
            (404, "<html>not found</html>"),
        ] {
            assert!(!failure(http, body).is_no_such_key(), "{http} {body}");
        }
    }

    #[test]
    fn refusals_are_permanent_and_outages_are_retried() {
        let permanent = |http, body| {
            matches!(
                failure(http, body).into_error("upload", "b"),
                StorageError::Refused(_)
            )
        };
        assert!(permanent(400, DENIED));
        assert!(permanent(400, NO_SUCH_BUCKET));
        assert!(permanent(404, UNKNOWN_ROUTE));
        assert!(permanent(404, UNKNOWN_ROUTE_OLD));
        assert!(permanent(401, ""), "a gateway's bare 401 (no apikey)");
        let too_large = r#"{"statusCode":"413","code":"EntityTooLarge","error":"Payload too large","message":"The object exceeded the maximum allowed size"}"#;
        assert!(permanent(400, too_large));
        let invalid_jwt = r#"{"statusCode":"400","code":"InvalidJWT","error":"InvalidJWT","message":"jwt malformed"}"#;
        assert!(permanent(400, invalid_jwt));
        for (http, body) in [
            (503, "upstream connect error"),
            (
                500,
                r#"{"statusCode":"500","code":"InternalError","error":"internal","message":"x"}"#,
            ),
            (
                429,
                r#"{"statusCode":"429","code":"SlowDown","error":"too_many_connections","message":"x"}"#,
            ),
            (
                400,
                r#"{"statusCode":"409","code":"ResourceAlreadyExists","error":"Duplicate","message":"x"}"#,
            ),
            (502, ""),
        ] {
            assert!(!permanent(http, body), "{http} {body}");
        }
    }

    #[test]
    fn errors_show_the_status_meant_its_error_and_code_and_what_to_do() {
        let message = failure(400, DENIED).into_error("upload", "b").to_string();
        assert_eq!(
            message,
            "storage backend refused: supabase upload: HTTP 400 Bad Request (statusCode 403, \
             error Unauthorized, code AccessDenied): signature verification failed; the key was \
             refused: use the project's service_role key (SUPABASE_SERVICE_ROLE_KEY); an anon \
             key is held back by row-level security"
        );
        let message = failure(400, NO_SUCH_BUCKET)
            .into_error("upload", "imgs")
            .to_string();
        assert!(
            message.contains("(statusCode 404, error Bucket not found, code NoSuchBucket)"),
            "{message}"
        );
        assert!(
            message.contains("bucket \"imgs\" does not exist"),
            "{message}"
        );
        let message = failure(404, UNKNOWN_ROUTE)
            .into_error("delete", "b")
            .to_string();
        assert!(message.contains("code InvalidRequest"), "{message}");
        assert!(
            message.contains("SUPABASE_URL must be the project URL"),
            "{message}"
        );
        let message = failure(503, "upstream connect error")
            .into_error("upload", "b")
            .to_string();
        assert_eq!(
            message,
            "storage backend: supabase upload: HTTP 503 Service Unavailable"
        );
    }
}
