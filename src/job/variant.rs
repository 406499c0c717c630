//! Variants for variety (`cache.variants` = N): which of a key's N images a job gets.
//!
//! The choice is a pure function of the `user_id`, the key and N, so every replica, every restart
//! and every redelivery gives a user the same image for the same configuration: the variant is
//! the first eight bytes of SHA-256(`<user_id>` NUL `<key>`), as a number, modulo N. Variant 0 is
//! the key's row in `memoji_cache` (the seed's entry, `YYYY/MM/<hash>.png`); variants 1..N-1 are
//! extra images kept beside it (`db::variants`). With N = 1 every job gets variant 0: today's
//! behaviour exactly.
//!
//! N for a job is [`variants_for`]: the configuration's `cache.variants`, unless the user's A/B arm
//! sets its own, and 1 for a user who opted out of variants.

use sha2::{Digest, Sha256};

use super::CacheKey;
use crate::config::Settings;

/// One of a key's images: 0 is the seed's entry in `memoji_cache`, 1.. the extra variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Variant(u32);

impl Variant {
    /// The key's entry in `memoji_cache`, as the seed's system has it.
    pub(crate) const SEED: Variant = Variant(0);

    /// Variant number `n` (0 is [`Variant::SEED`]).
    pub fn new(n: u32) -> Variant {
        Variant(n)
    }

    /// Its number: 0 for the seed's entry.
    pub fn number(self) -> u32 {
        self.0
    }

    /// Whether this is the seed's entry (`memoji_cache`).
    pub(crate) fn is_seed(self) -> bool {
        self.0 == 0
    }
}

/// The variant a job gets, and out of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// The job's image among the key's.
    pub variant: Variant,
    /// N: how many images the key holds for this job's user (at least 1).
    pub of: u32,
}

impl Pick {
    /// N = 1: the seed's entry, today's behaviour.
    pub(crate) const SINGLE: Pick = Pick {
        variant: Variant::SEED,
        of: 1,
    };

    /// Whether variants are on for this job (N > 1).
    pub(crate) fn is_varied(self) -> bool {
        self.of > 1
    }

    /// The result's `variant` field: the variant's number when N > 1, else absent.
    pub fn shown(self) -> Option<u32> {
        self.is_varied().then_some(self.variant.number())
    }
}

/// The number of variants a job's user gets: the configuration's `cache.variants`, overridden by
/// the user's A/B arm (`experiments.<name>.arms.<arm>.variants`), and 1 — the seed's entry only —
/// for a user who opted out of variants. Never 0.
///
/// This is the one place the effective N is decided; a per-user preference or policy feeds
/// `opted_out` and `arm_variants` here.
pub(crate) fn variants_for(
    settings_variants: u32,
    arm_variants: Option<u32>,
    opted_out: bool,
) -> u32 {
    if opted_out {
        return 1;
    }
    arm_variants.unwrap_or(settings_variants).max(1)
}

/// The variant `user_id` gets among `n` images of `key`: stable for the same user, key and N.
pub fn choose(user_id: &str, key: &CacheKey, n: u32) -> Pick {
    let n = n.max(1);
    if n == 1 {
        return Pick::SINGLE;
    }
    let mut hash = Sha256::new();
    hash.update(user_id.as_bytes());
    hash.update([0u8]);
    hash.update(key.as_str().as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let variant = u64::from_be_bytes(first) % u64::from(n);
    Pick {
        // Less than n, a u32.
        variant: Variant(u32::try_from(variant).unwrap_or(0)),
        of: n,
    }
}

/// The pick for a job of `user_id` on `key` under `settings`: N from [`variants_for`], with the
/// user's arm of the enabled experiment (`job::experiment::assign`), then [`choose`].
pub fn pick(settings: &Settings, user_id: &str, key: &CacheKey) -> Pick {
    let arm = super::experiment::assign(&settings.experiments, user_id);
    // Before the user's preferences are read (the batched hit path's decision): an opt-out is
    // applied by `pick_for` on the one-job path.
    let opted_out = false;
    let n = variants_for(
        settings.cache.variants,
        arm.and_then(|assignment| assignment.settings.variants),
        opted_out,
    );
    choose(user_id, key, n)
}

/// The variant a job gets under its resolved cache policy (`job::policy`): the configuration's
/// `settings_variants`, or its arm's, and 1 when its user opted out of variants.
pub(crate) fn pick_for(
    settings_variants: u32,
    policy: &super::CachePolicy,
    user_id: &str,
    key: &CacheKey,
) -> Pick {
    let n = variants_for(settings_variants, policy.variants, policy.variants_opt_out);
    choose(user_id, key, n)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const KEY: &str = "57031741670c8d0259dfd2b0809f9923eb2a04bcfc4ac10ce9d998eb376f16fe";

    fn key() -> CacheKey {
        CacheKey::parse(KEY).unwrap()
    }

    #[test]
    fn one_variant_is_always_the_seeds_entry() {
        for user in ["u1", "u2", "", "someone@example.com"] {
            assert_eq!(choose(user, &key(), 1), Pick::SINGLE);
            assert_eq!(choose(user, &key(), 0), Pick::SINGLE, "0 counts as 1");
        }
        assert_eq!(Pick::SINGLE.shown(), None, "no variant field at N = 1");
    }

    #[test]
    fn a_user_always_gets_the_same_variant_of_a_key() {
        for n in 2..=5 {
            for i in 0..50 {
                let user = format!("user-{i}");
                let first = choose(&user, &key(), n);
                assert_eq!(first, choose(&user, &key(), n));
                assert!(first.variant.number() < n);
                assert_eq!(first.shown(), Some(first.variant.number()));
            }
        }
    }

    #[test]
    fn a_known_vector_stays_put() {
        // Changing the hash would move every user to another image: pinned on purpose.
        let picks: Vec<u32> = (0..8)
            .map(|i| choose(&format!("user-{i}"), &key(), 3).variant.number())
            .collect();
        assert_eq!(picks, KNOWN_PICKS, "{picks:?}");
    }

    // Python: int.from_bytes(sha256(b"user-<i>\0" + KEY).digest()[:8], "big") % 3.
    const KNOWN_PICKS: [u32; 8] = [0, 2, 0, 0, 1, 2, 1, 2];

    #[test]
    fn users_spread_evenly_over_the_variants() {
        let mut counts = [0u32; 3];
        for i in 0..9_000 {
            let pick = choose(&format!("user-{i}"), &key(), 3);
            counts[pick.variant.number() as usize] += 1;
        }
        // 3,000 expected each; the binomial standard deviation is about 45.
        for (variant, count) in counts.iter().enumerate() {
            assert!(
                count.abs_diff(3_000) <= 200,
                "variant {variant}: {count} of 9000 users ({counts:?})"
            );
        }
    }

    #[test]
    fn the_same_user_spreads_over_keys() {
        let keys: Vec<CacheKey> = (0..300)
            .map(|i| CacheKey::parse(&format!("{:064x}", i + 1)).unwrap())
            .collect();
        let seeds = keys
            .iter()
            .filter(|key| choose("user-1", key, 2).variant.is_seed())
            .count();
        assert!((100..=200).contains(&seeds), "{seeds} of 300 keys");
    }

    #[test]
    fn the_arm_and_the_opt_out_decide_n() {
        assert_eq!(variants_for(1, None, false), 1);
        assert_eq!(variants_for(3, None, false), 3);
        assert_eq!(variants_for(1, Some(4), false), 4, "the arm wins");
        assert_eq!(variants_for(3, Some(1), false), 1);
        assert_eq!(
            variants_for(3, Some(4), true),
            1,
            "opted out: the seed's entry"
        );
        assert_eq!(variants_for(0, None, false), 1, "never 0");
    }

    #[test]
    fn the_pick_follows_the_users_arm() {
        let mut settings = Settings::defaults().unwrap();
        assert_eq!(settings.cache.variants, 1);
        assert_eq!(pick(&settings, "u1", &key()), Pick::SINGLE);
        settings.cache.variants = 3;
        assert_eq!(pick(&settings, "u1", &key()).of, 3);
        let arm = |share, variants| crate::config::ArmSettings {
            share,
            variants,
            max_age_days: None,
            warming: None,
        };
        settings.experiments = BTreeMap::from([(
            "variety".to_owned(),
            crate::config::ExperimentSettings {
                control: None,
                enabled: true,
                arms: BTreeMap::from([
                    ("five".to_owned(), arm(100.0, Some(5))),
                    ("none".to_owned(), arm(0.0, None)),
                ]),
            },
        )]);
        assert_eq!(pick(&settings, "u1", &key()).of, 5);
    }
}
