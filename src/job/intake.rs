//! Intake: a delivery's bytes become a [`Job`], an invalid job, or a [`Rejection`].
//!
//! This is the one place raw message text is read (CONTRACT.md §2.1). A message that is not a job
//! at all is rejected for the dead-letter queue; a job that breaks a rule is [`Intake::Invalid`] and
//! gets an `invalid_job` result; everything else is a [`Job`] whose fields are valid by construction.

use std::fmt;

use serde_json::Value;
use uuid::Uuid;

use super::lenient;
use super::policy::CacheRequest;
use super::{AvatarConfig, ModelRules, Plan};
use crate::config::{Allowance, CacheMode, CreditSettings};

/// Largest message body accepted as a job.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest `user_id`.
const MAX_USER_ID_CHARS: usize = 128;
/// Longest `cache.namespace`.
const MAX_NAMESPACE_CHARS: usize = 64;
/// Namespace for job ids derived from message bodies, so a redelivered message without an id keeps
/// the id it had the first time.
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6d656d6f_6a69_4a6f_8b62_000000000001);

/// The idempotency key of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user's plan; allowances per tier come from configuration (CONTRACT.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// `free`.
    Free,
    /// `monthly_basic`.
    MonthlyBasic,
    /// `monthly_standard`.
    MonthlyStandard,
    /// `monthly_pro`.
    MonthlyPro,
    /// `lifetime`.
    Lifetime,
}

impl Tier {
    /// Every tier, in declaration order.
    pub(crate) const ALL: [Tier; 5] = [
        Tier::Free,
        Tier::MonthlyBasic,
        Tier::MonthlyStandard,
        Tier::MonthlyPro,
        Tier::Lifetime,
    ];

    /// The tier as jobs and configuration spell it (`free`, `monthly_basic`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::MonthlyBasic => "monthly_basic",
            Tier::MonthlyStandard => "monthly_standard",
            Tier::MonthlyPro => "monthly_pro",
            Tier::Lifetime => "lifetime",
        }
    }

    /// The tier spelled `name`; `None` for an unknown name.
    pub fn from_name(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The tier's monthly allowance under `credits`; a tier missing from configuration gets
    /// nothing.
    pub fn allowance(self, credits: &CreditSettings) -> Allowance {
        credits
            .allowances
            .get(self.as_str())
            .copied()
            .unwrap_or(Allowance::Limited(0))
    }
}

/// A valid generation job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The job id: the message's `job_id`, its UUID `message_id`, or one derived from the body.
    pub id: JobId,
    /// The id was derived from the body (no `job_id`, no UUID `message_id`): it is remembered
    /// only for a while after the job finished (CONTRACT.md §2.1, `db::jobs::derived`).
    pub(crate) derived_id: bool,
    /// The user id as the job gave it.
    pub user_id: String,
    /// The user's plan.
    pub tier: Tier,
    /// The avatar to draw.
    pub config: AvatarConfig,
    /// What to ask the image model for (CONTRACT.md §11).
    pub plan: Plan,
    /// `force_refresh: true`, the same as `cache.mode = "refresh"` (which sets it too).
    pub force_refresh: bool,
    /// The job's own cache controls (`cache`, all optional; `job::policy`).
    pub cache: CacheRequest,
}

/// What a readable message turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Intake {
    /// A valid job, to be answered from the cache or generated.
    Job(Box<Job>),
    /// A job that breaks a rule: answered with an `invalid_job` result, never retried or charged.
    Invalid {
        /// The job's id (read or derived), for the result.
        job_id: JobId,
        /// The user id as the message gave it.
        user_id: String,
        /// Which rule the job broke, for the result's error message.
        message: String,
    },
}

/// A message that is not a job: it goes to the dead-letter queue with `reason`, and, where a job id
/// and user id could be read, also gets an `invalid_job` result.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Why the message is not a job, for the dead-letter queue.
    pub reason: String,
    /// The job id and user id to send an `invalid_job` result to; `None` when they could not be read.
    pub answer: Option<(JobId, String)>,
}

/// Reads a message body. `message_id` is the AMQP property, used as the job id when the body has none.
/// `rules` are the operator's model settings, which decide what a job's configuration is checked
/// against.
#[tracing::instrument(name = "intake", level = "debug", skip_all)]
pub fn intake(
    body: &[u8],
    message_id: Option<&str>,
    rules: &ModelRules,
) -> Result<Intake, Rejection> {
    let reject = |reason: String| Rejection {
        reason,
        answer: None,
    };
    // The size first: nothing of an oversized body is parsed beyond its first MAX_MESSAGE_BYTES.
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection {
            reason: format!(
                "message is {} bytes; a job is at most {MAX_MESSAGE_BYTES}",
                body.len()
            ),
            answer: answer_leniently(&body[..MAX_MESSAGE_BYTES], true, message_id, body.len()),
        });
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => {
            return Err(Rejection {
                reason: format!("body is not JSON: {error}"),
                answer: answer_leniently(body, false, message_id, body.len()),
            });
        }
    };
    let Value::Object(fields) = value else {
        return Err(reject("body is not a JSON object".to_owned()));
    };

    let (job_id, job_id_problem) = job_id(&fields, message_id, body);
    let derived_id = matches!(fields.get("job_id"), None | Some(Value::Null))
        && message_id.and_then(|id| Uuid::parse_str(id).ok()).is_none();
    let user_id = match fields.get("user_id") {
        Some(Value::String(user)) if !user.is_empty() => user.clone(),
        _ => {
            return Err(reject(
                "user_id is missing or not a non-empty string".to_owned(),
            ));
        }
    };
    if !valid_user_id(&user_id) {
        return Err(Rejection {
            reason: format!("user_id must be 1-{MAX_USER_ID_CHARS} printable characters"),
            answer: Some((job_id, user_id)),
        });
    }

    let invalid = |message: String| {
        Ok(Intake::Invalid {
            job_id,
            user_id: user_id.clone(),
            message,
        })
    };
    if let Some(problem) = job_id_problem {
        return invalid(problem);
    }
    let tier = match fields.get("tier") {
        None | Some(Value::Null) => Tier::Free,
        Some(Value::String(name)) => match Tier::from_name(name) {
            Some(tier) => tier,
            None => return invalid(format!("tier {name:?} is unknown")),
        },
        Some(_) => return invalid("tier must be a string".to_owned()),
    };
    let force_refresh = match fields.get("force_refresh") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return invalid("force_refresh must be true or false".to_owned()),
    };
    let mut cache = match cache_request(fields.get("cache")) {
        Ok(cache) => cache,
        Err(message) => return invalid(message),
    };
    // Two spellings of one control: `force_refresh` is the contract's, `cache.mode` the newer.
    match (force_refresh, cache.mode) {
        (true, None) => cache.mode = Some(CacheMode::Refresh),
        (true, Some(mode)) if mode != CacheMode::Refresh => {
            return invalid(format!(
                "force_refresh: true contradicts cache.mode {:?}",
                mode.as_str()
            ));
        }
        _ => {}
    }
    let force_refresh = cache.mode == Some(CacheMode::Refresh);
    let parsed = AvatarConfig::parse(fields.get("config").unwrap_or(&Value::Null))
        .and_then(|config| Ok((config.plan(rules)?, config)));
    let (plan, config) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return invalid(error.to_string()),
    };
    Ok(Intake::Job(Box::new(Job {
        id: job_id,
        derived_id,
        user_id,
        tier,
        config,
        plan,
        force_refresh,
        cache,
    })))
}

/// The job's `cache` object: absent or null is "nothing asked"; anything present must be an
/// object of known fields, each valid (the messages name the rule).
fn cache_request(value: Option<&Value>) -> Result<CacheRequest, String> {
    let fields = match value {
        None | Some(Value::Null) => return Ok(CacheRequest::default()),
        Some(Value::Object(fields)) => fields,
        Some(_) => return Err("cache must be an object".to_owned()),
    };
    if let Some(unknown) = fields
        .keys()
        .find(|name| !["max_age_days", "mode", "namespace"].contains(&name.as_str()))
    {
        return Err(format!(
            "cache.{unknown} is unknown (known: max_age_days, mode, namespace)"
        ));
    }
    let max_age_days = match fields.get("max_age_days") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(days) if days >= 1 => Some(days),
            _ => {
                return Err(
                    "cache.max_age_days must be a whole number of days, at least 1".to_owned(),
                );
            }
        },
    };
    let mode = match fields.get("mode") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => match CacheMode::from_name(name) {
            Some(mode) => Some(mode),
            None => {
                return Err(format!(
                    "cache.mode {name:?} is unknown (known: default, refresh, bypass, only_if_cached)"
                ));
            }
        },
        Some(_) => return Err("cache.mode must be a string".to_owned()),
    };
    let namespace = match fields.get("namespace") {
        None | Some(Value::Null) => None,
        Some(Value::String(name))
            if !name.is_empty()
                && name.chars().count() <= MAX_NAMESPACE_CHARS
                && !name.chars().any(char::is_control) =>
        {
            Some(name.clone())
        }
        Some(_) => {
            return Err(format!(
                "cache.namespace must be 1-{MAX_NAMESPACE_CHARS} printable characters"
            ));
        }
    };
    Ok(CacheRequest {
        max_age_days,
        mode,
        namespace,
    })
}

/// Whether `user_id` is a valid user id: 1-128 printable characters (CONTRACT.md §2.1).
pub fn valid_user_id(user_id: &str) -> bool {
    !user_id.is_empty()
        && user_id.chars().count() <= MAX_USER_ID_CHARS
        && !user_id.chars().any(char::is_control)
}

/// The answer to a message that is not JSON to serde (a lone surrogate escape, nesting too deep)
/// or is too big, where its ids can be read the way JavaScript's `JSON.parse` reads them: `text` is
/// the whole body, or with `prefix` its first bytes; `len` the whole body's length. The job id is
/// the body's `job_id` if it is a UUID, else the message's, else one derived from `text` and `len`.
fn answer_leniently(
    text: &[u8],
    prefix: bool,
    message_id: Option<&str>,
    len: usize,
) -> Option<(JobId, String)> {
    let ids = lenient::scan(text, prefix)?;
    let user_id = ids.user_id.filter(|user| !user.is_empty())?;
    let id = ids
        .job_id
        .as_deref()
        .and_then(|id| Uuid::parse_str(id).ok())
        .or_else(|| message_id.and_then(|id| Uuid::parse_str(id).ok()))
        .unwrap_or_else(|| {
            if prefix {
                let mut named = text.to_vec();
                named.extend_from_slice(&(len as u64).to_be_bytes());
                Uuid::new_v5(&DERIVED_ID_NAMESPACE, &named)
            } else {
                Uuid::new_v5(&DERIVED_ID_NAMESPACE, text)
            }
        });
    Some((JobId(id), user_id))
}

/// The job id: the body's `job_id`, else a UUID `message_id`, else one derived from the body (so a
/// redelivery keeps it). A `job_id` that is present but not a UUID is reported as a problem.
fn job_id(
    fields: &serde_json::Map<String, Value>,
    message_id: Option<&str>,
    body: &[u8],
) -> (JobId, Option<String>) {
    let from_message = message_id.and_then(|id| Uuid::parse_str(id).ok());
    let fallback = JobId(from_message.unwrap_or_else(|| Uuid::new_v5(&DERIVED_ID_NAMESPACE, body)));
    match fields.get("job_id") {
        None | Some(Value::Null) => (fallback, None),
        Some(Value::String(text)) => match Uuid::parse_str(text) {
            Ok(id) => (JobId(id), None),
            Err(_) => (fallback, Some(format!("job_id {text:?} is not a UUID"))),
        },
        Some(_) => (fallback, Some("job_id must be a UUID string".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(body: Value) -> Result<Intake, Rejection> {
        intake(body.to_string().as_bytes(), None, &ModelRules::default())
    }

    #[test]
    fn each_tier_gets_its_configured_allowance_and_a_missing_one_gets_nothing() {
        use crate::config::{Settings, UnlimitedWord};
        let mut credits = Settings::defaults().unwrap().credits;
        assert_eq!(Tier::Free.allowance(&credits), Allowance::Limited(2));
        assert_eq!(
            Tier::MonthlyBasic.allowance(&credits),
            Allowance::Limited(100)
        );
        assert_eq!(
            Tier::MonthlyStandard.allowance(&credits),
            Allowance::Limited(300)
        );
        assert_eq!(
            Tier::MonthlyPro.allowance(&credits),
            Allowance::Limited(1000)
        );
        assert_eq!(
            Tier::Lifetime.allowance(&credits),
            Allowance::Unlimited(UnlimitedWord::Unlimited)
        );
        credits.allowances.remove("monthly_pro");
        assert_eq!(Tier::MonthlyPro.allowance(&credits), Allowance::Limited(0));
    }

    #[test]
    fn reads_the_contract_example() {
        let body = json!({
            "job_id": "0b6f6f0e-3f5e-4c55-9d36-0f2b8e4a7f10", "user_id": "user-42",
            "tier": "monthly_basic", "force_refresh": false,
            "config": {"model": "gpt-image-1", "size": "1024x1024", "familyType": "father",
                "gesture": "wave", "hair": "short", "skinTone": "medium", "accessories": ["glasses"],
                "colorTheme": "pastel-blue", "background": "auto"}
        });
        let Ok(Intake::Job(job)) = read(body) else {
            panic!("example is a valid job")
        };
        assert_eq!(job.id.to_string(), "0b6f6f0e-3f5e-4c55-9d36-0f2b8e4a7f10");
        assert_eq!(job.tier, Tier::MonthlyBasic);
        assert_eq!(job.config.accessories, vec!["glasses".to_owned()]);
    }

    #[test]
    fn job_id_falls_back_to_message_id_then_to_the_body() {
        let body = json!({"user_id": "u"}).to_string();
        let message_id = "1e0c9c4a-6a5f-4c6e-9d8e-2b7c1f0a9e11";
        let Ok(Intake::Job(job)) =
            intake(body.as_bytes(), Some(message_id), &ModelRules::default())
        else {
            panic!()
        };
        assert_eq!(job.id.to_string(), message_id);
        assert_eq!(job.tier, Tier::Free);

        let first = intake(body.as_bytes(), Some("not-a-uuid"), &ModelRules::default()).unwrap();
        let again = intake(body.as_bytes(), None, &ModelRules::default()).unwrap();
        assert_eq!(first, again, "a derived id is stable across redeliveries");
    }

    #[test]
    fn non_jobs_are_rejected_with_a_reason() {
        assert!(
            intake(b"hello", None, &ModelRules::default())
                .unwrap_err()
                .reason
                .contains("not JSON")
        );
        assert!(
            intake(b"[1,2]", None, &ModelRules::default())
                .unwrap_err()
                .reason
                .contains("not a JSON object")
        );
        let no_user = read(json!({"job_id": "0b6f6f0e-3f5e-4c55-9d36-0f2b8e4a7f10"})).unwrap_err();
        assert!(no_user.reason.contains("user_id"));
        assert_eq!(no_user.answer, None);
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(
            intake(&huge, None, &ModelRules::default())
                .unwrap_err()
                .reason
                .contains("at most")
        );
    }

    #[test]
    fn only_an_id_from_neither_job_id_nor_message_id_is_derived() {
        let body = json!({"user_id": "u"}).to_string();
        let derived = |body: &str, message_id| match intake(
            body.as_bytes(),
            message_id,
            &ModelRules::default(),
        ) {
            Ok(Intake::Job(job)) => job.derived_id,
            other => panic!("{other:?}"),
        };
        assert!(derived(&body, None));
        assert!(derived(&body, Some("not-a-uuid")));
        assert!(!derived(
            &body,
            Some("1e0c9c4a-6a5f-4c6e-9d8e-2b7c1f0a9e11")
        ));
        let with_id = json!({"user_id": "u", "job_id": "0b6f6f0e-3f5e-4c55-9d36-0f2b8e4a7f10"});
        assert!(!derived(&with_id.to_string(), None));
    }

    #[test]
    fn an_oversized_body_with_readable_ids_is_answered() {
        let job_id = "0b6f6f0e-3f5e-4c55-9d36-0f2b8e4a7f10";
        let prompt = "p".repeat(2 * MAX_MESSAGE_BYTES);
        // The ids come first, the oversized prompt after.
        let body =
            format!(r#"{{"job_id":"{job_id}","user_id":"u","config":{{"prompt":"{prompt}"}}}}"#);
        let rejection = intake(body.as_bytes(), None, &ModelRules::default()).unwrap_err();
        assert!(rejection.reason.contains("at most"), "{}", rejection.reason);
        let (id, user) = rejection.answer.expect("answered");
        assert_eq!((id.to_string().as_str(), user.as_str()), (job_id, "u"));

        // Without a job id, one derived from what was read, the same every time.
        let body = format!(r#"{{"user_id":"u","config":{{"prompt":"{prompt}"}}}}"#);
        let first = intake(body.as_bytes(), None, &ModelRules::default())
            .unwrap_err()
            .answer;
        assert!(first.is_some());
        assert_eq!(
            first,
            intake(body.as_bytes(), None, &ModelRules::default())
                .unwrap_err()
                .answer
        );
        // Ids beyond the first 64 KiB are not looked for.
        let late = format!(r#"{{"config":{{"prompt":"{prompt}"}},"user_id":"u"}}"#);
        assert_eq!(
            intake(late.as_bytes(), None, &ModelRules::default())
                .unwrap_err()
                .answer,
            None
        );
    }

    #[test]
    fn a_lone_surrogate_escape_is_answered_as_json_parse_would_read_it() {
        let job_id = "0b6f6f0e-3f5e-4c55-9d36-0f2b8e4a7f10";
        let body = format!(r#"{{"job_id":"{job_id}","user_id":"u\ud83d","config":{{}}}}"#);
        let rejection = intake(body.as_bytes(), None, &ModelRules::default()).unwrap_err();
        assert!(
            rejection.reason.contains("not JSON"),
            "{}",
            rejection.reason
        );
        let (id, user) = rejection.answer.expect("answered");
        assert_eq!(id.to_string(), job_id);
        assert_eq!(user, "u\u{fffd}");
        // Garbage gets no answer, however readable its ids look.
        let broken = format!(r#"{{"job_id":"{job_id}","user_id":"u" oops}}"#);
        assert_eq!(
            intake(broken.as_bytes(), None, &ModelRules::default())
                .unwrap_err()
                .answer,
            None
        );
    }

    #[test]
    fn an_unreadable_user_id_still_gets_an_answer_when_it_can_be_read() {
        let long_user = "u".repeat(129);
        let rejection = read(json!({"user_id": long_user})).unwrap_err();
        assert_eq!(
            rejection.answer.map(|(_, user)| user),
            Some("u".repeat(129))
        );
    }

    #[test]
    fn the_cache_object_is_read_field_by_field() {
        let Ok(Intake::Job(job)) = read(json!({"user_id": "u"})) else {
            panic!()
        };
        assert_eq!(job.cache, CacheRequest::default(), "absent: nothing asked");
        let body = json!({"user_id": "u", "cache": {
            "max_age_days": 7, "mode": "only_if_cached", "namespace": "tenant-ä 1"}});
        let Ok(Intake::Job(job)) = read(body) else {
            panic!()
        };
        assert_eq!(
            job.cache,
            CacheRequest {
                max_age_days: Some(7),
                mode: Some(CacheMode::OnlyIfCached),
                namespace: Some("tenant-ä 1".to_owned()),
            }
        );
        assert!(!job.force_refresh);
        for mode in CacheMode::ALL {
            let body = json!({"user_id": "u", "cache": {"mode": mode.as_str()}});
            let Ok(Intake::Job(job)) = read(body) else {
                panic!()
            };
            assert_eq!(job.cache.mode, Some(mode));
        }
        let nulls = json!({"user_id": "u", "cache": {"max_age_days": null, "mode": null}});
        assert!(
            matches!(read(nulls), Ok(Intake::Job(job)) if job.cache == CacheRequest::default())
        );
    }

    #[test]
    fn force_refresh_and_cache_mode_refresh_are_one_control() {
        for body in [
            json!({"user_id": "u", "force_refresh": true}),
            json!({"user_id": "u", "cache": {"mode": "refresh"}}),
            json!({"user_id": "u", "force_refresh": true, "cache": {"mode": "refresh"}}),
        ] {
            let Ok(Intake::Job(job)) = read(body.clone()) else {
                panic!("{body}")
            };
            assert!(job.force_refresh, "{body}");
            assert_eq!(job.cache.mode, Some(CacheMode::Refresh), "{body}");
        }
        let Ok(Intake::Invalid { message, .. }) = read(
            json!({"user_id": "u", "force_refresh": true, "cache": {"mode": "only_if_cached"}}),
        ) else {
            panic!()
        };
        assert!(message.contains("contradicts"), "{message}");
    }

    #[test]
    fn broken_rules_make_an_invalid_job() {
        for body in [
            json!({"user_id": "u", "job_id": "nope"}),
            json!({"user_id": "u", "tier": "platinum"}),
            json!({"user_id": "u", "force_refresh": "yes"}),
            json!({"user_id": "u", "config": {"size": "3x3"}}),
            json!({"user_id": "u", "cache": "refresh"}),
            json!({"user_id": "u", "cache": {"max_age_days": 0}}),
            json!({"user_id": "u", "cache": {"max_age_days": -3}}),
            json!({"user_id": "u", "cache": {"max_age_days": 1.5}}),
            json!({"user_id": "u", "cache": {"max_age_days": "7"}}),
            json!({"user_id": "u", "cache": {"mode": "sometimes"}}),
            json!({"user_id": "u", "cache": {"mode": true}}),
            json!({"user_id": "u", "cache": {"namespace": ""}}),
            json!({"user_id": "u", "cache": {"namespace": "n".repeat(65)}}),
            json!({"user_id": "u", "cache": {"namespace": "a\nb"}}),
            json!({"user_id": "u", "cache": {"namespace": 7}}),
            json!({"user_id": "u", "cache": {"ttl": 7}}),
            json!({"user_id": "u", "force_refresh": true, "cache": {"mode": "bypass"}}),
        ] {
            let outcome = read(body.clone()).unwrap();
            assert!(
                matches!(outcome, Intake::Invalid { .. }),
                "{body} → {outcome:?}"
            );
        }
    }
}
