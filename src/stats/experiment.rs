//! The statistics of an A/B test, pure functions: 95% confidence intervals for the difference
//! between two arms in hit ratio (Newcombe's hybrid score interval) and in mean cost per job
//! (Welch's interval), and the verdict they support.
//!
//! Why these two:
//! - **Hit ratio**: the Wald interval (p̂ ± 1.96·√(p̂(1−p̂)/n) per arm) is the textbook one but
//!   behaves badly exactly where cache experiments live — small arms, and ratios near 0 or 1
//!   (a cold cache, a warm one): it collapses to zero width at 0 % or 100 % and covers the true
//!   difference less often than it says. Newcombe's method 10 (1998) combines the two arms'
//!   Wilson score intervals, stays inside [−1, 1], never has zero width, and keeps close to 95 %
//!   coverage at small n; at large n it equals Wald's (the tests check both).
//! - **Cost per job**: the arms' variances differ (an arm with more variants generates more,
//!   and a generation costs ~100× a hit), so Welch's t interval, which does not assume equal
//!   variances, from each arm's jobs, sum of costs and sum of squared costs — what the rollups
//!   keep, so no per-job data is ever read.

use serde::{Deserialize, Serialize};

/// The standard normal's 97.5 % quantile: a two-sided 95 % interval.
pub(crate) const Z95: f64 = 1.959_963_984_540_054;

/// Fewer jobs than this in either arm and the verdict is "too small to tell", whatever the
/// interval: below it the intervals' own approximations (normal or t) are not to be trusted
/// for a decision, and a test stopped that early is mostly noise.
pub(crate) const MIN_JOBS_PER_ARM: i64 = 100;

/// An estimate of a difference (arm − control) with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Interval {
    /// The observed difference.
    pub(crate) estimate: f64,
    /// The interval's lower end.
    pub(crate) low: f64,
    /// The interval's upper end.
    pub(crate) high: f64,
}

impl Interval {
    /// Whether "no difference" is inside the interval.
    pub(crate) fn contains_zero(&self) -> bool {
        self.low <= 0.0 && 0.0 <= self.high
    }

    /// The interval scaled (e.g. a proportion to percentage points).
    pub(crate) fn scaled(&self, by: f64) -> Interval {
        Interval {
            estimate: self.estimate * by,
            low: self.low * by,
            high: self.high * by,
        }
    }
}

/// What a comparison supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The arm is better than the control, at 95 % confidence.
    #[serde(rename = "better")]
    Better,
    /// The arm is worse than the control, at 95 % confidence.
    #[serde(rename = "worse")]
    Worse,
    /// An arm has fewer than [`MIN_JOBS_PER_ARM`] jobs, or the interval contains 0.
    #[serde(rename = "too small to tell")]
    TooSmall,
}

impl Verdict {
    /// The verdict's words, as the API writes them.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::TooSmall => "too small to tell",
        }
    }
}

/// The verdict on `interval` (arm − control) when both arms have `enough` jobs; a higher value
/// is better when `higher_is_better` (hit ratio), a lower one otherwise (cost).
pub(crate) fn verdict(
    interval: Option<&Interval>,
    enough: bool,
    higher_is_better: bool,
) -> Verdict {
    match interval {
        Some(i) if enough && !i.contains_zero() => {
            if (i.estimate > 0.0) == higher_is_better {
                Verdict::Better
            } else {
                Verdict::Worse
            }
        }
        _ => Verdict::TooSmall,
    }
}

/// Wilson's score interval for a proportion, `successes` of `n` (0–1); `None` for `n` = 0.
pub(crate) fn wilson(successes: i64, n: i64) -> Option<(f64, f64)> {
    if n <= 0 {
        return None;
    }
    let (x, n) = (successes as f64, n as f64);
    let p = x / n;
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z95 / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// Newcombe's hybrid score interval (method 10) for `x_b/n_b − x_a/n_a`; `None` if an arm is
/// empty.
pub(crate) fn newcombe(x_b: i64, n_b: i64, x_a: i64, n_a: i64) -> Option<Interval> {
    let (l_b, u_b) = wilson(x_b, n_b)?;
    let (l_a, u_a) = wilson(x_a, n_a)?;
    let (p_b, p_a) = (x_b as f64 / n_b as f64, x_a as f64 / n_a as f64);
    let d = p_b - p_a;
    let below = ((p_b - l_b).powi(2) + (u_a - p_a).powi(2)).sqrt();
    let above = ((u_b - p_b).powi(2) + (p_a - l_a).powi(2)).sqrt();
    Some(Interval {
        estimate: d,
        low: d - below,
        high: d + above,
    })
}

/// One arm's per-job values as the rollups keep them: count, sum and sum of squares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Moments {
    /// How many values.
    pub(crate) n: i64,
    /// Their sum.
    pub(crate) sum: f64,
    /// The sum of their squares.
    pub(crate) sum_sq: f64,
}

impl Moments {
    /// The mean; `None` without values.
    pub(crate) fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The sample variance (n − 1 in the denominator); `None` below two values.
    pub(crate) fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        // Rounding can leave a tiny negative for constant values.
        Some(((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0))
    }
}

/// Welch's interval for `mean(b) − mean(a)`, with the Welch–Satterthwaite degrees of freedom;
/// `None` if an arm has fewer than two values.
pub(crate) fn welch(b: Moments, a: Moments) -> Option<Interval> {
    let (var_b, var_a) = (b.variance()?, a.variance()?);
    let (n_b, n_a) = (b.n as f64, a.n as f64);
    let d = b.mean()? - a.mean()?;
    let (v_b, v_a) = (var_b / n_b, var_a / n_a);
    let se2 = v_b + v_a;
    if se2 <= 0.0 {
        // Both arms constant: the difference is known exactly.
        return Some(Interval {
            estimate: d,
            low: d,
            high: d,
        });
    }
    let df = se2 * se2 / (v_b * v_b / (n_b - 1.0) + v_a * v_a / (n_a - 1.0));
    let half = t95(df) * se2.sqrt();
    Some(Interval {
        estimate: d,
        low: d - half,
        high: d + half,
    })
}

/// Student's t 97.5 % quantiles for 1–30 degrees of freedom.
const T95: [f64; 30] = [
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
    2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687,
    2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
];

/// Student's t 97.5 % quantile for `df` degrees of freedom (not necessarily whole, as Welch's
/// are): the table up to 30, interpolated in 1/df between whole values; beyond 30 the
/// Cornish–Fisher expansion around the normal quantile (Abramowitz & Stegun 26.7.5), within
/// 1e-4 of the exact value there.
pub(crate) fn t95(df: f64) -> f64 {
    if !df.is_finite() || df > 30.0 {
        let v = if df.is_finite() { df } else { f64::MAX };
        let z = Z95;
        let (z3, z5, z7, z9) = (z.powi(3), z.powi(5), z.powi(7), z.powi(9));
        return z
            + (z3 + z) / (4.0 * v)
            + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * v * v)
            + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * v.powi(3))
            + (79.0 * z9 + 776.0 * z7 + 1482.0 * z5 - 1920.0 * z3 - 945.0 * z)
                / (92160.0 * v.powi(4));
    }
    let df = df.max(1.0);
    let (low, high) = (df.floor(), df.ceil());
    let at = |k: f64| T95[(k as usize).clamp(1, 30) - 1];
    if low == high {
        return at(low);
    }
    // Linear in 1/df between the neighbouring whole values.
    let w = (1.0 / low - 1.0 / df) / (1.0 / low - 1.0 / high);
    at(low) + w * (at(high) - at(low))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(a: f64, b: f64, within: f64) -> bool {
        (a - b).abs() <= within
    }

    /// Newcombe (1998), Statistics in Medicine 17:873–890, table II, method 10.
    #[test]
    fn newcombe_matches_the_published_examples() {
        let i = newcombe(56, 70, 48, 80).unwrap();
        assert!(near(i.estimate, 0.2, 1e-12), "{i:?}");
        assert!(
            near(i.low, 0.0524, 5e-5) && near(i.high, 0.3339, 5e-5),
            "{i:?}"
        );
        let i = newcombe(9, 10, 3, 10).unwrap();
        assert!(
            near(i.low, 0.1705, 5e-5) && near(i.high, 0.8090, 5e-5),
            "{i:?}"
        );
        // Where Wald collapses (0 of 10 against 0 of 10), the score interval still has width.
        let i = newcombe(0, 10, 0, 10).unwrap();
        assert!(i.low < -0.2 && i.high > 0.2 && i.contains_zero(), "{i:?}");
        assert_eq!(newcombe(1, 0, 1, 10), None);
    }

    /// A synthetic split with a known difference: control 600 hits of 1,000 jobs, the arm 700
    /// of 1,000 — 10 points better.
    #[test]
    fn hit_ratio_interval_on_a_known_split() {
        let i = newcombe(700, 1000, 600, 1000).unwrap();
        assert!(near(i.estimate, 0.10, 1e-12));
        assert!(
            i.low < 0.10 && 0.10 < i.high,
            "contains the true difference: {i:?}"
        );
        // By hand, the textbook (Wald) half-width: 1.96 * sqrt(.6*.4/1000 + .7*.3/1000)
        // = 1.96 * sqrt(0.00045) = 1.96 * 0.0212132 = 0.0415771.
        let wald_half = Z95 * (0.6_f64 * 0.4 / 1000.0 + 0.7 * 0.3 / 1000.0).sqrt();
        assert!(near(wald_half, 0.041577, 1e-6));
        // At n = 1,000 a side, Newcombe's width is Wald's within a few tenths of a percent.
        let width = i.high - i.low;
        assert!(
            near(width, 2.0 * wald_half, 0.005 * width),
            "{width} vs {}",
            2.0 * wald_half
        );
        // And it is, by hand, the Wilson-based formula: arm [0.67088, 0.72759],
        // control [0.56931, 0.62993] → 0.1 − √(0.02912² + 0.02993²) = 0.05824 and
        // 0.1 + √(0.02759² + 0.03069²) = 0.14127.
        assert!(
            near(i.low, 0.05824, 5e-5) && near(i.high, 0.14127, 5e-5),
            "{i:?}"
        );
        assert_eq!(verdict(Some(&i), true, true), Verdict::Better);
        assert_eq!(verdict(Some(&i), false, true), Verdict::TooSmall);
        let reversed = newcombe(600, 1000, 700, 1000).unwrap();
        assert_eq!(verdict(Some(&reversed), true, true), Verdict::Worse);
    }

    /// Costs of a known split: control 100 jobs of which 40 generated at $0.04 (the rest hits
    /// at $0), the arm 100 jobs with 25 generated — $0.006 cheaper per job.
    #[test]
    fn cost_interval_on_a_known_split() {
        let a = Moments {
            n: 100,
            sum: 40.0 * 0.04,
            sum_sq: 40.0 * 0.04 * 0.04,
        };
        let b = Moments {
            n: 100,
            sum: 25.0 * 0.04,
            sum_sq: 25.0 * 0.04 * 0.04,
        };
        let i = welch(b, a).unwrap();
        assert!(near(i.estimate, -0.006, 1e-12), "{i:?}");
        // By hand: s²(a) = (0.064 − 1.6²/100)/99 = 0.0384/99, s²(b) = (0.04 − 1²/100)/99 =
        // 0.03/99; se = √((0.0384 + 0.03)/9900) = 0.00262852; Welch df = 195.06, t = 1.9722;
        // half-width 0.0051840.
        let (va, vb): (f64, f64) = (0.0384 / 99.0 / 100.0, 0.03 / 99.0 / 100.0);
        let se = (va + vb).sqrt();
        assert!(near(se, 0.002_628_52, 1e-8), "{se}");
        let df = (va + vb).powi(2) / (va * va / 99.0 + vb * vb / 99.0);
        assert!(near(df, 195.06, 0.01), "{df}");
        let half = t95(df) * se;
        assert!(near(half, 0.005_184, 1e-6), "{half}");
        assert!(near(i.low, -0.006 - half, 1e-12) && near(i.high, -0.006 + half, 1e-12));
        assert!(i.low < -0.006 && -0.006 < i.high);
        // Lower cost is better.
        assert_eq!(verdict(Some(&i), true, false), Verdict::Better);
        // Constant costs: the difference is exact.
        let zero = Moments {
            n: 5,
            sum: 0.0,
            sum_sq: 0.0,
        };
        let i = welch(zero, zero).unwrap();
        assert_eq!((i.low, i.high), (0.0, 0.0));
        assert_eq!(verdict(Some(&i), true, false), Verdict::TooSmall);
        let one = Moments {
            n: 1,
            sum: 0.04,
            sum_sq: 0.0016,
        };
        assert_eq!(welch(one, a), None);
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        for (df, t) in [
            (1.0, 12.7062),
            (2.0, 4.3027),
            (10.0, 2.2281),
            (30.0, 2.0423),
            (40.0, 2.0211),
            (60.0, 2.0003),
            (120.0, 1.9799),
        ] {
            assert!(near(t95(df), t, 2e-4), "t({df}) = {} not {t}", t95(df));
        }
        assert!(near(t95(1e12), Z95, 1e-9));
        let between = t95(10.5);
        assert!(between < t95(10.0) && between > t95(11.0));
    }

    /// A small deterministic generator (xorshift64*), so the coverage check is repeatable.
    struct Draws(u64);
    impl Draws {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Over many synthetic experiments with a known true difference, the 95 % intervals cover it
    /// about 95 % of the time (1,000 repetitions: between 93 and 97 % is within 3 standard
    /// errors of 95 %).
    #[test]
    fn intervals_cover_the_true_difference_about_95_percent_of_the_time() {
        let mut draws = Draws(0x9E37_79B9_7F4A_7C15);
        let (reps, n) = (1000, 300);
        let (p_a, p_b, cost) = (0.5, 0.6, 0.04);
        let (mut hit_covered, mut cost_covered) = (0, 0);
        for _ in 0..reps {
            let mut count = |p: f64| (0..n).filter(|_| draws.uniform() < p).count() as i64;
            let (x_a, x_b) = (count(p_a), count(p_b));
            if newcombe(x_b, n, x_a, n).is_some_and(|i| i.low <= 0.1 && 0.1 <= i.high) {
                hit_covered += 1;
            }
            // A miss costs `cost`, a hit nothing: mean cost (1 − p)·cost.
            let moments = |hits: i64| {
                let misses = (n - hits) as f64;
                Moments {
                    n,
                    sum: misses * cost,
                    sum_sq: misses * cost * cost,
                }
            };
            let truth = (p_a - p_b) * cost;
            if welch(moments(x_b), moments(x_a)).is_some_and(|i| i.low <= truth && truth <= i.high)
            {
                cost_covered += 1;
            }
        }
        for (what, covered) in [("hit ratio", hit_covered), ("cost", cost_covered)] {
            assert!(
                (930..=970).contains(&covered),
                "{what}: {covered} of {reps} intervals covered the true difference"
            );
        }
    }
}
