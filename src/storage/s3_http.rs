//! `object_store`'s HTTP transport for the S3 backend, on the crate's own `reqwest` client.
//!
//! `object_store` 0.14 (the first release on a `quick-xml` free of RUSTSEC-2026-0194/0195) ships
//! its transport on `reqwest` 0.13 and signs with `aws-lc-rs`; taking those would compile a
//! second HTTP stack and a C crypto library, and put two rustls crypto providers in one process
//! (where rustls then refuses to pick one). So the backend uses `object_store`'s protocol
//! (`aws-base`: signing, XML, retries) with `ring` for signatures, and this connector for the
//! requests: the same `reqwest` 0.12, rustls and ring as the rest of the worker.
//!
//! What `object_store`'s own connector took from `ClientOptions` is set here: the request and
//! connect timeouts (`storage.request_timeout_secs`), `allow_http`, no transparent compression
//! (it would break `Content-Length`).

use std::time::Duration;

use async_trait::async_trait;
use http_body_util::BodyExt;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::{ClientConfigKey, ClientOptions};

/// Builds a `reqwest` client per store from the store's options.
#[derive(Debug, Clone)]
pub(super) struct ReqwestConnector {
    timeout: Duration,
    connect_timeout: Duration,
}

impl ReqwestConnector {
    pub(super) fn new(timeout: Duration, connect_timeout: Duration) -> ReqwestConnector {
        ReqwestConnector {
            timeout,
            connect_timeout,
        }
    }
}

impl HttpConnector for ReqwestConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let allow_http = options
            .get_config_value(&ClientConfigKey::AllowHttp)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let client = reqwest::Client::builder()
            .user_agent(concat!("memoji-worker/", env!("CARGO_PKG_VERSION")))
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .https_only(!allow_http)
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(Transport(client)))
    }
}

#[derive(Debug)]
struct Transport(reqwest::Client);

#[async_trait]
impl HttpService for Transport {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let url = reqwest::Url::parse(&parts.uri.to_string())
            .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        let mut outgoing = reqwest::Request::new(parts.method, url);
        *outgoing.headers_mut() = parts.headers;
        *outgoing.body_mut() = Some(reqwest::Body::wrap(body));
        let response = self.0.execute(outgoing).await.map_err(transport_error)?;
        let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
        let body = HttpResponseBody::new(body.map_err(transport_error));
        Ok(HttpResponse::from_parts(parts, body))
    }
}

/// A `reqwest` failure as `object_store` classifies it: what it may retry (connecting, a
/// request cut off, a timeout) and what it may not (an unreadable body).
fn transport_error(error: reqwest::Error) -> HttpError {
    let kind = if error.is_timeout() {
        HttpErrorKind::Timeout
    } else if error.is_connect() {
        HttpErrorKind::Connect
    } else if error.is_decode() {
        HttpErrorKind::Decode
    } else if error.is_body() {
        HttpErrorKind::Interrupted
    } else {
        HttpErrorKind::Request
    };
    // The URL carries no secret (requests are signed in headers), but object_store adds it to
    // its own errors where it wants it.
    HttpError::new(kind, error.without_url())
}
