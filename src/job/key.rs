//! The cache key: lowercase hex SHA-256 of the normalized configuration's JSON text (CONTRACT.md §3).
//!
//! It must be byte for byte what the JavaScript implementation computes, so that a `memoji_cache`
//! table filled by that system keeps serving hits. `serde_json` escapes strings exactly as
//! `JSON.stringify` does (`\"`, `\\`, `\b\f\n\r\t`, other control characters as lowercase `\u00xx`,
//! everything else verbatim) and derives emit fields in declaration order without spaces, so a
//! struct in the seed's field order reproduces the seed's text. Normalization (defaults, lowercase,
//! UTF-16 sort) happens in [`AvatarConfig`], which is the only way to reach this module.

use std::fmt;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::AvatarConfig;

/// Which generator an entry comes from (a setting, `generator.kind`).
pub use crate::config::GeneratorKind;

/// A cache key: 64 lowercase hex digits. Only [`CacheKey::of`] makes one from a configuration, and
/// [`CacheKey::parse`] accepts only that shape, so a key is always safe in a storage path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of a configuration for the given generator.
    pub fn of(config: &AvatarConfig, generator: GeneratorKind) -> CacheKey {
        Self::in_namespace(config, generator, None)
    }

    /// The key of a configuration in a job's `cache.namespace` (`None`: the shared cache, the
    /// same key as [`CacheKey::of`]).
    pub(crate) fn in_namespace(
        config: &AvatarConfig,
        generator: GeneratorKind,
        namespace: Option<&str>,
    ) -> CacheKey {
        let canonical = Self::canonical_value_in(config, generator, namespace).to_string();
        CacheKey(hex::encode(Sha256::digest(canonical.as_bytes())))
    }

    /// The JSON text that is hashed; public so tests and operators can see what a key stands for.
    pub fn canonical_json(config: &AvatarConfig, generator: GeneratorKind) -> String {
        Self::canonical_value(config, generator).to_string()
    }

    /// The normalized configuration as a JSON object in the seed's key order (JavaScript's field
    /// names; `serde_json`'s `preserve_order` keeps insertion order), as recorded in
    /// `memoji_cache.prompt_config`. Built field by field, so it cannot fail; its text is
    /// [`CacheKey::canonical_json`].
    pub fn canonical_value(config: &AvatarConfig, generator: GeneratorKind) -> Value {
        Self::canonical_value_in(config, generator, None)
    }

    /// [`CacheKey::canonical_value`] in a namespace: `"namespace"` follows the extras, only when
    /// present, so a job without one keeps the seed's text.
    pub(crate) fn canonical_value_in(
        config: &AvatarConfig,
        generator: GeneratorKind,
        namespace: Option<&str>,
    ) -> Value {
        let mut object = Map::new();
        let mut put = |name: &str, value: Value| {
            object.insert(name.to_owned(), value);
        };
        put("model", Value::from(config.model.as_str()));
        put("size", Value::from(config.size.as_str()));
        put("familyType", Value::from(config.family_type.as_str()));
        put("gesture", Value::from(config.gesture.as_str()));
        put("hair", Value::from(config.hair.as_str()));
        put("skinTone", Value::from(config.skin_tone.as_str()));
        put(
            "accessories",
            Value::Array(
                config
                    .accessories
                    .iter()
                    .map(|a| Value::from(a.as_str()))
                    .collect(),
            ),
        );
        put("colorTheme", Value::from(config.color_theme.as_str()));
        put("background", Value::from(config.background.as_str()));
        // Extras after the seed's nine, in this order, only when present (CONTRACT.md §3).
        for (name, value) in [
            ("prompt", &config.prompt),
            ("quality", &config.quality),
            ("complexity", &config.complexity),
        ] {
            if let Some(value) = value {
                put(name, Value::from(value.as_str()));
            }
        }
        // A job's `cache.namespace`, after the extras (README "Cache controls").
        if let Some(namespace) = namespace {
            put("namespace", Value::from(namespace));
        }
        // Only for placeholder entries: keeps them apart from real ones.
        if generator == GeneratorKind::Placeholder {
            put(
                "generator",
                Value::from(GeneratorKind::Placeholder.as_str()),
            );
        }
        Value::Object(object)
    }

    /// Accepts a stored key: exactly 64 lowercase hex digits.
    pub fn parse(text: &str) -> Option<CacheKey> {
        let ok = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| CacheKey(text.to_owned()))
    }

    /// The key as 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn key_of(config: Value) -> (String, String) {
        let config = AvatarConfig::normalize(&config).expect("vector configs are well-typed");
        (
            CacheKey::canonical_json(&config, GeneratorKind::OpenAi),
            CacheKey::of(&config, GeneratorKind::OpenAi).to_string(),
        )
    }

    #[test]
    fn matches_every_javascript_vector() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/hash-vectors.json");
        let text = std::fs::read_to_string(path).expect("tests/data/hash-vectors.json is readable");
        let vectors: Vec<Value> = serde_json::from_str(&text).expect("vectors are JSON");
        assert!(vectors.len() >= 20, "expected the full vector set");
        for vector in vectors {
            let (canonical, hash) = key_of(vector["config"].clone());
            assert_eq!(
                canonical,
                vector["canonical"].as_str().unwrap(),
                "canonical of {vector}"
            );
            assert_eq!(hash, vector["hash"].as_str().unwrap(), "hash of {vector}");
        }
    }

    #[test]
    fn empty_strings_and_nulls_count_as_absent() {
        let (_, default) = key_of(json!({}));
        let (_, empty) =
            key_of(json!({"model": "", "size": null, "hair": "", "accessories": null}));
        assert_eq!(default, empty);
        assert_eq!(
            default,
            "57031741670c8d0259dfd2b0809f9923eb2a04bcfc4ac10ce9d998eb376f16fe"
        );
    }

    #[test]
    fn accessories_sort_by_utf16_code_units_like_javascript() {
        // U+FF5E (fullwidth tilde) is one UTF-16 unit 0xFF5E; U+1F600 is the surrogate pair
        // 0xD83D 0xDE00. By code points the emoji sorts last; by UTF-16 units, as JavaScript
        // sorts, it comes first.
        let (canonical, _) = key_of(json!({"accessories": ["～", "😀", "Z", "a", "É"]}));
        assert!(
            canonical.contains(r#""accessories":["Z","a","É","😀","～"]"#),
            "{canonical}"
        );
    }

    #[test]
    fn lowercases_hair_and_skin_tone_with_unicode_rules() {
        let (canonical, _) = key_of(json!({"hair": "ΣΟΦΟΣ", "skinTone": "ÉBÈNE"}));
        // Final sigma as JavaScript's toLowerCase renders it.
        assert!(canonical.contains(r#""hair":"σοφος""#), "{canonical}");
        assert!(canonical.contains(r#""skinTone":"ébène""#), "{canonical}");
        // Other fields keep their case.
        let (canonical, _) = key_of(json!({"gesture": "Wave"}));
        assert!(canonical.contains(r#""gesture":"Wave""#), "{canonical}");
    }

    #[test]
    fn escapes_like_json_stringify() {
        let (canonical, _) = key_of(json!({"gesture": "a\"b\\c\n\t\u{1}\u{7f}/\u{2028}é"}));
        assert!(
            canonical.contains(r#""gesture":"a\"b\\c\n\t\u0001"#),
            "control characters: {canonical}"
        );
        assert!(
            canonical.contains("\u{7f}/\u{2028}é\""),
            "verbatim characters: {canonical}"
        );
    }

    #[test]
    fn extras_are_appended_only_when_present() {
        let (plain, _) = key_of(json!({"hair": "long"}));
        let (extra, _) = key_of(json!({"hair": "long", "quality": "high", "prompt": "smiling"}));
        assert_eq!(
            extra,
            plain.trim_end_matches('}').to_owned() + r#","prompt":"smiling","quality":"high"}"#
        );
        let (with_complexity, _) = key_of(
            json!({"hair": "long", "complexity": "high", "quality": "max", "prompt": "smiling"}),
        );
        assert_eq!(
            with_complexity,
            plain.trim_end_matches('}').to_owned()
                + r#","prompt":"smiling","quality":"max","complexity":"high"}"#
        );
        let (empty_extras, _) =
            key_of(json!({"hair": "long", "quality": "", "prompt": null, "complexity": ""}));
        assert_eq!(empty_extras, plain);
    }

    #[test]
    fn a_namespace_is_appended_after_the_extras_only_when_present() {
        let config = AvatarConfig::normalize(&json!({"prompt": "smiling"})).unwrap();
        let plain = CacheKey::canonical_json(&config, GeneratorKind::OpenAi);
        let spaced = CacheKey::canonical_value_in(&config, GeneratorKind::OpenAi, Some("tenant-a"))
            .to_string();
        assert_eq!(
            spaced,
            plain.trim_end_matches('}').to_owned() + r#","namespace":"tenant-a"}"#
        );
        // Vectors: the seed's default configuration in the namespace "tenant-a", computed
        // independently (`printf '%s' '<canonical>' | sha256sum`).
        let seed = AvatarConfig::normalize(&json!({})).unwrap();
        let canonical =
            CacheKey::canonical_value_in(&seed, GeneratorKind::OpenAi, Some("tenant-a"))
                .to_string();
        assert_eq!(
            canonical,
            r#"{"model":"gpt-image-1","size":"1024x1024","familyType":"father","gesture":"wave","hair":"short","skinTone":"medium","accessories":[],"colorTheme":"pastel-blue","background":"auto","namespace":"tenant-a"}"#
        );
        assert_eq!(
            CacheKey::in_namespace(&seed, GeneratorKind::OpenAi, Some("tenant-a")).as_str(),
            "3cab7192db4b52749d1fea6743c38670c33cb42bf4827129c802a6782dbdb67a"
        );
        // No namespace: exactly the seed's key.
        assert_eq!(
            CacheKey::in_namespace(&seed, GeneratorKind::OpenAi, None).as_str(),
            "57031741670c8d0259dfd2b0809f9923eb2a04bcfc4ac10ce9d998eb376f16fe"
        );
        // Escaped like every other string; before the placeholder's marker.
        let odd = CacheKey::canonical_value_in(&seed, GeneratorKind::Placeholder, Some("a\"b"))
            .to_string();
        assert!(
            odd.ends_with(r#","namespace":"a\"b","generator":"placeholder"}"#),
            "{odd}"
        );
    }

    #[test]
    fn placeholder_keys_never_collide_with_real_ones() {
        let config = AvatarConfig::normalize(&json!({})).unwrap();
        let real = CacheKey::of(&config, GeneratorKind::OpenAi);
        let fake = CacheKey::of(&config, GeneratorKind::Placeholder);
        assert_ne!(real, fake);
        assert!(
            CacheKey::canonical_json(&config, GeneratorKind::Placeholder)
                .ends_with(r#","generator":"placeholder"}"#)
        );
    }

    #[test]
    fn parse_accepts_only_lowercase_hex_of_the_right_length() {
        let good = "57031741670c8d0259dfd2b0809f9923eb2a04bcfc4ac10ce9d998eb376f16fe";
        assert!(CacheKey::parse(good).is_some());
        assert!(CacheKey::parse(&good.to_uppercase()).is_none());
        assert!(CacheKey::parse(&good[1..]).is_none());
        assert!(CacheKey::parse("../../etc/passwd").is_none());
    }
}
