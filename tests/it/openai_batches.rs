//! The OpenAI stand-in's Batch API (part of `tests/it/openai.rs`' server): `POST /v1/files`
//! (multipart, purpose `batch`), `POST /v1/batches`, `GET /v1/batches/{id}` and
//! `GET /v1/files/{id}/content`, answering as OpenAI does, with the Authorization header checked
//! (a wrong key gets OpenAI's 401, which echoes the key).
//!
//! A test scripts what batches do ([`BatchScript`]): the statuses shown at successive polls, how
//! the batch ends (completed, expired or cancelled with part of its lines answered, or failed as a
//! whole), which lines fail (in the error file, with a non-200 status in the output file, or with
//! an image that is not a PNG), and it can hold every batch `in_progress` until it lets go. Each
//! line's body is checked as a live request is ([`super::openai::refusal_json`]) and answered with
//! the same image and usage ([`super::openai::image_json`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use wiremock::{Request, Respond, ResponseTemplate};

use crate::openai::{image_json, refusal_json};

/// The key the test workers are given (`support::env::isolated_settings`).
const KEY: &str = "sk-test-key";

/// How a batch ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    Completed,
    /// The 24 h window passed with the first `answered` lines done.
    Expired {
        answered: usize,
    },
    /// Cancelled with the first `answered` lines done.
    Cancelled {
        answered: usize,
    },
    /// Failed as a whole (its input was refused), with this message.
    Failed {
        message: String,
    },
}

/// What the next batches do.
#[derive(Debug, Clone)]
pub struct BatchScript {
    /// The statuses shown at successive polls before the batch ends.
    pub polls: Vec<&'static str>,
    pub end: End,
    /// Lines (1 = the first) that fail with a 400 in the error file.
    pub error_lines: Vec<usize>,
    /// Lines answered with a 500 in the output file.
    pub non_200_lines: Vec<usize>,
    /// Lines answered 200 with an image that is not a PNG.
    pub bad_image_lines: Vec<usize>,
}

impl Default for BatchScript {
    fn default() -> BatchScript {
        BatchScript {
            polls: vec!["validating", "in_progress", "finalizing"],
            end: End::Completed,
            error_lines: Vec::new(),
            non_200_lines: Vec::new(),
            bad_image_lines: Vec::new(),
        }
    }
}

struct StubBatch {
    id: String,
    input_file_id: String,
    lines: Vec<Value>,
    script: BatchScript,
    step: usize,
    body: Value,
}

#[derive(Default)]
struct State {
    script: BatchScript,
    held: bool,
    files: HashMap<String, Vec<u8>>,
    inputs: Vec<String>,
    batches: HashMap<String, StubBatch>,
    order: Vec<String>,
    next: u32,
    polls: u32,
    /// Error files, and how long their download takes to start.
    error_files: Vec<String>,
    error_file_delay: Option<std::time::Duration>,
}

/// The Batch API's state, shared by the test and the server.
#[derive(Clone, Default)]
pub struct Batches(Arc<Mutex<State>>);

impl Batches {
    /// What batches created from now on do.
    pub fn script(&self, script: BatchScript) {
        self.0.lock().unwrap().script = script;
    }

    /// Holds every batch `in_progress` (at each poll) until [`Batches::release`].
    pub fn hold(&self) {
        self.0.lock().unwrap().held = true;
    }

    pub fn release(&self) {
        self.0.lock().unwrap().held = false;
    }

    /// Makes every error file's download wait `delay` before it starts (`None`: at once), so a
    /// test can stop a process between a batch's output file and its error file.
    pub fn delay_error_files(&self, delay: Option<std::time::Duration>) {
        self.0.lock().unwrap().error_file_delay = delay;
    }

    /// Batches created so far.
    pub fn created(&self) -> usize {
        self.0.lock().unwrap().order.len()
    }

    /// `GET /v1/batches/{id}` requests answered so far.
    pub fn polls(&self) -> u32 {
        self.0.lock().unwrap().polls
    }

    /// Every line of every uploaded input file.
    pub fn uploaded_lines(&self) -> Vec<Value> {
        let state = self.0.lock().unwrap();
        state
            .inputs
            .iter()
            .filter_map(|id| state.files.get(id))
            .flat_map(|content| {
                String::from_utf8_lossy(content)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<Value>>()
            })
            .collect()
    }
}

fn error(status: u16, message: &str, code: Option<&str>) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {"message": message, "type": "invalid_request_error", "code": code, "param": null}
    }))
}

impl Respond for Batches {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if auth != format!("Bearer {KEY}") {
            let given = auth.trim_start_matches("Bearer ");
            return error(
                401,
                &format!(
                    "Incorrect API key provided: {given}. You can find your API key at https://platform.openai.com/account/api-keys."
                ),
                Some("invalid_api_key"),
            );
        }
        let path = request.url.path().to_owned();
        let mut state = self.0.lock().unwrap();
        match (request.method.as_str(), path.as_str()) {
            ("POST", "/v1/files") => upload(&mut state, request),
            ("POST", "/v1/batches") => create(&mut state, request),
            ("GET", p) if p.starts_with("/v1/batches/") => {
                state.polls += 1;
                let id = p.trim_start_matches("/v1/batches/").to_owned();
                poll(&mut state, &id)
            }
            ("GET", p) if p.starts_with("/v1/files/") && p.ends_with("/content") => {
                let id = p
                    .trim_start_matches("/v1/files/")
                    .trim_end_matches("/content");
                let delay = state
                    .error_file_delay
                    .filter(|_| state.error_files.iter().any(|f| f == id))
                    .unwrap_or_default();
                match state.files.get(id) {
                    Some(content) => ResponseTemplate::new(200)
                        .insert_header("content-type", "application/octet-stream")
                        .set_body_bytes(content.clone())
                        .set_delay(delay),
                    None => error(404, &format!("No such File object: {id}"), None),
                }
            }
            _ => error(404, "Unknown request URL", Some("unknown_url")),
        }
    }
}

/// The fields of a multipart form: name → content.
fn form_fields(request: &Request) -> Option<HashMap<String, Vec<u8>>> {
    let content_type = request.headers.get("content-type")?.to_str().ok()?;
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let delimiter = format!("--{boundary}");
    let body = &request.body;
    let text = body.as_slice();
    let mut fields = HashMap::new();
    let positions: Vec<usize> = text
        .windows(delimiter.len())
        .enumerate()
        .filter(|(_, w)| *w == delimiter.as_bytes())
        .map(|(i, _)| i)
        .collect();
    for pair in positions.windows(2) {
        let part = &text[pair[0] + delimiter.len()..pair[1]];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let split = part.windows(4).position(|w| w == b"\r\n\r\n")?;
        let headers = String::from_utf8_lossy(&part[..split]);
        let content = &part[split + 4..];
        let content = content.strip_suffix(b"\r\n").unwrap_or(content);
        let name = headers
            .split("name=\"")
            .nth(1)?
            .split('"')
            .next()?
            .to_owned();
        fields.insert(name, content.to_vec());
    }
    Some(fields)
}

fn upload(state: &mut State, request: &Request) -> ResponseTemplate {
    let Some(fields) = form_fields(request) else {
        return error(400, "Expected a multipart/form-data body", None);
    };
    if fields.get("purpose").map(Vec::as_slice) != Some(b"batch".as_slice()) {
        return error(400, "purpose must be batch", Some("invalid_value"));
    }
    let Some(content) = fields.get("file") else {
        return error(400, "Missing required parameter: 'file'.", None);
    };
    state.next += 1;
    let id = format!("file-{}", state.next);
    state.files.insert(id.clone(), content.clone());
    state.inputs.push(id.clone());
    ResponseTemplate::new(200).set_body_json(json!({
        "id": id, "object": "file", "bytes": content.len(), "created_at": 1_700_000_000,
        "filename": "input.jsonl", "purpose": "batch"
    }))
}

fn create(state: &mut State, request: &Request) -> ResponseTemplate {
    let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
        return error(400, "We could not parse the JSON body.", None);
    };
    if body["endpoint"] != "/v1/images/generations" || body["completion_window"] != "24h" {
        return error(
            400,
            "Invalid endpoint or completion_window",
            Some("invalid_value"),
        );
    }
    let input = body["input_file_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let Some(content) = state.files.get(&input) else {
        return error(404, &format!("No such File object: {input}"), None);
    };
    let lines: Vec<Value> = String::from_utf8_lossy(content)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for line in &lines {
        if line["method"] != "POST" || line["url"] != "/v1/images/generations" {
            return error(400, "Each line must POST to /v1/images/generations", None);
        }
    }
    state.next += 1;
    let id = format!("batch_{}", state.next);
    let script = state.script.clone();
    let batch = StubBatch {
        id: id.clone(),
        input_file_id: input,
        lines,
        script,
        step: 0,
        body: Value::Null,
    };
    let answer = describe(&batch, "validating", None);
    state.batches.insert(id.clone(), batch);
    state.order.push(id);
    ResponseTemplate::new(200).set_body_json(answer)
}

fn describe(batch: &StubBatch, status: &str, end: Option<(Value, u64, u64)>) -> Value {
    let total = batch.lines.len() as u64;
    let (files, completed, failed) = end.unwrap_or((json!({}), 0, 0));
    let mut body = json!({
        "id": batch.id, "object": "batch", "endpoint": "/v1/images/generations",
        "input_file_id": batch.input_file_id, "completion_window": "24h", "status": status,
        "output_file_id": null, "error_file_id": null, "errors": null,
        "request_counts": {"total": total, "completed": completed, "failed": failed}
    });
    if let Value::Object(files) = files {
        for (k, v) in files {
            body[k] = v;
        }
    }
    body
}

fn poll(state: &mut State, id: &str) -> ResponseTemplate {
    let held = state.held;
    let Some(batch) = state.batches.get_mut(id) else {
        return error(404, &format!("No such Batch object: {id}"), None);
    };
    if !batch.body.is_null() {
        return ResponseTemplate::new(200).set_body_json(batch.body.clone());
    }
    if held {
        return ResponseTemplate::new(200).set_body_json(describe(batch, "in_progress", None));
    }
    if batch.step < batch.script.polls.len() {
        let status = batch.script.polls[batch.step];
        batch.step += 1;
        let done = (batch.lines.len() * batch.step / (batch.script.polls.len() + 1)) as u64;
        let body = describe(batch, status, Some((json!({}), done, 0)));
        return ResponseTemplate::new(200).set_body_json(body);
    }
    // The end: the output and error files, once.
    let script = batch.script.clone();
    let (status, answered) = match &script.end {
        End::Completed => ("completed", batch.lines.len()),
        End::Expired { answered } => ("expired", *answered),
        End::Cancelled { answered } => ("cancelled", *answered),
        End::Failed { .. } => ("failed", 0),
    };
    let mut output = Vec::new();
    let mut errors = Vec::new();
    let (mut completed, mut failed) = (0u64, 0u64);
    for (i, line) in batch.lines.iter().enumerate() {
        let n = i + 1;
        let custom_id = line["custom_id"].clone();
        let request_id = format!("batch_req_{n}");
        let answer = |code: u16, body: Value| {
            json!({"id": request_id, "custom_id": custom_id,
                   "response": {"status_code": code, "request_id": format!("req_{n}"), "body": body},
                   "error": null})
        };
        if matches!(script.end, End::Failed { .. }) {
            continue;
        }
        if n > answered {
            failed += 1;
            errors.push(json!({"id": request_id, "custom_id": custom_id, "response": null,
                "error": {"code": format!("batch_{status}"),
                          "message": "This request could not be executed before the completion window expired."}}));
        } else if let Some((code, body)) = refusal_json(&line["body"]) {
            failed += 1;
            errors.push(answer(code, body));
        } else if script.error_lines.contains(&n) {
            failed += 1;
            errors.push(answer(
                400,
                json!({"error": {"message": "Invalid prompt: your prompt was flagged.", "type": "invalid_request_error", "code": "invalid_prompt"}}),
            ));
        } else if script.non_200_lines.contains(&n) {
            failed += 1;
            output.push(answer(
                500,
                json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "code": null}}),
            ));
        } else if script.bad_image_lines.contains(&n) {
            completed += 1;
            output.push(answer(
                200,
                json!({"created": 1, "data": [{"b64_json": "bm90IGEgcG5n"}]}),
            ));
        } else {
            completed += 1;
            output.push(answer(200, image_json(&line["body"])));
        }
    }
    let mut files = json!({});
    let mut store = |lines: Vec<Value>, field: &str, next: &mut u32| {
        if lines.is_empty() {
            return None;
        }
        *next += 1;
        let id = format!("file-{next}");
        files[field] = json!(id);
        let mut content = Vec::new();
        for line in lines {
            content.extend_from_slice(line.to_string().as_bytes());
            content.push(b'\n');
        }
        Some((id, content))
    };
    let mut next = state.next;
    let stored: Vec<(String, Vec<u8>)> = [
        store(output, "output_file_id", &mut next),
        store(errors, "error_file_id", &mut next),
    ]
    .into_iter()
    .flatten()
    .collect();
    state.next = next;
    if let Some(id) = files["error_file_id"].as_str() {
        state.error_files.push(id.to_owned());
    }
    for (id, content) in stored {
        state.files.insert(id, content);
    }
    let Some(batch) = state.batches.get_mut(id) else {
        return error(404, "gone", None);
    };
    let mut body = describe(batch, status, Some((files, completed, failed)));
    if let End::Failed { message } = &script.end {
        body["errors"] = json!({"object": "list", "data": [{"code": "invalid_request", "message": message, "param": null, "line": null}]});
    }
    batch.body = body.clone();
    ResponseTemplate::new(200).set_body_json(body)
}
