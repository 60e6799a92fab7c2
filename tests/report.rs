//! Report output: report.json schema, per_class.csv, the recall chart (SVG + PNG), the terminal
//! table, the JSON round trip and errors on bad input or unwritable paths.
#![cfg(feature = "trainer")]

use std::fs;
use std::path::Path;

use evenclass::report::{
    read_report, terminal_table, write_all, EpochLog, Metrics, Report, ReportError, StageReport, CHART_HEIGHT,
    CHART_TITLE, CHART_WIDTH, REPORT_FORMAT,
};
use serde_json::{json, Value};

const CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// A confusion matrix with `per_class` samples per class where class `t` is right
/// `round(recall[t] * per_class)` times; the mistakes go 2/3 to `t + 1` and 1/3 to `t + 3`.
fn confusion(recall: &[f64], per_class: u64) -> Vec<Vec<u64>> {
    let c = recall.len();
    (0..c)
        .map(|t| {
            let right = (recall[t] * per_class as f64).round() as u64;
            let wrong = per_class - right;
            let mut row = vec![0u64; c];
            row[t] = right;
            row[(t + 1) % c] += wrong - wrong / 3;
            row[(t + 3) % c] += wrong / 3;
            row
        })
        .collect()
}

fn epochs(n: usize, seed: f64) -> Vec<EpochLog> {
    (0..n)
        .map(|e| EpochLog {
            epoch: e + 1,
            lr: 0.1 * (1.0 - e as f64 / n as f64),
            train_loss: 2.0 / (e as f64 + 1.0) + seed,
            train_accuracy: 0.5 + 0.04 * e as f64,
            seconds: 3.5,
            images_per_second: 50_000.0 / 3.5,
            test_accuracy: if e % 2 == 1 { Some(0.45 + 0.04 * e as f64) } else { None },
            ..Default::default()
        })
        .collect()
}

fn stage(name: &str, weights: Vec<f64>, test_recall: &[f64]) -> StageReport {
    let train_recall: Vec<f64> = test_recall.iter().map(|r| (r + 0.08).min(1.0)).collect();
    StageReport {
        name: name.to_string(),
        class_weights: weights,
        seconds: 42.0,
        epochs: epochs(6, 0.0),
        test: Metrics::from_confusion(confusion(test_recall, 1000)).unwrap(),
        train: Metrics::from_confusion(confusion(&train_recall, 5000)).unwrap(),
        val: None,
        seed: None,
        method: None,
        model: None,
        bias: None,
    }
}

/// Two stages, 10 classes: uniform weights, then w_c = (mean(r) / r_c)^1 from stage 1's recall.
fn two_stage_report() -> Report {
    let r1 = [0.85, 0.92, 0.70, 0.58, 0.77, 0.68, 0.88, 0.86, 0.91, 0.89];
    let r2 = [0.84, 0.90, 0.74, 0.67, 0.80, 0.72, 0.87, 0.85, 0.89, 0.88];
    let mean = r1.iter().sum::<f64>() / r1.len() as f64;
    let weights: Vec<f64> = r1.iter().map(|r| mean / r).collect();
    Report {
        format: REPORT_FORMAT,
        dataset: "cifar10".into(),
        device: "test device".into(),
        config: json!({"epochs": 6, "batch_size": 512, "power": 1.0, "seed": 7}),
        class_names: CLASSES.iter().map(|s| s.to_string()).collect(),
        stages: vec![stage("stage 1: uniform", vec![1.0; 10], &r1), stage("stage 2: reweighted", weights, &r2)],
        command: "evenclass-train --epochs 6".into(),
        created_utc: "2025-01-31T12:00:00Z".into(),
        run_id: "run-1".into(),
        synthetic: false,
        methods: Vec::new(),
        diagnostics: serde_json::Value::Null,
    }
}

/// Decode a PNG file into (width, height, 8-bit RGB or RGBA pixels, channels).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf, channels)
}

#[test]
fn from_confusion_hand_worked() {
    // true 0: 3 right, 1 as class 1; true 1: 2 as 0, 2 right; class 2 never occurs, predicted once.
    let m = Metrics::from_confusion(vec![vec![3, 1, 0], vec![2, 2, 0], vec![0, 0, 0]]).unwrap();
    let m2 = Metrics::from_confusion(vec![vec![3, 0, 1], vec![0, 4, 0], vec![0, 0, 0]]).unwrap();
    assert_eq!(m.support, vec![4, 4, 0]);
    assert_eq!(m.accuracy, 5.0 / 8.0);
    assert_eq!(m.recall, vec![0.75, 0.5, 0.0]);
    assert_eq!(m.precision, vec![0.6, 2.0 / 3.0, 0.0]);
    let f1_0 = 2.0 * 0.75 * 0.6 / 1.35;
    let f1_1 = 2.0 * 0.5 * (2.0 / 3.0) / (0.5 + 2.0 / 3.0);
    assert!((m.f1[0] - f1_0).abs() < 1e-15 && (m.f1[1] - f1_1).abs() < 1e-15 && m.f1[2] == 0.0);
    // Balanced accuracy averages over the classes that occur only.
    assert_eq!(m.balanced_accuracy, 0.625);
    assert_eq!(m2.precision, vec![1.0, 1.0, 0.0]);
    assert_eq!(m2.balanced_accuracy, 0.875);
    // Worst class and spread: over all classes, including the absent one.
    assert_eq!(m.worst_class(), Some(2));
    assert_eq!(m.worst_recall(), 0.0);
    assert_eq!(m.recall_spread(), 0.75);

    assert!(matches!(Metrics::from_confusion(vec![]), Err(evenclass::Error::Shape { .. })));
    assert!(matches!(Metrics::from_confusion(vec![vec![1, 2], vec![3]]), Err(evenclass::Error::Shape { .. })));
}

#[test]
fn worst_and_spread_ignore_nan() {
    let mut m = Metrics::from_confusion(vec![vec![1, 1], vec![0, 2]]).unwrap();
    assert_eq!((m.worst_class(), m.worst_recall(), m.recall_spread()), (Some(0), 0.5, 0.5));
    m.recall = vec![f64::NAN, 0.25];
    assert_eq!((m.worst_class(), m.worst_recall(), m.recall_spread()), (Some(1), 0.25, 0.0));
    m.recall = vec![];
    assert!(m.worst_class().is_none() && m.worst_recall().is_nan() && m.recall_spread().is_nan());
}

#[test]
fn write_all_writes_consistent_files() {
    let report = two_stage_report();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/run-1");
    let files = write_all(&report, &out).unwrap();
    for p in [&files.json, &files.csv, &files.svg, &files.png] {
        assert!(p.starts_with(&out) && p.is_file(), "{} missing", p.display());
    }
    // Nothing but the four files: no temporary files left behind.
    let mut names: Vec<String> =
        fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["per_class.csv", "recall.png", "recall.svg", "report.json"]);

    // report.json: the required keys and array lengths, read as a generic value.
    let v: Value = serde_json::from_slice(&fs::read(&files.json).unwrap()).unwrap();
    assert_eq!(v["dataset"], "cifar10");
    assert!(v["device"].is_string() && v["config"].is_object());
    assert_eq!(v["config"]["batch_size"], 512);
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    for (s, want) in stages.iter().zip(&report.stages) {
        assert_eq!(s["name"], want.name.as_str());
        assert!(s["seconds"].is_number());
        let weights = s["class_weights"].as_array().unwrap();
        assert_eq!(weights.len(), 10);
        assert!(weights.iter().all(Value::is_number));
        for split in ["test", "train"] {
            let m = &s[split];
            assert!(m["accuracy"].is_number() && m["balanced_accuracy"].is_number(), "{split}");
            for key in ["recall", "precision", "f1"] {
                let a = m[key].as_array().unwrap_or_else(|| panic!("{split}.{key}"));
                assert_eq!(a.len(), 10, "{split}.{key}");
                assert!(a.iter().all(|x| x.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x))), "{split}.{key}");
            }
            let conf = m["confusion"].as_array().unwrap();
            assert_eq!(conf.len(), 10);
            assert!(conf.iter().all(|row| row.as_array().unwrap().len() == 10));
        }
    }
    assert_eq!(stages[1]["test"]["recall"][3].as_f64(), Some(0.67));

    // per_class.csv: header + 2 stages x 2 splits x 10 classes, names quoted where needed.
    let csv_text = fs::read_to_string(&files.csv).unwrap();
    let lines: Vec<&str> = csv_text.lines().collect();
    assert_eq!(lines[0], "run_id,dataset,stage,split,class_index,class_name,support,recall,precision,f1,class_weight");
    assert!(lines[1..].iter().all(|l| l.starts_with("run-1,cifar10,")), "rows without the run id");
    let lines: Vec<&str> = lines.iter().map(|l| l.strip_prefix("run-1,cifar10,").unwrap_or(l)).collect();
    assert_eq!(lines.len(), 2 * 2 * 10 + 1);
    assert!(lines[1].starts_with("stage 1: uniform,test,0,airplane,1000,0.85,"), "{}", lines[1]);
    assert!(lines[1].ends_with(",1.0"), "{}", lines[1]);
    // Rows: stage 1 test (1..=10), stage 1 train (11..=20), stage 2 test (21..=30), stage 2 train.
    assert!(lines[11].starts_with("stage 1: uniform,train,0,airplane,5000,0.93,"), "{}", lines[11]);
    let w3 = report.stages[1].class_weights[3];
    assert!(lines[24].starts_with("stage 2: reweighted,test,3,cat,1000,0.67,"), "{}", lines[24]);
    assert!(lines[24].ends_with(&format!(",{w3}")), "{}", lines[24]);
    assert!(lines[40].starts_with("stage 2: reweighted,train,9,truck,5000,0.96,"), "{}", lines[40]);

    // recall.svg: title, axis label, stage names and both bar colours.
    let svg = fs::read_to_string(&files.svg).unwrap();
    assert!(svg.starts_with("<!-- evenclass run id: run-1 -->\n<svg"), "{}", &svg[..80]);
    for needle in [CHART_TITLE, "true-positive rate (recall)", "recall", "stage 1: uniform", "stage 2: reweighted"] {
        assert!(svg.contains(needle), "SVG lacks {needle:?}");
    }
    for name in CLASSES {
        assert!(svg.contains(name), "SVG lacks class {name}");
    }
    let svg_lower = svg.to_lowercase();
    assert!(svg_lower.contains("#1f77b4") && svg_lower.contains("#ff7f0e"), "SVG lacks the stage colours");

    // recall.png: right size, white background, blue and orange bars, dark text in the title band.
    let (w, h, px, ch) = decode_png(&files.png);
    assert_eq!((w, h), (CHART_WIDTH, CHART_HEIGHT));
    let pixel = |x: u32, y: u32| {
        let i = (y as usize * w as usize + x as usize) * ch;
        (px[i], px[i + 1], px[i + 2])
    };
    let count = |pred: &dyn Fn((u8, u8, u8)) -> bool, y0: u32, y1: u32| {
        (y0..y1).flat_map(|y| (0..w).map(move |x| (x, y))).filter(|&(x, y)| pred(pixel(x, y))).count()
    };
    let all = |_| true;
    assert_eq!(count(&all, 0, h), (w * h) as usize);
    let white = count(&|p| p == (255, 255, 255), 0, h);
    assert!(white > (w * h / 3) as usize && white < (w * h) as usize, "white pixels: {white}");
    let blue = count(&|p| p == (0x1f, 0x77, 0xb4), 0, h);
    let orange = count(&|p| p == (0xff, 0x7f, 0x0e), 0, h);
    assert!(blue > 20_000 && orange > 20_000, "blue {blue}, orange {orange}");
    let dark_title = count(&|(r, g, b)| r < 100 && g < 100 && b < 100, 0, 40);
    assert!(dark_title > 300, "no rendered title text: {dark_title} dark pixels in the title band");
}

#[test]
fn terminal_table_lists_everything_aligned() {
    let report = two_stage_report();
    let table = terminal_table(&report);
    for name in CLASSES {
        assert!(table.contains(name), "table lacks class {name}:\n{table}");
    }
    for stage in &report.stages {
        assert!(table.contains(&stage.name), "table lacks {}:\n{table}", stage.name);
    }
    // Test split before train split; worst class of stage 1 is cat (58.0%), of stage 2 cat (67.0%).
    let test_at = table.find("test split").unwrap();
    let train_at = table.find("train split").unwrap();
    assert!(test_at < train_at);
    assert!(table.contains("58.0% (cat)") && table.contains("67.0% (cat)"), "{table}");
    // Accuracy and balanced accuracy of stage 1 (balanced test set: both are the mean recall).
    let acc = report.stages[0].test.accuracy;
    assert!((acc - 0.804).abs() < 1e-12);
    assert!(table.contains("80.4%"), "{table}");
    // Spread 92 - 58 = 34.0 pp; class weight of cat in stage 2 = 0.804 / 0.58.
    assert!(table.contains("34.0"), "{table}");
    assert!(table.contains(&format!("{:.4}", 0.804 / 0.58)), "{table}");
    // Per-class rows: every stage group's separators line up with the header's.
    let per_class: Vec<&str> =
        table.lines().skip_while(|l| !l.starts_with("per class")).skip(1).take_while(|l| !l.is_empty()).collect();
    assert_eq!(per_class.len(), 2 + 1 + 10, "{table}");
    let bars = |l: &str| l.char_indices().filter(|&(_, c)| c == '|').map(|(i, _)| i).collect::<Vec<_>>();
    let header_bars = bars(per_class[1]);
    assert_eq!(header_bars.len(), 2);
    for line in per_class.iter().skip(3) {
        assert_eq!(bars(line), header_bars, "misaligned: {line:?}\n{table}");
    }
    let airplane = per_class.iter().find(|l| l.starts_with("airplane")).unwrap();
    assert!(airplane.contains("85.0") && airplane.contains("84.0"), "{airplane}");
}

#[test]
fn json_round_trip() {
    let mut report = two_stage_report();
    let dir = tempfile::tempdir().unwrap();
    let files = write_all(&report, dir.path()).unwrap();
    assert_eq!(read_report(&files.json).unwrap(), report);

    // A diverged epoch (NaN loss) is written as null and read back as NaN, not an error.
    report.stages[1].epochs[2].train_loss = f64::NAN;
    let files = write_all(&report, dir.path()).unwrap();
    let back = read_report(&files.json).unwrap();
    assert!(back.stages[1].epochs[2].train_loss.is_nan());
    assert_eq!(back.stages[0], report.stages[0]);
}

#[test]
fn one_to_six_stages_render() {
    let base = two_stage_report();
    for n in [1usize, 3, 6] {
        let mut report = base.clone();
        report.stages = (0..n)
            .map(|i| {
                let mut s = base.stages[i % 2].clone();
                s.name = format!("method {i} with a rather long name");
                s
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let files = write_all(&report, dir.path()).unwrap();
        let svg = fs::read_to_string(&files.svg).unwrap();
        for i in 0..n {
            assert!(svg.contains(&format!("method {i} with a rather long name")), "{n} stages: stage {i}");
        }
        let (w, h, _, _) = decode_png(&files.png);
        assert_eq!((w, h), (CHART_WIDTH, CHART_HEIGHT));
        assert_eq!(fs::read_to_string(&files.csv).unwrap().lines().count(), n * 2 * 10 + 1);
    }
}

#[test]
fn unwritable_path_is_an_error() {
    let report = two_stage_report();
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a directory is needed fails even for root.
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let err = write_all(&report, &file.join("out")).unwrap_err();
    assert!(matches!(err, ReportError::Io { .. }), "{err}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
    assert!(matches!(read_report(dir.path().join("missing.json")), Err(ReportError::Io { .. })));
    fs::write(dir.path().join("bad.json"), format!("{{\"format\": {REPORT_FORMAT}, \"dataset\": 1}}")).unwrap();
    assert!(matches!(read_report(dir.path().join("bad.json")), Err(ReportError::Json { .. })));
}

/// A report.json of another format version, or of none (written before versions), is refused
/// with an error that names the version found and the one this build reads.
#[test]
fn old_report_format_is_a_clear_error() {
    let report = two_stage_report();
    let dir = tempfile::tempdir().unwrap();
    let files = write_all(&report, dir.path()).unwrap();
    let mut v: Value = serde_json::from_slice(&fs::read(&files.json).unwrap()).unwrap();
    for (format, found) in [(Some(1), "format 1,"), (None, "(none: written before format versions)")] {
        match format {
            Some(f) => v["format"] = json!(f),
            None => drop(v.as_object_mut().unwrap().remove("format")),
        }
        fs::write(&files.json, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = read_report(&files.json).unwrap_err();
        assert!(matches!(err, ReportError::FormatVersion { found: f, expected: REPORT_FORMAT, .. } if f == format));
        let msg = err.to_string();
        assert!(msg.contains(found) && msg.contains(&format!("reads format {REPORT_FORMAT}")), "{msg}");
        assert!(msg.contains("report.json"), "{msg}");
    }
}

/// Every report.json and run.json committed under docs/results reads back with this build's
/// readers: the published results are in the current formats.
#[test]
fn committed_results_are_in_the_current_formats() {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "report.json" || n == "run.json") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/results"), &mut files);
    let reports = files.iter().filter(|p| p.ends_with("report.json")).count();
    assert!(reports >= 10, "only {reports} report.json files found under docs/results");
    for p in &files {
        if p.ends_with("report.json") {
            let r = read_report(p).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.format, REPORT_FORMAT);
        } else {
            let m = evenclass::report::run_dir::read_manifest(p).unwrap_or_else(|e| panic!("{e}"));
            assert!(m.complete, "{}", p.display());
        }
    }
}

#[test]
fn inconsistent_report_is_rejected_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    let mut r = two_stage_report();
    r.stages[1].class_weights.pop();
    cases.push(r);
    let mut r = two_stage_report();
    r.stages[0].train.confusion[4].push(0);
    cases.push(r);
    let mut r = two_stage_report();
    r.stages[0].test.f1.push(0.5);
    cases.push(r);
    let mut r = two_stage_report();
    r.stages.clear();
    cases.push(r);
    let mut r = two_stage_report();
    r.class_names.pop();
    cases.push(r);
    for (i, r) in cases.iter().enumerate() {
        let out = dir.path().join(format!("case{i}"));
        assert!(matches!(write_all(r, &out), Err(ReportError::Invalid(_))), "case {i}");
        assert!(!out.exists(), "case {i} wrote something");
        // The table never panics, even on an inconsistent report.
        let _ = terminal_table(r);
    }
}

#[test]
fn many_classes_and_extreme_values_render() {
    // 60 classes with long names; recalls 0, 1, tiny and NaN (a class absent from the test set).
    let c = 60;
    let names: Vec<String> = (0..c).map(|k| format!("a rather long class name {k}")).collect();
    let base = two_stage_report();
    let mut s1 = base.stages[0].clone();
    let mut s2 = base.stages[1].clone();
    let recall: Vec<f64> = (0..c).map(|k| [0.0, 1.0, 0.03, 0.5][k % 4]).collect();
    for s in [&mut s1, &mut s2] {
        s.class_weights = vec![1.0; c];
        s.test = Metrics::from_confusion(confusion(&recall, 100)).unwrap();
        s.train = s.test.clone();
    }
    s2.test.recall[5] = f64::NAN;
    let report = Report { class_names: names, stages: vec![s1, s2], ..base };
    let dir = tempfile::tempdir().unwrap();
    let files = write_all(&report, dir.path()).unwrap();
    let (w, h, _, _) = decode_png(&files.png);
    assert_eq!((w, h), (CHART_WIDTH, CHART_HEIGHT));
    assert!(terminal_table(&report).contains("a rather long class name 59"));
}

/// Class labels are wrapped (or numbered), never cut into duplicates: CIFAR-10's names, the
/// synthetic set's long hyphenated names, and names that differ only at the end.
#[test]
fn chart_class_labels_are_never_cut_into_duplicates() {
    let synthetic_names = evenclass::data::synthetic::CLASS_NAMES;
    let long_same_prefix: Vec<String> =
        (0..10).map(|k| format!("a very long class name shared by every class number {k}")).collect();
    for names in [
        CLASSES.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        synthetic_names.iter().map(|s| s.to_string()).collect(),
        long_same_prefix,
    ] {
        let mut report = two_stage_report();
        report.class_names = names.clone();
        let labels = evenclass::report::chart_class_labels(&report).unwrap();
        let joined: Vec<String> = labels.iter().map(|l| l.join(" ")).collect();
        let distinct: std::collections::HashSet<&String> = joined.iter().collect();
        assert_eq!(distinct.len(), names.len(), "duplicate labels: {joined:?}");
        assert!(labels.iter().all(|l| !l.is_empty() && l.len() <= 3), "{labels:?}");
    }
    // Short names are drawn whole, on one line.
    let labels = evenclass::report::chart_class_labels(&two_stage_report()).unwrap();
    assert_eq!(labels[1], vec!["automobile".to_string()]);
}

/// A synthetic run says so in the chart title (SVG) and the CSV's dataset column.
#[test]
fn synthetic_reports_are_labelled_in_every_file() {
    let mut report = two_stage_report();
    report.synthetic = true;
    report.dataset = "synthetic (not CIFAR-10)".into();
    let dir = tempfile::tempdir().unwrap();
    let files = write_all(&report, dir.path()).unwrap();
    assert!(fs::read_to_string(&files.svg).unwrap().contains("SYNTHETIC data, not CIFAR-10"));
    let csv = fs::read_to_string(&files.csv).unwrap();
    assert!(csv.lines().skip(1).all(|l| l.contains("synthetic (not CIFAR-10)")));
    let v: Value = serde_json::from_slice(&fs::read(&files.json).unwrap()).unwrap();
    assert_eq!(v["synthetic"], true);
}

/// A run manifest (run.json) of another format version, or of none, is refused naming both
/// versions, also when the output folder is inspected; a folder with a report but no manifest is
/// someone else's files, never replaced.
#[test]
fn old_manifest_format_is_a_clear_error() {
    use evenclass::report::run_dir::{read_manifest, OutState, RunDir, RunManifest, MANIFEST, MANIFEST_FORMAT};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = RunDir::lock(&out).unwrap();
    let mut manifest = RunManifest::new(json!({"n": 1}));
    assert_eq!(manifest.format, MANIFEST_FORMAT);
    run.start(&manifest).unwrap();
    run.publish(&mut manifest).unwrap();
    let path = out.join(MANIFEST);
    assert_eq!(read_manifest(&path).unwrap(), manifest);

    let mut v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    for (format, found) in [(Some(1), "format 1,"), (None, "(none: written before format versions)")] {
        match format {
            Some(f) => v["format"] = json!(f),
            None => drop(v.as_object_mut().unwrap().remove("format")),
        }
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = read_manifest(&path).unwrap_err();
        assert!(matches!(err, ReportError::FormatVersion { found: f, expected: MANIFEST_FORMAT, .. } if f == format));
        let msg = err.to_string();
        assert!(msg.contains(found) && msg.contains(&format!("reads format {MANIFEST_FORMAT}")), "{msg}");
        assert!(matches!(run.published(), Err(ReportError::FormatVersion { .. })));
    }

    fs::remove_file(&path).unwrap();
    fs::write(out.join("report.json"), b"{}").unwrap();
    assert!(matches!(run.published().unwrap(), OutState::Foreign { .. }));
}
