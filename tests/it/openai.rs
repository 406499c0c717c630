//! A local stand-in that answers like OpenAI's image API does today (CONTRACT.md §11), so that the
//! worker is tested against the API as it is, not as it was:
//! - `POST /v1/images/generations` refuses what today's API refuses — a shut-down or unknown model
//!   (404 `model_not_found`), `response_format` on a GPT image model, a size, quality, background
//!   or complexity the model does not take (400) — before it answers with the test's scripted
//!   reply; a scripted image is drawn at the requested size, with token `usage`.
//! - `GET /v1/models/{id}` answers for the models it serves, with `shutdown_date` (null unless a
//!   test announces one), and 404 `model_not_found` for the others.
//!
//! - the Batch API (`/v1/files`, `/v1/batches`), scripted by the test: `tests/it/openai_batches.rs`.
//!
//! Its rules are written here from the contract, not taken from the worker's catalogue, so a
//! mistake in the worker's table shows up as a refusal.
//!
//! A reply can be held ([`Reply::held`]): the stand-in then answers through a [`Gate`] in front
//! of it, which keeps each held answer until the test lets it go, and lets the test wait until N
//! generations are held. A test holds a generation mid-flight for exactly as long as it needs
//! (single flight, shutdown, redelivery) instead of sleeping and hoping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// How the stand-in answers a request that today's API accepts.
#[derive(Clone)]
pub enum Reply {
    /// An image of the requested size, with `usage`, after `delay`.
    Image { delay: Duration },
    /// Exactly this response.
    Template(ResponseTemplate),
    /// This reply, held at the stand-in's [`Gate`] until the test releases it.
    Held(Box<Reply>),
}

impl Reply {
    /// The same reply, `delay` later.
    pub fn set_delay(self, delay: Duration) -> Reply {
        match self {
            Reply::Image { .. } => Reply::Image { delay },
            Reply::Template(template) => Reply::Template(template.set_delay(delay)),
            Reply::Held(reply) => Reply::Held(Box::new(reply.set_delay(delay))),
        }
    }

    /// The same reply, held until the test releases it ([`OpenAiStub::gate`]): the request has
    /// arrived (and is counted in [`OpenAiStub::calls`]), the answer has not.
    pub fn held(self) -> Reply {
        Reply::Held(Box::new(self))
    }

    fn is_held(&self) -> bool {
        matches!(self, Reply::Held(_))
    }

    /// The response, marked for the gate if held.
    fn answer(self, body: &Value) -> ResponseTemplate {
        match self {
            Reply::Image { delay } => image_for(body).set_delay(delay),
            Reply::Template(template) => template,
            Reply::Held(reply) => reply.answer(body).insert_header(HELD, "1"),
        }
    }
}

/// The header by which the stand-in tells its gate to hold an answer (never passed on).
const HELD: &str = "x-stand-in-held";

impl From<ResponseTemplate> for Reply {
    fn from(template: ResponseTemplate) -> Reply {
        Reply::Template(template)
    }
}

/// A generated image, as today's API answers.
pub fn openai_ok() -> Reply {
    Reply::Image {
        delay: Duration::ZERO,
    }
}

/// An error in OpenAI's shape.
pub fn openai_error(status: u16, message: &str, code: Option<&str>) -> Reply {
    Reply::Template(error_template(status, message, code, None))
}

fn error_template(
    status: u16,
    message: &str,
    code: Option<&str>,
    param: Option<&str>,
) -> ResponseTemplate {
    let (status, body) = error_json(status, message, code, param);
    ResponseTemplate::new(status).set_body_json(body)
}

/// An error in OpenAI's shape: its status and body.
fn error_json(status: u16, message: &str, code: Option<&str>, param: Option<&str>) -> (u16, Value) {
    (
        status,
        json!({
            "error": {"message": message, "type": "invalid_request_error", "code": code, "param": param}
        }),
    )
}

/// A PNG as OpenAI would return it (base64), drawn by the placeholder generator.
pub fn png_b64() -> String {
    png_b64_sized("1024x1024")
}

fn png_b64_sized(size: &str) -> String {
    use base64::Engine;
    let config = memoji_worker::job::AvatarConfig::parse(&json!({ "size": size })).unwrap();
    let png = memoji_worker::generate::draw_placeholder(&config).unwrap();
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// Today's models and what each takes.
struct Served {
    qualities: &'static [&'static str],
    complexity: bool,
}

fn served(model: &str) -> Option<Served> {
    const Q2: &[&str] = &["low", "medium", "high", "auto"];
    const Q25: &[&str] = &["low", "medium", "high", "xhigh", "max", "auto"];
    match model {
        "gpt-image-2.6-flare" | "gpt-image-2.6-sunburst" => Some(Served {
            qualities: Q25,
            complexity: true,
        }),
        "gpt-image-2.5-flare" | "gpt-image-2.5-sunburst" => Some(Served {
            qualities: Q25,
            complexity: false,
        }),
        "gpt-image-2" => Some(Served {
            qualities: Q2,
            complexity: false,
        }),
        _ => None,
    }
}

/// Why today's API would refuse `size`, if it would.
fn size_problem(size: &str) -> Option<String> {
    if size == "auto" {
        return None;
    }
    let Some((w, h)) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u64>().ok()?, h.parse::<u64>().ok()?)))
    else {
        return Some(format!("Invalid size '{size}'."));
    };
    let ok = w % 16 == 0
        && h % 16 == 0
        && w.max(h) <= 3840
        && w.max(h) <= 3 * w.min(h)
        && (655_360..=8_294_400).contains(&(w * h));
    (!ok).then(|| format!("Invalid size '{size}': edges must be multiples of 16, at most 3840, aspect 1:3 to 3:1, 655360 to 8294400 pixels."))
}

/// The refusal today's API gives a generation request, if any.
fn refusal(body: &Value) -> Option<ResponseTemplate> {
    refusal_json(body).map(|(status, body)| ResponseTemplate::new(status).set_body_json(body))
}

/// The refusal today's API gives a generation request, if any: its status and body.
pub fn refusal_json(body: &Value) -> Option<(u16, Value)> {
    let error_template = error_json;
    let invalid = |message: String, param: &str| {
        Some(error_template(
            400,
            &message,
            Some("invalid_value"),
            Some(param),
        ))
    };
    let Some(model) = body["model"].as_str() else {
        return Some(error_template(
            400,
            "Missing required parameter: 'model'.",
            Some("missing_required_parameter"),
            Some("model"),
        ));
    };
    let Some(rules) = served(model) else {
        return Some(error_template(
            404,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            Some("model_not_found"),
            None,
        ));
    };
    if body.get("response_format").is_some() {
        return Some(error_template(
            400,
            "Unknown parameter: 'response_format'.",
            Some("unknown_parameter"),
            Some("response_format"),
        ));
    }
    if let Some(problem) = size_problem(body["size"].as_str().unwrap_or("auto")) {
        return invalid(problem, "size");
    }
    if let Some(quality) = body.get("quality").and_then(Value::as_str)
        && !rules.qualities.contains(&quality)
    {
        return invalid(
            format!("Invalid quality '{quality}' for {model}."),
            "quality",
        );
    }
    if let Some(complexity) = body.get("complexity") {
        if !rules.complexity {
            return invalid(
                format!("{model} does not support complexity."),
                "complexity",
            );
        }
        if !["low", "medium", "high"].contains(&complexity.as_str().unwrap_or_default()) {
            return invalid(format!("Invalid complexity {complexity}."), "complexity");
        }
    }
    if let Some(background) = body.get("background").and_then(Value::as_str)
        && !["transparent", "opaque", "auto"].contains(&background)
    {
        return invalid(format!("Invalid background '{background}'."), "background");
    }
    if let Some(format) = body.get("output_format").and_then(Value::as_str)
        && !["png", "jpeg", "webp"].contains(&format)
    {
        return invalid(
            format!("Invalid output_format '{format}'."),
            "output_format",
        );
    }
    None
}

/// The answer to an accepted request that asked for an image: drawn at the requested size, with
/// token usage that grows with the quality, as today's models bill.
fn image_for(body: &Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(image_json(body))
}

/// The body of [`image_for`]'s answer.
pub fn image_json(body: &Value) -> Value {
    let size = match body["size"].as_str().unwrap_or("auto") {
        "auto" => "1024x1024",
        size => size,
    };
    let output_tokens = match body["quality"].as_str().unwrap_or("auto") {
        "low" => 272,
        "high" => 4_160,
        "xhigh" => 6_240,
        "max" => 8_320,
        _ => 1_056,
    };
    let text_tokens = body["prompt"]
        .as_str()
        .map_or(0, |p| p.split_whitespace().count() as u64);
    json!({
        "created": 1_700_000_000,
        "data": [{"b64_json": png_b64_sized(size)}],
        "usage": {
            "input_tokens": text_tokens,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
            "output_tokens": output_tokens,
            "total_tokens": text_tokens + output_tokens
        }
    })
}

/// Answers each generation with the next reply (repeating the last), counting calls.
struct Generations {
    replies: Vec<Reply>,
    calls: Arc<AtomicU32>,
    shutdowns: Arc<Mutex<HashMap<String, String>>>,
}

impl Respond for Generations {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return error_template(400, "We could not parse the JSON body.", None, None);
        };
        let model = body["model"].as_str().unwrap_or_default();
        if self
            .shutdowns
            .lock()
            .unwrap()
            .get(model)
            .map(String::as_str)
            == Some("gone")
        {
            return error_template(
                404,
                &format!("The model `{model}` does not exist or you do not have access to it."),
                Some("model_not_found"),
                None,
            );
        }
        if let Some(refused) = refusal(&body) {
            return refused;
        }
        let reply = match self.replies.len() {
            0 => openai_ok(),
            len => self.replies[n.min(len - 1)].clone(),
        };
        reply.answer(&body)
    }
}

/// `GET /v1/models/{id}`.
struct Models {
    shutdowns: Arc<Mutex<HashMap<String, String>>>,
    down: Arc<AtomicBool>,
}

impl Respond for Models {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if self.down.load(Ordering::SeqCst) {
            return ResponseTemplate::new(503).set_body_string("upstream connect error");
        }
        let id = request.url.path().trim_start_matches("/v1/models/");
        let shutdowns = self.shutdowns.lock().unwrap();
        match shutdowns.get(id) {
            Some(date) if date == "gone" => error_template(
                404,
                &format!("The model `{id}` does not exist or you do not have access to it."),
                Some("model_not_found"),
                None,
            ),
            date if served(id).is_some() => ResponseTemplate::new(200).set_body_json(json!({
                "id": id, "object": "model", "created": 1_750_000_000, "owned_by": "system",
                "shutdown_date": date
            })),
            _ => error_template(
                404,
                &format!("The model `{id}` does not exist or you do not have access to it."),
                Some("model_not_found"),
                None,
            ),
        }
    }
}

pub struct OpenAiStub {
    pub server: MockServer,
    pub calls: Arc<AtomicU32>,
    /// The Batch API's state (`tests/it/openai_batches.rs`).
    pub batches: crate::openai_batches::Batches,
    shutdowns: Arc<Mutex<HashMap<String, String>>>,
    models_down: Arc<AtomicBool>,
    /// In front of `server` when a reply is held.
    gate: Option<Gate>,
}

impl OpenAiStub {
    pub async fn answering(replies: Vec<Reply>) -> OpenAiStub {
        let held = replies.iter().any(Reply::is_held);
        let server = MockServer::start().await;
        let calls = Arc::new(AtomicU32::new(0));
        let shutdowns = Arc::new(Mutex::new(HashMap::new()));
        let models_down = Arc::new(AtomicBool::new(false));
        Mock::given(method("POST"))
            .and(path("/v1/images/generations"))
            .respond_with(Generations {
                replies,
                calls: calls.clone(),
                shutdowns: shutdowns.clone(),
            })
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path_regex("^/v1/models/[^/]+$"))
            .respond_with(Models {
                shutdowns: shutdowns.clone(),
                down: models_down.clone(),
            })
            .mount(&server)
            .await;
        let batches = crate::openai_batches::Batches::default();
        Mock::given(path_regex("^/v1/(files|batches)(/.*)?$"))
            .respond_with(batches.clone())
            .mount(&server)
            .await;
        let gate = if held {
            Some(Gate::in_front_of(&server.uri()).await)
        } else {
            None
        };
        OpenAiStub {
            server,
            calls,
            batches,
            shutdowns,
            models_down,
            gate,
        }
    }

    /// The root URL the worker is given (`{uri}/v1` is its `openai.base_url`): the gate's when a
    /// reply is held, else the server's.
    pub fn uri(&self) -> String {
        match &self.gate {
            Some(gate) => gate.uri.clone(),
            None => self.server.uri(),
        }
    }

    /// The gate that holds the held replies.
    pub fn gate(&self) -> &Gate {
        self.gate
            .as_ref()
            .expect("a stand-in with a held reply (Reply::held) has a gate")
    }

    /// Makes `GET /v1/models/…` answer 503 (`true`) or normally again.
    pub fn set_models_down(&self, down: bool) {
        self.models_down.store(down, Ordering::SeqCst);
    }

    /// Generation requests made so far (refused ones included).
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Makes `GET /v1/models/{model}` announce a `shutdown_date`.
    pub fn announce_shutdown(&self, model: &str, date: &str) {
        self.shutdowns
            .lock()
            .unwrap()
            .insert(model.to_owned(), date.to_owned());
    }

    /// Makes OpenAI stop knowing `model`: 404 `model_not_found` for its generations and for
    /// `GET /v1/models/{model}`.
    pub fn forget(&self, model: &str) {
        self.announce_shutdown(model, "gone");
    }

    /// The bodies of the generation requests received so far.
    pub async fn generation_requests(&self) -> Vec<Value> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == "/v1/images/generations")
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    }

    /// How many `GET /v1/models/…` requests arrived.
    pub async fn model_checks(&self) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path().starts_with("/v1/models/"))
            .count()
    }
}

/// An HTTP front for the stand-in that passes every request through and keeps each answer marked
/// held until the test releases it. Held answers go in the order they arrived.
pub struct Gate {
    uri: String,
    state: Arc<GateState>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

struct GateState {
    /// Answers that reached the gate so far (released or not).
    arrived: AtomicUsize,
    arrival: tokio::sync::Notify,
    /// One permit per answer allowed through.
    open: tokio::sync::Semaphore,
}

#[derive(Clone)]
struct Front {
    upstream: String,
    http: reqwest::Client,
    state: Arc<GateState>,
}

impl Gate {
    async fn in_front_of(upstream: &str) -> Gate {
        let state = Arc::new(GateState {
            arrived: AtomicUsize::new(0),
            arrival: tokio::sync::Notify::new(),
            open: tokio::sync::Semaphore::new(0),
        });
        let front = Front {
            upstream: upstream.to_owned(),
            http: reqwest::Client::new(),
            state: state.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(pass).with_state(front);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Gate {
            uri,
            state,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }

    /// How many held answers have reached the gate so far.
    pub fn arrived(&self) -> usize {
        self.state.arrived.load(Ordering::SeqCst)
    }

    /// Waits until `n` held answers have reached the gate in all (at most 30 s).
    pub async fn wait_for(&self, n: usize) {
        let reached = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let arrival = self.state.arrival.notified();
                if self.arrived() >= n {
                    return;
                }
                arrival.await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "only {} of {n} generations reached the gate",
            self.arrived()
        );
    }

    /// Lets the next `n` held answers go.
    pub fn release(&self, n: usize) {
        self.state.open.add_permits(n);
    }

    /// Lets every held answer go, now and from now on.
    pub fn open(&self) {
        self.state
            .open
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }
}

/// Passes a request to the stand-in and its answer back, holding it if the stand-in marked it.
async fn pass(
    axum::extract::State(front): axum::extract::State<Front>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return http::StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = parts.headers;
    headers.remove(http::header::HOST);
    let answer = front
        .http
        .request(parts.method, format!("{}{path}", front.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(answer) = answer else {
        return http::StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let mut headers = answer.headers().clone();
    let Ok(body) = answer.bytes().await else {
        return http::StatusCode::BAD_GATEWAY.into_response();
    };
    if headers.remove(HELD).is_some() {
        front.state.arrived.fetch_add(1, Ordering::SeqCst);
        front.state.arrival.notify_waiters();
        if let Ok(permit) = front.state.open.acquire().await {
            permit.forget();
        }
    }
    for hop in [
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
    ] {
        headers.remove(hop);
    }
    (status, headers, body).into_response()
}
