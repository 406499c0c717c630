//! The avatar configuration: normalized with the JavaScript system's semantics, then checked
//! against OpenAI's rules for the chosen model.
//!
//! [`AvatarConfig::normalize`] applies CONTRACT.md §3 (defaults for absent or empty fields, lowercase
//! hair and skin tone, accessories in UTF-16 order) and is all the cache key needs.
//! [`AvatarConfig::parse`] adds the validation a job must pass before anything is charged or
//! generated.

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// Image models the worker can generate with, and OpenAI's rules for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    GptImage1,
    GptImage1Mini,
    DallE2,
    DallE3,
}

impl Model {
    pub const ALL: [Model; 4] = [
        Model::GptImage1,
        Model::GptImage1Mini,
        Model::DallE2,
        Model::DallE3,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Model::GptImage1 => "gpt-image-1",
            Model::GptImage1Mini => "gpt-image-1-mini",
            Model::DallE2 => "dall-e-2",
            Model::DallE3 => "dall-e-3",
        }
    }

    pub fn from_name(name: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// GPT image models always answer in base64, take `background` and `quality`
    /// low/medium/high, and report token `usage`; DALL·E models need `response_format`.
    pub fn is_gpt_image(self) -> bool {
        matches!(self, Model::GptImage1 | Model::GptImage1Mini)
    }

    pub fn sizes(self) -> &'static [&'static str] {
        match self {
            Model::GptImage1 | Model::GptImage1Mini => {
                &["1024x1024", "1536x1024", "1024x1536", "auto"]
            }
            Model::DallE2 => &["256x256", "512x512", "1024x1024"],
            Model::DallE3 => &["1024x1024", "1792x1024", "1024x1792"],
        }
    }

    pub fn backgrounds(self) -> &'static [&'static str] {
        if self.is_gpt_image() {
            &["transparent", "opaque", "auto"]
        } else {
            &["auto"]
        }
    }

    pub fn qualities(self) -> &'static [&'static str] {
        match self {
            Model::GptImage1 | Model::GptImage1Mini => &["low", "medium", "high", "auto"],
            Model::DallE2 => &["standard", "auto"],
            Model::DallE3 => &["standard", "hd", "auto"],
        }
    }
}

/// Why a configuration was refused; the message goes into the `invalid_job` result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config must be a JSON object")]
    NotAnObject,
    #[error("config.{field} must be a string")]
    NotAString { field: &'static str },
    #[error("config.accessories must be an array of strings")]
    BadAccessories,
    #[error(
        "config.model {0:?} is not supported (gpt-image-1, gpt-image-1-mini, dall-e-2, dall-e-3)"
    )]
    UnknownModel(String),
    #[error("config.{field} {value:?} is not allowed for {model}; allowed: {allowed}")]
    NotAllowed {
        field: &'static str,
        value: String,
        model: &'static str,
        allowed: String,
    },
    #[error("config.{field} is too long (at most {max} characters)")]
    TooLong { field: &'static str, max: usize },
    #[error("config.{field} contains control characters")]
    ControlCharacters { field: &'static str },
    #[error("config.accessories has more than {max} items")]
    TooManyAccessories { max: usize },
}

/// Longest descriptive field (hair, gesture, …) and accessory name we accept.
const MAX_FIELD_CHARS: usize = 64;
/// Most accessories on one avatar.
const MAX_ACCESSORIES: usize = 16;
/// Longest free-text prompt addition (CONTRACT.md §2.1).
const MAX_PROMPT_CHARS: usize = 1000;

/// A normalized configuration. Fields hold the values the cache key is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvatarConfig {
    pub model: Model,
    pub size: String,
    pub family_type: String,
    pub gesture: String,
    pub hair: String,
    pub skin_tone: String,
    pub accessories: Vec<String>,
    pub color_theme: String,
    pub background: String,
    pub prompt: Option<String>,
    pub quality: Option<String>,
}

impl AvatarConfig {
    /// Normalizes and validates a job's `config`.
    pub fn parse(value: &Value) -> Result<AvatarConfig, ConfigError> {
        let config = Self::normalize(value)?;
        config.validate()?;
        Ok(config)
    }

    /// Applies the JavaScript system's normalization (CONTRACT.md §3) without OpenAI's rules.
    /// `null` stands for an absent config.
    pub fn normalize(value: &Value) -> Result<AvatarConfig, ConfigError> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let object = match value {
            Value::Object(object) => object,
            Value::Null => EMPTY.get_or_init(Map::new),
            _ => return Err(ConfigError::NotAnObject),
        };
        let text = |field: &'static str, default: &str| -> Result<String, ConfigError> {
            Ok(optional_text(object, field)?.unwrap_or(default).to_owned())
        };
        let model_name = text("model", "gpt-image-1")?;
        let model = Model::from_name(&model_name).ok_or(ConfigError::UnknownModel(model_name))?;
        let mut accessories = match object.get("accessories") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_owned)
                        .ok_or(ConfigError::BadAccessories)
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(ConfigError::BadAccessories),
        };
        accessories.sort_by(|a, b| utf16_order(a, b));
        Ok(AvatarConfig {
            model,
            size: text("size", "1024x1024")?,
            family_type: text("familyType", "father")?,
            gesture: text("gesture", "wave")?,
            hair: text("hair", "short")?.to_lowercase(),
            skin_tone: text("skinTone", "medium")?.to_lowercase(),
            accessories,
            color_theme: text("colorTheme", "pastel-blue")?,
            background: text("background", "auto")?,
            prompt: optional_text(object, "prompt")?.map(str::to_owned),
            quality: optional_text(object, "quality")?.map(str::to_owned),
        })
    }

    /// OpenAI's rules for the model, and our limits on free text.
    fn validate(&self) -> Result<(), ConfigError> {
        let model = self.model;
        one_of("size", &self.size, model, model.sizes())?;
        one_of("background", &self.background, model, model.backgrounds())?;
        if let Some(quality) = &self.quality {
            one_of("quality", quality, model, model.qualities())?;
        }
        for (field, value) in [
            ("familyType", &self.family_type),
            ("gesture", &self.gesture),
            ("hair", &self.hair),
            ("skinTone", &self.skin_tone),
            ("colorTheme", &self.color_theme),
        ] {
            plain_text(field, value, MAX_FIELD_CHARS, false)?;
        }
        if self.accessories.len() > MAX_ACCESSORIES {
            return Err(ConfigError::TooManyAccessories {
                max: MAX_ACCESSORIES,
            });
        }
        for accessory in &self.accessories {
            plain_text("accessories", accessory, MAX_FIELD_CHARS, false)?;
        }
        if let Some(prompt) = &self.prompt {
            plain_text("prompt", prompt, MAX_PROMPT_CHARS, true)?;
        }
        Ok(())
    }

    /// Pixel size to draw or request; `auto` counts as square.
    pub fn dimensions(&self) -> (u32, u32) {
        self.size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            .unwrap_or((1024, 1024))
    }
}

/// JavaScript's `value || default` for a field that must be a string when present.
fn optional_text<'a>(
    object: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, ConfigError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ConfigError::NotAString { field }),
    }
}

/// `Array.prototype.sort`'s default order: by UTF-16 code units.
fn utf16_order(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

fn one_of(
    field: &'static str,
    value: &str,
    model: Model,
    allowed: &[&str],
) -> Result<(), ConfigError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(ConfigError::NotAllowed {
        field,
        value: value.to_owned(),
        model: model.as_str(),
        allowed: allowed.join(", "),
    })
}

fn plain_text(
    field: &'static str,
    value: &str,
    max: usize,
    multiline: bool,
) -> Result<(), ConfigError> {
    if value.chars().count() > max {
        return Err(ConfigError::TooLong { field, max });
    }
    let allowed_control = |c: char| multiline && (c == '\n' || c == '\t');
    if value.chars().any(|c| c.is_control() && !allowed_control(c)) {
        return Err(ConfigError::ControlCharacters { field });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_fill_an_empty_config() {
        let config = AvatarConfig::parse(&json!({})).unwrap();
        assert_eq!(config.model, Model::GptImage1);
        assert_eq!(config.size, "1024x1024");
        assert_eq!(
            (config.hair.as_str(), config.skin_tone.as_str()),
            ("short", "medium")
        );
        assert_eq!(config.dimensions(), (1024, 1024));
    }

    #[test]
    fn sizes_follow_the_model() {
        assert!(AvatarConfig::parse(&json!({"size": "1536x1024"})).is_ok());
        assert!(AvatarConfig::parse(&json!({"model": "dall-e-3", "size": "1792x1024"})).is_ok());
        let err =
            AvatarConfig::parse(&json!({"model": "dall-e-2", "size": "1536x1024"})).unwrap_err();
        assert!(
            matches!(err, ConfigError::NotAllowed { field: "size", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("256x256"), "{err}");
        assert!(AvatarConfig::parse(&json!({"size": "4096x4096"})).is_err());
    }

    #[test]
    fn backgrounds_and_qualities_follow_the_model() {
        assert!(
            AvatarConfig::parse(&json!({"background": "transparent", "quality": "high"})).is_ok()
        );
        assert!(
            AvatarConfig::parse(&json!({"model": "dall-e-2", "background": "transparent"}))
                .is_err()
        );
        assert!(AvatarConfig::parse(&json!({"model": "dall-e-3", "quality": "hd"})).is_ok());
        assert!(AvatarConfig::parse(&json!({"model": "dall-e-3", "quality": "high"})).is_err());
        assert!(AvatarConfig::parse(&json!({"quality": "ultra"})).is_err());
    }

    #[test]
    fn wrong_types_and_unknown_models_are_refused() {
        assert_eq!(
            AvatarConfig::parse(&json!([])),
            Err(ConfigError::NotAnObject)
        );
        assert_eq!(
            AvatarConfig::parse(&json!({"hair": 3})),
            Err(ConfigError::NotAString { field: "hair" })
        );
        assert_eq!(
            AvatarConfig::parse(&json!({"accessories": "hat"})),
            Err(ConfigError::BadAccessories)
        );
        assert_eq!(
            AvatarConfig::parse(&json!({"accessories": ["hat", 1]})),
            Err(ConfigError::BadAccessories)
        );
        assert!(matches!(
            AvatarConfig::parse(&json!({"model": "midjourney"})),
            Err(ConfigError::UnknownModel(_))
        ));
    }

    #[test]
    fn free_text_is_bounded() {
        let long_prompt = "a".repeat(1001);
        assert_eq!(
            AvatarConfig::parse(&json!({"prompt": long_prompt})),
            Err(ConfigError::TooLong {
                field: "prompt",
                max: 1000
            })
        );
        assert!(AvatarConfig::parse(&json!({"prompt": "é".repeat(1000)})).is_ok());
        assert!(AvatarConfig::parse(&json!({"prompt": "smiling\nwarmly"})).is_ok());
        assert_eq!(
            AvatarConfig::parse(&json!({"gesture": "wave\u{0}"})),
            Err(ConfigError::ControlCharacters { field: "gesture" })
        );
        let many: Vec<String> = (0..17).map(|i| format!("item{i}")).collect();
        assert_eq!(
            AvatarConfig::parse(&json!({"accessories": many})),
            Err(ConfigError::TooManyAccessories { max: 16 })
        );
    }
}
