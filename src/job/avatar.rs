//! The avatar configuration: normalized with the JavaScript system's semantics, then checked
//! against OpenAI's rules for the chosen model.
//!
//! [`AvatarConfig::normalize`] applies CONTRACT.md §3 (defaults for absent or empty fields, lowercase
//! hair and skin tone, accessories in UTF-16 order) and is all the cache key needs.
//! [`AvatarConfig::parse`] adds our limits on free text, and [`AvatarConfig::plan`] checks the job
//! against the rules of the model that will be called (the catalogue, [`super::models`]), before
//! anything is charged or generated.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::models::{Asked, Plan, RuleError, SEED_DEFAULT_MODEL, Successors};

/// What the operator configured about models: successors of retired ones and the quality sent
/// when a job names none (`openai.successors`, `openai.default_quality`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRules {
    /// Which active model serves each retired model.
    pub(crate) successors: Successors,
    pub(crate) default_quality: Option<String>,
}

impl ModelRules {
    /// From `openai.successors` and `openai.default_quality` (empty: none).
    pub fn new(
        successors: &std::collections::BTreeMap<String, String>,
        default_quality: &str,
    ) -> Result<ModelRules, super::models::SuccessorError> {
        Ok(ModelRules {
            successors: Successors::from_config(successors)?,
            default_quality: (!default_quality.is_empty()).then(|| default_quality.to_owned()),
        })
    }
}

impl Default for ModelRules {
    fn default() -> Self {
        ModelRules {
            successors: Successors::defaults(),
            default_quality: None,
        }
    }
}

/// Why a configuration was refused; the message goes into the `invalid_job` result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `config` is not a JSON object.
    #[error("config must be a JSON object")]
    NotAnObject,
    /// A field that must be a string is not one.
    #[error("config.{field} must be a string")]
    NotAString {
        /// The field's name.
        field: &'static str,
    },
    /// `accessories` is not an array of strings.
    #[error("config.accessories must be an array of strings")]
    BadAccessories,
    /// The job does not fit its model's rules (CONTRACT.md §11).
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A field is longer than allowed.
    #[error("config.{field} is too long (at most {max} characters)")]
    TooLong {
        /// The field's name.
        field: &'static str,
        /// The most characters it may have.
        max: usize,
    },
    /// A field holds control characters.
    #[error("config.{field} contains control characters")]
    ControlCharacters {
        /// The field's name.
        field: &'static str,
    },
    /// `accessories` has too many items.
    #[error("config.accessories has more than {max} items")]
    TooManyAccessories {
        /// The most it may have.
        max: usize,
    },
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
    /// The model the job asked for (the seed's default when it named none): part of the key.
    pub(crate) model: String,
    /// `size` (default `1024x1024`): `auto` or `WxH`.
    pub(crate) size: String,
    /// `familyType` (default `father`).
    pub(crate) family_type: String,
    /// `gesture` (default `wave`).
    pub(crate) gesture: String,
    /// `hair` (default `short`), lowercased.
    pub(crate) hair: String,
    /// `skinTone` (default `medium`), lowercased.
    pub(crate) skin_tone: String,
    /// `accessories` (default none), sorted in UTF-16 order.
    pub(crate) accessories: Vec<String>,
    /// `colorTheme` (default `pastel-blue`).
    pub(crate) color_theme: String,
    /// `background` (default `auto`).
    pub(crate) background: String,
    /// The free-text prompt addition; `None` when the job gave none.
    pub(crate) prompt: Option<String>,
    /// `quality` as the job named it; `None` when it named none.
    pub(crate) quality: Option<String>,
    /// `low`, `medium` or `high`, for the models that take it; in the key after `quality`.
    pub(crate) complexity: Option<String>,
    /// Whether the job set `background` itself (it is sent to OpenAI only then); not in the key.
    pub(crate) background_given: bool,
}

impl AvatarConfig {
    /// Normalizes a job's `config` and checks our limits on its text (not the model's rules:
    /// [`AvatarConfig::plan`]).
    pub fn parse(value: &Value) -> Result<AvatarConfig, ConfigError> {
        let config = Self::normalize(value)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the configuration against the rules of the model that will be called, and says
    /// what to ask it for.
    pub(crate) fn plan(&self, rules: &ModelRules) -> Result<Plan, ConfigError> {
        let asked = Asked {
            model: &self.model,
            size: &self.size,
            quality: self.quality.as_deref(),
            background: self.background_given.then_some(self.background.as_str()),
            complexity: self.complexity.as_deref(),
        };
        Ok(Plan::new(
            asked,
            &rules.successors,
            rules.default_quality.as_deref(),
        )?)
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
        let model = text("model", SEED_DEFAULT_MODEL)?;
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
            complexity: optional_text(object, "complexity")?.map(str::to_owned),
            background_given: optional_text(object, "background")?.is_some(),
        })
    }

    /// Our limits on free text; the model's rules are [`AvatarConfig::plan`]'s.
    fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("model", &self.model),
            ("size", &self.size),
            ("background", &self.background),
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
        for (field, value) in [("quality", &self.quality), ("complexity", &self.complexity)] {
            if let Some(value) = value {
                plain_text(field, value, MAX_FIELD_CHARS, false)?;
            }
        }
        if let Some(prompt) = &self.prompt {
            plain_text("prompt", prompt, MAX_PROMPT_CHARS, true)?;
        }
        Ok(())
    }

    /// Pixel size asked for; `auto`, or a size that is not `WxH`, counts as 1024x1024.
    pub(crate) fn dimensions(&self) -> (u32, u32) {
        super::models::parse_size(&self.size).unwrap_or((1024, 1024))
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

    fn planned(config: Value) -> Result<Plan, ConfigError> {
        AvatarConfig::parse(&config)?.plan(&ModelRules::default())
    }

    #[test]
    fn defaults_fill_an_empty_config() {
        let config = AvatarConfig::parse(&json!({})).unwrap();
        assert_eq!(config.model, "gpt-image-1");
        assert_eq!(config.size, "1024x1024");
        assert_eq!(
            (config.hair.as_str(), config.skin_tone.as_str()),
            ("short", "medium")
        );
        assert_eq!(config.dimensions(), (1024, 1024));
        assert!(!config.background_given);
        let plan = config.plan(&ModelRules::default()).unwrap();
        assert_eq!(plan.called.name(), "gpt-image-2.6-flare");
        assert_eq!(plan.background, None);
    }

    #[test]
    fn sizes_follow_the_model() {
        assert!(planned(json!({"size": "1536x1024"})).is_ok());
        assert!(planned(json!({"model": "dall-e-3", "size": "1792x1024"})).is_ok());
        let err = planned(json!({"model": "dall-e-2", "size": "1536x1024"})).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Rule(RuleError::NotAllowed { field: "size", .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("256x256"), "{err}");
        assert!(planned(json!({"size": "4096x4096"})).is_err());
        assert!(planned(json!({"model": "gpt-image-2", "size": "2048x2048"})).is_ok());
    }

    #[test]
    fn backgrounds_qualities_and_complexity_follow_the_called_model() {
        assert!(planned(json!({"background": "transparent", "quality": "high"})).is_ok());
        let plan = planned(json!({"background": "opaque"})).unwrap();
        assert_eq!(plan.background.as_deref(), Some("opaque"));
        assert!(planned(json!({"background": "glitter"})).is_err());
        assert!(planned(json!({"model": "dall-e-3", "quality": "hd"})).is_ok());
        assert!(planned(json!({"quality": "ultra"})).is_err());
        assert!(planned(json!({"model": "gpt-image-2.6-flare", "complexity": "high"})).is_ok());
        assert!(planned(json!({"model": "gpt-image-2", "complexity": "high"})).is_err());
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
        assert_eq!(
            AvatarConfig::parse(&json!({"complexity": 2})),
            Err(ConfigError::NotAString {
                field: "complexity"
            })
        );
        assert!(matches!(
            planned(json!({"model": "midjourney"})),
            Err(ConfigError::Rule(RuleError::UnknownModel(_)))
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
