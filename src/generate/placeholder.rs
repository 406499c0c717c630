//! The offline generator: a deterministic PNG drawn from the configuration, for trying the system
//! without an OpenAI key (CONTRACT.md §10). A face in the skin tone's colour on the colour theme's
//! background, hair above it, a dot per accessory. Same configuration, same bytes.

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{GenerateError, Generated, ImageGenerator};
use crate::job::{AvatarConfig, GeneratorKind, Plan};

/// Drawn at a quarter of the asked size, then each pixel repeated in 4×4 so that the image has the
/// asked size: cheap to draw, and flat colours compress well at any size.
const SCALE: u32 = 4;

/// The offline generator (`generator.kind = "placeholder"`): draws a deterministic PNG of the
/// asked size from the job's configuration, with no network and no cost.
#[derive(Debug, Clone, Default)]
pub struct PlaceholderGenerator;

type Rgb = [u8; 3];

/// A colour picked from the text's hash, for names without a colour of their own.
fn hashed(text: &str) -> Rgb {
    let digest = Sha256::digest(text.as_bytes());
    [digest[0] / 2 + 64, digest[1] / 2 + 64, digest[2] / 2 + 64]
}

fn skin(tone: &str) -> Rgb {
    match tone {
        "light" => [247, 215, 186],
        "medium" => [224, 172, 128],
        "tan" => [198, 140, 96],
        "olive" => [176, 138, 90],
        "dark" => [112, 72, 46],
        other => hashed(other),
    }
}

fn theme(name: &str) -> Rgb {
    match name {
        "pastel-blue" => [186, 215, 242],
        "pastel-pink" => [248, 200, 220],
        "mint" => [189, 236, 212],
        "sunset" => [252, 190, 140],
        "mono" => [220, 220, 220],
        other => hashed(other),
    }
}

/// Renders the configuration as PNG bytes at the size it asks for (`auto`: 1024x1024).
pub fn draw(config: &AvatarConfig) -> Result<Vec<u8>, png::EncodingError> {
    let (out_width, out_height) = config.dimensions();
    let (width, height) = (out_width.div_ceil(SCALE), out_height.div_ceil(SCALE));
    let (background, face, hair) = (
        theme(&config.color_theme),
        skin(&config.skin_tone),
        hashed(&config.hair),
    );
    let (cx, cy) = (width as f32 / 2.0, height as f32 * 0.55);
    let radius = width.min(height) as f32 * 0.3;
    let dots: Vec<(f32, f32, Rgb)> = config
        .accessories
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                width as f32 * (0.1 + 0.08 * i as f32),
                height as f32 * 0.9,
                hashed(name),
            )
        })
        .collect();

    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let dist = ((px - cx).powi(2) + (py - cy).powi(2)).sqrt();
            let in_dot = dots.iter().find(|(dx, dy, _)| {
                (px - dx).powi(2) + (py - dy).powi(2) < (radius * 0.12).powi(2)
            });
            let colour = match in_dot {
                Some((_, _, colour)) => *colour,
                None if dist < radius && py < cy - radius * 0.45 => hair,
                None if dist < radius => face,
                None => background,
            };
            pixels.extend_from_slice(&colour);
        }
    }
    let row = |y: u32| {
        let start = (y / SCALE * width * 3) as usize;
        &pixels[start..start + (width * 3) as usize]
    };
    let mut full = Vec::with_capacity((out_width * out_height * 3) as usize);
    for y in 0..out_height {
        let small = row(y);
        for x in 0..out_width {
            let at = (x / SCALE * 3) as usize;
            full.extend_from_slice(&small[at..at + 3]);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, out_width, out_height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&full)?;
    writer.finish()?;
    Ok(out)
}

#[async_trait]
impl ImageGenerator for PlaceholderGenerator {
    fn kind(&self) -> GeneratorKind {
        GeneratorKind::Placeholder
    }

    fn model_name(&self, _plan: &Plan) -> &'static str {
        "placeholder"
    }

    async fn generate(
        &self,
        config: &AvatarConfig,
        _plan: &Plan,
        _user: &str,
    ) -> Result<Generated, GenerateError> {
        let config = config.clone();
        let png = tokio::task::spawn_blocking(move || draw(&config))
            .await
            .map_err(|e| GenerateError::Failed {
                message: e.to_string(),
                retryable: true,
                attempts: 1,
            })?
            .map_err(|e| GenerateError::BadImage {
                message: e.to_string(),
                attempts: 1,
            })?;
        Ok(Generated {
            png: Bytes::from(png),
            attempts: 1,
            cost_usd: 0.0,
            usage: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::storage::check_png;

    #[test]
    fn draws_a_valid_deterministic_png_of_the_right_shape() {
        let config =
            AvatarConfig::parse(&json!({"size": "1536x1024", "accessories": ["hat"]})).unwrap();
        let first = draw(&config).unwrap();
        assert_eq!(check_png(&first).unwrap(), (1536, 1024));
        assert_eq!(first, draw(&config).unwrap());
        let other = AvatarConfig::parse(&json!({"size": "1536x1024", "skinTone": "dark"})).unwrap();
        assert_ne!(first, draw(&other).unwrap());
    }

    #[test]
    fn draws_at_the_asked_size_including_custom_and_small_ones() {
        for (size, dims) in [
            ("2048x1152", (2048, 1152)),
            ("3840x2160", (3840, 2160)),
            ("256x256", (256, 256)),
            ("auto", (1024, 1024)),
        ] {
            let config = AvatarConfig::parse(&json!({"size": size})).unwrap();
            let png = draw(&config).unwrap();
            assert_eq!(check_png(&png).unwrap(), dims, "{size}");
        }
    }
}
