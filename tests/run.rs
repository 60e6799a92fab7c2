//! The experiment's runs (`evenclass::experiment`): results are never lost or mixed, and bad
//! input is refused before any work. Everything on the CPU with tiny configurations on synthetic
//! data or generated CIFAR-format files. The runs are described with the command line's flags,
//! turned into an [`ExperimentSpec`] as `examples/cifar10.rs` does.
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use evenclass::experiment::{self, Diagnostics, ExperimentError, ExperimentSpec, RunOptions, RunOutcome};
use evenclass::report::run_dir::{read_manifest, RunDir, RunManifest, MANIFEST};
use evenclass::report::{terminal_table, Report};
use evenclass::train::CpuBackend;

mod experiment_flags;

use experiment_flags::spec_of_flags;

/// Flags of a tiny CPU run (flag, value).
const TINY: &[(&str, &str)] = &[
    ("--train-subset", "256"),
    ("--test-subset", "100"),
    ("--epochs", "2"),
    ("--width", "2"),
    ("--batch-size", "64"),
    ("--val-size", "40"),
];

/// How a run ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Finished,
    Stopped,
}

/// The spec of the command line `--out OUT` + TINY's flags (except those `extra` sets) + `extra`.
fn spec(out: &Path, extra: &[&str]) -> ExperimentSpec {
    let mut flags: Vec<&str> = Vec::new();
    for (flag, value) in TINY {
        if !extra.contains(flag) {
            flags.extend([*flag, *value]);
        }
    }
    flags.extend(extra);
    spec_of_flags(out, &flags)
}

fn run_with(out: &Path, extra: &[&str], stop: bool) -> Result<Ended, ExperimentError> {
    let stop = AtomicBool::new(stop);
    let opts = RunOptions { stop: Some(&stop), quiet: true, ..Default::default() };
    match experiment::run(&CpuBackend::new(), &spec(out, extra), &opts)? {
        RunOutcome::Finished { .. } => Ok(Ended::Finished),
        RunOutcome::Stopped { .. } => Ok(Ended::Stopped),
    }
}

fn run(out: &Path, extra: &[&str]) -> Result<Ended, ExperimentError> {
    run_with(out, extra, false)
}

/// A run whose stop flag is already set: it stops after the first step.
fn run_interrupted(out: &Path, extra: &[&str]) -> Result<Ended, ExperimentError> {
    run_with(out, extra, true)
}

/// A run that must finish: its report and diagnostics.
fn run_report(out: &Path, extra: &[&str]) -> (Report, Option<Diagnostics>) {
    let opts = RunOptions { quiet: true, ..Default::default() };
    match experiment::run(&CpuBackend::new(), &spec(out, extra), &opts).unwrap() {
        RunOutcome::Finished { report, diagnostics, .. } => (*report, diagnostics),
        RunOutcome::Stopped { .. } => panic!("stopped without a stop request"),
    }
}

/// Every table the run prints to the terminal fits 80 columns, and still names every method
/// and class (the legend and the column headers).
fn assert_fits_80_columns(report: &Report, diagnostics: Option<&Diagnostics>) {
    let mut texts = vec![("stage table", terminal_table(report))];
    if let Some(d) = diagnostics {
        texts.push(("comparison", experiment::comparison_text(report)));
        texts.push(("diagnostics", experiment::diagnostics_text(d, &report.class_names)));
    }
    for (what, text) in &texts {
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{what}: {} columns: {line:?}\n{text}", line.chars().count());
        }
    }
    let table = &texts[0].1;
    for s in &report.stages {
        assert!(table.contains(&s.name), "the stage legend lacks {}:\n{table}", s.name);
    }
    if diagnostics.is_some() {
        let cmp = &texts[1].1;
        for m in &report.methods {
            let key = m.method.as_deref().unwrap();
            assert!(cmp.lines().any(|l| l.starts_with(&format!("{key} "))), "no row of {key}:\n{cmp}");
            assert!(cmp.contains(&m.name), "the legend lacks {}:\n{cmp}", m.name);
        }
    }
}

fn is_usage(e: &ExperimentError) -> bool {
    e.is_usage()
}

/// CIFAR-format files (5 x 60 training records, 150 test records) of pseudo-random images.
fn write_cifar(dir: &Path, seed: u8) {
    std::fs::create_dir_all(dir).unwrap();
    let record = |i: usize| {
        let mut r = vec![(i % 10) as u8];
        r.extend((0..3072).map(|j| ((i * 31 + j * 7) as u8) ^ seed));
        r
    };
    for f in 1..=5 {
        let bytes: Vec<u8> = (0..60).flat_map(|i| record(f * 1000 + i)).collect();
        std::fs::write(dir.join(format!("data_batch_{f}.bin")), bytes).unwrap();
    }
    let bytes: Vec<u8> = (0..150).flat_map(record).collect();
    std::fs::write(dir.join("test_batch.bin"), bytes).unwrap();
}

/// Every file of a folder with its bytes, sorted.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn run_id(out: &Path) -> String {
    read_manifest(&out.join(MANIFEST)).unwrap().run_id
}

/// Every published file names the manifest's run id (report, CSV rows, SVG, PNG metadata).
fn assert_one_run(out: &Path) {
    let m = read_manifest(&out.join(MANIFEST)).unwrap();
    assert!(m.complete);
    let id = &m.run_id;
    let report = evenclass::report::read_report(out.join("report.json")).unwrap();
    assert_eq!(&report.run_id, id);
    let csv = std::fs::read_to_string(out.join("per_class.csv")).unwrap();
    assert!(csv.lines().skip(1).all(|l| l.starts_with(&format!("{id},"))), "CSV rows of another run");
    assert!(std::fs::read_to_string(out.join("recall.svg")).unwrap().contains(id.as_str()));
    let png = std::fs::read(out.join("recall.png")).unwrap();
    assert!(png.windows(id.len()).any(|w| w == id.as_bytes()), "PNG lacks the run id");
    let mut listed = m.files.clone();
    listed.push(MANIFEST.into());
    listed.sort();
    let mut present: Vec<String> = snapshot(out).into_iter().map(|(p, _)| p.to_string_lossy().into_owned()).collect();
    present.sort();
    assert_eq!(listed, present, "files in the folder differ from the manifest's list");
}

// ---- 1. --stage2-only refuses stage 1 of other data or another configuration ----

#[test]
fn stage2_only_refuses_stage1_of_other_data_naming_the_field() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    assert_eq!(run(&out, &["--synthetic"]).unwrap(), Ended::Finished);
    let before = snapshot(&out);

    // Same sizes, other images: a CIFAR-format folder.
    let other = t.path().join("other");
    write_cifar(&other, 0x5a);
    let e = run(&out, &["--stage2-only", "--overwrite", "--data-dir", other.to_str().unwrap()]).unwrap_err();
    let msg = format!("{e:#}");
    assert!(is_usage(&e), "{msg}");
    assert!(msg.contains("other data"), "{msg}");
    assert!(msg.contains("source: saved \"synthetic\", now \"cifar10\""), "{msg}");
    assert!(msg.contains("train_md5"), "{msg}");
    assert_eq!(snapshot(&out), before, "a refused run changed the output folder");

    // Same data, another configuration: the field is named (not two whole JSON documents).
    let e = run(&out, &["--synthetic", "--stage2-only", "--overwrite", "--lr", "0.07"]).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("train.lr: saved 0.05") && msg.contains("now 0.07"), "{msg}");
    assert!(!msg.contains("\"model\""), "whole configs printed: {msg}");
    // Training without augmentation (--no-augment) is another stage-1 recipe too.
    let e = run(&out, &["--synthetic", "--stage2-only", "--overwrite", "--no-augment"]).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("train.crop_pad: saved 4") && msg.contains("train.flip: saved true"), "{msg}");

    // Another exponent is the point of --stage2-only: accepted, stage 1 carried over unchanged.
    let stage1 = std::fs::read(out.join("stage1.json")).unwrap();
    let flags = ["--synthetic", "--stage2-only", "--overwrite", "--exponent", "-3"];
    assert_eq!(run(&out, &flags).unwrap(), Ended::Finished);
    assert_eq!(std::fs::read(out.join("stage1.json")).unwrap(), stage1);
    assert_one_run(&out);
}

#[test]
fn stage2_only_on_two_cifar_folders_with_different_content_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, out) = (t.path().join("a"), t.path().join("b"), t.path().join("out"));
    write_cifar(&a, 1);
    write_cifar(&b, 2);
    run(&out, &["--data-dir", a.to_str().unwrap()]).unwrap();
    let e = run(&out, &["--stage2-only", "--overwrite", "--data-dir", b.to_str().unwrap()]).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("train_md5: saved"), "{msg}");
    // A copy of the same files elsewhere is the same data.
    let c = t.path().join("c");
    write_cifar(&c, 1);
    run(&out, &["--stage2-only", "--overwrite", "--data-dir", c.to_str().unwrap()]).unwrap();
}

/// --stage2-only publishes a new run in place of the finished one: without --overwrite it is
/// refused, naming both flags, and the finished run stays as it was.
#[test]
fn stage2_only_replaces_the_finished_run_only_with_overwrite() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    run(&out, &["--synthetic"]).unwrap();
    let before = snapshot(&out);
    let e = run(&out, &["--synthetic", "--stage2-only", "--exponent", "2"]).unwrap_err();
    assert!(is_usage(&e), "{e:#}");
    let msg = e.to_string();
    assert!(msg.contains("--stage2-only") && msg.contains("--overwrite"), "{msg}");
    assert_eq!(snapshot(&out), before, "a refused --stage2-only changed the finished run");
    assert_eq!(
        run(&out, &["--synthetic", "--stage2-only", "--overwrite", "--exponent", "2"]).unwrap(),
        Ended::Finished
    );
    assert_ne!(snapshot(&out), before);
    assert_one_run(&out);
}

// ---- 2. outputs are never overwritten without --overwrite, and never mixed ----

#[test]
fn finished_run_is_replaced_only_with_overwrite_and_whole() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    run(&out, &["--synthetic"]).unwrap();
    assert_one_run(&out);
    let first = snapshot(&out);
    let id1 = run_id(&out);

    let e = run(&out, &["--synthetic", "--seed", "3"]).unwrap_err();
    assert!(is_usage(&e));
    assert!(format!("{e}").contains("--overwrite"), "{e}");
    assert_eq!(snapshot(&out), first);

    run(&out, &["--synthetic", "--seed", "3", "--overwrite"]).unwrap();
    assert_one_run(&out);
    assert_ne!(run_id(&out), id1);
    // Nothing but the run folder is left beside it: no lock file either.
    assert_eq!(names_in(t.path()), ["out"]);
}

/// The names in folder `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The lock file goes with the lock: after a finished run, a run refused after taking the lock,
/// and a stopped one, none is left beside --out.
#[test]
fn no_lock_file_is_left_after_a_run() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    run(&out, &["--synthetic"]).unwrap();
    assert_eq!(names_in(t.path()), ["out"], "after a finished run");
    // Refused after the lock was taken: the finished run is there and --overwrite is missing.
    assert!(is_usage(&run(&out, &["--synthetic"]).unwrap_err()));
    assert_eq!(names_in(t.path()), ["out"], "after a refused run");
    assert_eq!(run_interrupted(&out, &["--synthetic", "--overwrite"]).unwrap(), Ended::Stopped);
    assert_eq!(names_in(t.path()), [".out.partial", "out"], "after a stopped run");
}

/// Runs taking and releasing the lock of one folder from many threads at once never hold it
/// together, though each release deletes the lock file: a lock taken on a file deleted
/// meanwhile is not taken for the folder. The threads go on until the lock has been taken
/// `WANT` times (a fixed number of attempts took it only 47 times on a loaded 2-core machine),
/// within a minute.
#[test]
fn the_lock_excludes_even_while_its_file_is_deleted_and_recreated() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    const WANT: usize = 400;
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let holders = AtomicUsize::new(0);
    let taken = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while taken.load(Ordering::SeqCst) < WANT && Instant::now() < deadline {
                    let Ok(dir) = RunDir::lock(&out) else { continue };
                    assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders of the lock at once");
                    taken.fetch_add(1, Ordering::SeqCst);
                    std::thread::yield_now();
                    holders.fetch_sub(1, Ordering::SeqCst);
                    drop(dir);
                }
            });
        }
    });
    let n = taken.load(Ordering::SeqCst);
    assert!(n >= WANT, "the lock was taken only {n} times in 60 s");
    assert_eq!(names_in(t.path()), Vec::<String>::new(), "a lock file was left");
}

#[test]
fn interrupted_run_leaves_the_finished_run_untouched_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    run(&out, &["--synthetic"]).unwrap();
    let first = snapshot(&out);

    // Interrupted (Ctrl-C) replacement: the old run is intact, with nothing of the new one.
    assert_eq!(run_interrupted(&out, &["--synthetic", "--seed", "5", "--overwrite"]).unwrap(), Ended::Stopped);
    assert_eq!(snapshot(&out), first, "an interrupted run changed the published folder");
    assert!(t.path().join(".out.partial/checkpoints/stage1.ckpt").is_file());

    // A fresh run does not silently discard the interrupted one.
    let e = run(&out, &["--synthetic", "--seed", "5"]).unwrap_err();
    assert!(format!("{e}").contains("--resume"), "{e}");
    // --resume with other flags names the field.
    let e = run(&out, &["--synthetic", "--seed", "5", "--resume", "--epochs", "3"]).unwrap_err();
    assert!(format!("{e}").contains("train.epochs: saved 2, now 3"), "{e}");

    assert_eq!(run(&out, &["--synthetic", "--seed", "5", "--resume"]).unwrap(), Ended::Finished);
    assert_one_run(&out);
    assert!(!t.path().join(".out.partial").exists());

    // The resumed run equals an uninterrupted one with the same flags (models bit for bit).
    let fresh = t.path().join("fresh");
    run(&fresh, &["--synthetic", "--seed", "5"]).unwrap();
    for f in ["stage1.safetensors", "stage2.safetensors"] {
        assert!(std::fs::read(out.join(f)).unwrap() == std::fs::read(fresh.join(f)).unwrap(), "{f} differs");
    }
}

/// A run resumes only in the precision it started in: the mixed-precision reference
/// (`CpuBackend::bf16_reference`, what `--precision bf16` computes) refuses an f32 run's
/// checkpoint, naming the field, and the f32 backend still resumes it.
#[test]
fn resume_in_another_precision_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    assert_eq!(run_interrupted(&out, &["--synthetic"]).unwrap(), Ended::Stopped);
    let opts = RunOptions { quiet: true, ..Default::default() };
    let resume = spec(&out, &["--synthetic", "--resume"]);
    let e = experiment::run(&CpuBackend::bf16_reference(), &resume, &opts).map(|_| ()).unwrap_err();
    assert!(is_usage(&e), "{e}");
    assert!(format!("{e}").contains("precision"), "{e}");
    assert!(t.path().join(".out.partial/checkpoints/stage1.ckpt").is_file(), "the refusal touched the checkpoint");
    assert_eq!(run(&out, &["--synthetic", "--resume"]).unwrap(), Ended::Finished);
    assert_one_run(&out);
}

#[test]
fn resume_without_an_interrupted_run_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let e = run(&t.path().join("out"), &["--synthetic", "--resume"]).unwrap_err();
    assert!(is_usage(&e), "{e}");
    assert!(format!("{e}").contains("no interrupted run"), "{e}");
}

#[test]
fn a_second_run_on_the_same_folder_is_refused_by_the_lock() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let held = RunDir::lock(&out).unwrap();
    let e = run(&out, &["--synthetic"]).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("in use by another run"), "{msg}");
    assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
    drop(held);
    run(&out, &["--synthetic"]).unwrap();
}

#[test]
fn a_folder_of_other_files_is_never_replaced() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("thesis.tex"), b"precious").unwrap();
    let e = run(&out, &["--synthetic", "--overwrite"]).unwrap_err();
    assert!(format!("{e}").contains("not an evenclass run"), "{e}");
    assert_eq!(std::fs::read(out.join("thesis.tex")).unwrap(), b"precious");
}

#[test]
fn publication_cut_short_by_a_crash_is_repaired() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    // Crash between the two renames with a complete new run: it is published.
    let dir = RunDir::lock(&out).unwrap();
    let mut m = RunManifest::new(serde_json::json!({"n": 1}));
    dir.start(&m).unwrap();
    std::fs::write(dir.staging().join("a.txt"), b"new").unwrap();
    m.complete = true;
    dir.write_manifest(&m).unwrap();
    std::fs::create_dir(t.path().join(".out.previous")).unwrap();
    std::fs::write(t.path().join(".out.previous/a.txt"), b"old").unwrap();
    drop(dir);
    let dir = RunDir::lock(&out).unwrap();
    assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"new");
    assert!(!t.path().join(".out.previous").exists());
    drop(dir);

    // Crash with an incomplete new run: the old one is put back.
    std::fs::rename(&out, t.path().join(".out.previous")).unwrap();
    let dir = RunDir::lock(&out).unwrap();
    dir.start(&RunManifest::new(serde_json::json!({}))).unwrap();
    drop(dir);
    std::fs::rename(&out, t.path().join(".out.previous")).unwrap_or(());
    let _ = RunDir::lock(&out).unwrap();
    assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"new");
}

// ---- bad input: exit status 2, the flag and its range ----

#[test]
fn invalid_flags_are_usage_errors_naming_flag_and_range() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let bad: &[(&[&str], &str)] = &[
        (&["--epochs", "0"], "from 1 to 10000"),
        (&["--batch-size", "0"], "from 1 to 8192"),
        (&["--width", "0"], "from 1 to 1024"),
        (&["--depth", "0"], "from 1 to 16"),
        (&["--lr", "nan"], "(0, 100]"),
        (&["--lr", "-1"], "(0, 100]"),
        (&["--lr", "inf"], "(0, 100]"),
        (&["--exponent", "nan"], "[-8, 8]"),
        (&["--exponent", "100"], "[-8, 8]"),
        (&["--compare", "--sweep", "1,9"], "[-8, 8]"),
        (&["--train-subset", "0"], "at least 1"),
        (&["--test-subset", "0"], "at least 1"),
        (&["--synthetic", "--data-dir", "x"], "cannot be used with"),
        (&["--resume", "--stage2-only"], "cannot be used with"),
    ];
    for (flags, expect) in bad {
        let e = run(&out, flags).unwrap_err();
        assert!(e.is_usage(), "{flags:?}: {e}");
        let msg = e.to_string();
        let flag = if flags[0] == "--compare" { flags[1] } else { flags[0] };
        assert!(msg.contains(flag), "{flags:?}: {msg}");
        assert!(msg.contains(expect), "{flags:?}: {msg}");
        assert!(!out.exists(), "{flags:?}: refused, but the output folder was created");
    }
}

#[test]
fn batch_larger_than_the_training_set_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let e = run(&t.path().join("out"), &["--synthetic", "--batch-size", "300"]).unwrap_err();
    assert!(is_usage(&e), "{e}");
    assert!(format!("{e}").contains("--batch-size 300"), "{e}");
    assert!(!t.path().join("out").exists());
}

#[test]
fn explicit_data_dir_must_exist_and_gets_a_subfolder_hint() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let typo = t.path().join("cifar-typo");
    let e = run(&out, &["--data-dir", typo.to_str().unwrap()]).unwrap_err();
    assert!(is_usage(&e), "{e}");
    assert!(format!("{e}").contains("no CIFAR-10 batch files"), "{e}");
    assert!(!typo.exists(), "a typo'd --data-dir was created (downloaded into?)");

    let parent = t.path().join("data");
    write_cifar(&parent.join("cifar-10-batches-bin"), 3);
    let e = run(&out, &["--data-dir", parent.to_str().unwrap()]).unwrap_err();
    assert!(format!("{e}").contains("cifar-10-batches-bin"), "{e}");
}

/// --out or --data-dir naming a file (or a path under one): one usage error that names the
/// file and says a folder is expected, before any work.
#[test]
fn a_file_named_as_out_or_data_dir_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("notes.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let f = file.display();
    let below = file.join("run");
    let cases: [(&Path, Vec<&str>, String); 3] = [
        (&file, vec!["--synthetic"], format!("--out {f}: is a file, where a folder is expected")),
        (&below, vec!["--synthetic"], format!("--out {}: {f} is a file, where a folder", below.display())),
        (
            &t.path().join("out"),
            vec!["--data-dir", file.to_str().unwrap()],
            format!("{f} (from --data-dir): is a file, where a folder is expected"),
        ),
    ];
    for (out, flags, want) in &cases {
        let e = run(out, flags).unwrap_err();
        let msg = format!("{e:#}");
        assert!(is_usage(&e), "{flags:?}: {msg}");
        assert!(msg.contains(want.as_str()), "{flags:?}: {msg}");
        assert!(!msg.contains("os error"), "{flags:?}: {msg}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    assert_eq!(names_in(t.path()), ["notes.txt"], "a refused run left files");
}

/// A CIFAR-format folder whose files hold a whole number of records but not the official
/// 10,000 (here test_batch.bin cut to 5,000 at a record boundary) is never reported as CIFAR-10:
/// the report's dataset and the run's data fingerprint name the file and its count. The official
/// counts keep the plain label.
#[test]
fn nonstandard_record_counts_are_recorded_in_the_report() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("cifar");
    write_cifar(&data, 7);
    // Every file at the official size: the generated records, then zeros (valid records of
    // label 0), written sparse.
    let official = (10_000 * 3073) as u64;
    for name in (1..=5).map(|f| format!("data_batch_{f}.bin")).chain(["test_batch.bin".into()]) {
        std::fs::OpenOptions::new().write(true).open(data.join(name)).unwrap().set_len(official).unwrap();
    }
    let flags = ["--data-dir", data.to_str().unwrap(), "--epochs", "1"];
    let (report, _) = run_report(&t.path().join("a"), &flags);
    assert!(report.dataset.starts_with("CIFAR-10 ("), "{}", report.dataset);
    let meta = read_manifest(&t.path().join("a").join(MANIFEST)).unwrap().meta;
    assert!(meta["data"].get("nonstandard_counts").is_none(), "{}", meta["data"]);

    let test_file = std::fs::OpenOptions::new().write(true).open(data.join("test_batch.bin")).unwrap();
    test_file.set_len(5000 * 3073).unwrap();
    let out = t.path().join("b");
    let (report, _) = run_report(&out, &flags);
    let name = "CIFAR-10 format with non-standard counts (test_batch.bin: 5000 records, 10000 expected)";
    assert!(report.dataset.starts_with(name), "{}", report.dataset);
    let saved = evenclass::report::read_report(out.join("report.json")).unwrap();
    assert_eq!(saved.dataset, report.dataset);
    let csv = std::fs::read_to_string(out.join("per_class.csv")).unwrap();
    assert!(csv.lines().skip(1).all(|l| l.contains("non-standard counts")), "{csv}");
    let meta = read_manifest(&out.join(MANIFEST)).unwrap().meta;
    let counts = serde_json::json!([{"file": "test_batch.bin", "records": 5000, "expected": 10000}]);
    assert_eq!(meta["data"]["nonstandard_counts"], counts);
}

#[test]
fn synthetic_runs_say_so_in_every_file() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    run(&out, &["--synthetic"]).unwrap();
    let report = evenclass::report::read_report(out.join("report.json")).unwrap();
    assert!(report.synthetic);
    assert!(report.dataset.contains("synthetic"));
    let csv = std::fs::read_to_string(out.join("per_class.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("dataset"));
    assert!(csv.lines().skip(1).all(|l| l.contains("synthetic (not CIFAR-10)")));
    assert!(std::fs::read_to_string(out.join("recall.svg")).unwrap().contains("SYNTHETIC data, not CIFAR-10"));
    assert!(evenclass::report::terminal_table(&report).contains("synthetic"));
}

#[test]
fn a_configuration_too_large_for_memory_is_refused_with_numbers() {
    let t = tempfile::tempdir().unwrap();
    // Width 1024, batch 8192: hundreds of GiB of activations; refused before any allocation
    // (before the fix: an attempt to allocate them, i.e. killed by the OOM killer).
    let flags = ["--synthetic", "--width", "1024", "--batch-size", "8192", "--train-subset", "8232"];
    let e = run(&t.path().join("out"), &flags).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("needs about") && msg.contains("GiB") && msg.contains("available"), "{msg}");
    assert!(msg.contains("--width"), "{msg}");
}

/// Interrupted after every single step, in stage 1 and in stage 2, and resumed each time: the
/// published folder never changes until the last resume publishes the whole run, whose models
/// are bit-identical to an uninterrupted run's.
#[test]
fn interrupted_at_every_step_of_both_stages_publishes_only_the_whole_run() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    // 150 - 20 validation images: 2 steps of 64 an epoch.
    let flags = ["--synthetic", "--seed", "2", "--train-subset", "150", "--val-size", "20"];
    run(&out, &["--synthetic"]).unwrap();
    let first = snapshot(&out);
    assert_eq!(run_interrupted(&out, &[&flags[..], &["--overwrite"]].concat()).unwrap(), Ended::Stopped);
    let mut stops = 1;
    let resume = [&flags[..], &["--resume"]].concat();
    loop {
        assert_eq!(snapshot(&out), first, "published folder changed after {stops} interruptions");
        match run_interrupted(&out, &resume).unwrap() {
            Ended::Stopped => stops += 1,
            Ended::Finished => break,
        }
        assert!(stops < 20, "never finished");
    }
    // 2 stages x 2 epochs x 2 steps = 8 steps; a stop after each but the last of each stage.
    assert!(stops >= 6, "{stops} interruptions");
    assert_one_run(&out);
    let fresh = t.path().join("fresh");
    run(&fresh, &flags).unwrap();
    for f in ["stage1.safetensors", "stage2.safetensors"] {
        assert!(std::fs::read(out.join(f)).unwrap() == std::fs::read(fresh.join(f)).unwrap(), "{f} differs");
    }
    let (a, b) = (
        evenclass::report::read_report(out.join("report.json")).unwrap(),
        evenclass::report::read_report(fresh.join("report.json")).unwrap(),
    );
    assert_eq!(a.stages[1].class_weights, b.stages[1].class_weights);
    assert_eq!(a.stages[1].test, b.stages[1].test);
}

// ---- the comparison of methods ----

/// CIFAR-format files where every class is a flat colour plus noise (easy), except class 3,
/// whose images are drawn like class 5's: 3 and 5 cannot be told apart, so they are the hard
/// classes. 5 x `per_batch` training records, `test` test records.
fn write_hard_class_cifar(dir: &Path, per_batch: usize, test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let record = |i: usize| {
        let label = i % 10;
        let look = if label == 3 { 5 } else { label };
        let mut r = vec![label as u8];
        let mut x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(12345);
        r.extend((0..3072).map(|j| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Channel j / 1024 carries the class's colour; noise of +-16 on top.
            let base = (40 + 20 * look + 60 * (j / 1024) * (look % 3)) % 256;
            (base as i32 + (x % 33) as i32 - 16).clamp(0, 255) as u8
        }));
        r
    };
    for f in 1..=5 {
        let bytes: Vec<u8> = (0..per_batch).flat_map(|i| record(f * 100_000 + i)).collect();
        std::fs::write(dir.join(format!("data_batch_{f}.bin")), bytes).unwrap();
    }
    let bytes: Vec<u8> = (0..test).flat_map(record).collect();
    std::fs::write(dir.join("test_batch.bin"), bytes).unwrap();
}

const ALL_METHODS: [&str; 17] = [
    "uniform",
    "null",
    "reweight",
    "reweight-test",
    "iterated",
    "online-dro",
    "online-difficulty",
    "drw",
    "vs-loss",
    "cdt",
    "bias",
    "bias-budget",
    "bias-f1",
    "bias-f1-budget",
    "reweight-wd",
    "uniform-wd",
    "crt",
];

/// `--compare` with every method on two seeds: report.json holds each method for each seed in
/// the stage schema (test, train and validation metrics), the files of the comparison are
/// written, and every method's entry is what its stage measured.
#[test]
fn compare_writes_every_method_for_every_seed() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let flags = ["--synthetic", "--compare", "--seeds", "2", "--epochs", "1", "--sweep", "1", "--long-epochs", "2"];
    let (report, diagnostics) = run_report(&out, &flags);
    assert_one_run(&out);
    assert_fits_80_columns(&report, diagnostics.as_ref());
    let r = evenclass::report::read_report(out.join("report.json")).unwrap();
    let mut keys: Vec<String> = ALL_METHODS.iter().map(|s| s.to_string()).collect();
    let long = [
        "uniform-long",
        "reweight-long",
        "bias-long",
        "bias-budget-long",
        "bias-f1-long",
        "bias-f1-budget-long",
        "reweight-wd-long",
        "uniform-wd-long",
    ];
    keys.push("sweep-p1".into());
    keys.extend(long.map(String::from));
    for key in &keys {
        let seeds: Vec<u64> =
            r.methods.iter().filter(|m| m.method.as_deref() == Some(key)).filter_map(|m| m.seed).collect();
        assert_eq!(seeds, vec![0, 1], "method {key}");
    }
    assert_eq!(r.methods.len(), keys.len() * 2);
    for m in &r.methods {
        let val = m.val.as_ref().unwrap_or_else(|| panic!("{}: no validation metrics", m.name));
        assert_eq!(val.support.iter().sum::<u64>(), 40, "{}", m.name);
        assert_eq!(m.test.support.iter().sum::<u64>(), 100);
        assert_eq!(m.bias.is_some(), m.method.as_deref().unwrap().starts_with("bias"), "{}", m.name);
    }
    // Uniform weights where they must be, and the practitioner's variant labelled.
    for m in r.methods.iter().filter(|m| {
        matches!(m.method.as_deref(), Some("uniform" | "uniform-wd" | "uniform-wd-long" | "bias" | "bias-budget"))
    }) {
        assert!(m.class_weights.iter().all(|&w| w == 1.0), "{}", m.name);
    }
    assert!(r.methods.iter().any(|m| m.name.contains("TEST recall")));
    // --long-epochs 2 trains every long method (the weight-decay ones too) for 2 epochs, the rest
    // for 1 (the bias methods train nothing: they reuse a uniform model; nor does crt, which
    // retrains only a uniform model's last layer and logs no epoch of the network).
    for m in r.methods.iter().filter(|m| m.bias.is_none()) {
        if m.method.as_deref() == Some("crt") {
            assert!(m.epochs.is_empty(), "{}", m.name);
            continue;
        }
        let want = if long.contains(&m.method.as_deref().unwrap()) { 2 } else { 1 };
        assert_eq!(m.epochs.len(), want, "{}", m.name);
    }
    let regimes: Vec<&str> =
        r.diagnostics["regime"].as_array().unwrap().iter().map(|g| g["regime"].as_str().unwrap()).collect();
    assert_eq!(regimes, ["short", "long", "short-wd", "long-wd"]);
    // The bias maximizes the worst validation recall of the uniform model it was fitted on.
    for seed in [0, 1] {
        let get = |k: &str| r.methods.iter().find(|m| m.method.as_deref() == Some(k) && m.seed == Some(seed)).unwrap();
        let (u, b, bb) = (get("uniform"), get("bias"), get("bias-budget"));
        assert_eq!(b.model, u.model);
        let (uv, bv, bbv) = (u.val.as_ref().unwrap(), b.val.as_ref().unwrap(), bb.val.as_ref().unwrap());
        assert!(bv.worst_recall() >= uv.worst_recall());
        // Within its budget (1 point by default) of validation accuracy, and never past max-min.
        assert!(bbv.accuracy >= uv.accuracy - 0.01 - 1e-12, "{} vs {}", bbv.accuracy, uv.accuracy);
        assert!(bbv.worst_recall() >= uv.worst_recall() && bbv.worst_recall() <= bv.worst_recall());
    }
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    for m in &r.methods {
        assert!(md.contains(&format!("| {} | 2 |", m.name)), "comparison.md lacks {}", m.name);
    }
    let csv = std::fs::read_to_string(out.join("comparison.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + keys.len() * 8, "one row per method and metric");
    assert!(std::fs::read(out.join("methods.png")).unwrap().starts_with(b"\x89PNG"));
    for k in ["fit", "gradient", "exponent_sweep", "regime"] {
        assert!(r.diagnostics[k].as_array().is_some_and(|a| !a.is_empty()), "diagnostics.{k}");
    }
    assert_eq!(r.diagnostics["exponent_sweep"].as_array().unwrap().len(), 3, "p = 0, 1 and 4");
}

/// On data with one hard pair of classes (3 and 5 look alike), the online rules give the hard
/// classes the largest weights, and the post-hoc bias equalizes validation recall better than
/// no bias.
#[test]
fn online_weights_rise_for_the_hard_classes() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("cifar");
    write_hard_class_cifar(&data, 200, 200);
    let out = t.path().join("out");
    let flags = [
        "--data-dir",
        data.to_str().unwrap(),
        "--compare",
        "--seeds",
        "1",
        "--methods",
        "online-dro,online-difficulty,drw,bias",
        "--train-subset",
        "1000",
        "--val-size",
        "100",
        "--test-subset",
        "200",
        "--epochs",
        "8",
        "--width",
        "4",
        "--eg-step",
        "1",
        "--tau",
        "0.5",
    ];
    assert_eq!(run(&out, &flags).unwrap(), Ended::Finished);
    let r = evenclass::report::read_report(out.join("report.json")).unwrap();
    let uniform = r.methods.iter().find(|m| m.method.as_deref() == Some("uniform")).unwrap();
    let val = uniform.val.as_ref().unwrap();
    let hard = [3usize, 5];
    let easy_worst = (0..10).filter(|c| !hard.contains(c)).map(|c| val.recall[c]).fold(1.0, f64::min);
    assert!(val.recall[3].min(val.recall[5]) < easy_worst, "the data must make 3 and 5 hard: {:?}", val.recall);
    for key in ["online-dro", "online-difficulty"] {
        let m = r.methods.iter().find(|m| m.method.as_deref() == Some(key)).unwrap();
        let first = &m.epochs[0].class_weights;
        assert!(first.iter().all(|&w| w == 1.0), "{key} starts uniform");
        // The rules react to the model of the moment (the difficulty rule is memoryless, so the
        // weight moves between 3 and 5 as the model swaps them), so average the last 4 epochs.
        let tail = &m.epochs[m.epochs.len() - 4..];
        let mean: Vec<f64> = (0..10).map(|c| tail.iter().map(|e| e.class_weights[c]).sum::<f64>() / 4.0).collect();
        let mut order: Vec<usize> = (0..10).collect();
        order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]));
        assert!(
            hard.contains(&order[0]) && hard.contains(&order[1]),
            "{key}: mean weights of the last epochs {mean:?}"
        );
        let last = &m.epochs.last().unwrap().class_weights;
        assert_eq!(m.class_weights, *last, "{key}: the method reports the last epoch's weights");
    }
    // DRW (8 epochs: the last 2 reweighted) weights a hard class highest from epoch 7 on.
    let drw = r.methods.iter().find(|m| m.method.as_deref() == Some("drw")).unwrap();
    let w = &drw.class_weights;
    let top = (0..10).max_by(|&a, &b| w[a].total_cmp(&w[b])).unwrap();
    assert!(hard.contains(&top), "drw: weights {w:?}");
    let bias = r.methods.iter().find(|m| m.method.as_deref() == Some("bias")).unwrap();
    let b = bias.val.as_ref().unwrap();
    assert!(b.worst_recall() >= val.worst_recall(), "{} < {}", b.worst_recall(), val.worst_recall());
    assert!(b.recall_spread() <= val.recall_spread() + 1e-12);
}

/// drw trains uniform weights for exactly E - K epochs, then the weights (mean(r)/r_c)^p of its
/// own validation recall for the last K, unchanged to the end; K defaults to the last fifth
/// (rounded up) and enters the run's configuration only when drw is among the methods.
#[test]
fn drw_is_uniform_for_e_minus_k_epochs_then_reweighted() {
    let t = tempfile::tempdir().unwrap();
    for (k_flag, k) in [(None, 2), (Some("3"), 3)] {
        let out = t.path().join(format!("out-{k}"));
        let mut flags = vec!["--synthetic", "--compare", "--seeds", "1", "--methods", "drw", "--epochs", "6"];
        flags.extend(["--train-subset", "300", "--val-size", "100"]);
        if let Some(v) = k_flag {
            flags.extend(["--drw-epochs", v]);
        }
        let (r, _) = run_report(&out, &flags);
        let drw = r.methods.iter().find(|m| m.method.as_deref() == Some("drw")).unwrap();
        assert_eq!(drw.epochs.len(), 6);
        for (i, e) in drw.epochs.iter().enumerate() {
            let uniform = e.class_weights.iter().all(|&w| w == 1.0);
            assert_eq!(uniform, i < 6 - k, "K {k}, epoch {}: {:?}", i + 1, e.class_weights);
            if i >= 6 - k {
                assert_eq!(e.class_weights, drw.class_weights, "K {k}: one set of weights to the end");
            }
        }
        // (mean(r)/r_c)^p with p = 4: r_c is proportional to w_c^(-1/4). The validation split
        // holds 10 images of each class (a class with none correct counts as one), so
        // r_c / r_max = n_c / n_max with whole n_c, n_max in [1, 10]: some n_max makes every
        // ratio whole (tolerance 1e-4: the weights passed through f32, 7 digits).
        let w = &drw.class_weights;
        assert!(w.iter().all(|w| w.is_finite() && *w > 0.0) && w.iter().any(|&x| x != w[0]), "{w:?}");
        let roots: Vec<f64> = w.iter().map(|w| w.powf(-0.25)).collect();
        let top = roots.iter().copied().fold(0.0, f64::max);
        let whole = |n: f64| roots.iter().all(|r| (r / top * n - (r / top * n).round()).abs() < 1e-4);
        assert!((1..=10).any(|n| whole(n as f64)), "K {k}: {w:?} are not (mean(r)/r_c)^4 of a recall");
        assert_eq!(r.config["compare"]["drw_epochs"], k, "{}", r.config);
        assert!(drw.name.contains(&format!("last {k} ep")), "{}", drw.name);
    }
    // Without drw, the configuration has no drw_epochs (earlier runs' configurations stay valid).
    let (r, _) = run_report(
        &t.path().join("none"),
        &["--synthetic", "--compare", "--seeds", "1", "--methods", "null", "--epochs", "1"],
    );
    assert!(r.config["compare"].get("drw_epochs").is_none(), "{}", r.config);
}

/// vs-loss and cdt train the run's epochs with the logit adjustment derived from stage 1's
/// validation recall, which changes the trained model (so the adjustment reached the loss);
/// their parameters enter the configuration only when their method runs. Interrupted after
/// every step and resumed each time, they publish the same results as an uninterrupted run
/// (the resumed run derives the same adjustment and the checkpoint holds it).
#[test]
fn vs_loss_and_cdt_train_from_stage1_recall_and_resume_to_the_same_results() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let flags = [
        "--synthetic",
        "--compare",
        "--seeds",
        "1",
        "--methods",
        "vs-loss,cdt",
        "--vs-gamma",
        "0.5",
        "--cdt-gamma",
        "0.5",
        "--train-subset",
        "150",
        "--val-size",
        "20",
    ];
    assert_eq!(run_interrupted(&out, &flags).unwrap(), Ended::Stopped);
    let resume = [&flags[..], &["--resume"]].concat();
    let mut stops = 1;
    while run_interrupted(&out, &resume).unwrap() == Ended::Stopped {
        stops += 1;
        assert!(stops < 40, "never finished");
    }
    assert!(stops >= 3, "{stops} interruptions");
    assert_one_run(&out);
    let fresh = t.path().join("fresh");
    run(&fresh, &flags).unwrap();
    let (a, b) = (
        evenclass::report::read_report(out.join("report.json")).unwrap(),
        evenclass::report::read_report(fresh.join("report.json")).unwrap(),
    );
    let keys: Vec<_> = a.methods.iter().map(|m| m.method.clone().unwrap_or_default()).collect();
    assert_eq!(keys, ["uniform", "vs-loss", "cdt"]);
    let c = &a.config["compare"];
    assert_eq!(
        (c["vs_gamma"].as_f64(), c["vs_tau"].as_f64(), c["cdt_gamma"].as_f64()),
        (Some(0.5), Some(1.25), Some(0.5))
    );
    let uniform = &a.methods[0];
    for m in &a.methods[1..] {
        assert_eq!(m.epochs.len(), uniform.epochs.len(), "{}", m.name);
        // Same seed, same uniform class weights: only the loss's logit adjustment differs, and
        // it changed the training (the per-epoch training loss is of the adjusted logits).
        assert!(m.class_weights.iter().all(|&w| w == 1.0), "{}: {:?}", m.name, m.class_weights);
        assert_ne!(m.epochs[0].train_loss, uniform.epochs[0].train_loss, "{}", m.name);
    }
    for (x, y) in a.methods.iter().zip(&b.methods) {
        assert_eq!((&x.name, &x.class_weights), (&y.name, &y.class_weights));
        assert_eq!((&x.test, &x.val), (&y.test, &y.val), "{}", x.name);
        let loss =
            |r: &evenclass::report::StageReport| r.epochs.iter().map(|e| e.train_loss.to_bits()).collect::<Vec<_>>();
        assert_eq!(loss(x), loss(y), "{}: training losses bit for bit", x.name);
    }
    // Without them, none of their parameters enters the configuration.
    let (r, _) = run_report(
        &t.path().join("none"),
        &["--synthetic", "--compare", "--seeds", "1", "--methods", "null", "--epochs", "1"],
    );
    for key in ["vs_gamma", "vs_tau", "cdt_gamma"] {
        assert!(r.config["compare"].get(key).is_none(), "{}", r.config);
    }
}

/// The state tensors of a model file of the run in `out`.
fn model_state(out: &Path, report: &Report, file: &str) -> Vec<Vec<u32>> {
    let be = CpuBackend::new();
    let config = serde_json::from_value(report.config["model"].clone()).unwrap();
    let mut model = evenclass::train::Model::new(&be, config, 8, 0).unwrap();
    evenclass::train::load_model(&out.join(file), &mut model, &be).unwrap();
    let state = model.state(&be).unwrap();
    state.iter().map(|t| t.iter().map(|x| x.to_bits()).collect()).collect()
}

/// crt end to end: its model is stage 1's (the uniform training's) bit for bit but for the
/// final linear layer, retrained with reweight's weights; `--crt-epochs` enters the run's
/// configuration only when crt runs, and is refused without --compare or out of range.
#[test]
fn crt_retrains_only_stage_1s_last_layer() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let flags = ["--synthetic", "--compare", "--seeds", "1", "--methods", "crt,reweight", "--crt-epochs", "3"];
    let (r, d) = run_report(&out, &flags);
    assert_fits_80_columns(&r, d.as_ref());
    let crt = r.methods.iter().find(|m| m.method.as_deref() == Some("crt")).unwrap();
    let rw = r.methods.iter().find(|m| m.method.as_deref() == Some("reweight")).unwrap();
    assert_eq!(crt.class_weights, rw.class_weights, "crt uses reweight's weights");
    assert!(crt.class_weights.iter().any(|&w| w != 1.0), "{:?}", crt.class_weights);
    assert_eq!(r.config["compare"]["crt_epochs"], 3, "{}", r.config);
    let key = crt.model.as_deref().unwrap();
    let base = r.methods.iter().find(|m| m.method.as_deref() == Some("uniform")).unwrap();
    let (a, b) = (
        model_state(&out, &r, &format!("{key}.safetensors")),
        model_state(&out, &r, &format!("{}.safetensors", base.model.as_deref().unwrap())),
    );
    let k = a.len() - 2;
    assert_eq!(a[..k], b[..k], "a frozen layer differs from stage 1's");
    assert!(a[k] != b[k] && a[k + 1] != b[k + 1], "the last layer was not retrained");
    // Without crt, no crt_epochs; the flag alone, or out of range, is a usage error.
    let (r, _) = run_report(&t.path().join("none"), &["--synthetic", "--compare", "--seeds", "1", "--methods", "null"]);
    assert!(r.config["compare"].get("crt_epochs").is_none(), "{}", r.config);
    for bad in [&["--synthetic", "--crt-epochs", "3"][..], &["--synthetic", "--compare", "--crt-epochs", "0"][..]] {
        let e = run(&t.path().join("bad"), bad).unwrap_err();
        assert!(is_usage(&e) && e.to_string().contains("--crt-epochs"), "{bad:?}: {e}");
    }
}

/// A compare run interrupted after every step and resumed each time publishes the same
/// results as an uninterrupted one (online weights and the fitted bias included).
#[test]
fn compare_interrupted_at_every_step_resumes_to_the_same_results() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let flags = [
        "--synthetic",
        "--compare",
        "--seeds",
        "1",
        "--methods",
        "bias,online-eg,online-difficulty,drw,crt",
        "--cdb-dynamic",
        "--train-subset",
        "150",
        "--val-size",
        "20",
    ];
    assert_eq!(run_interrupted(&out, &flags).unwrap(), Ended::Stopped);
    let resume = [&flags[..], &["--resume"]].concat();
    let mut stops = 1;
    while run_interrupted(&out, &resume).unwrap() == Ended::Stopped {
        stops += 1;
        assert!(stops < 40, "never finished");
    }
    assert!(stops >= 6, "{stops} interruptions");
    assert_one_run(&out);
    let fresh = t.path().join("fresh");
    run(&fresh, &flags).unwrap();
    let (a, b) = (
        evenclass::report::read_report(out.join("report.json")).unwrap(),
        evenclass::report::read_report(fresh.join("report.json")).unwrap(),
    );
    assert_eq!(a.methods.len(), 6);
    // The rules changed the weights (so that the comparison below compares something).
    for key in ["online-dro", "online-difficulty", "drw", "crt"] {
        let m = a.methods.iter().find(|m| m.method.as_deref() == Some(key)).unwrap();
        assert!(m.class_weights.iter().any(|&w| w != 1.0), "{key}: {:?}", m.class_weights);
    }
    for (x, y) in a.methods.iter().zip(&b.methods) {
        assert_eq!((&x.name, &x.class_weights, &x.bias), (&y.name, &y.class_weights, &y.bias));
        assert_eq!((&x.test, &x.val), (&y.test, &y.val), "{}", x.name);
    }
    // crt, redone from stage 1's saved model on resume, is bit-identical.
    let crt = a.methods.iter().find(|m| m.method.as_deref() == Some("crt")).unwrap();
    let file = format!("{}.safetensors", crt.model.as_deref().unwrap());
    assert!(std::fs::read(out.join(&file)).unwrap() == std::fs::read(fresh.join(&file)).unwrap(), "{file} differs");
}

/// Bad validation splits and flag combinations are usage errors before any training.
#[test]
fn bad_validation_split_or_compare_flags_are_errors_before_training() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let cases: &[(&[&str], &str)] = &[
        (&["--synthetic", "--val-size", "256"], "leaves nothing to train on"),
        (&["--synthetic", "--val-size", "300"], "leaves nothing to train on"),
        (&["--synthetic", "--val-size", "5"], "class"),
        (&["--synthetic", "--compare", "--val-size", "0"], "--val-size must be > 0"),
        (&["--synthetic", "--val-size", "0"], "--weights-from test"),
        (&["--synthetic", "--seeds", "2"], "--seeds only applies with --compare"),
        (&["--synthetic", "--sweep", "1,2"], "--sweep only applies with --compare"),
        (&["--synthetic", "--methods", "reweight"], "--methods only applies with --compare"),
        // Given at all, even at its default value: the value would be ignored.
        (&["--synthetic", "--rounds", "3"], "--rounds only applies with --compare"),
        (&["--synthetic", "--tau", "2"], "--tau only applies with --compare"),
        (&["--synthetic", "--eg-step", "0.5"], "--eg-step only applies with --compare"),
        (&["--synthetic", "--drw-epochs", "1"], "--drw-epochs only applies with --compare"),
        (&["--synthetic", "--cdb-dynamic"], "--cdb-dynamic only applies with --compare"),
        (&["--synthetic", "--compare", "--cdb-dynamic", "--tau", "2"], "--cdb-dynamic cannot be used with --tau"),
        (&["--synthetic", "--compare", "--epochs", "3", "--drw-epochs", "0"], "--drw-epochs 0: out of range"),
        (&["--synthetic", "--compare", "--epochs", "3", "--drw-epochs", "3"], "from 1 to 2"),
        (&["--synthetic", "--compare", "--epochs", "1", "--drw-epochs", "1"], "drw needs --epochs 2"),
        (&["--synthetic", "--strong-wd", "0.01"], "--strong-wd only applies with --compare"),
        (&["--synthetic", "--bias-budget", "2"], "--bias-budget only applies with --compare"),
        (&["--synthetic", "--vs-gamma", "0.1"], "--vs-gamma only applies with --compare"),
        (&["--synthetic", "--vs-tau", "1"], "--vs-tau only applies with --compare"),
        (&["--synthetic", "--cdt-gamma", "0.1"], "--cdt-gamma only applies with --compare"),
        (&["--synthetic", "--compare", "--vs-gamma", "-0.1"], "--vs-gamma -0.1: must be a finite number in [0, 4]"),
        (&["--synthetic", "--compare", "--vs-tau", "5"], "--vs-tau 5: must be a finite number in [0, 4]"),
        (&["--synthetic", "--compare", "--cdt-gamma", "NaN"], "--cdt-gamma NaN: must be a finite number"),
    ];
    for (flags, want) in cases {
        let e = run(&out, flags).unwrap_err();
        assert!(is_usage(&e), "{flags:?}: not a usage error: {e:#}");
        assert!(format!("{e:#}").contains(want), "{flags:?}: {e:#}");
        assert!(!out.exists() || snapshot(&out).is_empty(), "{flags:?} wrote {:?}", snapshot(&out));
        let staging = t.path().join(".out.partial");
        assert!(
            !staging.join("checkpoints").exists()
                || std::fs::read_dir(staging.join("checkpoints")).unwrap().next().is_none()
        );
    }
    // --val-size 0 works with the practitioner's test-recall weights.
    assert_eq!(run(&out, &["--synthetic", "--val-size", "0", "--weights-from", "test"]).unwrap(), Ended::Finished);
    let r = evenclass::report::read_report(out.join("report.json")).unwrap();
    assert!(r.stages[1].name.contains("TEST"), "{}", r.stages[1].name);
    assert!(r.stages.iter().all(|s| s.val.is_none()));
}

/// Without --val-size the validation split is a tenth of the training images, at most 5,000:
/// a small --train-subset works without it.
#[test]
fn the_validation_split_defaults_to_a_tenth_of_the_training_images() {
    assert_eq!(experiment::default_val_size(50_000), 5000);
    assert_eq!(experiment::default_val_size(60_000), 5000);
    assert_eq!(experiment::default_val_size(1000), 100);
    assert_eq!(experiment::default_val_size(256), 25);
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let mut spec = spec(&out, &["--synthetic", "--epochs", "1"]);
    spec.val_size = None;
    let opts = RunOptions { quiet: true, ..Default::default() };
    let RunOutcome::Finished { report, .. } = experiment::run(&CpuBackend::new(), &spec, &opts).unwrap() else {
        panic!("stopped")
    };
    assert_eq!(report.config["val_images"], 25);
    assert_eq!(report.config["train_images"], 256 - 25);
    assert_eq!(report.stages[0].val.as_ref().unwrap().support.iter().sum::<u64>(), 25);
    assert_fits_80_columns(&report, None);
}

/// A validation split that cannot be made is refused with a size that works.
#[test]
fn a_bad_validation_size_suggests_one_that_works() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    for bad in ["256", "255", "5", "3"] {
        let e = run(&out, &["--synthetic", "--val-size", bad]).unwrap_err();
        assert!(e.is_usage(), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("--val-size {bad}:")), "{msg}");
        assert!(msg.contains("try --val-size 25 (a tenth of the 256 training images"), "{msg}");
    }
    // The suggestion works.
    assert_eq!(run(&out, &["--synthetic", "--val-size", "25", "--epochs", "1"]).unwrap(), Ended::Finished);
}

/// The null row is uniform trained with another seed (`null_seed`) on the run's one split, and is
/// paired with the seed it is the null of; its results differ from uniform's (another training).
#[test]
fn null_row_is_uniform_with_another_training_seed() {
    let spec = ExperimentSpec {
        compare: true,
        seed: 3,
        comparison: experiment::CompareSpec {
            methods: Some(vec![evenclass::methods::Method::Null]),
            seeds: Some(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let (stages, methods) = experiment::stages(&spec);
    let null: Vec<_> = stages.iter().filter(|s| s.key.ends_with("-null")).map(|s| (s.key.as_str(), s.seed)).collect();
    assert_eq!(null, vec![("s3-null", experiment::null_seed(3)), ("s4-null", experiment::null_seed(4))]);
    assert!(stages.iter().filter(|s| !s.key.ends_with("-null")).all(|s| [3, 4].contains(&s.seed)));
    let rows: Vec<_> = methods.iter().filter(|m| m.id.to_string() == "null").map(|m| m.seed).collect();
    assert_eq!(rows, vec![3, 4]);

    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let flags = ["--synthetic", "--compare", "--methods", "null", "--seeds", "2", "--epochs", "1"];
    run_report(&out, &flags);
    let r = evenclass::report::read_report(out.join("report.json")).unwrap();
    let entry = |key: &str, seed: u64| {
        r.methods.iter().find(|m| m.method.as_deref() == Some(key) && m.seed == Some(seed)).unwrap().clone()
    };
    for seed in [0, 1] {
        let (u, n) = (entry("uniform", seed), entry("null", seed));
        assert_eq!(n.model.as_deref(), Some(format!("s{seed}-null").as_str()));
        assert_ne!(u.test.confusion, n.test.confusion, "seed {seed}: null trained like uniform");
        assert_eq!(u.val.as_ref().unwrap().support, n.val.as_ref().unwrap().support, "another split");
    }
    let csv = std::fs::read_to_string(out.join("intervals.csv")).unwrap();
    assert!(csv.lines().any(|l| l.contains(",uniform,null,") && l.contains(",f1_spread,2,")), "{csv}");
}

/// Every file `--resume` and `--stage2-only` read back, truncated, bit-flipped or replaced by
/// another run's, is refused with an error that names it, and the run folder is left as it was:
/// the checkpoint checks its own checksum, the finished trainings' files are checked against the
/// checksums the manifest recorded when they were written.
#[test]
fn corrupted_files_are_refused_naming_them() {
    type Damage = fn(&[u8], &[u8]) -> Vec<u8>;
    let damages: [(&str, Damage); 3] = [
        ("truncated", |b, _| b[..b.len() / 2].to_vec()),
        ("bit-flipped", |b, _| {
            let mut v = b.to_vec();
            let i = v.len() * 3 / 4;
            v[i] ^= 0x10;
            v
        }),
        ("another run's", |_, other| other.to_vec()),
    ];
    let t = tempfile::tempdir().unwrap();
    // Another run's files, with another seed: same names, other contents.
    let other = t.path().join("other");
    assert_eq!(run_interrupted(&other, &["--synthetic", "--seed", "9"]).unwrap(), Ended::Stopped);
    let other_ck = std::fs::read(t.path().join(".other.partial/checkpoints/stage1.ckpt")).unwrap();
    let other_done = t.path().join("other-done");
    run(&other_done, &["--synthetic", "--seed", "9"]).unwrap();

    // The checkpoint of an interrupted run.
    for (what, damage) in damages {
        let out = t.path().join(format!("ck-{}", what.replace(' ', "-").replace('\'', "")));
        assert_eq!(run_interrupted(&out, &["--synthetic"]).unwrap(), Ended::Stopped);
        let ck = out
            .with_file_name(format!(".{}.partial/checkpoints/stage1.ckpt", out.file_name().unwrap().to_str().unwrap()));
        let good = std::fs::read(&ck).unwrap();
        std::fs::write(&ck, damage(&good, &other_ck)).unwrap();
        let e = run(&out, &["--synthetic", "--resume"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&ck.display().to_string()), "{what} checkpoint: {msg}");
        assert!(!is_usage(&e), "{what} checkpoint: a data error, exit status 1: {msg}");
        std::fs::write(&ck, &good).unwrap();
        assert_eq!(run(&out, &["--synthetic", "--resume"]).unwrap(), Ended::Finished, "{what}: intact again");
    }

    // The files --stage2-only reads from a finished run.
    for name in ["stage1.json", "stage1.safetensors"] {
        for (what, damage) in damages {
            let out = t.path().join(format!("s2-{name}-{}", what.replace(' ', "-").replace('\'', "")));
            run(&out, &["--synthetic"]).unwrap();
            let path = out.join(name);
            let good = std::fs::read(&path).unwrap();
            let before = std::fs::read(out.join(MANIFEST)).unwrap();
            std::fs::write(&path, damage(&good, &std::fs::read(other_done.join(name)).unwrap())).unwrap();
            let e = run(&out, &["--synthetic", "--stage2-only", "--exponent", "2", "--overwrite"]).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()) && msg.contains("corrupted"), "{what} {name}: {msg}");
            assert_eq!(std::fs::read(out.join(MANIFEST)).unwrap(), before, "{what} {name}: the run was changed");
            assert!(!out.with_file_name(format!(".{}.partial", out.file_name().unwrap().to_str().unwrap())).exists());
        }
    }

    // The manifest itself, of a finished run (--stage2-only) and of an interrupted one (--resume).
    for (what, damage) in damages {
        let tag = what.replace(' ', "-").replace('\'', "");
        let out = t.path().join(format!("m-done-{tag}"));
        run(&out, &["--synthetic"]).unwrap();
        let path = out.join(MANIFEST);
        let good = std::fs::read(&path).unwrap();
        let flipped = damage(&good, &std::fs::read(other_done.join(MANIFEST)).unwrap());
        std::fs::write(&path, &flipped).unwrap();
        let e = run(&out, &["--synthetic", "--stage2-only", "--exponent", "2", "--overwrite"]).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{what} manifest: {e}");
        assert_eq!(std::fs::read(&path).unwrap(), flipped, "{what} manifest: the run was changed");

        let out = t.path().join(format!("m-stopped-{tag}"));
        assert_eq!(run_interrupted(&out, &["--synthetic"]).unwrap(), Ended::Stopped);
        let path = t.path().join(format!(".m-stopped-{tag}.partial")).join(MANIFEST);
        let good = std::fs::read(&path).unwrap();
        let other = std::fs::read(t.path().join(".other.partial").join(MANIFEST)).unwrap();
        std::fs::write(&path, damage(&good, &other)).unwrap();
        let e = run(&out, &["--synthetic", "--resume"]).unwrap_err();
        assert!(
            e.to_string().contains(&path.display().to_string()) || e.to_string().contains("does not belong"),
            "{what} manifest: {e}"
        );
    }

    // A finished training's file in an interrupted comparison: checked before it is reused.
    let out = t.path().join("cmp");
    let flags = ["--synthetic", "--compare", "--methods", "uniform,reweight", "--seeds", "1"];
    let mut stops = 0;
    assert_eq!(run_interrupted(&out, &[&flags[..], &["--overwrite"]].concat()).unwrap(), Ended::Stopped);
    let partial = t.path().join(".cmp.partial");
    let resume = [&flags[..], &["--resume"]].concat();
    while !partial.join("s0-uniform.json").exists() {
        assert_eq!(run_interrupted(&out, &resume).unwrap(), Ended::Stopped);
        stops += 1;
        assert!(stops < 100, "uniform never finished");
    }
    let path = partial.join("s0-uniform.json");
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    let e = run(&out, &resume).unwrap_err();
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    std::fs::write(&path, &good).unwrap();
    assert_eq!(run(&out, &resume).unwrap(), Ended::Finished);
}

// ---- corrupted files, at random ----

/// Damaged files that `random_corruptions_are_refused_naming_the_file` tries; the environment
/// variable `EVENCLASS_CORRUPTION_CASES` sets another count for a longer campaign
/// (`scripts/corruption.sh`), `EVENCLASS_CORRUPTION_SEED` another seed.
const CORRUPTION_CASES: usize = 40;

/// How a file is damaged.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Cut to a random length (none to all but one byte).
    Truncated,
    /// One random bit of one random byte flipped.
    BitFlipped,
    /// The file of another run of the same command (same configuration and data): only the
    /// run's identity tells them apart.
    Twin,
    /// The file of a run with another seed.
    OtherSeed,
}

/// Random damage to a random file that `--resume` (an interrupted run's manifest and checkpoint)
/// or `--stage2-only` (a finished run's manifest, `stage1.json` with its epoch log, and model)
/// reads: refused with an error naming the file, exit status 1 (2 only for another seed's
/// manifest, which reads as a resume with other flags and names each flag that differs), no
/// panic, and the run folder unchanged. Damage that leaves what the file says unchanged (the same
/// bytes, or a manifest or checkpoint that reads back equal) is counted apart: nothing to refuse.
#[test]
fn random_corruptions_are_refused_naming_the_file() {
    use evenclass::train::Checkpoint;
    use rand::RngExt;
    use std::collections::BTreeMap;
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok());
    let cases = env("EVENCLASS_CORRUPTION_CASES").unwrap_or(CORRUPTION_CASES);
    let seed = env("EVENCLASS_CORRUPTION_SEED").unwrap_or(1) as u64;
    let mut r = rand_pcg::Pcg64::new(0xc0ff_ee00 ^ u128::from(seed), 0x5851_f42d_4c95_7f2d);
    let t = tempfile::tempdir().unwrap();
    let partial = |out: &Path| out.with_file_name(format!(".{}.partial", out.file_name().unwrap().to_str().unwrap()));
    // (interrupted run, finished run) for: the runs damaged, their twins, another seed's.
    let pair = |name: &str, extra: &[&str]| {
        let flags = [&["--synthetic"], extra].concat();
        let stopped = t.path().join(format!("{name}-stopped"));
        assert_eq!(run_interrupted(&stopped, &flags).unwrap(), Ended::Stopped);
        let done = t.path().join(format!("{name}-done"));
        run(&done, &flags).unwrap();
        (partial(&stopped), done, stopped)
    };
    let (stopped, done, stopped_out) = pair("run", &[]);
    let twin = pair("twin", &[]);
    let other = pair("other", &["--seed", "9"]);
    let targets: [(bool, &str); 5] = [
        (true, MANIFEST),
        (true, "checkpoints/stage1.ckpt"),
        (false, MANIFEST),
        (false, "stage1.json"),
        (false, "stage1.safetensors"),
    ];
    let damages = [Damage::Truncated, Damage::BitFlipped, Damage::Twin, Damage::OtherSeed];
    // What a reader takes from a file, to tell harmless damage (None: unreadable).
    let probe = t.path().join("probe");
    let reads_as = |rel: &str, bytes: &[u8]| -> Option<String> {
        std::fs::write(&probe, bytes).unwrap();
        if rel == MANIFEST {
            read_manifest(&probe).ok().map(|m| format!("{m:?}"))
        } else if rel.ends_with(".ckpt") {
            Checkpoint::load(&probe).ok().map(|c| format!("{:?}", (c.meta, c.state, c.optim, c.order)))
        } else {
            None
        }
    };
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut examples: BTreeMap<String, String> = BTreeMap::new();
    let mut harmless = 0;
    for case in 0..cases {
        let (interrupted, rel) = targets[r.random_range(0..targets.len())];
        let damage = damages[r.random_range(0..damages.len())];
        let (folder, twin_folder, other_folder) =
            if interrupted { (&stopped, &twin.0, &other.0) } else { (&done, &twin.1, &other.1) };
        let path = folder.join(rel);
        let good = std::fs::read(&path).unwrap();
        let bad = match damage {
            Damage::Truncated => good[..r.random_range(0..good.len())].to_vec(),
            Damage::BitFlipped => {
                let mut v = good.clone();
                let i = r.random_range(0..v.len());
                v[i] ^= 1 << r.random_range(0..8);
                v
            }
            Damage::Twin => std::fs::read(twin_folder.join(rel)).unwrap(),
            Damage::OtherSeed => std::fs::read(other_folder.join(rel)).unwrap(),
        };
        if bad == good || reads_as(rel, &bad).is_some_and(|b| Some(b) == reads_as(rel, &good)) {
            harmless += 1;
            continue;
        }
        let what = format!("case {case}: {damage:?} {}", path.display());
        std::fs::write(&path, &bad).unwrap();
        let before = snapshot(folder);
        let result = if interrupted {
            run(&stopped_out, &["--synthetic", "--resume"])
        } else {
            run(&done, &["--synthetic", "--stage2-only", "--exponent", "2", "--overwrite"])
        };
        let e = match result {
            Ok(ended) => panic!("{what}: accepted ({ended:?})"),
            Err(e) => e,
        };
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{what}: the error does not name the file: {msg}");
        let usage_allowed = rel == MANIFEST && matches!(damage, Damage::OtherSeed);
        assert!(!is_usage(&e) || usage_allowed, "{what}: a usage error (exit status 2): {msg}");
        assert!(snapshot(folder) == before, "{what}: the run folder was changed");
        assert!(interrupted || !partial(&done).exists(), "{what}: a run folder was started");
        std::fs::write(&path, &good).unwrap();
        let key = format!("{} {rel} {damage:?}", if interrupted { "interrupted" } else { "finished" });
        *refused.entry(key.clone()).or_default() += 1;
        examples.entry(key).or_insert(msg);
    }
    eprintln!("corruption: {cases} cases (seed {seed}): {harmless} harmless, refused: {refused:?}");
    for (key, msg) in &examples {
        eprintln!("corruption: {key}: {}", msg.lines().next().unwrap_or_default());
    }
    assert!(refused.values().sum::<usize>() * 2 >= cases, "most damage is not harmless: {refused:?}");
    // The files put back, the runs go on: the refusals came from the damage.
    assert_eq!(run(&stopped_out, &["--synthetic", "--resume"]).unwrap(), Ended::Finished);
    run(&done, &["--synthetic", "--stage2-only", "--exponent", "2", "--overwrite"]).unwrap();
}

// ---- the command line: exit statuses and the lock file after Ctrl-C ----

/// The example's binary: `cargo test` builds it (`--test run` alone does not: `cargo build
/// --release --examples` first).
fn cifar10_bin() -> PathBuf {
    // The test binary is target/<profile>/deps/run-HASH; examples live beside deps/.
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe.parent().and_then(Path::parent).expect("target/<profile>").join("examples/cifar10");
    assert!(bin.is_file(), "{} is not built: cargo build --release --examples", bin.display());
    bin
}

/// `cifar10 --synthetic --out OUT` with TINY's flags (except those `extra` sets) and `extra`,
/// started with its output captured in files (read them after it ends).
fn spawn_cifar10(out: &Path, extra: &[&str]) -> std::process::Child {
    let mut cmd = std::process::Command::new(cifar10_bin());
    cmd.args(["--synthetic", "--quiet", "--out"]).arg(out);
    for (flag, value) in TINY {
        if !extra.contains(flag) {
            cmd.args([flag, value]);
        }
    }
    let log = |name: &str| std::fs::File::create(out.with_extension(name)).unwrap();
    cmd.args(extra).stdout(log("stdout")).stderr(log("stderr")).spawn().expect("start cifar10")
}

/// Waits (at most 300 s) for `child`; its exit status and standard error.
fn wait_cifar10(out: &Path, child: &mut std::process::Child) -> (Option<i32>, String) {
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed().as_secs() > 300 {
            let _ = child.kill();
            panic!("cifar10 on {} still running after 300 s", out.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(out.with_extension("stderr")).unwrap();
    assert!(!stderr.contains("panicked"), "cifar10 panicked:\n{stderr}");
    (status.code(), stderr)
}

fn cifar10_cli(out: &Path, extra: &[&str]) -> (Option<i32>, String) {
    wait_cifar10(out, &mut spawn_cifar10(out, extra))
}

/// Sends SIGINT (a Ctrl-C) to `child`; whether it was still there to receive it.
fn interrupt(child: &std::process::Child) -> bool {
    let mut kill = std::process::Command::new("kill");
    kill.args(["-INT", &child.id().to_string()]).stderr(std::process::Stdio::null());
    kill.status().unwrap().success()
}

/// What a user sees: a damaged file is exit status 1 with one error line naming it, a flag
/// misused is exit status 2, never a panic; Ctrl-C, once (stop after the step, checkpoint) or
/// twice (quit now), leaves no `.OUT.lock` beside `--out`.
#[test]
fn the_command_line_exits_1_on_damaged_files_2_on_usage_and_leaves_no_lock() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let files = |dir: &Path| names_in(dir).into_iter().filter(|n| !n.ends_with(".stdout") && !n.ends_with(".stderr"));
    let (status, stderr) = cifar10_cli(&out, &[]);
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(files(t.path()).collect::<Vec<_>>(), ["out"]);

    let model = out.join("stage1.safetensors");
    let good = std::fs::read(&model).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 3;
    bad[at] ^= 0x04;
    std::fs::write(&model, &bad).unwrap();
    let (status, stderr) = cifar10_cli(&out, &["--stage2-only", "--exponent", "2", "--overwrite"]);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("error: {} is corrupted", model.display())), "{stderr}");
    std::fs::write(&model, &good).unwrap();

    let (status, stderr) = cifar10_cli(&out, &["--rounds", "3", "--overwrite"]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("--rounds"), "{stderr}");
    assert_eq!(files(t.path()).collect::<Vec<_>>(), ["out"], "after the errors");

    // Ctrl-C once, then twice, each time once the run has started training (its checkpoint
    // folder exists). Enough epochs that the run is still going, and steps slow enough (one of
    // 128 images at width 16) that the second press comes before the first has stopped it.
    let partial = t.path().join(".out.partial");
    let slow = ["--epochs", "200", "--width", "16", "--batch-size", "128", "--overwrite"];
    for presses in [1, 2] {
        let mut child = spawn_cifar10(&out, &slow);
        let start = std::time::Instant::now();
        while !partial.join("checkpoints").exists() {
            assert!(start.elapsed().as_secs() < 120, "the run never started training");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(interrupt(&child), "the run ended before its Ctrl-C");
        if presses == 2 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            interrupt(&child);
        }
        let (status, stderr) = wait_cifar10(&out, &mut child);
        assert_eq!(status, Some(130), "{presses} Ctrl-C: {stderr}");
        let said = if presses == 1 { "stopped: " } else { "quitting now" };
        assert!(stderr.contains(said), "{presses} Ctrl-C: {stderr}");
        assert_eq!(files(t.path()).collect::<Vec<_>>(), [".out.partial", "out"], "{presses} Ctrl-C: {stderr}");
        assert!(read_manifest(&out.join(MANIFEST)).unwrap().complete, "the finished run is kept");
        std::fs::remove_dir_all(&partial).unwrap();
    }
}

/// A damaged manifest never locks a folder: `--overwrite` replaces a finished run whose
/// `run.json` is truncated and discards an interrupted one's; without it, and for a truncated
/// checkpoint on `--resume`, the error names the file and says to start over with `--overwrite`
/// (exit status 1).
#[test]
fn a_damaged_manifest_or_checkpoint_is_named_and_overwrite_starts_over() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let partial = t.path().join(".out.partial");
    let truncate = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    };
    let refused = |extra: &[&str], path: &Path, hint: &str| {
        let before = snapshot(t.path());
        let e = run(&out, &[&["--synthetic"], extra].concat()).unwrap_err();
        let msg = e.to_string();
        assert!(!is_usage(&e), "{extra:?}: {msg}");
        assert!(msg.contains(&path.display().to_string()) && msg.contains(hint), "{extra:?}: {msg}");
        assert!(snapshot(t.path()) == before, "{extra:?}: the folders were changed");
    };
    run(&out, &["--synthetic"]).unwrap();
    truncate(&out.join(MANIFEST));
    refused(&[], &out.join(MANIFEST), "add --overwrite to replace that run");
    refused(&["--stage2-only", "--overwrite"], &out.join(MANIFEST), "run both stages again");
    assert_eq!(run(&out, &["--synthetic", "--overwrite"]).unwrap(), Ended::Finished);
    assert_one_run(&out);

    assert_eq!(run_interrupted(&out, &["--synthetic", "--overwrite"]).unwrap(), Ended::Stopped);
    let ck = partial.join("checkpoints/stage1.ckpt");
    let good = std::fs::read(&ck).unwrap();
    truncate(&ck);
    refused(&["--resume"], &ck, "start it over with --overwrite");
    std::fs::write(&ck, &good).unwrap();
    truncate(&partial.join(MANIFEST));
    refused(&["--resume"], &partial.join(MANIFEST), "start it over with --overwrite");
    refused(&["--overwrite", "--resume"], &partial.join(MANIFEST), "start it over with --overwrite");
    refused(&[], &partial.join(MANIFEST), "start it over with --overwrite");
    assert_eq!(run(&out, &["--synthetic", "--overwrite"]).unwrap(), Ended::Finished);
    assert!(!partial.exists());
    assert_one_run(&out);
}
