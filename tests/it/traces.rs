//! Traces across the queue (docs/contract.md, "Trace context"): a job's W3C `traceparent`
//! continues through the worker onto its result and its `job.completed` event; with
//! `telemetry.otlp_endpoint` set, the worker's spans reach an OTLP collector (a stand-in here that
//! records what is posted to /v1/traces) as children of the job's span; its log lines carry the
//! trace id; a malformed traceparent is ignored; `memoji-worker enqueue` starts a trace.

use std::collections::HashMap;
use std::process::Stdio;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestEnv, eventually, openai_ok, worker_environment};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// A span as the collector received it, ids in hex.
#[derive(Debug, Clone)]
struct Recorded {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    service: String,
}

/// An OTLP/HTTP receiver stand-in: accepts every export and keeps it.
struct Collector {
    server: MockServer,
}

impl Collector {
    async fn start() -> Collector {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/traces"))
            .respond_with(
                ResponseTemplate::new(200).set_body_raw(Vec::new(), "application/x-protobuf"),
            )
            .mount(&server)
            .await;
        Collector { server }
    }

    fn endpoint(&self) -> String {
        self.server.uri()
    }

    /// Every span posted so far, decoded from the protobuf bodies.
    async fn spans(&self) -> Vec<Recorded> {
        let mut spans = Vec::new();
        for request in self.server.received_requests().await.unwrap_or_default() {
            assert_eq!(
                request
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some("application/x-protobuf")
            );
            let export = ExportTraceServiceRequest::decode(request.body.as_slice())
                .expect("an OTLP protobuf export");
            for resource in export.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .map(|v| format!("{:?}", v.value))
                    .unwrap_or_default();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        spans.push(Recorded {
                            name: span.name,
                            trace_id: hex::encode(span.trace_id),
                            span_id: hex::encode(span.span_id),
                            parent: hex::encode(span.parent_span_id),
                            service: service.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// The spans of `trace_id`, once every one of `names` has arrived.
    async fn trace(&self, trace_id: &str, names: &[&str]) -> HashMap<String, Recorded> {
        eventually(&format!("spans {names:?} of trace {trace_id}"), || async {
            let spans: HashMap<String, Recorded> = self
                .spans()
                .await
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .map(|s| (s.name.clone(), s))
                .collect();
            names
                .iter()
                .all(|name| spans.contains_key(*name))
                .then_some(spans)
        })
        .await
    }
}

fn headers(pairs: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert((*key).into(), AMQPValue::LongString((*value).into()));
    }
    table
}

fn header(delivery: &Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        other => panic!("{name} is not a string: {other:?}"),
    }
}

/// `traceparent`'s (trace id, parent id, flags), checked to be well formed.
fn parts(traceparent: &str) -> (String, String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00", "{traceparent}");
    assert_eq!(fields[1].len(), 32, "{traceparent}");
    assert_eq!(fields[2].len(), 16, "{traceparent}");
    assert!(
        traceparent
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{traceparent}"
    );
    (fields[1].into(), fields[2].into(), fields[3].into())
}

/// Publishes `job` with `trace` headers and returns its result's delivery.
async fn run_with(env: &mut TestEnv, job: &Value, trace: FieldTable) -> Delivery {
    publish_with(env, job, BasicProperties::default().with_headers(trace)).await
}

async fn publish_with(env: &mut TestEnv, job: &Value, properties: BasicProperties) -> Delivery {
    env.publish_raw(&serde_json::to_vec(job).unwrap(), properties)
        .await;
    let delivery = env.next_delivery().await;
    let result: Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(result["job_id"], job["job_id"]);
    assert_eq!(result["status"], "succeeded", "{result}");
    delivery
}

#[tokio::test]
async fn with_an_endpoint_a_jobs_trace_runs_through_the_worker_spans_to_its_result() {
    let collector = Collector::start().await;
    let mut env = TestEnv::without_worker(vec![openai_ok()], |settings| {
        settings.telemetry.otlp_endpoint = collector.endpoint();
    })
    .await;
    let worker = env.spawn_worker().await;
    let mut metrics = env.metrics_tap().await;
    let config = json!({"hair": "curly", "gesture": "wave"});

    // A miss, published by a "web app" whose span is PARENT in trace TRACE.
    let miss = env.job("u-trace", config.clone());
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let result = run_with(
        &mut env,
        &miss,
        headers(&[("traceparent", &traceparent), ("tracestate", "webapp=1")]),
    )
    .await;
    let (trace, result_parent, flags) = parts(&header(&result, "traceparent").unwrap());
    assert_eq!(trace, TRACE, "the result continues the job's trace");
    assert_ne!(
        result_parent, PARENT,
        "with the worker's span as its parent"
    );
    assert_eq!(flags, "01");
    assert_eq!(header(&result, "tracestate").as_deref(), Some("webapp=1"));

    let completed = metrics
        .next_delivery_with("job.completed", |body| body["job_id"] == miss["job_id"])
        .await;
    let (completed_trace, _, _) = parts(&header(&completed, "traceparent").unwrap());
    assert_eq!(
        completed_trace, TRACE,
        "job.completed carries the trace too"
    );

    let names = [
        "job",
        "intake",
        "cache lookup",
        "claim job",
        "single flight",
        "openai generate",
        "openai request",
        "storage upload",
        "publish result",
    ];
    let spans = collector.trace(TRACE, &names).await;
    let job = &spans["job"];
    assert_eq!(
        job.parent, PARENT,
        "the job span is the web app span's child"
    );
    assert!(job.service.contains("memoji-worker"), "{job:?}");
    for name in [
        "intake",
        "cache lookup",
        "claim job",
        "single flight",
        "openai generate",
        "storage upload",
        "publish result",
    ] {
        assert_eq!(
            spans[name].parent, job.span_id,
            "{name} is inside the job span"
        );
    }
    assert_eq!(
        spans["openai request"].parent,
        spans["openai generate"].span_id
    );
    assert_eq!(
        result_parent, spans["publish result"].span_id,
        "the result's parent is the span that published it"
    );
    assert_eq!(
        completed_trace, job.trace_id,
        "job.completed belongs to the job's trace"
    );

    // A hit without a traceparent: the worker starts a trace of its own.
    let hit = env.job("u-trace", config.clone());
    let result = run_with(&mut env, &hit, FieldTable::default()).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&result.data).unwrap()["cached"],
        true
    );
    let (started, started_parent, _) = parts(&header(&result, "traceparent").unwrap());
    assert_ne!(started, TRACE);
    let spans = collector
        .trace(
            &started,
            &["job", "intake", "cache lookup", "publish result"],
        )
        .await;
    assert_eq!(
        spans["job"].parent, "",
        "the worker's trace starts at its job span"
    );
    assert_eq!(spans["cache lookup"].parent, spans["job"].span_id);
    assert_eq!(started_parent, spans["publish result"].span_id);
    assert!(
        !spans.contains_key("openai generate"),
        "a hit calls no one: {spans:?}"
    );

    // A malformed traceparent is ignored: the job is served, in a trace of the worker's own.
    let odd = env.job("u-trace", config);
    let result = run_with(
        &mut env,
        &odd,
        headers(&[("traceparent", "00-not-a-trace-01"), ("tracestate", "x=1")]),
    )
    .await;
    let (fresh, _, _) = parts(&header(&result, "traceparent").unwrap());
    assert_ne!(fresh, TRACE);
    assert_ne!(fresh, started);
    let spans = collector.trace(&fresh, &["job", "publish result"]).await;
    assert_eq!(spans["job"].parent, "");

    // Every line the job logged carries its trace id (the worker logs JSON to a file).
    let log = worker.log();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &Value| line["spans"][0]["job_id"] == miss["job_id"])
        .collect();
    assert!(lines.len() >= 2, "{log}");
    for line in &lines {
        assert_eq!(line["spans"][0]["trace_id"], TRACE, "{line}");
    }
    assert!(
        lines.iter().any(|l| l["message"] == "result published"),
        "{log}"
    );
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
    worker.kill().await;
    env.cleanup().await;
}

#[tokio::test]
async fn without_an_endpoint_a_jobs_trace_context_passes_through_unchanged() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let mut metrics = env.metrics_tap().await;
    let config = json!({"hair": "short"});
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let trace = headers(&[
        ("traceparent", &traceparent),
        ("tracestate", "webapp=1,other=2"),
    ]);

    let (_channel, reply_queue) = env.reply_queue().await;
    let job = env.job("u-pass", config.clone());
    let properties = BasicProperties::default()
        .with_headers(trace)
        .with_reply_to(reply_queue.as_str().into());
    let result = publish_with(&mut env, &job, properties).await;
    assert_eq!(
        header(&result, "traceparent").as_deref(),
        Some(traceparent.as_str())
    );
    let reply = env.take_from(&reply_queue).await.expect("a reply");
    assert_eq!(
        header(&reply, "traceparent").as_deref(),
        Some(traceparent.as_str()),
        "the reply_to copy carries the trace too"
    );
    assert_eq!(
        header(&result, "tracestate").as_deref(),
        Some("webapp=1,other=2")
    );
    let completed = metrics
        .next_delivery_with("job.completed", |body| body["job_id"] == job["job_id"])
        .await;
    assert_eq!(
        header(&completed, "traceparent").as_deref(),
        Some(traceparent.as_str())
    );

    // No traceparent, or one that does not parse: served as usual, and no trace is made up.
    for trace in [
        FieldTable::default(),
        headers(&[("traceparent", "01-zz-zz-zz"), ("tracestate", "a=b")]),
        headers(&[(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )]),
    ] {
        let job = env.job("u-pass", config.clone());
        let result = run_with(&mut env, &job, trace).await;
        assert_eq!(header(&result, "traceparent"), None);
        assert_eq!(header(&result, "tracestate"), None);
    }
    env.cleanup().await;
}

#[tokio::test]
async fn enqueue_starts_a_trace_and_exports_its_span_when_an_endpoint_is_set() {
    let collector = Collector::start().await;
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    for endpoint in [None, Some(collector.endpoint())] {
        let mut vars = worker_environment(&env.settings);
        if let Some(endpoint) = &endpoint {
            vars.push(("MEMOJI__TELEMETRY__OTLP_ENDPOINT".into(), endpoint.clone()));
        }
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"))
            .args(["enqueue", "--hair", "long"])
            .env_clear()
            .envs(vars)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let job = env
            .take_from(&env.settings.amqp.job_queue)
            .await
            .expect("the job is queued");
        let (trace, parent, flags) = parts(&header(&job, "traceparent").expect("a traceparent"));
        assert_eq!(flags, "01", "sampled, so a worker that exports records it");
        if endpoint.is_some() {
            // The process sent its span before it exited.
            let spans = collector.trace(&trace, &["enqueue"]).await;
            assert_eq!(spans["enqueue"].span_id, parent);
            assert_eq!(spans["enqueue"].parent, "");
        } else {
            assert!(collector.spans().await.is_empty());
        }
    }
    env.cleanup().await;
}
