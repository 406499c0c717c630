//! Scaling a generated PNG to the size a job asked for, where the called model cannot make that
//! size itself (dall-e-2's 256x256 and 512x512 are made at 1024x1024 by its successor). Uses the
//! `image` crate (PNG only) with a Lanczos filter, the usual choice for downscaling.

use std::io::Cursor;

use bytes::Bytes;
use image::ImageFormat;
use image::imageops::FilterType;

/// Why an image could not be scaled.
#[derive(Debug, thiserror::Error)]
#[error("scaling the image failed: {0}")]
pub(crate) struct ResizeError(#[from] image::ImageError);

/// Decodes `png`, scales it to exactly `width`×`height` and encodes it as PNG again.
pub(crate) fn png_to(png: &[u8], width: u32, height: u32) -> Result<Bytes, ResizeError> {
    let decoded = image::load_from_memory_with_format(png, ImageFormat::Png)?;
    let scaled = decoded.resize_exact(width, height, FilterType::Lanczos3);
    let mut out = Cursor::new(Vec::new());
    scaled.write_to(&mut out, ImageFormat::Png)?;
    Ok(Bytes::from(out.into_inner()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::job::AvatarConfig;
    use crate::storage::check_png;

    #[test]
    fn scales_to_the_exact_size_and_keeps_a_valid_png() {
        let config = AvatarConfig::parse(&json!({"size": "1024x1024"})).unwrap();
        let big = crate::generate::draw_placeholder(&config).unwrap();
        for side in [256, 512] {
            let small = png_to(&big, side, side).unwrap();
            assert_eq!(check_png(&small).unwrap(), (side, side));
        }
        assert!(png_to(b"not a png", 10, 10).is_err());
    }
}
