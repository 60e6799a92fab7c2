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

/// Class labels of at most `max` characters for table columns: the names without the prefix
/// they all share (`synthetic-`), cut to `max` characters, or `c1`, `c2`, ... where cutting would
/// make two alike. Where a label is not its class's name, the tables print a legend.
pub fn short_labels(names: &[String], max: usize) -> Vec<String> {
    let first = names.first().map_or("", String::as_str);
    let mut prefix =
        names.iter().fold(first.len(), |n, s| first.bytes().zip(s.bytes()).take(n).take_while(|(a, b)| a == b).count());
    // Only a prefix that ends at a separator, and never a whole name.
    while prefix > 0
        && (!first.is_char_boundary(prefix)
            || !first[..prefix].ends_with(['-', '_', ' '])
            || names.iter().any(|n| n.len() <= prefix))
    {
        prefix -= 1;
    }
    let labels: Vec<String> = names.iter().map(|n| n[prefix..].chars().take(max).collect()).collect();
    let unique = labels.iter().enumerate().all(|(i, l)| !labels[..i].contains(l) && !l.is_empty());
    if unique {
        labels
    } else {
        (1..=names.len()).map(|k| format!("c{k}")).collect()
    }
}

/// The terminal width the tables aim at.
const COLUMNS: usize = 80;

/// The short label of stage `i` in the tables (`S1`, `S2`, ...); the legend names the stage.
fn label(i: usize) -> String {
    format!("S{}", i + 1)
}

/// A readable plain-text table of `report` (no trailing colour codes, lines end with `\n`), at
/// most 80 columns wide: stages are labelled `S1`, `S2`, ... and classes by short labels where
/// their names are long (with a legend), and the per-stage columns are split into blocks that
/// fit.
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
    let names = &short_labels(&report.class_names, 16);
    let class_w = names.iter().map(|n| width(n)).max().unwrap_or(0).max("class".len());
    let labels: Vec<String> = (0..report.stages.len()).map(label).collect();
    let stage_w = labels.iter().map(|s| width(s)).max().unwrap_or(0).max("split".len());
    let get = |v: &[f64], k: usize| v.get(k).copied().unwrap_or(f64::NAN);

    let _ = writeln!(out, "dataset: {}", report.dataset);
    let _ = writeln!(out, "device: {}   classes: {}   stages: {}", report.device, names.len(), report.stages.len());
    for (l, stage) in labels.iter().zip(&report.stages) {
        let _ = writeln!(out, "  {l:<stage_w$}  {}", stage.name);
    }
    if names != &report.class_names {
        let _ = writeln!(out, "classes:");
        for (l, name) in names.iter().zip(&report.class_names) {
            let _ = writeln!(out, "  {l:<class_w$}  {name}");
        }
    }

    // 1. Summary per split.
    let worst_w = names.iter().map(|n| width(n) + 9).max().unwrap_or(0).max("worst-class recall".len());
    for split in ["test", "train"] {
        let _ = writeln!(out);
        let _ = writeln!(out, "{split} split (%)");
        let _ = writeln!(
            out,
            "{}  {}  {}  {}  {}  {}",
            left("", stage_w),
            right("accuracy", 8),
            right("balanced acc.", 13),
            left("worst-class recall", worst_w),
            right("spread (pp)", 11),
            right("time", 6),
        );
        for (l, stage) in labels.iter().zip(&report.stages) {
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
                left(l, stage_w),
                right(&format!("{}%", pct(m.accuracy)), 8),
                right(&format!("{}%", pct(m.balanced_accuracy)), 13),
                left(&worst, worst_w),
                right(&pct(m.recall_spread()), 11),
                right(&time, 6),
            );
        }
    }

    // 2. Per class, test split: recall / precision / F1 per stage, in blocks of stages.
    let _ = writeln!(out);
    let _ = writeln!(out, "per class, test split (%)");
    let col = 7;
    let group_w = 3 * col + 2;
    let per_block = ((COLUMNS.saturating_sub(class_w)) / (group_w + 3)).max(1);
    let stages: Vec<(usize, &super::StageReport)> = report.stages.iter().enumerate().collect();
    for (b, block) in stages.chunks(per_block).enumerate() {
        if b > 0 {
            let _ = writeln!(out);
        }
        let mut header1 = left("", class_w);
        let mut header2 = left("class", class_w);
        for (i, _) in block {
            let _ = write!(header1, " | {}", left(&labels[*i], group_w));
            let cells = format!("{} {} {}", right("recall", col), right("prec.", col), right("F1", col));
            let _ = write!(header2, " | {}", left(&cells, group_w));
        }
        let _ = writeln!(out, "{}", header1.trim_end());
        let _ = writeln!(out, "{}", header2.trim_end());
        let _ = writeln!(out, "{}", "-".repeat(width(&header2)));
        for (k, name) in names.iter().enumerate() {
            let mut line = left(name, class_w);
            for (_, stage) in block {
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
    }

    // 3. Class weights, in blocks of stages.
    let _ = writeln!(out);
    let _ = writeln!(out, "class weights");
    let weight_w = 8;
    let per_block = ((COLUMNS.saturating_sub(class_w)) / (weight_w + 2)).max(1);
    for (b, block) in stages.chunks(per_block).enumerate() {
        if b > 0 {
            let _ = writeln!(out);
        }
        let mut header = left("class", class_w);
        for (i, _) in block {
            let _ = write!(header, "  {}", right(&labels[*i], weight_w));
        }
        let _ = writeln!(out, "{header}");
        for (k, name) in names.iter().enumerate() {
            let mut line = left(name, class_w);
            for (_, stage) in block {
                let w = get(&stage.class_weights, k);
                // Four decimals while they fit the column, else three significant digits.
                let cell = match w {
                    w if !w.is_finite() => "-".to_string(),
                    w if w.abs() < 1000.0 => format!("{w:.4}"),
                    w => format!("{w:.2e}"),
                };
                let _ = write!(line, "  {}", right(&cell, weight_w));
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}
