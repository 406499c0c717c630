//! Each policy on tiny hand-made logs, with the answers worked out by hand.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate};
use serde_json::{Value, json};

use super::engine::{self, Outcome};
use super::log::Line;
use super::policy::{Budget, Defaults, Policy, Retention, SeedRules};
use super::prepared::{Prepared, Pricing};
use crate::config::Settings;
use crate::job::ModelRules;

const SEED: SeedRules = SeedRules {
    max_age_days: 90,
    min_uses: 2,
    archive_above_uses: 100,
};

fn day(n: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 1).unwrap() + Duration::days(n)
}

fn config(gesture: &str, hair: &str) -> Value {
    json!({"gesture": gesture, "hair": hair})
}

/// `requests` anonymous requests for `config` on day `n`.
fn line(n: i64, config: Value, requests: u32) -> Line {
    Line {
        day: day(n),
        key: None,
        config,
        requests,
        users: None,
        image_bytes: None,
    }
}

fn by_users(n: i64, config: Value, users: &[&str]) -> Line {
    let mut named = BTreeMap::new();
    for user in users {
        *named.entry((*user).to_owned()).or_insert(0) += 1;
    }
    Line {
        users: Some(named),
        ..line(n, config, users.len() as u32)
    }
}

fn replay(lines: &[Line], spec: &str) -> Outcome {
    let settings = Settings::defaults().unwrap();
    let rules = ModelRules::default();
    let pricing = Pricing {
        rules: &rules,
        prices: &settings.prices,
    };
    let defaults = Defaults {
        seed: SEED,
        storage_budget: None,
    };
    let policy = Policy::parse(spec, &defaults).unwrap();
    let outcome = engine::run(&Prepared::new(lines, &pricing), &policy, &pricing);
    for d in outcome.days.iter().chain([&outcome.total]) {
        assert_eq!(d.hits + d.generations, d.requests, "every miss generates");
    }
    outcome
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn gdsf_evicts_the_cheap_big_entry_before_the_expensive_small_one() {
    // cheap: low quality ($0.01), 3 MB; dear: gpt-image-2.6-sunburst at max ($0.40), 1 MB.
    // Both fit 4 MB, not 3.5 MB: one must go each time both are in.
    let cheap = json!({"hair": "long", "quality": "low"});
    let dear = json!({"hair": "long", "model": "gpt-image-2.6-sunburst", "quality": "max"});
    let sized = |n: i64, config: &Value, bytes: u64| Line {
        image_bytes: Some(bytes),
        ..line(n, config.clone(), 1)
    };
    let lines = [
        sized(0, &cheap, 3_000_000),
        sized(0, &dear, 1_000_000),
        sized(1, &cheap, 3_000_000),
        sized(1, &dear, 1_000_000),
    ];
    // Day 0: both made (spend 0.41), 4 MB > 3.5 MB: H(cheap) = 0.01/3e6 < H(dear) = 0.40/1e6,
    // so cheap goes. Day 1: dear hits (saves 0.40); cheap is made again (0.01) and goes again:
    // L + 0.01/3e6 is still far below dear's L + 2 × 0.40/1e6.
    let gdsf = replay(&lines, "retention=gdsf:3.5mb");
    let t = gdsf.total;
    assert_eq!((t.requests, t.hits, t.generations), (4, 1, 3));
    assert!(close(t.live_usd, 0.42), "{}", t.live_usd);
    assert!(close(t.saved_usd, 0.40));
    assert_eq!(t.evictions, 2);
    assert_eq!(t.evicted_bytes, 6_000_000);
    assert_eq!((t.entries, t.bytes), (1, 1_000_000), "dear stays");
    assert_eq!(gdsf.days[1].hits, 1);
    assert_eq!(
        gdsf.peak_bytes, 1_000_000,
        "at the end of each day, within budget"
    );

    // Counted in entries (budget 1), GDSF weighs cost alone: the same choice.
    let entries = replay(&lines, "retention=gdsf:1");
    assert_eq!(entries.total.hits, 1);
    assert_eq!(entries.total.entries, 1);
    assert!(close(entries.total.saved_usd, 0.40));
    // Without a budget, both stay and both hit on day 1.
    let kept = replay(&lines, "retention=none");
    assert_eq!((kept.total.hits, kept.total.evictions), (2, 0));
}

#[test]
fn gdsf_keeps_the_frequently_asked_entry_and_ages_the_others_out() {
    // Same price ($0.04) and size: frequency decides. Budget two entries (size 1 each).
    let (a, b, c) = (
        config("wave", "a"),
        config("wave", "b"),
        config("wave", "c"),
    );
    let lines = [
        line(0, a.clone(), 3),
        line(0, b.clone(), 1),
        line(0, c.clone(), 1),
        line(1, a, 1),
        line(1, b, 1),
        line(1, c, 1),
    ];
    let o = replay(&lines, "retention=gdsf:2");
    // Day 0: a made, then 2 hits (F = 3, H = 0.12); b made (H = 0.04); c made (H = 0.04): three
    // entries, so the lowest goes — b and c tie, the first key (b) goes; L = 0.04.
    assert_eq!(
        (o.days[0].hits, o.days[0].generations, o.days[0].evictions),
        (2, 3, 1)
    );
    // Day 1: a hits (H = 0.04 + 4 × 0.04 = 0.20). b is made again (H = L + 0.04 = 0.08), and c
    // (still H = 0.04 from day 0) goes; c is made again (0.08), and b (0.08, the first key on
    // the tie) goes: L = 0.08. a was never made twice.
    assert_eq!(
        (o.days[1].hits, o.days[1].generations, o.days[1].evictions),
        (1, 2, 2)
    );
    assert_eq!(o.total.entries, 2);
}

#[test]
fn the_seed_rule_deletes_exactly_what_the_seeds_cleanup_deletes() {
    // max_age 2 days, fewer than 2 uses, archive above 3 uses.
    let rules = "retention=seed:2:2:3";
    let (once, twice, late, popular) = (
        config("wave", "once"),
        config("wave", "twice"),
        config("wave", "late"),
        config("wave", "popular"),
    );
    let lines = [
        line(0, once.clone(), 1),
        line(0, twice.clone(), 2),
        line(0, popular.clone(), 4),
        line(1, late.clone(), 1),
        // Day 3: once was deleted after day 2 (2 whole days, 1 use): a miss; twice (2 uses) and
        // popular (archived after day 0) hit; late (1 day old after day 2) hits, with 2 uses now.
        line(3, once, 1),
        line(3, twice, 1),
        line(3, popular, 1),
        line(3, late, 1),
    ];
    let o = replay(&lines, rules);
    assert_eq!(o.days[0].archived, 1, "popular: 4 uses > 3");
    assert_eq!(o.days[1].evictions, 0, "nothing is 2 days old yet");
    assert_eq!(o.days[2].evictions, 1, "once: made day 0, 1 use");
    assert_eq!(o.days[2].entries, 3);
    assert_eq!(o.days[3].hits, 3);
    assert_eq!(o.days[3].generations, 1);
    // After day 3: once is 1 use again but new; late has 2 uses: nothing goes.
    assert_eq!(o.days[3].evictions, 0);
    assert_eq!(o.total.evictions, 1);

    // The rule itself, at its edges (db::cleanup's UNUSED).
    let r = SeedRules {
        max_age_days: 90,
        min_uses: 2,
        archive_above_uses: 100,
    };
    assert!(r.deletes(90, 1, false));
    assert!(r.deletes(90, 0, false), "a warmed entry nobody asked for");
    assert!(!r.deletes(89, 1, false), "not old enough");
    assert!(!r.deletes(90, 2, false), "used enough");
    assert!(!r.deletes(400, 0, true), "archived");
    assert!(r.archives(101, false) && !r.archives(100, false) && !r.archives(500, true));
    let odd = SeedRules { min_uses: 200, ..r };
    assert!(
        !odd.deletes(90, 150, false),
        "never one that qualifies for archiving, even with min_uses above it"
    );
}

#[test]
fn max_age_forces_regeneration() {
    let wave = config("wave", "short");
    let lines: Vec<Line> = (0..5).map(|n| line(n, wave.clone(), 1)).collect();
    // Made day 0; days 1 and 2 are within 2 days; day 3 is 3 days on: made again; day 4 hits.
    let o = replay(&lines, "max_age=2,retention=none");
    let misses: Vec<u64> = o.days.iter().map(|d| d.generations).collect();
    assert_eq!(misses, [1, 0, 0, 1, 0]);
    assert!(close(o.total.live_usd, 0.08));
    assert_eq!(o.total.entries, 1, "replaced, not added");
    // Without a max age: one generation.
    assert_eq!(replay(&lines, "retention=none").total.generations, 1);
}

#[test]
fn variants_need_n_misses_and_each_user_keeps_seeing_one() {
    let wave = config("wave", "short");
    let users = ["ann", "bob", "cem", "dan", "eve", "ann", "bob"];
    let o = replay(&[by_users(0, wave.clone(), &users)], "variants=3");
    let t = o.total;
    assert_eq!((t.requests, t.generations, t.hits), (7, 3, 4));
    assert!(close(t.live_usd, 0.12) && close(t.saved_usd, 0.16));
    assert_eq!((t.entries, t.images), (1, 3));
    assert_eq!(t.bytes, 3 * 1_572_864);
    // The same user, the same variant: two images made on day 0; on day 2 both are stale (max
    // age 1); ann's first request makes hers again, and her second is served that fresh one.
    let o = replay(
        &[
            by_users(0, wave.clone(), &["ann", "bob"]),
            by_users(2, wave.clone(), &["ann", "ann"]),
        ],
        "variants=2,max_age=1",
    );
    assert_eq!((o.days[2].generations, o.days[2].hits), (1, 1));
    // Anonymous counts (an exported history): the same 3 misses first.
    let o = replay(&[line(0, wave, 10)], "variants=3");
    assert_eq!((o.total.generations, o.total.hits), (3, 7));
}

#[test]
fn warming_serves_tomorrows_first_askers_within_the_nightly_budget() {
    // Day 0: wave + short and heart + long; the model predicts the unseen wave + long and heart
    // + short (both values popular); two fit $0.08 at $0.04.
    let lines = [
        line(0, config("wave", "short"), 5),
        line(0, config("heart", "long"), 5),
        line(1, config("wave", "long"), 1),
        line(1, config("heart", "short"), 1),
    ];
    let o = replay(&lines, "warm=10:0.08usd,retention=none");
    assert_eq!(o.days[0].warmed, 2);
    assert!(close(o.days[0].warm_usd, 0.08));
    assert_eq!(o.days[1].hits, 2, "both warmed images were asked for");
    assert!(
        close(o.total.spend_usd(), 0.08 + 0.08),
        "two live, two warmed"
    );
    // Without warming both are misses.
    assert_eq!(replay(&lines, "retention=none").days[1].hits, 0);
}

#[test]
fn a_refused_configuration_is_left_out_and_said() {
    let settings = Settings::defaults().unwrap();
    let rules = ModelRules::default();
    let pricing = Pricing {
        rules: &rules,
        prices: &settings.prices,
    };
    let lines = [
        line(0, json!({"size": "13x13"}), 2),
        line(2, config("wave", "short"), 1),
    ];
    let prepared = Prepared::new(&lines, &pricing);
    assert_eq!(prepared.days.len(), 3, "days without requests still count");
    assert_eq!(prepared.requests(), 1);
    assert_eq!(prepared.refused.len(), 1);
    assert_eq!(prepared.refused[0].requests, 2);
    let policy = Policy {
        name: "p".to_owned(),
        variants: 1,
        max_age_days: None,
        warm: None,
        retention: Retention::Gdsf {
            budget: Budget::Entries(1),
        },
    };
    let o = engine::run(&prepared, &policy, &pricing);
    assert_eq!(o.total.requests, 1);
}
