//! A local OpenAI stand-in: answers `POST /v1/images/generations` after a fixed latency with a
//! fixed, valid base64 PNG, and counts the calls. Listens on 127.0.0.1 only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine;
use bytes::Bytes;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Pieces a trickled body is sent in.
pub const TRICKLE_CHUNKS: usize = 64;

pub struct Stub {
    pub root: String,
    calls: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Stub {
    /// Serves `png` after `latency` to every request.
    pub async fn start(latency: Duration, png: Vec<u8>) -> anyhow::Result<Stub> {
        Self::start_trickling(latency, Duration::ZERO, png).await
    }

    /// Like [`Stub::start`], then sends the body in [`TRICKLE_CHUNKS`] pieces spread over
    /// `trickle`, as a slow network would: every response's buffer grows at the same time.
    pub async fn start_trickling(
        latency: Duration,
        trickle: Duration,
        png: Vec<u8>,
    ) -> anyhow::Result<Stub> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let body = Bytes::from(serde_json::to_vec(&json!({
            "created": 1_700_000_000,
            "data": [{"b64_json": b64}],
            "usage": {"input_tokens": 50, "output_tokens": 1056, "total_tokens": 1106}
        }))?);
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let app = Router::new().route(
            "/v1/images/generations",
            post(move || {
                let body = body.clone();
                let calls = counted.clone();
                async move {
                    calls.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(latency).await;
                    if trickle.is_zero() {
                        return ([(header::CONTENT_TYPE, "application/json")], body)
                            .into_response();
                    }
                    let piece = body.len().div_ceil(TRICKLE_CHUNKS);
                    let pause = trickle / TRICKLE_CHUNKS as u32;
                    let chunks = futures_util::stream::unfold(body, move |mut rest| async move {
                        if rest.is_empty() {
                            return None;
                        }
                        tokio::time::sleep(pause).await;
                        let chunk = rest.split_to(piece.min(rest.len()));
                        Some((Ok::<_, std::convert::Infallible>(chunk), rest))
                    });
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        axum::body::Body::from_stream(chunks),
                    )
                        .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let root = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        Ok(Stub { root, calls, stop })
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The small PNG the placeholder generator draws for the default configuration.
pub fn small_png() -> Vec<u8> {
    let config = memoji_worker::job::AvatarConfig::parse(&json!({})).expect("default config");
    memoji_worker::generate::draw_placeholder(&config).expect("draws")
}

/// A valid PNG of about `bytes` bytes: random (incompressible) RGBA pixels, stored uncompressed.
pub fn big_png(bytes: usize) -> Vec<u8> {
    let side = ((bytes / 4) as f64).sqrt() as u32;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let pixels: Vec<u8> = (0..(side * side * 4))
        .map(|_| {
            // xorshift64: random enough that deflate cannot shrink it
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut out = Vec::with_capacity(bytes + 64 * 1024);
    {
        let mut encoder = png::Encoder::new(&mut out, side, side);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fastest);
        let mut writer = encoder.write_header().expect("PNG header");
        writer.write_image_data(&pixels).expect("PNG data");
    }
    out
}
