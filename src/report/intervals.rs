//! Paired 95% confidence intervals: each method's difference from a baseline method (uniform)
//! on the same seed, i.e. the same initialisation, batch order, augmentation and validation
//! split, summarized over the seeds that have both.
//!
//! With n seeds and differences d_1..d_n, the interval is mean(d) ± t(0.975, n - 1) * sd(d) /
//! sqrt(n), sd the sample standard deviation (n - 1): Student's t, which assumes the per-seed
//! differences are independent and roughly normal. With 3 to 5 seeds the t quantile is 4.30 to
//! 2.78, so an interval is wide unless the effect is consistent from seed to seed; one seed gives
//! no interval at all.
use std::fmt::Write;

use serde::Serialize;

use super::metric::{mean_sd, metric};
use super::StageReport;

/// The headline metrics of a comparison, in table order: key (as in [`metric`], plus
/// `mean_abs_recall_change`), Markdown title, terminal title (at most 9 characters).
pub const HEADLINE: [(&str, &str, &str); 8] = [
    ("accuracy", "accuracy", "acc."),
    ("worst_recall", "worst-class recall", "worst R"),
    ("recall_spread", "recall spread", "R spread"),
    ("worst_f1", "worst-class F1", "worst F1"),
    ("f1_spread", "F1 spread", "F1 spread"),
    ("macro_f1", "macro F1", "macro F1"),
    ("worst_precision", "worst-class precision", "worst P"),
    ("mean_abs_recall_change", "mean abs. change of a class's recall", "|dR| mean"),
];

/// The 0.975 quantile of Student's t distribution with `df` degrees of freedom (the factor of a
/// two-sided 95% interval); NaN for `df` = 0. Tabulated to five decimals up to 30 degrees of
/// freedom (the published tables), beyond that the Cornish-Fisher expansion in 1/df, which is
/// within 1e-4 of the exact value there.
pub fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.70620, 4.30265, 3.18245, 2.77645, 2.57058, 2.44691, 2.36462, 2.30600, 2.26216, 2.22814, 2.20099, 2.17881,
        2.16037, 2.14479, 2.13145, 2.11991, 2.10982, 2.10092, 2.09302, 2.08596, 2.07961, 2.07387, 2.06866, 2.06390,
        2.05954, 2.05553, 2.05183, 2.04841, 2.04523, 2.04227,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => {
            let (z, n) = (1.959_963_984_540_054_f64, df as f64);
            let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
            z + (z3 + z) / (4.0 * n)
                + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * n * n)
                + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * n * n * n)
        }
    }
}

/// A mean difference over seeds and its paired 95% confidence interval (same unit as the
/// metric: fractions, shown as percentage points). `lo`/`hi` are NaN with fewer than two seeds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interval {
    pub n: usize,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    /// The interval of the per-seed differences `diffs` (NaN entries left out).
    pub fn of(diffs: &[f64]) -> Interval {
        let (n, mean, sd) = mean_sd(diffs);
        let half = if n < 2 { f64::NAN } else { t_975(n - 1) * sd / (n as f64).sqrt() };
        Interval { n, mean, lo: mean - half, hi: mean + half }
    }

    /// Whether the interval lies entirely on one side of zero.
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }

    /// `+1.2 [-0.3, +2.7]` in percentage points; `+1.2` for one seed, `-` for none.
    pub fn pct(&self) -> String {
        if !self.mean.is_finite() {
            return "-".into();
        }
        let m = format!("{:+.1}", 100.0 * self.mean);
        if self.lo.is_finite() {
            format!("{m} [{:+.1}, {:+.1}]", 100.0 * self.lo, 100.0 * self.hi)
        } else {
            m
        }
    }

    /// `+1.2±1.5` (the interval's half-width), `*` appended when it excludes zero: for narrow
    /// terminal columns (the t interval is symmetric, so mean and half-width say all).
    pub fn pct_short(&self) -> String {
        if !self.mean.is_finite() {
            return "-".into();
        }
        let m = format!("{:+.1}", 100.0 * self.mean);
        if self.lo.is_finite() {
            let star = if self.excludes_zero() { "*" } else { "" };
            format!("{m}±{:.1}{star}", 100.0 * (self.hi - self.mean))
        } else {
            m
        }
    }
}

/// One method's paired differences from the baseline, one [`Interval`] per [`HEADLINE`] metric.
#[derive(Clone, Debug, Serialize)]
pub struct MethodDifferences {
    pub key: String,
    pub name: String,
    /// The seeds that have both this method and the baseline, ascending.
    pub seeds: Vec<u64>,
    pub metrics: Vec<Interval>,
}

impl MethodDifferences {
    pub fn get(&self, key: &str) -> Option<Interval> {
        HEADLINE.iter().position(|(k, ..)| *k == key).map(|i| self.metrics[i])
    }
}

/// One headline metric of `run`, or of `run` against `base` for `mean_abs_recall_change` (the
/// mean over classes of |recall change|; test split).
fn headline(key: &str, run: &StageReport, base: &StageReport) -> f64 {
    if key == "mean_abs_recall_change" {
        let d: Vec<f64> =
            run.test.recall.iter().zip(&base.test.recall).map(|(a, b)| (a - b).abs()).filter(|d| !d.is_nan()).collect();
        return if d.is_empty() { f64::NAN } else { d.iter().sum::<f64>() / d.len() as f64 };
    }
    metric(&run.test, key) - metric(&base.test, key)
}

/// Every method of `entries` (one entry per method and seed, as in `Report::methods`) other than
/// `base`, in order of first appearance, with its paired differences from `base` on the test
/// split. Methods that share no seed with `base` have empty intervals (n = 0).
pub fn differences(entries: &[StageReport], base: &str) -> Vec<MethodDifferences> {
    let key_of = |m: &StageReport| m.method.clone().unwrap_or_default();
    let mut keys: Vec<String> = Vec::new();
    for m in entries {
        let k = key_of(m);
        if k != base && !keys.contains(&k) {
            keys.push(k);
        }
    }
    let find = |key: &str, seed: u64| entries.iter().find(|m| m.method.as_deref() == Some(key) && m.seed == Some(seed));
    keys.into_iter()
        .map(|key| {
            let runs: Vec<&StageReport> = entries.iter().filter(|m| key_of(m) == key).collect();
            let mut pairs: Vec<(u64, &StageReport, &StageReport)> =
                runs.iter().filter_map(|r| r.seed.and_then(|s| find(base, s).map(|b| (s, *r, b)))).collect();
            pairs.sort_by_key(|p| p.0);
            pairs.dedup_by_key(|p| p.0);
            let metrics = HEADLINE
                .iter()
                .map(|(k, ..)| Interval::of(&pairs.iter().map(|(_, r, b)| headline(k, r, b)).collect::<Vec<_>>()))
                .collect();
            MethodDifferences { name: runs[0].name.clone(), seeds: pairs.iter().map(|p| p.0).collect(), key, metrics }
        })
        .collect()
}

/// The differences as a Markdown table: one row per method, `mean [95% CI]` in points.
pub fn differences_markdown(diffs: &[MethodDifferences], base: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Difference from {base} on the same seed (same initialisation, order and split), test set: mean \
         [paired 95% confidence interval, Student t with n - 1 degrees of freedom], percentage points; \
         **bold** where the interval excludes 0. `null` is {base} again with another training seed: its row \
         is the noise floor.\n"
    );
    let titles: Vec<&str> = HEADLINE.iter().map(|(_, t, _)| *t).collect();
    let _ = writeln!(out, "| method | seeds | {} |", titles.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---:|".repeat(HEADLINE.len()));
    for d in diffs {
        let cells: Vec<String> =
            d.metrics.iter().map(|i| if i.excludes_zero() { format!("**{}**", i.pct()) } else { i.pct() }).collect();
        let _ = writeln!(out, "| {} | {} | {} |", d.key, d.seeds.len(), cells.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_published_tables() {
        // Student t, 0.975 quantile (e.g. NIST/SEMATECH e-Handbook, table of upper critical values).
        for (df, want) in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045), (30, 2.042), (40, 2.021)] {
            assert!((t_975(df) - want).abs() < 1e-3, "df {df}: {} vs {want}", t_975(df));
        }
        assert!((t_975(60) - 2.000).abs() < 1e-3 && (t_975(120) - 1.980).abs() < 1e-3);
        // The expansion continues the table smoothly and decreases towards the normal quantile.
        assert!((t_975(31) - 2.0395).abs() < 2e-4);
        assert!((2..200).all(|df| t_975(df) < t_975(df - 1)));
        assert!((t_975(100_000) - 1.95996).abs() < 1e-4);
        assert!(t_975(0).is_nan());
    }

    #[test]
    fn interval_by_hand() {
        // d = 1, 2, 3 (as fractions /100): mean 2, sd 1, half-width 4.30265 / sqrt(3) = 2.48414.
        let i = Interval::of(&[0.01, 0.02, 0.03]);
        assert_eq!(i.n, 3);
        assert!((i.mean - 0.02).abs() < 1e-12);
        assert!((i.lo - (0.02 - 0.0248414)).abs() < 1e-7 && (i.hi - (0.02 + 0.0248414)).abs() < 1e-7);
        assert!(!i.excludes_zero());
        assert_eq!(i.pct(), "+2.0 [-0.5, +4.5]");
        assert_eq!(i.pct_short(), "+2.0±2.5");
        let sure = Interval::of(&[0.05, 0.051, 0.049, f64::NAN]);
        assert_eq!(sure.n, 3);
        assert!(sure.excludes_zero());
        assert!(sure.pct_short().ends_with('*'));
        let one = Interval::of(&[0.01]);
        assert!(one.lo.is_nan() && !one.excludes_zero());
        assert_eq!(one.pct(), "+1.0");
        assert_eq!(Interval::of(&[]).pct(), "-");
    }
}
