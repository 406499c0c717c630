//! The image-model catalogue (CONTRACT.md §11): every model the worker knows, whether OpenAI still
//! serves it, and the rules a job naming it must follow. It is the one place to edit when OpenAI
//! ships or retires a model: a row in [`CATALOGUE`], and for a retirement a successor in
//! configuration (`openai.successors`).
//!
//! A job names the model it *asks* for (that name is part of the cache key, so rows the JavaScript
//! system wrote keep serving); [`Successors`] turns it into the model that is *called*, and
//! [`Plan::new`] checks the job against the rules of both and says exactly what to send.

use std::collections::BTreeMap;
use std::fmt;

/// Whether OpenAI serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// OpenAI serves it.
    Active,
    /// Shut down on that date (`YYYY-MM-DD`); jobs naming it are served by a successor.
    Retired {
        /// The shutdown date, `YYYY-MM-DD`.
        shutdown: &'static str,
    },
}

/// The sizes a model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sizes {
    /// Exactly these, as OpenAI listed them.
    Listed(&'static [&'static str]),
    /// `auto` or any `WxH` within the GPT image 2.x limits ([`check_custom_size`]).
    Custom,
}

/// One row of the catalogue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ModelSpec {
    /// The model's name, as OpenAI spells it.
    pub(crate) name: &'static str,
    /// Whether OpenAI still serves it.
    pub(crate) state: State,
    /// The sizes it takes.
    pub(crate) sizes: Sizes,
    /// The `quality` values it takes.
    pub(crate) qualities: &'static [&'static str],
    pub(crate) backgrounds: &'static [&'static str],
    /// Whether `complexity` (low, medium, high) is accepted.
    pub(crate) complexity: bool,
    /// For a retired model: its own quality words, as the successor says them.
    pub(crate) quality_names: &'static [(&'static str, &'static str)],
}

const GPT_IMAGE_1_SIZES: &[&str] = &["1024x1024", "1536x1024", "1024x1536", "auto"];
const QUALITIES_2: &[&str] = &["low", "medium", "high", "auto"];
const QUALITIES_2_5: &[&str] = &["low", "medium", "high", "xhigh", "max", "auto"];
const GPT_BACKGROUNDS: &[&str] = &["transparent", "opaque", "auto"];
/// `complexity` values of the models that take it.
pub(crate) const COMPLEXITIES: &[&str] = &["low", "medium", "high"];

const fn active(
    name: &'static str,
    qualities: &'static [&'static str],
    complexity: bool,
) -> ModelSpec {
    ModelSpec {
        name,
        state: State::Active,
        sizes: Sizes::Custom,
        qualities,
        backgrounds: GPT_BACKGROUNDS,
        complexity,
        quality_names: &[],
    }
}

const fn retired(
    name: &'static str,
    shutdown: &'static str,
    sizes: &'static [&'static str],
    qualities: &'static [&'static str],
    quality_names: &'static [(&'static str, &'static str)],
) -> ModelSpec {
    ModelSpec {
        name,
        state: State::Retired { shutdown },
        sizes: Sizes::Listed(sizes),
        qualities,
        backgrounds: GPT_BACKGROUNDS,
        complexity: false,
        quality_names,
    }
}

/// Every model the worker knows, as of 2026-12-01 (CONTRACT.md §11).
pub(crate) static CATALOGUE: [ModelSpec; 10] = [
    active("gpt-image-2.6-flare", QUALITIES_2_5, true),
    active("gpt-image-2.6-sunburst", QUALITIES_2_5, true),
    active("gpt-image-2.5-flare", QUALITIES_2_5, false),
    active("gpt-image-2.5-sunburst", QUALITIES_2_5, false),
    active("gpt-image-2", QUALITIES_2, false),
    retired(
        "gpt-image-1",
        "2026-10-23",
        GPT_IMAGE_1_SIZES,
        &["low", "medium", "high", "auto"],
        &[],
    ),
    retired(
        "gpt-image-1-mini",
        "2026-12-01",
        GPT_IMAGE_1_SIZES,
        &["low", "medium", "high", "auto"],
        &[],
    ),
    retired(
        "gpt-image-1.5",
        "2026-12-01",
        GPT_IMAGE_1_SIZES,
        &["low", "medium", "high", "auto"],
        &[],
    ),
    retired(
        "dall-e-2",
        "2026-05-12",
        &["256x256", "512x512", "1024x1024"],
        &["standard", "auto"],
        &[("standard", "medium")],
    ),
    retired(
        "dall-e-3",
        "2026-05-12",
        &["1024x1024", "1792x1024", "1024x1792"],
        &["standard", "hd", "auto"],
        &[("standard", "medium"), ("hd", "high")],
    ),
];

/// The model a job without `model` asks for: the seed's default, kept for the cache key (§3).
pub(crate) const SEED_DEFAULT_MODEL: &str = "gpt-image-1";
/// The successor of every retired model unless configured otherwise.
pub(crate) const DEFAULT_SUCCESSOR: &str = "gpt-image-2.6-flare";

/// A model of the catalogue. Cheap to copy; compares by name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Model(&'static ModelSpec);

impl std::hash::Hash for ModelSpec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl Model {
    /// Every model, active first.
    pub fn all() -> impl Iterator<Item = Model> {
        CATALOGUE.iter().map(Model)
    }

    /// The models OpenAI serves today.
    pub(crate) fn active() -> impl Iterator<Item = Model> {
        Model::all().filter(|m| m.is_active())
    }

    pub(crate) fn from_name(name: &str) -> Option<Model> {
        Model::all().find(|m| m.name() == name)
    }

    /// The model's name, as OpenAI spells it.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// The model's row of the catalogue.
    pub(crate) fn spec(self) -> &'static ModelSpec {
        self.0
    }

    pub(crate) fn is_active(self) -> bool {
        self.0.state == State::Active
    }

    /// The model's name as a configuration key: `gpt-image-2.6-flare` → `gpt_image_2_6_flare`.
    pub(crate) fn config_key(self) -> String {
        config_key(self.name())
    }

    /// A one-line summary of the model's rules, for `--help` and error messages.
    pub(crate) fn describe(self) -> String {
        let spec = self.0;
        let sizes = match spec.sizes {
            Sizes::Listed(sizes) => sizes.join("|"),
            Sizes::Custom => "auto or WxH".to_owned(),
        };
        let mut text = format!(
            "{}: size {sizes}; quality {}",
            spec.name,
            spec.qualities.join("|")
        );
        if spec.complexity {
            text.push_str(&format!("; complexity {}", COMPLEXITIES.join("|")));
        }
        if let State::Retired { shutdown } = spec.state {
            text.push_str(&format!(" (retired {shutdown}, served by a successor)"));
        }
        text
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Help texts for the command line, from the catalogue so they never drift from it.
pub mod help {
    use super::{COMPLEXITIES, MAX_EDGE, MAX_PIXELS, MIN_PIXELS, Model, SEED_DEFAULT_MODEL};

    fn union(pick: impl Fn(Model) -> &'static [&'static str]) -> Vec<&'static str> {
        let mut all: Vec<&'static str> = Vec::new();
        for value in Model::all().flat_map(pick) {
            if !all.contains(value) {
                all.push(value);
            }
        }
        all
    }

    /// Help for `--model`: the default and every known model.
    pub fn model() -> String {
        let mut text = format!(
            "The model to ask for (default {SEED_DEFAULT_MODEL}, which is retired: its successor makes the image). Known models:"
        );
        for model in Model::all() {
            text.push_str("\n  ");
            text.push_str(&model.describe());
        }
        text
    }

    /// Help for `--size`: the size rules.
    pub fn size() -> String {
        format!(
            "auto or WxH. Active models: both edges multiples of 16, longest at most {MAX_EDGE}, aspect 1:3 to 3:1, {MIN_PIXELS} to {MAX_PIXELS} pixels; a retired model takes only its own sizes (see --model)"
        )
    }

    /// Help for `--quality`: every quality any model takes.
    pub fn quality() -> String {
        let mut text = format!("One of {}.", union(|m| m.spec().qualities).join(", "));
        let only: Vec<&str> = Model::active()
            .filter(|m| m.spec().qualities.contains(&"max"))
            .map(Model::name)
            .collect();
        text.push_str(&format!(
            " xhigh and max: {} only; standard and hd: DALL·E jobs (sent as medium and high)",
            only.join(", ")
        ));
        text
    }

    /// Help for `--background`: every background any model takes.
    pub fn background() -> String {
        format!("One of {}", union(|m| m.spec().backgrounds).join(", "))
    }

    /// Help for `--complexity`: the values and the models that take it.
    pub fn complexity() -> String {
        let takers: Vec<&str> = Model::active()
            .filter(|m| m.spec().complexity)
            .map(Model::name)
            .collect();
        format!(
            "One of {}; {} only (and retired models whose successor is one of them)",
            COMPLEXITIES.join(", "),
            takers.join(", ")
        )
    }
}

/// A model name as a configuration key (`-` and `.` become `_`), so that every per-model setting
/// can also be set from the environment.
pub(crate) fn config_key(name: &str) -> String {
    name.replace(['-', '.'], "_")
}

/// Which active model serves each retired one, from `openai.successors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Successors {
    map: BTreeMap<&'static str, Model>,
}

/// A successor table that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuccessorError {
    #[error("openai.successors.{key}: no retired model is called that (known: {known})")]
    /// A key that names no retired model.
    UnknownRetired {
        /// The key as configured.
        key: String,
        /// The retired models' keys, for the message.
        known: String,
    },
    #[error("openai.successors.{key} = {value:?}: not an active model (active: {active})")]
    /// A successor that is not an active model.
    NotActive {
        /// The retired model's key.
        key: String,
        /// The successor as configured.
        value: String,
        /// The active models, for the message.
        active: String,
    },
}

impl Successors {
    /// Every retired model served by [`DEFAULT_SUCCESSOR`].
    pub(crate) fn defaults() -> Successors {
        Successors::from_config(&BTreeMap::new()).unwrap_or_else(|_| Successors {
            map: BTreeMap::new(),
        })
    }

    /// Reads `openai.successors` (keys in configuration form, values model names); a retired model
    /// it does not name gets [`DEFAULT_SUCCESSOR`].
    pub(crate) fn from_config(
        table: &BTreeMap<String, String>,
    ) -> Result<Successors, SuccessorError> {
        let retired: Vec<Model> = Model::all().filter(|m| !m.is_active()).collect();
        let active_names = || {
            Model::active()
                .map(Model::name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for key in table.keys() {
            if !retired
                .iter()
                .any(|m| m.config_key() == *key || m.name() == key)
            {
                return Err(SuccessorError::UnknownRetired {
                    key: key.clone(),
                    known: retired
                        .iter()
                        .map(|m| m.config_key())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        let mut map = BTreeMap::new();
        for model in retired {
            let configured = table
                .get(&model.config_key())
                .or_else(|| table.get(model.name()));
            let name = configured.map_or(DEFAULT_SUCCESSOR, String::as_str);
            let successor = Model::from_name(name)
                .filter(|m| m.is_active())
                .ok_or_else(|| SuccessorError::NotActive {
                    key: model.config_key(),
                    value: name.to_owned(),
                    active: active_names(),
                })?;
            map.insert(model.name(), successor);
        }
        Ok(Successors { map })
    }

    /// The model that is called for a job asking for `asked`.
    pub(crate) fn called(&self, asked: Model) -> Model {
        if asked.is_active() {
            return asked;
        }
        self.map
            .get(asked.name())
            .copied()
            .or_else(|| Model::from_name(DEFAULT_SUCCESSOR))
            .unwrap_or(asked)
    }

    /// Every model a job can make the worker call: the active ones (a successor is always one).
    pub(crate) fn callable(&self) -> Vec<Model> {
        Model::active().collect()
    }

    /// `retired → successor` pairs, for logs and `stats`.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, Model)> + '_ {
        self.map.iter().map(|(name, model)| (*name, *model))
    }
}

/// Longest edge of a custom size.
pub(crate) const MAX_EDGE: u32 = 3840;
/// Fewest and most pixels of a custom size.
pub(crate) const MIN_PIXELS: u64 = 655_360;
pub(crate) const MAX_PIXELS: u64 = 8_294_400;

/// Parses `WxH` (decimal digits only).
pub(crate) fn parse_size(size: &str) -> Option<(u32, u32)> {
    let (w, h) = size.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    (digits(w) && digits(h)).then_some(())?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// Why a `WxH` is not a size the GPT image 2.x models make; `None` when it is one.
pub(crate) fn check_custom_size(width: u32, height: u32) -> Option<String> {
    let pixels = u64::from(width) * u64::from(height);
    if width == 0 || height == 0 || !width.is_multiple_of(16) || !height.is_multiple_of(16) {
        Some("both edges must be multiples of 16".to_owned())
    } else if width.max(height) > MAX_EDGE {
        Some(format!("the longest edge must be at most {MAX_EDGE}"))
    } else if width.max(height) > 3 * width.min(height) {
        Some("the aspect ratio must be between 1:3 and 3:1".to_owned())
    } else if !(MIN_PIXELS..=MAX_PIXELS).contains(&pixels) {
        Some(format!(
            "the image must have between {MIN_PIXELS} and {MAX_PIXELS} pixels ({width}x{height} has {pixels})"
        ))
    } else {
        None
    }
}

/// The smallest whole multiple of `width`×`height` that a 2.x model makes (256x256 → 1024x1024),
/// for sizes a retired model made and its successor does not.
fn upscaled(width: u32, height: u32) -> Option<(u32, u32)> {
    (2..=16)
        .map(|k| (width * k, height * k))
        .find(|(w, h)| check_custom_size(*w, *h).is_none())
}

/// Why a job's configuration does not fit its model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(
        "config.model {0:?} is unknown (active: {active}; retired, served by a successor: {retired})",
        active = Model::active().map(Model::name).collect::<Vec<_>>().join(", "),
        retired = Model::all().filter(|m| !m.is_active()).map(Model::name).collect::<Vec<_>>().join(", ")
    )]
    /// The job named a model the catalogue does not know.
    UnknownModel(String),
    #[error("config.{field} {value:?} is not allowed for {model}; allowed: {allowed}")]
    /// A value the model does not take.
    NotAllowed {
        /// The field (`quality`, `background`, …).
        field: &'static str,
        /// The value the job gave.
        value: String,
        /// The model whose rules refused it.
        model: &'static str,
        /// The values the model takes, for the message.
        allowed: String,
    },
    #[error("config.size {size:?} is not allowed for {model}: {rule}")]
    /// A size the model does not take.
    BadSize {
        /// The size the job gave.
        size: String,
        /// The model whose rules refused it.
        model: &'static str,
        /// The rule it breaks.
        rule: String,
    },
    #[error("config.complexity is not supported by {model} (only gpt-image-2.6 models take it)")]
    /// `complexity` given for a model that does not take it.
    NoComplexity {
        /// The model called.
        model: &'static str,
    },
}

/// What the job's configuration asks the image model for, before the successor is applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked<'a> {
    /// The model the job named.
    pub(crate) model: &'a str,
    /// `auto` or `WxH`.
    pub(crate) size: &'a str,
    /// `quality`; `None` when the job named none.
    pub(crate) quality: Option<&'a str>,
    /// `background`; `None` when the job set none itself.
    pub(crate) background: Option<&'a str>,
    /// `complexity`; `None` when the job named none.
    pub(crate) complexity: Option<&'a str>,
}

/// Exactly what to ask OpenAI for, after the job passed the rules (CONTRACT.md §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The model the job named (or the seed's default).
    pub(crate) asked: Model,
    /// The model that is called: `asked`, or its successor.
    pub(crate) called: Model,
    /// `size` as sent: `auto` or `WxH`.
    pub(crate) request_size: String,
    /// The size the stored image must have, where the job named one (`None` for `auto`).
    pub(crate) output: Option<(u32, u32)>,
    /// `quality` as sent, in the called model's words; `None` leaves OpenAI's default.
    pub(crate) quality: Option<String>,
    /// `background` as sent; `None` sends none.
    pub(crate) background: Option<String>,
    /// `complexity` as sent; `None` sends none.
    pub(crate) complexity: Option<String>,
}

impl Plan {
    /// Checks the job against the asked model's sizes and the called model's other rules.
    /// `default_quality` (`openai.default_quality`) applies when the job sets none and the called
    /// model takes it.
    pub(crate) fn new(
        asked: Asked<'_>,
        successors: &Successors,
        default_quality: Option<&str>,
    ) -> Result<Plan, RuleError> {
        let asked_model =
            Model::from_name(asked.model).ok_or(RuleError::UnknownModel(asked.model.to_owned()))?;
        let called = successors.called(asked_model);
        let (request_size, output) = size_plan(asked.size, asked_model, called)?;

        let quality = match asked.quality {
            Some(quality) => {
                // A retired model's own words (dall-e-3's `hd`) in the successor's words; then
                // the successor's rules, like everything but the size.
                let renamed = asked_model
                    .spec()
                    .quality_names
                    .iter()
                    .find(|(old, _)| *old == quality)
                    .map_or(quality, |(_, new)| *new);
                one_of("quality", renamed, called, called.spec().qualities)?;
                Some(renamed.to_owned())
            }
            None => default_quality
                .filter(|q| called.spec().qualities.contains(q))
                .map(str::to_owned),
        };
        if let Some(background) = asked.background {
            one_of("background", background, called, called.spec().backgrounds)?;
        }
        if let Some(complexity) = asked.complexity {
            if !called.spec().complexity {
                return Err(RuleError::NoComplexity {
                    model: called.name(),
                });
            }
            one_of("complexity", complexity, called, COMPLEXITIES)?;
        }
        Ok(Plan {
            asked: asked_model,
            called,
            request_size,
            output,
            quality,
            background: asked.background.map(str::to_owned),
            complexity: asked.complexity.map(str::to_owned),
        })
    }

    /// Pixels of the image that is made (`auto` counted as 1024x1024), for the per-image fallback
    /// price.
    pub(crate) fn request_pixels(&self) -> u64 {
        parse_size(&self.request_size).map_or(1024 * 1024, |(w, h)| u64::from(w) * u64::from(h))
    }
}

/// The size to request, and the size the stored image must have.
fn size_plan(
    size: &str,
    asked: Model,
    called: Model,
) -> Result<(String, Option<(u32, u32)>), RuleError> {
    if let Sizes::Listed(listed) = asked.spec().sizes {
        one_of("size", size, asked, listed)?;
    }
    if size == "auto" {
        return Ok(("auto".to_owned(), None));
    }
    let bad = |rule: String| RuleError::BadSize {
        size: size.to_owned(),
        model: asked.name(),
        rule,
    };
    let (width, height) = parse_size(size).ok_or_else(|| bad("expected auto or WxH".to_owned()))?;
    match called.spec().sizes {
        Sizes::Listed(listed) => {
            one_of("size", size, called, listed)?;
            Ok((size.to_owned(), Some((width, height))))
        }
        Sizes::Custom => match check_custom_size(width, height) {
            None => Ok((size.to_owned(), Some((width, height)))),
            // A size of a retired model's list that the successor cannot make: made larger, then
            // scaled down to what was asked.
            Some(_) if !asked.is_active() => {
                let (w, h) = upscaled(width, height)
                    .ok_or_else(|| bad(format!("{} cannot make or scale to it", called.name())))?;
                Ok((format!("{w}x{h}"), Some((width, height))))
            }
            Some(rule) => Err(bad(rule)),
        },
    }
}

fn one_of(
    field: &'static str,
    value: &str,
    model: Model,
    allowed: &[&str],
) -> Result<(), RuleError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(RuleError::NotAllowed {
        field,
        value: value.to_owned(),
        model: model.name(),
        allowed: allowed.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(model: &str, size: &str) -> Asked<'static> {
        let model: &'static str = Box::leak(model.to_owned().into_boxed_str());
        let size: &'static str = Box::leak(size.to_owned().into_boxed_str());
        Asked {
            model,
            size,
            quality: None,
            background: None,
            complexity: None,
        }
    }

    fn plan(asked: Asked<'_>) -> Result<Plan, RuleError> {
        Plan::new(asked, &Successors::defaults(), None)
    }

    #[test]
    fn the_catalogue_has_one_row_per_name_and_retired_rows_have_sizes() {
        let mut names: Vec<_> = Model::all().map(Model::name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
        for model in Model::all().filter(|m| !m.is_active()) {
            assert!(matches!(model.spec().sizes, Sizes::Listed(_)), "{model}");
        }
        assert!(Model::from_name(DEFAULT_SUCCESSOR).is_some_and(Model::is_active));
    }

    #[test]
    fn the_seed_default_is_served_by_the_default_successor() {
        let plan = plan(asked(SEED_DEFAULT_MODEL, "1024x1024")).unwrap();
        assert_eq!(plan.asked.name(), "gpt-image-1");
        assert_eq!(plan.called.name(), "gpt-image-2.6-flare");
        assert_eq!(plan.request_size, "1024x1024");
        assert_eq!(plan.output, Some((1024, 1024)));
    }

    #[test]
    fn custom_sizes_follow_the_2x_rules() {
        for ok in [
            "1024x1024",
            "2048x1152",
            "3840x2160",
            "1280x3840",
            "auto",
            "816x816",
        ] {
            assert!(plan(asked("gpt-image-2.6-flare", ok)).is_ok(), "{ok}");
        }
        for (bad, rule) in [
            ("1000x1000", "multiples of 16"),
            ("4096x2048", "at most 3840"),
            ("3840x1024", "aspect ratio"),
            ("512x512", "pixels"),
            ("3840x2400", "pixels"),
            ("big", "WxH"),
            ("+1024x1024", "WxH"),
        ] {
            let error = plan(asked("gpt-image-2", bad)).unwrap_err();
            assert!(error.to_string().contains(rule), "{bad}: {error}");
        }
    }

    #[test]
    fn retired_models_keep_their_own_sizes() {
        let error = plan(asked("gpt-image-1", "2048x2048")).unwrap_err();
        assert!(error.to_string().contains("1536x1024"), "{error}");
        let plan = plan(asked("dall-e-3", "1792x1024")).unwrap();
        assert_eq!(
            (plan.called.name(), plan.request_size.as_str()),
            ("gpt-image-2.6-flare", "1792x1024")
        );
    }

    #[test]
    fn small_dall_e_2_sizes_are_made_at_1024_and_scaled_down() {
        for (size, side) in [("256x256", 256), ("512x512", 512)] {
            let plan = plan(asked("dall-e-2", size)).unwrap();
            assert_eq!(plan.request_size, "1024x1024", "{size}");
            assert_eq!(plan.output, Some((side, side)));
        }
    }

    #[test]
    fn qualities_follow_the_called_model_and_dall_e_words_are_renamed() {
        let with = |model: &str, quality: &'static str| {
            let mut a = asked(model, "1024x1024");
            a.quality = Some(quality);
            plan(a)
        };
        assert_eq!(
            with("dall-e-3", "hd").unwrap().quality.as_deref(),
            Some("high")
        );
        assert_eq!(
            with("dall-e-3", "standard").unwrap().quality.as_deref(),
            Some("medium")
        );
        // Everything but the size is the successor's: dall-e-3 may ask for what 2.6 makes.
        assert_eq!(
            with("dall-e-3", "high").unwrap().quality.as_deref(),
            Some("high")
        );
        assert!(with("gpt-image-2.5-flare", "xhigh").is_ok());
        assert!(with("gpt-image-2.6-sunburst", "max").is_ok());
        let error = with("gpt-image-2", "xhigh").unwrap_err();
        assert!(error.to_string().contains("gpt-image-2"), "{error}");
        assert!(with("gpt-image-1", "xhigh").is_ok());
        assert!(with("gpt-image-1", "ultra").is_err());
    }

    #[test]
    fn complexity_only_on_2_6() {
        let with = |model: &str, complexity: &'static str| {
            let mut a = asked(model, "1024x1024");
            a.complexity = Some(complexity);
            plan(a)
        };
        assert!(with("gpt-image-2.6-flare", "high").is_ok());
        assert!(matches!(
            with("gpt-image-2.5-flare", "high"),
            Err(RuleError::NoComplexity { .. })
        ));
        assert!(with("gpt-image-2.6-flare", "extreme").is_err());
        // A retired model's job is validated against its successor, which takes complexity.
        assert!(with("gpt-image-1", "low").is_ok());
    }

    #[test]
    fn the_default_quality_applies_only_where_the_called_model_takes_it() {
        let p = Plan::new(
            asked("gpt-image-2", "auto"),
            &Successors::defaults(),
            Some("xhigh"),
        )
        .unwrap();
        assert_eq!(p.quality, None);
        let p = Plan::new(
            asked("gpt-image-2.6-flare", "auto"),
            &Successors::defaults(),
            Some("xhigh"),
        )
        .unwrap();
        assert_eq!(p.quality.as_deref(), Some("xhigh"));
    }

    #[test]
    fn successors_are_configurable_per_model_and_checked() {
        let table = BTreeMap::from([("dall_e_3".to_owned(), "gpt-image-2".to_owned())]);
        let successors = Successors::from_config(&table).unwrap();
        let dalle3 = Model::from_name("dall-e-3").unwrap();
        assert_eq!(successors.called(dalle3).name(), "gpt-image-2");
        let gpt1 = Model::from_name("gpt-image-1").unwrap();
        assert_eq!(successors.called(gpt1).name(), DEFAULT_SUCCESSOR);
        let bad = BTreeMap::from([("dall_e_3".to_owned(), "gpt-image-1".to_owned())]);
        assert!(matches!(
            Successors::from_config(&bad),
            Err(SuccessorError::NotActive { .. })
        ));
        let unknown = BTreeMap::from([("gpt_image_9".to_owned(), "gpt-image-2".to_owned())]);
        assert!(matches!(
            Successors::from_config(&unknown),
            Err(SuccessorError::UnknownRetired { .. })
        ));
    }

    #[test]
    fn the_command_line_help_comes_from_the_catalogue() {
        let text = help::model();
        for model in Model::all() {
            assert!(text.contains(model.name()), "{model} missing from {text}");
        }
        assert!(
            help::quality().contains("xhigh") && help::quality().contains("gpt-image-2.5-flare")
        );
        assert!(help::complexity().contains("gpt-image-2.6-sunburst"));
        assert!(!help::complexity().contains("gpt-image-2.5"));
    }

    #[test]
    fn unknown_models_name_the_known_ones() {
        let error = plan(asked("midjourney", "auto")).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("gpt-image-2.6-flare") && text.contains("dall-e-2"),
            "{text}"
        );
    }
}
