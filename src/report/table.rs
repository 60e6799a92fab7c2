//! Plain-text summary of a [`Report`] for the terminal.
use std::fmt::Write;

use super::Report;
use crate::confusion::Metrics;

/// Pad `s` on the left (right-align) to `width` characters.
fn right(s: &str, width: usize) -> String {
    format!("{s:>width$}")
}

/// Pad `s` on the right (left-align) to `width` characters.
fn left(s: &str, width: usize) -> String {
    format!("{s:<width$}")
}

/// A ratio as a percentage with one decimal, `-` if it is not a number.
fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}", v * 100.0)
    } else {
        "-".to_string()
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// A readable plain-text table of `report` (no trailing colour codes, lines end with `\n`):
///
/// 1. per split (test first, then train), one line per stage: accuracy, balanced accuracy,
///    worst-class recall (and the class) and the max − min recall spread;
/// 2. per class on the test split: recall, precision and F1 of every stage side by side;
/// 3. per class: the class weights of every stage.
///
/// Numbers are percentages with one decimal; the spread is in percentage points. Per-class
/// vectors shorter than the class list (an invalid report) show `-` instead of panicking.
pub fn terminal_table(report: &Report) -> String {
    let mut out = String::new();
    let names = &report.class_names;
    let class_w = names.iter().map(|n| width(n)).max().unwrap_or(0).max("class".len());
    let stage_w = report.stages.iter().map(|s| width(&s.name)).max().unwrap_or(0).max("stage".len());
    let get = |v: &[f64], k: usize| v.get(k).copied().unwrap_or(f64::NAN);

    let _ = writeln!(
        out,
        "dataset: {}   device: {}   classes: {}   stages: {}",
        report.dataset,
        report.device,
        names.len(),
        report.stages.len()
    );

    // 1. Summary per split.
    let worst_w = names.iter().map(|n| width(n) + 9).max().unwrap_or(0).max("worst-class recall".len());
    for split in ["test", "train"] {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{}  {}  {}  {}  {}  {}",
            left(&format!("{split} split"), stage_w),
            right("accuracy", 9),
            right("balanced acc.", 13),
            left("worst-class recall", worst_w),
            right("spread (pp)", 11),
            right("time", 8),
        );
        for stage in &report.stages {
            let m: &Metrics = if split == "test" { &stage.test } else { &stage.train };
            let worst = match m.worst_class() {
                Some(k) => {
                    format!("{:>5}% ({})", pct(m.recall[k]), names.get(k).map_or("?", String::as_str))
                }
                None => "-".to_string(),
            };
            let time = if stage.seconds.is_finite() { format!("{:.0}s", stage.seconds) } else { "-".into() };
            let _ = writeln!(
                out,
                "{}  {}  {}  {}  {}  {}",
                left(&stage.name, stage_w),
                right(&format!("{}%", pct(m.accuracy)), 9),
                right(&format!("{}%", pct(m.balanced_accuracy)), 13),
                left(&worst, worst_w),
                right(&pct(m.recall_spread()), 11),
                right(&time, 8),
            );
        }
    }

    // 2. Per class, test split: recall / precision / F1 per stage.
    let _ = writeln!(out);
    let _ = writeln!(out, "per class, test split (%)");
    let col = 7;
    let group_w = report.stages.iter().map(|s| width(&s.name)).max().unwrap_or(0).max(3 * col + 2);
    let mut header1 = left("", class_w);
    let mut header2 = left("class", class_w);
    for stage in &report.stages {
        let _ = write!(header1, " | {}", left(&stage.name, group_w));
        let cells = format!("{} {} {}", right("recall", col), right("prec.", col), right("F1", col));
        let _ = write!(header2, " | {}", left(&cells, group_w));
    }
    let _ = writeln!(out, "{}", header1.trim_end());
    let _ = writeln!(out, "{}", header2.trim_end());
    let _ = writeln!(out, "{}", "-".repeat(width(&header2)));
    for (k, name) in names.iter().enumerate() {
        let mut line = left(name, class_w);
        for stage in &report.stages {
            let m = &stage.test;
            let cells = format!(
                "{} {} {}",
                right(&pct(get(&m.recall, k)), col),
                right(&pct(get(&m.precision, k)), col),
                right(&pct(get(&m.f1, k)), col)
            );
            let _ = write!(line, " | {}", left(&cells, group_w));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }

    // 3. Class weights.
    let _ = writeln!(out);
    let _ = writeln!(out, "class weights");
    let weight_w = report.stages.iter().map(|s| width(&s.name)).max().unwrap_or(0).max(8);
    let mut header = left("class", class_w);
    for stage in &report.stages {
        let _ = write!(header, "  {}", right(&stage.name, weight_w));
    }
    let _ = writeln!(out, "{header}");
    for (k, name) in names.iter().enumerate() {
        let mut line = left(name, class_w);
        for stage in &report.stages {
            let w = get(&stage.class_weights, k);
            let cell = if w.is_finite() { format!("{w:.4}") } else { "-".to_string() };
            let _ = write!(line, "  {}", right(&cell, weight_w));
        }
        let _ = writeln!(out, "{line}");
    }
    out
}
