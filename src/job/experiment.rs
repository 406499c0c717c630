//! A/B tests of cache strategies: which arm of the enabled experiment a user is in.
//!
//! The assignment is a pure function of the experiment's name and the `user_id`, so every
//! replica, every restart and every redelivery puts a user in the same arm, and two experiments
//! split users independently of each other. The bucket is the first eight bytes of
//! SHA-256(`<name>` NUL `<user_id>`) read as a fraction of 2^64, scaled to percent; the arms take
//! consecutive ranges of it in name order, each as wide as its share. Users beyond the shares are
//! in no arm.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::config::{ArmSettings, ExperimentSettings};

/// The experiment and arm a job's user is in, with the settings that arm changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The experiment's name, as configured.
    pub experiment: String,
    /// The arm's name, as configured.
    pub arm: String,
    /// What the arm changes for its users.
    pub settings: ArmSettings,
}

/// The arm of the enabled experiment (at most one is, by the settings' rules) that `user_id` is
/// in, if any.
pub fn assign(
    experiments: &BTreeMap<String, ExperimentSettings>,
    user_id: &str,
) -> Option<Assignment> {
    let (name, experiment) = experiments
        .iter()
        .find(|(_, experiment)| experiment.enabled)?;
    let point = bucket(name, user_id);
    let mut upper = 0.0;
    for (arm, settings) in &experiment.arms {
        upper += settings.share;
        if point < upper {
            return Some(Assignment {
                experiment: name.clone(),
                arm: arm.clone(),
                settings: settings.clone(),
            });
        }
    }
    None
}

/// Where `user_id` falls in `[0, 100)` for the experiment `name`.
fn bucket(name: &str, user_id: &str) -> f64 {
    let mut hash = Sha256::new();
    hash.update(name.as_bytes());
    hash.update([0u8]);
    hash.update(user_id.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // u64 -> f64 rounds to 53 bits, which is far finer than any share.
    u64::from_be_bytes(first) as f64 / 18_446_744_073_709_551_616.0 * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(share: f64) -> ArmSettings {
        ArmSettings {
            share,
            variants: None,
            max_age_days: None,
            warming: None,
        }
    }

    fn experiment(arms: &[(&str, f64)]) -> BTreeMap<String, ExperimentSettings> {
        let arms = arms
            .iter()
            .map(|(name, share)| ((*name).to_owned(), arm(*share)))
            .collect();
        BTreeMap::from([(
            "variety".to_owned(),
            ExperimentSettings {
                enabled: true,
                control: None,
                arms,
            },
        )])
    }

    #[test]
    fn a_user_is_always_in_the_same_arm() {
        let experiments = experiment(&[("control", 50.0), ("three", 50.0)]);
        for user in ["u1", "u2", "someone@example.com", ""] {
            let first = assign(&experiments, user);
            assert!(
                first.is_some(),
                "shares add up to 100: everyone is in an arm"
            );
            assert_eq!(first, assign(&experiments, user));
        }
    }

    #[test]
    fn ten_thousand_users_split_near_the_configured_shares() {
        let experiments = experiment(&[("a", 20.0), ("b", 30.0), ("c", 10.0)]);
        let mut counts = BTreeMap::<String, u32>::new();
        for n in 0..10_000 {
            let arm = assign(&experiments, &format!("user-{n}"))
                .map_or_else(|| "none".to_owned(), |a| a.arm);
            *counts.entry(arm).or_default() += 1;
        }
        // Binomial standard deviation at n = 10,000 is at most 50 users (0.5 points); allow
        // four of them.
        for (arm, expected) in [("a", 2000), ("b", 3000), ("c", 1000), ("none", 4000)] {
            let got = counts.get(arm).copied().unwrap_or(0);
            assert!(
                got.abs_diff(expected) <= 200,
                "{arm}: {got} users, expected about {expected} ({counts:?})"
            );
        }
    }

    #[test]
    fn experiments_split_users_independently() {
        let one = experiment(&[("x", 50.0), ("y", 50.0)]);
        let mut other = one.clone();
        let renamed = other.remove("variety").map(|e| ("freshness".to_owned(), e));
        other.extend(renamed);
        let same = (0..2_000)
            .filter(|n| {
                let user = format!("user-{n}");
                assign(&one, &user).map(|a| a.arm) == assign(&other, &user).map(|a| a.arm)
            })
            .count();
        assert!(
            (800..=1_200).contains(&same),
            "{same} of 2000 users in the same arm of two experiments; independent is about 1000"
        );
    }

    #[test]
    fn a_disabled_experiment_assigns_nobody() {
        let mut experiments = experiment(&[("a", 50.0), ("b", 50.0)]);
        for experiment in experiments.values_mut() {
            experiment.enabled = false;
        }
        assert_eq!(assign(&experiments, "u1"), None);
    }
}
