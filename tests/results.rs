//! The result tables of `examples/results.rs` (`evenclass::report`'s merged and paired-by-seed
//! comparisons) reproduce the published ones from the committed `report.json` files: the
//! `merged.md` files of three result folders byte for byte, and the paired-by-seed rows the
//! findings publish. Also the refusals: other data, another configuration, a (method, seed) pair
//! two runs disagree on, a report without methods, a pair no seed has.
use std::path::Path;

use evenclass::report::{
    differences, merge_comparisons, merged_markdown, paired_effect, paired_entries, paired_markdown, ComparisonRun,
    ReportError,
};

/// Result folders, relative to the crate root (the tests' working directory), as the published
/// `merged.md` files name them.
const SEED0: &str = "docs/results/2026-12-02-compare-seed0-a786a9d/report.json";

fn read(path: &str) -> ComparisonRun {
    ComparisonRun::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn merged(paths: &[&str]) -> String {
    let runs: Vec<ComparisonRun> = paths.iter().map(|p| read(p)).collect();
    merged_markdown(&merge_comparisons(&runs).unwrap())
}

fn published(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn merged_tables_reproduce_the_published_merged_md() {
    for folder in ["2026-12-03-online-seeds-b6433b2", "2026-12-03-remaining-seeds-39ae14e"] {
        let got = merged(&[SEED0, &format!("docs/results/{folder}/seeds12/report.json")]);
        assert_eq!(got, published(&format!("docs/results/{folder}/merged.md")), "{folder}");
    }
    // Merged on the machine that ran it, from its own run folders: the first line names those
    // paths. The seed-0 run is the one published as compare-seed0.
    let got = merged(&[
        "docs/results/2026-12-02-compare-seed0-a786a9d",
        "docs/results/2026-12-02-compare-seeds-5d2fa7a/cmp-a0",
        "docs/results/2026-12-02-compare-seeds-5d2fa7a/cmp-a12",
    ]);
    let want = published("docs/results/2026-12-02-compare-seeds-5d2fa7a/merged.md");
    let (got_first, got_rest) = got.split_once('\n').unwrap();
    let (want_first, want_rest) = want.split_once('\n').unwrap();
    assert_eq!(got_rest, want_rest);
    assert_eq!(got_first, "Merged from: docs/results/2026-12-02-compare-seed0-a786a9d/report.json, docs/results/2026-12-02-compare-seeds-5d2fa7a/cmp-a0/report.json, docs/results/2026-12-02-compare-seeds-5d2fa7a/cmp-a12/report.json");
    assert!(want_first.starts_with("Merged from: /work/runs/cmp-seed0/report.json, "), "{want_first}");
}

/// The header and rows of a paired table, cells split.
fn rows(table: &str) -> Vec<Vec<String>> {
    table.lines().skip(2).map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect()).collect()
}

fn paired(reports: &[&str], pairs: &[(&str, &str)]) -> String {
    let runs: Vec<ComparisonRun> = reports.iter().map(|p| read(p)).collect();
    let entries = paired_entries(&runs).unwrap();
    let cat = runs[0].report.class_names.iter().position(|n| n == "cat").unwrap();
    let effects: Vec<_> = pairs.iter().map(|(b, o)| paired_effect(&entries, b, o, cat).unwrap()).collect();
    paired_markdown(&effects, "cat")
}

const PAIRED_HEADER: &str = "| base → other | seeds | weight ratio max/min | mean abs. change of a class's recall | \
    cat's recall | accuracy | train acc. base / other | last-epoch train loss base / other |\n\
    |---|---:|---:|---:|---:|---:|---|---|\n";

/// The whole tables of the three published pairings, then the cells the findings publish.
#[test]
fn paired_tables_reproduce_the_published_rows() {
    let underfit = paired(
        &[SEED0, "docs/results/2026-12-02-compare-seeds-5d2fa7a/cmp-a12/report.json"],
        &[("uniform", "reweight")],
    );
    let long = paired(
        &["docs/results/2026-12-03-long-regime-b6433b2/report.json"],
        &[("uniform", "reweight"), ("uniform-long", "reweight-long")],
    );
    let wd = paired(
        &["docs/results/2026-12-04-long-regime-wd-8841edb/report.json"],
        &[
            ("uniform-long", "reweight-long"),
            ("uniform-wd-long", "reweight-wd-long"),
            ("uniform-long", "uniform-wd-long"),
            ("uniform-long", "reweight-wd-long"),
        ],
    );
    assert_eq!(
        underfit,
        format!(
            "{PAIRED_HEADER}| uniform → reweight | 3 | 4.1 to 5.6 | 5.3 ± 1.8 | +13.6 ± 3.8 | -1.5 ± 0.7 \
             | 80.7 ± 0.1 / 79.0 ± 0.7 | 0.624 ± 0.003 / 0.699 ± 0.010 |\n"
        )
    );
    assert_eq!(
        long,
        format!(
            "{PAIRED_HEADER}| uniform → reweight | 3 | 6.9 to 15.1 | 12.2 ± 2.8 | +17.4 ± 13.6 | -6.2 ± 1.3 \
             | 83.0 ± 0.5 / 73.9 ± 4.3 | 0.609 ± 0.010 / 0.651 ± 0.013 |\n\
             | uniform-long → reweight-long | 3 | 6.4 to 8.0 | 2.1 ± 0.3 | +2.5 ± 1.5 | -0.3 ± 0.6 \
             | 100.0 ± 0.0 / 100.0 ± 0.0 | 0.008 ± 0.000 / 0.010 ± 0.001 |\n"
        )
    );
    assert_eq!(
        wd,
        format!(
            "{PAIRED_HEADER}| uniform-long → reweight-long | 3 | 7.0 to 9.6 | 2.1 ± 0.2 | +1.6 ± 1.4 | -1.0 ± 0.5 \
             | 100.0 ± 0.0 / 100.0 ± 0.0 | 0.008 ± 0.000 / 0.010 ± 0.001 |\n\
             | uniform-wd-long → reweight-wd-long | 3 | 7.0 to 9.6 | 2.8 ± 0.3 | +2.8 ± 3.3 | -0.7 ± 0.4 \
             | 100.0 ± 0.0 / 99.9 ± 0.0 | 0.021 ± 0.000 / 0.031 ± 0.003 |\n\
             | uniform-long → uniform-wd-long | 3 | 1.0 to 1.0 | 3.1 ± 0.2 | +4.8 ± 3.3 | +2.8 ± 0.5 \
             | 100.0 ± 0.0 / 100.0 ± 0.0 | 0.008 ± 0.000 / 0.021 ± 0.000 |\n\
             | uniform-long → reweight-wd-long | 3 | 7.0 to 9.6 | 3.6 ± 0.3 | +7.5 ± 0.8 | +2.1 ± 0.2 \
             | 100.0 ± 0.0 / 99.9 ± 0.0 | 0.008 ± 0.000 / 0.031 ± 0.003 |\n"
        )
    );

    // The published rows (weight ratio, mean |change| of a class's recall, cat's recall,
    // accuracy), cell for cell as the findings print them. Two cells were shortened by hand
    // there: the underfit accuracy change is published without its sd ("-1.5" for
    // "-1.5 ± 0.7") and the ratio of two uniform runs as "1" ("1.0 to 1.0").
    let published: [(&str, usize, [&str; 4]); 7] = [
        (&underfit, 0, ["4.1 to 5.6", "5.3 ± 1.8", "+13.6 ± 3.8", "-1.5"]),
        (&long, 0, ["6.9 to 15.1", "12.2 ± 2.8", "+17.4 ± 13.6", "-6.2 ± 1.3"]),
        (&long, 1, ["6.4 to 8.0", "2.1 ± 0.3", "+2.5 ± 1.5", "-0.3 ± 0.6"]),
        (&wd, 0, ["7.0 to 9.6", "2.1 ± 0.2", "+1.6 ± 1.4", "-1.0 ± 0.5"]),
        (&wd, 1, ["7.0 to 9.6", "2.8 ± 0.3", "+2.8 ± 3.3", "-0.7 ± 0.4"]),
        (&wd, 2, ["1", "3.1 ± 0.2", "+4.8 ± 3.3", "+2.8 ± 0.5"]),
        (&wd, 3, ["7.0 to 9.6", "3.6 ± 0.3", "+7.5 ± 0.8", "+2.1 ± 0.2"]),
    ];
    for (table, row, cells) in published {
        let got = &rows(table)[row][2..6];
        for (got, want) in got.iter().zip(cells) {
            let shortened = (want == "-1.5" && got == "-1.5 ± 0.7") || (want == "1" && got == "1.0 to 1.0");
            assert!(got == want || shortened, "row {row}: {got:?} is published as {want:?}");
        }
    }
}

#[test]
fn merging_refuses_runs_that_do_not_belong_together() {
    let base = read(SEED0);
    let other = read("docs/results/2026-12-03-online-seeds-b6433b2/seeds12/report.json");
    let reason = |runs: &[ComparisonRun]| match merge_comparisons(runs) {
        Err(ReportError::Incompatible { path, reason }) => format!("{}: {reason}", path.display()),
        other => panic!("expected a refusal, got {other:?}"),
    };

    let mut config = other.clone();
    config.report.config["train"]["lr"] = serde_json::json!(0.1);
    assert!(reason(&[base.clone(), config]).contains("another configuration than"));
    // The seed and the method list are not part of the comparison's configuration.
    let mut seed = other.clone();
    seed.report.config["train"]["seed"] = serde_json::json!(7);
    seed.report.config["compare"] = serde_json::json!("other methods");
    assert!(merge_comparisons(&[base.clone(), seed]).is_ok());

    let mut data = other.clone();
    data.data["train_md5"] = serde_json::json!("0123");
    assert!(reason(&[base.clone(), data]).contains("other data than"));
    let long = read("docs/results/2026-12-03-long-regime-b6433b2/report.json");
    assert!(!reason(&[base.clone(), long]).is_empty());

    let mut disagree = base.clone();
    disagree.path = "elsewhere/report.json".into();
    disagree.report.methods[0].test.recall[3] += 0.001;
    let r = reason(&[base.clone(), disagree]);
    assert!(r.starts_with("elsewhere/report.json: method uniform seed 0 differs from docs/results"), "{r}");
    // The same run twice: every pair agrees and counts once.
    let twice = merge_comparisons(&[base.clone(), base.clone()]).unwrap();
    assert_eq!(twice.methods.len(), base.report.methods.len());

    let mut plain = other.clone();
    plain.report.methods.clear();
    assert!(reason(&[base, plain]).contains("not a --compare run"));
}

/// A NaN metric of one seed is left out of the mean and sd over seeds, as in `comparison.md`;
/// a method with no value left shows `-`.
#[test]
fn nan_metrics_are_left_out_of_the_summaries() {
    let base = read(SEED0);
    let mut seeds12 = read("docs/results/2026-12-03-online-seeds-b6433b2/seeds12/report.json");
    let all = merged(&[SEED0, "docs/results/2026-12-03-online-seeds-b6433b2/seeds12/report.json"]);
    for m in seeds12.report.methods.iter_mut().filter(|m| m.method.as_deref() == Some("online-dro")) {
        m.test.accuracy = f64::NAN;
    }
    let merged = merge_comparisons(&[base, seeds12]).unwrap();
    let eg = merged.summaries().into_iter().find(|s| s.key == "online-dro").unwrap();
    let seed0 = merged.methods.iter().find(|m| m.method.as_deref() == Some("online-dro")).unwrap();
    assert_eq!(eg.get("accuracy").unwrap().mean, seed0.test.accuracy);
    assert!(eg.get("accuracy").unwrap().sd.is_nan());
    let row = |table: &str| table.lines().find(|l| l.starts_with("| online EG")).unwrap().to_string();
    assert!(row(&all).contains("| 0,1,2 | 76.8 ± 0.1 |"), "{}", row(&all));
    assert!(row(&merged_markdown(&merged)).contains("| 0,1,2 | 76.7 | 76.8 ± 0.1 |"));
}

/// The published reports name online-dro by its former name, `online-eg`: read, it is
/// `online-dro`, and a report written under the new name merges with them into the same table.
#[test]
fn reports_with_the_former_name_online_eg_read_and_merge_as_online_dro() {
    let on_disk = published(SEED0);
    assert!(on_disk.contains("\"method\": \"online-eg\""), "the fixture must use the old name");
    let seed0 = read(SEED0);
    let keys: Vec<&str> = seed0.report.methods.iter().filter_map(|m| m.method.as_deref()).collect();
    assert!(keys.contains(&"online-dro") && !keys.contains(&"online-eg"), "{keys:?}");
    // Seeds 1 and 2 as a new build writes them: the method key under the new name.
    let folder = "docs/results/2026-12-03-online-seeds-b6433b2";
    let text = published(&format!("{folder}/seeds12/report.json"));
    let renamed = text.replace("\"method\": \"online-eg\"", "\"method\": \"online-dro\"");
    assert_ne!(renamed, text);
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("report.json");
    std::fs::write(&path, renamed).unwrap();
    let mut new = ComparisonRun::read(&path).unwrap();
    new.data = read(&format!("{folder}/seeds12/report.json")).data; // the manifest stays behind
    let merged = merge_comparisons(&[seed0, new]).unwrap();
    let got = merged_markdown(&merged);
    let want = published(&format!("{folder}/merged.md"));
    // Only the first line (the file names) differs.
    assert_eq!(got.split_once('\n').unwrap().1, want.split_once('\n').unwrap().1);
    let seeds: Vec<u64> =
        merged.methods.iter().filter(|m| m.method.as_deref() == Some("online-dro")).filter_map(|m| m.seed).collect();
    assert_eq!(seeds, [0, 1, 2]);
    // Pairing asked for under the old name finds the method under the new one.
    let entries = paired_entries(&[read(SEED0)]).unwrap();
    let effect = paired_effect(&entries, "uniform", "online-eg", 3).unwrap();
    assert_eq!((effect.other.as_str(), effect.seeds.as_slice()), ("online-dro", &[0][..]));
}

#[test]
fn pairing_refuses_what_it_cannot_pair() {
    let long = read("docs/results/2026-12-03-long-regime-b6433b2/report.json");
    let entries = paired_entries(std::slice::from_ref(&long)).unwrap();
    assert!(matches!(paired_effect(&entries, "uniform", "no-such-method", 3), Err(ReportError::NoPairedSeeds { .. })));
    match paired_entries(&[long.clone(), long]) {
        Err(ReportError::Incompatible { reason, .. }) => assert!(reason.contains("is in two reports"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(Path::new(SEED0).exists());
}

/// The paired 95% intervals over the three published seeds reproduce the ones the method
/// comparison's audit quoted: reweighting's change of the F1 spread, -3.5 [-7.1, +0.2] points,
/// and the bias's, +3.4 [-0.5, +7.3].
#[test]
fn paired_intervals_reproduce_the_audit() {
    let runs: Vec<ComparisonRun> = [
        "docs/results/2026-12-02-compare-seed0-a786a9d",
        "docs/results/2026-12-02-compare-seeds-5d2fa7a/cmp-a0",
        "docs/results/2026-12-02-compare-seeds-5d2fa7a/cmp-a12",
    ]
    .iter()
    .map(|p| read(p))
    .collect();
    let merged = merge_comparisons(&runs).unwrap();
    let diffs = differences(&merged.methods, "uniform");
    let get = |key: &str| diffs.iter().find(|d| d.key == key).unwrap_or_else(|| panic!("{key}"));
    let reweight = get("reweight");
    assert_eq!(reweight.seeds, vec![0, 1, 2]);
    assert_eq!(reweight.get("f1_spread").unwrap().pct(), "-3.5 [-7.1, +0.2]");
    assert_eq!(get("bias").get("f1_spread").unwrap().pct(), "+3.4 [-0.5, +7.3]");
    assert!(diffs.iter().all(|d| d.key != "uniform"));
}
