//! Fuzzing the files a run reads back (`--resume`, `--stage2-only`, the `results` tool): the
//! checkpoint, the saved model, the manifest (`run.json`) and `report.json`, each taken from a
//! real tiny run and then truncated, bit-flipped, overwritten, spliced or replaced by random
//! bytes. Every reader returns a value or a typed error, never panics; a model load that fails
//! leaves the model unchanged (its documented promise); a report that reads is valid.
//!
//! Case counts: 64 per target, 256 in all per run; `PROPTEST_CASES` overrides them
//! (`scripts/fuzz.sh` runs the campaign of docs/reliability.md).
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use evenclass::experiment::{self, DataSpec, ExperimentSpec, RunOptions, RunOutcome};
use evenclass::report::run_dir::read_manifest;
use evenclass::report::{read_report, ComparisonRun};
use evenclass::train::{load_model, Checkpoint, CpuBackend, Model, ModelConfig};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// The real files of one tiny run: a finished one (model, manifest, report) and a stopped one
/// (its checkpoint), made once per test process.
struct Files {
    _dir: tempfile::TempDir,
    checkpoint: Vec<u8>,
    model: Vec<u8>,
    manifest: Vec<u8>,
    report: Vec<u8>,
    model_config: ModelConfig,
}

const WIDTH: usize = 2;

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let spec = |out: PathBuf| ExperimentSpec {
            data: DataSpec { train_subset: Some(200), test_subset: Some(60), ..DataSpec::synthetic() },
            out,
            epochs: Some(2),
            width: Some(WIDTH),
            batch_size: Some(50),
            val_size: Some(30),
            ..Default::default()
        };
        let be = CpuBackend::new();
        let quiet = RunOptions { silent: true, ..Default::default() };
        let done = dir.path().join("done");
        let RunOutcome::Finished { .. } = experiment::run(&be, &spec(done.clone()), &quiet).unwrap() else {
            panic!("the tiny run did not finish")
        };
        let stop = AtomicBool::new(true);
        let stopping = RunOptions { stop: Some(&stop), silent: true, ..Default::default() };
        let RunOutcome::Stopped { checkpoint, .. } =
            experiment::run(&be, &spec(dir.path().join("stopped")), &stopping).unwrap()
        else {
            panic!("the tiny run did not stop")
        };
        let read = |p: &Path| std::fs::read(p).unwrap();
        Files {
            checkpoint: read(&checkpoint),
            model: read(&done.join("stage1.safetensors")),
            manifest: read(&done.join("run.json")),
            report: read(&done.join("report.json")),
            model_config: ModelConfig { width: WIDTH, depth: 1, classes: 10 },
            _dir: dir,
        }
    })
}

/// One change to a file's bytes.
#[derive(Clone, Debug)]
enum Mutation {
    Truncate(usize),
    FlipBit(usize, u8),
    Overwrite(usize, Vec<u8>),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// A copy of one range over another (a torn or misplaced write).
    Splice(usize, usize, usize),
    Random(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    let bytes = proptest::collection::vec(any::<u8>(), 1..16);
    prop_oneof![
        at.prop_map(Mutation::Truncate),
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<usize>(), bytes.clone()).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
        (any::<usize>(), bytes).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), any::<usize>(), 1usize..256).prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(Mutation::Random),
    ]
}

fn mutate(original: &[u8], changes: &[Mutation]) -> Vec<u8> {
    let mut v = original.to_vec();
    for m in changes {
        let n = v.len().max(1);
        match m {
            Mutation::Truncate(i) => v.truncate(i % n),
            Mutation::FlipBit(i, b) if !v.is_empty() => v[i % n] ^= 1 << b,
            Mutation::Overwrite(i, bytes) => {
                for (k, b) in bytes.iter().enumerate() {
                    if let Some(x) = v.get_mut(i % n + k) {
                        *x = *b;
                    }
                }
            }
            Mutation::Insert(i, bytes) => {
                let at = (i % n).min(v.len());
                v.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(i, len) => {
                let at = (i % n).min(v.len());
                let end = (at + len).min(v.len());
                v.drain(at..end);
            }
            Mutation::Splice(a, b, len) if !v.is_empty() => {
                let (from, to) = (a % v.len(), b % v.len());
                let len = (*len).min(v.len() - from).min(v.len() - to);
                let chunk = v[from..from + len].to_vec();
                v[to..to + len].copy_from_slice(&chunk);
            }
            Mutation::Random(bytes) => v = bytes.clone(),
            _ => {}
        }
    }
    v
}

fn changes() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..4)
}

/// Writes `bytes` as `name` in a fresh folder.
fn written(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (t, path)
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn checkpoint_reader_never_panics(changes in changes()) {
        let bytes = mutate(&files().checkpoint, &changes);
        let (_t, path) = written("stage1.ckpt", &bytes);
        if let Ok(ck) = Checkpoint::load(&path) {
            // What loads is at least self-consistent enough to describe itself.
            let _ = ck.first_non_finite();
        }
    }

    #[test]
    fn model_reader_never_panics_and_fails_without_changing_the_model(changes in changes()) {
        let f = files();
        let bytes = mutate(&f.model, &changes);
        let (_t, path) = written("stage1.safetensors", &bytes);
        let be = CpuBackend::new();
        let mut model = Model::new(&be, f.model_config, 1, 7).unwrap();
        let before = model.state(&be).unwrap();
        if load_model(&path, &mut model, &be).is_err() {
            prop_assert_eq!(model.state(&be).unwrap(), before, "a failed load changed the model");
        } else {
            prop_assert_eq!(model.state(&be).unwrap().len(), before.len());
        }
    }

    #[test]
    fn manifest_reader_never_panics(changes in changes()) {
        let bytes = mutate(&files().manifest, &changes);
        let (_t, path) = written("run.json", &bytes);
        let _ = read_manifest(&path);
    }

    #[test]
    fn report_readers_never_panic_and_what_reads_is_valid(changes in changes()) {
        let bytes = mutate(&files().report, &changes);
        let (t, path) = written("report.json", &bytes);
        if let Ok(report) = read_report(&path) {
            prop_assert!(report.validate().is_ok(), "read_report returned an invalid report");
        }
        std::fs::write(t.path().join("run.json"), mutate(&files().manifest, &changes)).unwrap();
        let _ = ComparisonRun::read(t.path());
    }
}

/// The untouched files read back (so the properties above start from real, valid files).
#[test]
fn the_unchanged_files_read() {
    let f = files();
    let (_t, ck) = written("stage1.ckpt", &f.checkpoint);
    Checkpoint::load(&ck).unwrap();
    let (_t, m) = written("run.json", &f.manifest);
    read_manifest(&m).unwrap();
    let (_t, r) = written("report.json", &f.report);
    read_report(&r).unwrap();
    let be = CpuBackend::new();
    let mut model = Model::new(&be, f.model_config, 1, 7).unwrap();
    let (_t, p) = written("stage1.safetensors", &f.model);
    load_model(&p, &mut model, &be).unwrap();
}
