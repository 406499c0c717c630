//! Cache controls: what a job's own `cache` object, its user's stored preferences, the arm of
//! the enabled experiment and the configuration's `[cache]` section come to for one job.
//!
//! [`resolve`] is the one place they meet, field by field: the job's own fields win over the
//! user's, which win over the arm's, which win over the configuration's (job > user > arm >
//! config). The resulting [`CachePolicy`] is what the worker's journey reads — the mode, the
//! freshness an entry needs to be served, the experiment assignment (for labels), the variants
//! settings — so nothing downstream looks at the four sources again. Pure: no I/O.

use chrono::{DateTime, Duration, Utc};

use super::Assignment;
use crate::config::{CacheMode, CacheSettings};

/// A job's own `cache` object (CONTRACT.md §2.1 additions, README "Cache controls"), validated
/// at intake. Every field is optional: absent means "as the user, arm or configuration say".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheRequest {
    /// Cached images older than this many days (at least 1) are not served to this job.
    pub max_age_days: Option<u32>,
    /// How this job uses the cache; `force_refresh: true` reads as [`CacheMode::Refresh`].
    pub mode: Option<CacheMode>,
    /// A separate cache: appended to the key's canonical JSON (CONTRACT.md §3 additions).
    pub namespace: Option<String>,
}

impl CacheRequest {
    /// Whether the job's own fields already rule out the batched hit path: a refresh or a bypass
    /// never serves the entry it finds.
    pub(crate) fn skips_batch(&self) -> bool {
        matches!(self.mode, Some(CacheMode::Refresh | CacheMode::Bypass))
    }
}

/// A user's stored cache preferences (`memoji_user_cache_preferences`, the admin API's
/// `/api/users/{user_id}/cache-preferences`, `memoji-worker user prefs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPreferences {
    /// The user's default maximum age of a served image, in days.
    #[serde(default)]
    pub max_age_days: Option<u32>,
    /// The user's default mode.
    #[serde(default)]
    pub mode: Option<CacheMode>,
    /// Always the key's first image, never one of its variants.
    #[serde(default)]
    pub variants_opt_out: bool,
}

impl UserPreferences {
    /// The preferences if they keep the rules (a maximum age of at least one day), else the
    /// broken rule.
    pub fn checked(self) -> Result<UserPreferences, String> {
        if self.max_age_days == Some(0) {
            return Err("max_age_days must be a whole number of days, at least 1".to_owned());
        }
        Ok(self)
    }
}

/// What one job does with the cache, resolved from all sources.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    /// How the job uses the cache.
    pub mode: CacheMode,
    /// Entries older than this many days are not served (`None`: any age).
    pub max_age_days: Option<u32>,
    /// Whether an entry that warming made and no live job has used yet is served (an arm's
    /// `warming = false` says no).
    pub(crate) serve_warmed: bool,
    /// The user opted out of variants (their preference).
    pub variants_opt_out: bool,
    /// The arm's `variants`, passed through for the variants code (`None`: the configuration's).
    pub variants: Option<u32>,
    /// The experiment and arm the job's user is in, for labels on results and statistics.
    pub(crate) assignment: Option<Assignment>,
}

impl CachePolicy {
    /// The policy of a seed-shaped job under default settings: today's behaviour.
    pub fn seed() -> CachePolicy {
        resolve(
            &CacheRequest::default(),
            None,
            None,
            &CacheSettings::default(),
        )
    }

    /// What an entry must be to serve this job, for a job received at `received`. A refresh
    /// accepts only an entry recorded after it arrived (one a concurrent refresh of the same key
    /// made), so single flight still holds for it.
    pub fn freshness(&self, received: DateTime<Utc>) -> Freshness {
        let not_before = match self.mode {
            CacheMode::Refresh => Some(received),
            _ => self
                .max_age_days
                .map(|days| received - Duration::days(i64::from(days))),
        };
        Freshness {
            not_before,
            serve_unused_warmed: self.serve_warmed,
        }
    }

    /// Whether a generation for this job may find an entry it does not serve, and so replaces
    /// it (a path of its own, CONTRACT.md §5) instead of filling an empty key.
    pub fn replaces(&self) -> bool {
        self.mode == CacheMode::Refresh || self.max_age_days.is_some() || !self.serve_warmed
    }

    /// Whether the batched hit path may answer this job: only a plain lookup (a hit, or for
    /// `only_if_cached` the hit it needs); a refresh and a bypass never serve what they find.
    pub(crate) fn batchable(&self) -> bool {
        matches!(self.mode, CacheMode::Default | CacheMode::OnlyIfCached)
    }
}

/// The conditions under which a cached entry serves a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// The entry must have been (re)generated at or after this time.
    pub(crate) not_before: Option<DateTime<Utc>>,
    /// Whether an entry that warming made and nobody has used yet is served.
    pub(crate) serve_unused_warmed: bool,
}

impl Freshness {
    /// Any entry serves (a seed-shaped job).
    pub const ANY: Freshness = Freshness {
        not_before: None,
        serve_unused_warmed: true,
    };

    /// Whether an entry generated at `generated_at`, `warmed_unused` when warming made it and no
    /// live job has used it, serves.
    pub fn serves(&self, generated_at: DateTime<Utc>, warmed_unused: bool) -> bool {
        self.not_before.is_none_or(|since| generated_at >= since)
            && (self.serve_unused_warmed || !warmed_unused)
    }
}

/// The job's policy: each field from the first source that sets it, in the order job, user,
/// arm, configuration (the arm sets only `max_age_days`, `warming` and `variants`; only the user
/// sets `variants_opt_out`).
pub(crate) fn resolve(
    job: &CacheRequest,
    user: Option<&UserPreferences>,
    assignment: Option<Assignment>,
    settings: &CacheSettings,
) -> CachePolicy {
    let arm = assignment.as_ref().map(|a| &a.settings);
    let mode = job
        .mode
        .or(user.and_then(|u| u.mode))
        .unwrap_or(settings.mode);
    let max_age_days = job
        .max_age_days
        .or(user.and_then(|u| u.max_age_days))
        .or(arm.and_then(|a| a.max_age_days))
        .or(settings.max_age_days);
    CachePolicy {
        mode,
        max_age_days,
        serve_warmed: arm.and_then(|a| a.warming).unwrap_or(true),
        variants_opt_out: user.is_some_and(|u| u.variants_opt_out),
        variants: arm.and_then(|a| a.variants),
        assignment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ArmSettings;

    fn arm(max_age_days: Option<u32>, warming: Option<bool>) -> Assignment {
        Assignment {
            experiment: "freshness".to_owned(),
            arm: "short".to_owned(),
            settings: ArmSettings {
                share: 50.0,
                variants: Some(3),
                max_age_days,
                warming,
            },
        }
    }

    fn job(max_age_days: Option<u32>, mode: Option<CacheMode>) -> CacheRequest {
        CacheRequest {
            max_age_days,
            mode,
            namespace: None,
        }
    }

    fn user(max_age_days: Option<u32>, mode: Option<CacheMode>) -> UserPreferences {
        UserPreferences {
            max_age_days,
            mode,
            variants_opt_out: false,
        }
    }

    fn config(max_age_days: Option<u32>, mode: CacheMode) -> CacheSettings {
        CacheSettings {
            max_age_days,
            mode,
            ..CacheSettings::default()
        }
    }

    #[test]
    fn a_seed_shaped_job_under_defaults_is_todays_behaviour() {
        let policy = CachePolicy::seed();
        assert_eq!(policy.mode, CacheMode::Default);
        assert_eq!(policy.max_age_days, None);
        assert!(policy.serve_warmed && !policy.variants_opt_out && policy.batchable());
        assert!(!policy.replaces());
        assert_eq!(policy.variants, None);
        assert_eq!(policy.assignment, None);
        assert_eq!(policy.freshness(Utc::now()), Freshness::ANY);
    }

    #[test]
    fn each_field_comes_from_the_first_source_that_sets_it() {
        use CacheMode::*;
        // (job, user, arm max age, config) → (mode, max_age_days)
        let table = [
            // Nothing set anywhere: the configuration's defaults.
            (
                job(None, None),
                None,
                None,
                config(None, Default),
                (Default, None),
            ),
            // The configuration alone.
            (
                job(None, None),
                None,
                None,
                config(Some(90), Bypass),
                (Bypass, Some(90)),
            ),
            // The arm over the configuration (max age only; the arm has no mode).
            (
                job(None, None),
                None,
                Some(30),
                config(Some(90), Bypass),
                (Bypass, Some(30)),
            ),
            // The user over the arm and the configuration.
            (
                job(None, None),
                Some(user(Some(7), Some(OnlyIfCached))),
                Some(30),
                config(Some(90), Bypass),
                (OnlyIfCached, Some(7)),
            ),
            // A user's preference that sets one field leaves the other to the next source.
            (
                job(None, None),
                Some(user(None, Some(Refresh))),
                Some(30),
                config(Some(90), Default),
                (Refresh, Some(30)),
            ),
            (
                job(None, None),
                Some(user(Some(7), None)),
                None,
                config(None, Bypass),
                (Bypass, Some(7)),
            ),
            // The job over everything.
            (
                job(Some(1), Some(Default)),
                Some(user(Some(7), Some(OnlyIfCached))),
                Some(30),
                config(Some(90), Bypass),
                (Default, Some(1)),
            ),
            // A job that sets only its mode keeps the user's max age.
            (
                job(None, Some(OnlyIfCached)),
                Some(user(Some(7), Some(Bypass))),
                Some(30),
                config(None, Default),
                (OnlyIfCached, Some(7)),
            ),
        ];
        for (n, (job, user, arm_age, config, (mode, max_age))) in table.into_iter().enumerate() {
            let assignment = arm_age.map(|days| arm(Some(days), None));
            let policy = resolve(&job, user.as_ref(), assignment.clone(), &config);
            assert_eq!(
                (policy.mode, policy.max_age_days),
                (mode, max_age),
                "row {n}"
            );
            assert_eq!(
                policy.assignment, assignment,
                "row {n}: the assignment rides along"
            );
        }
    }

    #[test]
    fn the_arm_sets_warming_and_variants_and_the_user_the_opt_out() {
        let policy = resolve(
            &CacheRequest::default(),
            Some(&UserPreferences {
                variants_opt_out: true,
                ..UserPreferences::default()
            }),
            Some(arm(None, Some(false))),
            &CacheSettings::default(),
        );
        assert!(!policy.serve_warmed);
        assert!(policy.variants_opt_out);
        assert_eq!(policy.variants, Some(3));
        assert!(
            policy.replaces(),
            "a warmed entry it will not serve is replaced"
        );
        let policy = resolve(
            &CacheRequest::default(),
            None,
            Some(arm(None, None)),
            &CacheSettings::default(),
        );
        assert!(
            policy.serve_warmed,
            "an arm that leaves warming out serves warmed entries"
        );
    }

    #[test]
    fn freshness_follows_the_mode_and_the_max_age() {
        let received = Utc::now();
        let mut policy = CachePolicy::seed();
        policy.max_age_days = Some(3);
        let fresh = policy.freshness(received);
        assert_eq!(fresh.not_before, Some(received - Duration::days(3)));
        assert!(fresh.serves(received - Duration::days(2), false));
        assert!(!fresh.serves(received - Duration::days(4), false));
        // A refresh takes only an entry recorded after it arrived, whatever the max age.
        policy.mode = CacheMode::Refresh;
        let fresh = policy.freshness(received);
        assert_eq!(fresh.not_before, Some(received));
        assert!(!fresh.serves(received - Duration::seconds(1), false));
        assert!(!policy.batchable());
        // An unused warmed entry serves only where warming is on.
        let warm_off = Freshness {
            not_before: None,
            serve_unused_warmed: false,
        };
        assert!(!warm_off.serves(received, true));
        assert!(warm_off.serves(received, false));
        assert!(Freshness::ANY.serves(received - Duration::days(9999), true));
    }

    #[test]
    fn only_a_refresh_or_a_bypass_of_the_job_skips_the_batch() {
        assert!(!CacheRequest::default().skips_batch());
        assert!(!job(Some(3), Some(CacheMode::OnlyIfCached)).skips_batch());
        assert!(job(None, Some(CacheMode::Refresh)).skips_batch());
        assert!(job(None, Some(CacheMode::Bypass)).skips_batch());
    }
}
