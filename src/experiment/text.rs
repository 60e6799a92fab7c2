//! The comparison and its diagnostics as terminal text: every line at most 80 columns (short
//! method names in the tables, the full names in a legend). The Markdown files written beside
//! the report keep the wide tables.
use std::fmt::Write;

use crate::report::{
    differences, metric, short_labels, summarize_methods, MethodSummary, Report, StageReport, Stat, BASELINE, HEADLINE,
};

use super::diagnostics::{Diagnostics, SplitFit};

/// The terminal width the tables fit.
pub const COLUMNS: usize = 80;

/// The long `--help` text of a command line that runs the experiment (the `cifar10` example's):
/// what a run does, where it writes, how to stop and resume it, and the exit statuses.
pub const LONG_HELP: &str =
    "Two-stage class-reweighting experiment on CIFAR-10 (evenclass).\n\nStage 1 trains with uniform class \
    weights; stage 2 retrains from scratch with weights w_c = (mean(r) / r_c)^p from stage 1's per-class \
    recall on a validation split held out of the training set (--val-size; --weights-from test gives the \
    practitioner's original variant). With --compare, trains and compares the methods of --methods over \
    --seeds seeds instead (comparison.md, comparison.csv, methods.svg/.png). Writes report.json, \
    per_class.csv, recall.png/.svg and the models to --out, which always holds one complete run: a run in \
    progress lives in .OUT.partial beside it (checkpointed every epoch) and replaces --out only when finished. \
    The plan and its estimated duration print first.\n\nCtrl-C finishes the current step, writes a checkpoint \
    and exits (status 130); rerun with the same flags plus --resume to continue. A second Ctrl-C exits at \
    once.\n\nInvalid flags exit with status 2, other errors with 1.";

/// The command that continues an interrupted run: `prefix` (how the program is started, e.g.
/// `cargo run --release --example cifar10 --`), then the run's own arguments quoted for a POSIX
/// shell, without `--overwrite` (which would discard the run) and with `--resume`.
pub fn resume_command(prefix: &str, args: impl IntoIterator<Item = String>) -> String {
    let quote = |s: &str| match s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c)) {
        true if !s.is_empty() => s.to_string(),
        _ => format!("'{}'", s.replace('\'', "'\\''")),
    };
    let kept: Vec<String> =
        args.into_iter().filter(|a| a != "--overwrite" && a != "--resume").map(|a| quote(&a)).collect();
    let mut line = prefix.to_string();
    for a in kept {
        line.push(' ');
        line.push_str(&a);
    }
    line + " --resume"
}

/// A duration for people: `45 s`, `12 min`, `2 h 05 min`.
pub fn format_duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "?".into();
    }
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", (s + 30) / 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// `78.8±0.4` (percentage points), `78.8` for one seed, `-` for none.
fn stat(s: &Stat) -> String {
    s.pct_with("±")
}

fn pct(v: Option<&f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{:.1}", 100.0 * x),
        _ => "-".into(),
    }
}

fn num(v: Option<&f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "-".into(),
    }
}

/// A line cut to [`COLUMNS`] characters.
fn cut(line: &str) -> String {
    if line.chars().count() <= COLUMNS {
        line.to_string()
    } else {
        let mut s: String = line.chars().take(COLUMNS - 1).collect();
        s.push('…');
        s
    }
}

/// The comparison on the test set: the headline metrics (mean ± sd over seeds), the paired
/// differences from uniform with their 95% intervals, the mean recall per class, then the legend
/// of the method names.
pub fn comparison_text(report: &Report) -> String {
    let sums = summarize_methods(report);
    let mut out = String::new();
    let key_w = sums.iter().map(|s| s.key.chars().count()).max().unwrap_or(0).max("method".len());
    let images = report.methods.first().map_or(0, |m| m.test.support.iter().sum::<u64>());
    let seeds: Vec<String> = sums.iter().map(|s| s.seeds.len().to_string()).collect();
    let mut seeds_line = seeds.clone();
    seeds_line.dedup();
    let _ = writeln!(out, "Methods on the test set ({images} images, {} seeds), %, mean±sd:", seeds_line.join("/"));
    // The headline metrics that are a method's own (not a difference), in 9-character columns.
    let own: Vec<(&str, &str)> = HEADLINE
        .iter()
        .filter(|(k, ..)| !matches!(*k, "mean_abs_recall_change" | "worst_precision"))
        .map(|(k, _, t)| (*k, *t))
        .collect();
    let mut header = format!("{:<key_w$}", "method");
    for (_, title) in &own {
        let _ = write!(header, " {title:>9}");
    }
    let _ = writeln!(out, "{}", cut(&header));
    let summary_of = |s: &MethodSummary, key: &str| -> String {
        let runs: Vec<&StageReport> = report.methods.iter().filter(|m| m.method.as_deref() == Some(&s.key)).collect();
        stat(&Stat::of(&runs.iter().map(|r| metric(&r.test, key)).collect::<Vec<_>>()))
    };
    for s in &sums {
        let mut line = format!("{:<key_w$}", s.key);
        for (k, _) in &own {
            let _ = write!(line, " {:>9}", summary_of(s, k));
        }
        let _ = writeln!(out, "{}", cut(&line));
    }
    let diffs = differences(&report.methods, BASELINE);
    if diffs.iter().any(|d| d.seeds.len() > 1) {
        let _ = writeln!(out, "\nChange from {BASELINE}, same seed, points: mean±half-width of the paired 95%");
        let _ = writeln!(out, "interval (t, n-1 df); * where it excludes 0; null = the noise floor:");
        let cols: Vec<(&str, &str)> = HEADLINE
            .iter()
            .filter(|(k, ..)| !matches!(*k, "recall_spread" | "macro_f1" | "worst_precision"))
            .map(|(k, _, t)| (*k, *t))
            .collect();
        let mut header = format!("{:<key_w$}", "method");
        for (_, title) in &cols {
            let _ = write!(header, " {title:>11}");
        }
        let _ = writeln!(out, "{}", cut(&header));
        for d in &diffs {
            let mut line = format!("{:<key_w$}", d.key);
            for (k, _) in &cols {
                let _ = write!(line, " {:>11}", d.get(k).map_or("-".into(), |i| i.pct_short()));
            }
            let _ = writeln!(out, "{}", cut(&line));
        }
    }
    let _ = writeln!(out, "\nMean test recall per class (%):");
    let classes = short_labels(&report.class_names, 5);
    let mut header = format!("{:<key_w$}", "method");
    for n in &classes {
        let _ = write!(header, " {n:>5}");
    }
    let _ = writeln!(out, "{}", cut(&header));
    for s in &sums {
        let mut line = format!("{:<key_w$}", s.key);
        for r in &s.recall {
            let _ = write!(line, " {:>5}", pct(Some(r)));
        }
        let _ = writeln!(out, "{}", cut(&line));
    }
    if classes != report.class_names {
        let _ = writeln!(out, "\nClasses:");
        for (l, name) in classes.iter().zip(&report.class_names) {
            let _ = writeln!(out, "{}", cut(&format!("  {l:<5}  {name}")));
        }
    }
    let _ = writeln!(out, "\nMethods:");
    for s in &sums {
        let _ = writeln!(out, "{}", cut(&format!("  {:<key_w$}  {}", s.key, s.name)));
    }
    out
}

/// The diagnostics as terminal text (means over seeds).
pub fn diagnostics_text(d: &Diagnostics, class_names: &[String]) -> String {
    let mut out = String::new();
    let key_w = d.fit.iter().map(|f| f.method.to_string().chars().count()).max().unwrap_or(0).max("method".len());
    let split_table = |out: &mut String, title: &str, get: &dyn Fn(&SplitFit) -> &Stat| {
        let _ = writeln!(out, "{title}");
        let _ = writeln!(out, "{:<key_w$} {:>11} {:>11} {:>11}", "method", "train", "val", "test");
        for f in &d.fit {
            let line = format!(
                "{:<key_w$} {:>11} {:>11} {:>11}",
                f.method.to_string(),
                stat(get(&f.train)),
                stat(get(&f.val)),
                stat(get(&f.test))
            );
            let _ = writeln!(out, "{}", cut(&line));
        }
    };
    split_table(&mut out, "Fit per method: accuracy on train / validation / test (%)", &|s| &s.accuracy);
    let _ = writeln!(out);
    split_table(&mut out, "Fit per method: recall spread on train / validation / test (points)", &|s| &s.recall_spread);
    let name_w = class_names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max("class".len());
    for key in ["uniform", "reweight"] {
        let Some(f) = d.fit.iter().find(|f| f.method.to_string() == key) else { continue };
        let _ = writeln!(out, "\nPer-class recall of {key} (%): train / val / test");
        let _ = writeln!(out, "{:<name_w$} {:>6} {:>6} {:>6}", "class", "train", "val", "test");
        for (k, n) in class_names.iter().enumerate() {
            let (a, b, c) = (f.train.recall.get(k), f.val.recall.get(k), f.test.recall.get(k));
            let _ = writeln!(out, "{}", cut(&format!("{n:<name_w$} {:>6} {:>6} {:>6}", pct(a), pct(b), pct(c))));
        }
    }
    for key in ["uniform", "reweight"] {
        let Some(g) = d.gradient.iter().find(|g| g.method.to_string() == key) else { continue };
        let _ = writeln!(out, "\nTraining loss and loss-gradient share per class, {key}: first -> last epoch");
        let _ = writeln!(out, "(share in %; uniform: every sample weighted 1; weighted: as trained)");
        let _ = writeln!(
            out,
            "{:<name_w$} {:>6} {:>15} {:>13} {:>13}",
            "class", "weight", "loss", "share unif.", "share weight."
        );
        let (a, b) = (&g.first_epoch, &g.last_epoch);
        for (k, n) in class_names.iter().enumerate() {
            let pair = |x: String, y: String| format!("{x} -> {y}");
            let line = format!(
                "{n:<name_w$} {:>6} {:>15} {:>13} {:>13}",
                num(b.class_weights.get(k), 2),
                pair(num(a.class_loss.get(k), 3), num(b.class_loss.get(k), 3)),
                pair(pct(a.grad_share_uniform.get(k)), pct(b.grad_share_uniform.get(k))),
                pair(pct(a.grad_share_weighted.get(k)), pct(b.grad_share_weighted.get(k)))
            );
            let _ = writeln!(out, "{}", cut(&line));
        }
    }
    if d.exponent_sweep.len() > 2 {
        let _ = writeln!(out, "\nExponent sweep (weights from validation recall; test set, %):");
        let _ = writeln!(out, "{:>6} {:>11} {:>11} {:>11} {:>11}", "p", "test acc.", "worst", "spread", "train acc.");
        for s in &d.exponent_sweep {
            let line = format!(
                "{:>6} {:>11} {:>11} {:>11} {:>11}",
                s.exponent,
                stat(&s.accuracy),
                stat(&s.worst_recall),
                stat(&s.recall_spread),
                stat(&s.train_accuracy)
            );
            let _ = writeln!(out, "{}", cut(&line));
        }
    }
    if !d.regime.is_empty() {
        let _ = writeln!(out, "\nShort vs long training (%): does reweighting still move the test spread");
        let _ = writeln!(out, "once the training set is fit? (U: uniform, R: reweight)");
        let _ = writeln!(
            out,
            "{:<8} {:>6} {:>11} {:>11} {:>11} {:>11} {:>11}",
            "regime", "epochs", "U train acc", "U spread", "R spread", "U test acc", "R test acc"
        );
        for r in &d.regime {
            let line = format!(
                "{:<8} {:>6} {:>11} {:>11} {:>11} {:>11} {:>11}",
                r.regime,
                r.epochs.map_or("-".into(), |e| e.to_string()),
                stat(&r.uniform_train_accuracy),
                stat(&r.uniform_test_spread),
                stat(&r.reweight_test_spread),
                stat(&r.uniform_test_accuracy),
                stat(&r.reweight_test_accuracy)
            );
            let _ = writeln!(out, "{}", cut(&line));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resume_command_drops_overwrite_and_quotes_for_the_shell() {
        let args = strings(&["--out", "my runs/a", "--overwrite", "--lr", "0.1", "--resume", "it's", ""]);
        assert_eq!(resume_command("prog --", args), "prog -- --out 'my runs/a' --lr 0.1 'it'\\''s' '' --resume");
    }

    #[test]
    fn class_labels_are_short_and_distinct() {
        let cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
        let short = short_labels(&strings(&cifar), 5);
        assert_eq!(short, strings(&["airpl", "autom", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]));
        // The shared prefix goes; names that stay alike when cut are numbered.
        let synthetic = ["synthetic-disk", "synthetic-stripes-coarse", "synthetic-stripes-fine"];
        assert_eq!(short_labels(&strings(&synthetic), 16), strings(&["disk", "stripes-coarse", "stripes-fine"]));
        assert_eq!(short_labels(&strings(&synthetic), 5), strings(&["c1", "c2", "c3"]));
        // A prefix that is a whole name is kept.
        assert_eq!(short_labels(&strings(&["a-", "a-b"]), 5), strings(&["a-", "a-b"]));
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(format_duration(12.4), "12 s");
        assert_eq!(format_duration(90.0), "2 min");
        assert_eq!(format_duration(7260.0), "2 h 01 min");
        assert_eq!(format_duration(f64::NAN), "?");
    }
}
