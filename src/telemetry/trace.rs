//! Traces across the queue: the W3C trace context (`traceparent`, `tracestate`) that a job's AMQP
//! headers carry is continued in the worker's spans and put on what the worker publishes for the
//! job (its result, the `reply_to` copy, its `job.completed` event), so one trace runs from the
//! web app through the worker to the result's subscriber (CONTRACT.md, docs/contract.md).
//!
//! Two modes, chosen by `telemetry.otlp_endpoint`:
//! - **Exporting** (an endpoint is set): [`Exporter`] adds an OpenTelemetry layer to the
//!   subscriber, and the worker's own spans — `job`, with `intake`, `cache lookup`, `claim job`,
//!   `single flight`, `openai generate`/`openai request`, `storage upload` and `publish result`
//!   inside it — become OpenTelemetry spans, batched and posted over OTLP/HTTP (protobuf) through
//!   our reqwest. The `job` span continues the job's trace, or starts one when the job has none
//!   (or a malformed one); a message published for the job carries the span that published it.
//! - **Passing through** (the default): no spans are made or sent. A job's trace context is
//!   copied unchanged onto what is published for it, so the web app's trace still reaches the
//!   result's subscriber, one hop shorter.
//!
//! Either way the `job` span records the trace id (`trace_id`), so every log line of the job
//! carries it. Without an exporter a job without a `traceparent` costs one header lookup and
//! nothing else (nothing asks the subscriber for an OpenTelemetry context); only a present header
//! is parsed, and a malformed one is ignored (the job is served as if it had none).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanContext, TraceContextExt as _, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry_http::{Bytes, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::TelemetrySettings;

pub(crate) const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` AMQP header, continued with `traceparent`.
pub const TRACESTATE: &str = "tracestate";

/// How long one export may take, and how long stopping waits for the last spans to go out.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The OTLP exporter refused its configuration.
    #[error("telemetry.otlp_endpoint: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The exporter's HTTP client could not be built.
    #[error("telemetry.otlp_endpoint: the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("telemetry.otlp_endpoint needs a Tokio runtime to export from")]
    /// Export was asked for outside a Tokio runtime.
    NoRuntime,
}

/// The trace context a message arrived with: `None` when it had no `traceparent`, or one that
/// does not parse.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Incoming(Option<SpanContext>);

impl Incoming {
    /// Reads `traceparent` (and `tracestate`) from a message's headers; parses only what is there.
    pub(crate) fn from_headers(headers: Option<&FieldTable>) -> Incoming {
        let Some(headers) = headers.filter(|h| h.inner().contains_key(TRACEPARENT)) else {
            return Incoming(None);
        };
        let cx = TraceContextPropagator::new().extract(&Carrier(headers));
        let parent = cx.span().span_context().clone();
        if parent.is_valid() {
            Incoming(Some(parent))
        } else {
            tracing::debug!("ignoring a malformed traceparent header");
            Incoming(None)
        }
    }

    /// The incoming trace's id, as 32 hex digits.
    pub fn trace_id(&self) -> Option<String> {
        self.0.as_ref().map(|parent| parent.trace_id().to_string())
    }

    /// Makes `span` (not entered yet) a child of the incoming context when spans are exported,
    /// and records the trace it belongs to in its `trace_id` field.
    pub(crate) fn adopt(&self, span: &Span) {
        if !exporting() {
            if let Some(parent) = &self.0 {
                span.record("trace_id", tracing::field::display(parent.trace_id()));
            }
            return;
        }
        if let Some(parent) = &self.0 {
            let _ = span.set_parent(Context::new().with_remote_span_context(parent.clone()));
        }
        let exported = span.context().span().span_context().clone();
        let trace = if exported.is_valid() {
            Some(exported.trace_id())
        } else {
            self.0.as_ref().map(SpanContext::trace_id)
        };
        if let Some(trace) = trace {
            span.record("trace_id", tracing::field::display(trace));
        }
    }

    /// The trace headers for a message published now on behalf of this message: the current
    /// span's context when spans are exported, else the incoming context unchanged; `None` when
    /// there is neither.
    pub(crate) fn outgoing(&self) -> Option<FieldTable> {
        if !exporting() {
            return self.0.as_ref().map(headers_of);
        }
        let current = Span::current().context().span().span_context().clone();
        let context = if current.is_valid() {
            current
        } else {
            self.0.clone()?
        };
        Some(headers_of(&context))
    }
}

/// Whether this process exports spans: set once the subscriber with the OpenTelemetry layer is
/// installed. Until then (and for good without an endpoint) nothing asks the subscriber for an
/// OpenTelemetry context, which keeps a job without a trace context free of any tracing cost.
static EXPORTING: AtomicBool = AtomicBool::new(false);

fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Called by `telemetry::init` once the subscriber with the exporter's layer is installed.
pub(super) fn exporting_from_now_on() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// The trace headers for a message that starts a trace here (`memoji-worker enqueue`): the
/// current span's context when spans are exported, else a new trace of its own (sampled, so a
/// worker that exports records it).
pub fn start() -> FieldTable {
    let current = if exporting() {
        Span::current().context().span().span_context().clone()
    } else {
        SpanContext::empty_context()
    };
    let context = if current.is_valid() {
        current
    } else {
        let ids = RandomIdGenerator::default();
        SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    };
    headers_of(&context)
}

/// `context` as W3C headers (`tracestate` only when it has entries).
fn headers_of(context: &SpanContext) -> FieldTable {
    let mut headers = FieldTable::default();
    let cx = Context::new().with_remote_span_context(context.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut Carrier(&mut headers));
    headers
}

/// AMQP headers as the propagator's carrier: values are long strings (what web apps' AMQP
/// clients send for a string), short strings accepted too.
struct Carrier<T>(T);

impl Extractor for Carrier<&FieldTable> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
            AMQPValue::ShortString(value) => Some(value.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}

impl Injector for Carrier<&mut FieldTable> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0
                .insert(key.into(), AMQPValue::LongString(LongString::from(value)));
        }
    }
}

/// The span exporter, when `telemetry.otlp_endpoint` is set: the tracer for the subscriber's
/// OpenTelemetry layer, and [`Exporter::shutdown`] to send the last spans before the process
/// ends.
pub struct Exporter {
    provider: SdkTracerProvider,
    url: String,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("url", &crate::redact::url(&self.url))
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter posting to the configured endpoint; `None` when it is empty. Must be called
    /// inside a Tokio runtime, on which the exports run.
    pub fn from_settings(settings: &TelemetrySettings) -> Result<Option<Exporter>, TraceError> {
        let Some(url) = settings.traces_url() else {
            return Ok(None);
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TraceError::NoRuntime)?;
        let client = OtlpClient {
            http: reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?,
            runtime,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url.as_str())
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("memoji-worker");
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Some(Exporter { provider, url }))
    }

    pub(crate) fn tracer(&self) -> SdkTracer {
        self.provider.tracer("memoji-worker")
    }

    /// Where spans go (password masked).
    pub fn url(&self) -> String {
        crate::redact::url(&self.url)
    }

    /// Sends the spans still batched and stops exporting; blocks up to a few seconds.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(%error, "could not export the last spans");
        }
    }
}

/// The exporter's HTTP client: our reqwest, its requests run on the Tokio runtime (the SDK's
/// batch processor exports from a thread of its own, outside any runtime).
#[derive(Debug)]
struct OtlpClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

/// A collector's answer is a few bytes; anything past this is not read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let mut response = http.execute(request).await?;
            let (status, headers) = (response.status(), response.headers().clone());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, headers, Bytes::from(body)))
        });
        let (status, headers, body) = sent.await.map_err(|e| -> HttpError { Box::new(e) })??;
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in pairs {
            table.insert((*key).into(), AMQPValue::LongString((*value).into()));
        }
        table
    }

    fn text(table: &FieldTable, key: &str) -> Option<String> {
        Carrier(table).get(key).map(str::to_owned)
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_passes_through_unchanged_when_nothing_is_exported() {
        let incoming = Incoming::from_headers(Some(&headers(&[
            (TRACEPARENT, PARENT),
            (TRACESTATE, "vendor=abc,other=1"),
            ("x-other", "kept out"),
        ])));
        assert_eq!(
            incoming.trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let out = incoming.outgoing().expect("headers to continue the trace");
        assert_eq!(text(&out, TRACEPARENT).as_deref(), Some(PARENT));
        assert_eq!(
            text(&out, TRACESTATE).as_deref(),
            Some("vendor=abc,other=1")
        );
        assert_eq!(out.inner().len(), 2);
    }

    #[test]
    fn no_or_malformed_traceparents_give_no_trace() {
        assert_eq!(Incoming::from_headers(None), Incoming(None));
        assert_eq!(
            Incoming::from_headers(Some(&headers(&[("x-delivery-count", "1")]))),
            Incoming(None)
        );
        for bad in [
            "",
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let incoming = Incoming::from_headers(Some(&headers(&[(TRACEPARENT, bad)])));
            assert_eq!(incoming, Incoming(None), "{bad:?}");
            assert!(incoming.outgoing().is_none(), "{bad:?}");
        }
        // Not a string at all.
        let mut table = FieldTable::default();
        table.insert(TRACEPARENT.into(), AMQPValue::LongLongInt(7));
        assert_eq!(Incoming::from_headers(Some(&table)), Incoming(None));
    }

    #[test]
    fn a_short_string_traceparent_is_read_too() {
        let mut table = FieldTable::default();
        table.insert(TRACEPARENT.into(), AMQPValue::ShortString(PARENT.into()));
        assert!(Incoming::from_headers(Some(&table)).trace_id().is_some());
    }

    #[test]
    fn a_started_trace_is_new_valid_and_sampled() {
        let (a, b) = (start(), start());
        let a = text(&a, TRACEPARENT).unwrap();
        let b = text(&b, TRACEPARENT).unwrap();
        assert_ne!(a[3..35], b[3..35], "a new trace id each time");
        assert!(a.starts_with("00-") && a.ends_with("-01"), "{a}");
        let parsed = Incoming::from_headers(Some(&headers(&[(TRACEPARENT, &a)])));
        assert_eq!(parsed.trace_id().as_deref(), Some(&a[3..35]));
    }

    #[test]
    fn the_job_span_records_the_trace_id_without_an_exporter() {
        let incoming = Incoming::from_headers(Some(&headers(&[(TRACEPARENT, PARENT)])));
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("job", trace_id = tracing::field::Empty);
            incoming.adopt(&span);
            let _entered = span.enter();
            // No exporter: the current span has no OpenTelemetry context, the incoming one goes on.
            let out = incoming.outgoing().unwrap();
            assert_eq!(text(&out, TRACEPARENT).as_deref(), Some(PARENT));
        });
    }
}
