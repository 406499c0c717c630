//! The text prompt sent to the image model, built from a validated configuration.

use crate::job::AvatarConfig;

/// Describes the avatar in plain words; the optional free text goes last.
pub fn prompt_for(config: &AvatarConfig) -> String {
    let mut prompt = format!(
        "A friendly 3D memoji-style avatar of a {family}, {hair} hair, {skin} skin tone, making a {gesture} gesture",
        family = config.family_type,
        hair = config.hair,
        skin = config.skin_tone,
        gesture = config.gesture,
    );
    if !config.accessories.is_empty() {
        prompt.push_str(", wearing ");
        prompt.push_str(&config.accessories.join(", "));
    }
    prompt.push_str(&format!(
        ". {theme} color theme, soft studio lighting, centered head and shoulders.",
        theme = config.color_theme
    ));
    if let Some(extra) = &config.prompt {
        prompt.push(' ');
        prompt.push_str(extra);
    }
    prompt
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn mentions_every_feature() {
        let config = AvatarConfig::parse(&json!({
            "familyType": "grandma", "hair": "Curly", "skinTone": "dark", "gesture": "heart",
            "accessories": ["hat", "glasses"], "colorTheme": "mint", "prompt": "holding a cat"
        }))
        .unwrap();
        let prompt = prompt_for(&config);
        for word in [
            "grandma",
            "curly hair",
            "dark skin",
            "heart gesture",
            "glasses, hat",
            "mint",
            "holding a cat",
        ] {
            assert!(prompt.contains(word), "{word:?} missing from {prompt:?}");
        }
    }
}
