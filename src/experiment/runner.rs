//! The runner: the run folder (lock, resume, publishing), the data, the memory check, the
//! trainings and the report.
use std::cell::Cell;
use std::path::Path;
use std::time::Instant;

use crate::confusion::Metrics;
use crate::data::{self, DataFingerprint, DataSource, Dataset};
use crate::error::Located;
use crate::json::{describe_diffs, diff_fields};
use crate::methods::{drw_default_epochs, weights_from_metrics, BiasKind, Method, RecallSplit, Weights};
use crate::report::run_dir::{Checked, OutState, RunDir, RunManifest, MANIFEST};
use crate::report::{self, Report, StageReport};
use crate::train::{
    self, Backend, Checkpoint, DeviceData, EpochEnd, EpochHook, EvalOptions, LogitAdjustment, MemoryEstimate, Model,
    ModelConfig, Monitor, Progress, TrainConfig, TrainControl, TrainJob, TrainOutcome,
};

use super::plan::{plan, stages, Plan, StageSpec};
use super::spec::{default_val_size, ExperimentSpec, MAX_LOGIT_PARAM};
use super::text::{comparison_text, diagnostics_text, format_duration};
use super::{diagnostics, usage, ExperimentError, RunOptions, RunOutcome};

type Result<T, E = ExperimentError> = std::result::Result<T, E>;

/// Prints a line unless the options are silent.
macro_rules! say {
    ($opts:expr, $($arg:tt)*) => {
        if !$opts.silent {
            println!($($arg)*);
        }
    };
}

/// Prints a line to stderr unless the options are silent.
macro_rules! warn {
    ($opts:expr, $($arg:tt)*) => {
        if !$opts.silent {
            eprintln!($($arg)*);
        }
    };
}

/// Runs `spec` on `be`: checks it, loads the data, trains every planned training (resuming
/// those a stopped run checkpointed), writes the report and publishes the run folder.
pub fn run<B: Backend>(be: &B, spec: &ExperimentSpec, opts: &RunOptions<'_>) -> Result<RunOutcome> {
    let started = Instant::now();
    check_spec(spec)?;
    // The device's defaults: the CPU backend describes itself as `cpu (N threads)`.
    let gpu = !be.describe().starts_with("cpu");

    // ---- the output folder: lock it, and decide what may be replaced, before any work ----
    let out = &spec.out;
    let dir = RunDir::lock(out)?;
    // A damaged manifest still marks an evenclass run: --overwrite replaces it, as it would
    // the intact one, and nothing else may read it.
    let published = match dir.published() {
        Err(e) if damaged(&e) && spec.overwrite && !spec.stage2_only => {
            say!(opts, "note: {e}\n  replacing that run (--overwrite)");
            // Nothing in it to keep or to read: replaced at publication as an empty folder is.
            OutState::Empty
        }
        Err(e) if damaged(&e) => {
            let hint = if spec.stage2_only {
                "stage 1 cannot be taken from that run: run both stages again (--overwrite, without --stage2-only)"
            } else {
                "add --overwrite to replace that run, or move its folder away"
            };
            return Err(with_hint(e, hint));
        }
        r => r?,
    };
    let in_progress = match dir.in_progress() {
        Err(e) if damaged(&e) && spec.overwrite && !spec.resume => {
            say!(opts, "note: {e}\n  discarding that interrupted run (--overwrite)");
            None
        }
        Err(e) if damaged(&e) => return Err(with_hint(e, RESUME_HINT)),
        r => r?,
    };
    if let OutState::Foreign { names } = &published {
        return Err(ExperimentError::Refused(format!(
            "{} holds other files ({}...), not an evenclass run: choose another --out",
            out.display(),
            names.join(", ")
        )));
    }
    let finished_id = match &published {
        OutState::Run(m) => Some(m.run_id.clone()),
        _ => None,
    };
    if spec.resume {
        if in_progress.is_none() {
            return Err(usage(format!(
                "--resume: there is no interrupted run to continue in {} (nothing in {})",
                out.display(),
                dir.staging().display()
            )));
        }
    } else if let Some(m) = &in_progress {
        if !spec.overwrite {
            return Err(usage(format!(
                "an interrupted run ({}, started {}) is waiting in {}: add --resume (same flags) to continue \
                 it, or --overwrite to discard it",
                m.run_id,
                m.started_utc,
                dir.staging().display()
            )));
        }
    }
    if spec.stage2_only {
        if !matches!(published, OutState::Run(_)) {
            return Err(ExperimentError::Refused(format!(
                "--stage2-only needs a finished run in {} to take stage 1 from",
                out.display()
            )));
        }
        // The new run replaces the finished one (stage 1 is carried over, the rest is new).
        if let (false, Some(id)) = (spec.overwrite, &finished_id) {
            return Err(usage(format!(
                "--stage2-only replaces the finished run in {} ({id}) with a new one: add --overwrite to \
                 replace it, or copy the folder first to keep it",
                out.display()
            )));
        }
    } else if !spec.resume && !spec.overwrite {
        if let Some(id) = &finished_id {
            return Err(usage(format!(
                "{} holds a finished run ({id}): add --overwrite to replace it, or choose another --out",
                out.display()
            )));
        }
    }

    // ---- data ----
    let d = &spec.data;
    let loaded = match data::resolve(d.dir.clone(), d.synthetic, d.download, d.train_subset, spec.seed) {
        Ok(l) => l,
        // A folder the user named that does not hold the data, or a file named as the folder,
        // is a usage error.
        Err(e @ (data::DataError::NotFound { .. } | data::DataError::NotAFolder { .. })) => {
            return Err(usage(e.to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    let (mut train_set, mut test_set) = (loaded.train, loaded.test);
    if let Some(n) = d.test_subset {
        test_set = test_set.first(n);
    }
    if let Some(n) = d.train_subset {
        train_set = train_set.first(n);
    }
    let synthetic = loaded.source.is_synthetic();
    let dataset = match &loaded.source {
        DataSource::Cifar10 { dir, downloaded, nonstandard } => {
            // Where the folder came from: --data-dir, $CIFAR10_DIR or the default location.
            let from = match data::resolve_data_dir(d.dir.clone()).1 {
                data::DirSource::Explicit => "from --data-dir",
                data::DirSource::Env => "from $CIFAR10_DIR",
                data::DirSource::Default => "the default location",
            };
            if !nonstandard.is_empty() {
                let official = data::RECORDS_PER_FILE;
                let bytes = official * data::RECORD_BYTES;
                warn!(opts, "==================================================================");
                warn!(opts, " NOT THE OFFICIAL CIFAR-10 FILES: the official ones hold {official}");
                warn!(opts, " records ({bytes} bytes) each; the numbers below are not");
                warn!(opts, " CIFAR-10's. Files with other counts:");
                for c in nonstandard {
                    let size = c.records * data::RECORD_BYTES;
                    warn!(opts, "   {}: {} records ({size} bytes)", c.file, c.records);
                }
                warn!(opts, "==================================================================");
            }
            let name = data::cifar10_name(nonstandard);
            format!("{name} ({}, {from}{})", dir.display(), if *downloaded { ", just downloaded" } else { "" })
        }
        DataSource::Synthetic { reason } => {
            warn!(opts, "==================================================================");
            warn!(opts, " SYNTHETIC DATA: the numbers below are NOT CIFAR-10.");
            warn!(opts, " reason: {reason}");
            warn!(opts, "==================================================================");
            "synthetic (not CIFAR-10)".to_string()
        }
    };
    let fingerprint =
        DataFingerprint::new(&loaded.source, &train_set, &test_set, d.train_subset, d.test_subset, spec.seed);
    let classes = train_set.num_classes();
    // The validation split: before any training, so a bad size is an error at once.
    let val_size = spec.val_size.unwrap_or_else(|| default_val_size(train_set.len()));
    let val_set = if val_size > 0 {
        let split = data::stratified_split(&train_set.labels, classes, val_size, spec.split_seed())
            .map_err(|e| usage(val_size_error(val_size, &e, train_set.len(), classes)))?;
        let val = train_set.select(&split.val, "validation")?;
        train_set = train_set.select(&split.train, "training")?;
        Some(val)
    } else {
        None
    };
    let plan = plan(spec, gpu, classes);
    if let Some(k) = spec.comparison.drw_epochs {
        // Uniform for at least one epoch, reweighted for at least one.
        let e = plan.train.epochs;
        if !(1..e).contains(&k) {
            let fix = if e < 2 { "drw needs --epochs 2 or more".to_string() } else { format!("from 1 to {}", e - 1) };
            return Err(usage(format!("--drw-epochs {k}: out of range for {e} epoch(s): {fix}")));
        }
    }
    if plan.train.batch_size > train_set.len() {
        return Err(usage(format!(
            "--batch-size {} is larger than the {} training images: use at most {}",
            plan.train.batch_size,
            train_set.len(),
            train_set.len()
        )));
    }
    let val_images = val_set.as_ref().map_or(0, Dataset::len);
    let config = config_json(spec, &plan, train_set.len(), test_set.len(), val_images, &be.precision());
    say!(opts, "device: {}", be.describe());
    say!(
        opts,
        "data: {dataset}\n  {} training, {val_images} validation and {} test images, {classes} classes",
        train_set.len(),
        test_set.len()
    );

    // ---- memory, before allocating ----
    let max_batch = plan.train.batch_size.max(plan.train.eval_batch_size);
    let images = train_set.len() + test_set.len() + val_images;
    let need = MemoryEstimate::with_activation_bytes(plan.model, max_batch, images, be.activation_bytes())?;
    if let Some(free) = be.memory_available() {
        if need.total() > free {
            return Err(ExperimentError::Refused(format!(
                "this configuration needs about {need}, but only {:.2} GiB is available on {}: use a smaller \
                 --width, --depth or --batch-size",
                free as f64 / (1u64 << 30) as f64,
                be.describe()
            )));
        }
    }

    // ---- the run folder ----
    // With the run's epochs resolved, so that drw's label says how many epochs it reweights.
    let (specs, method_specs) = stages(&ExperimentSpec { epochs: Some(plan.train.epochs), ..spec.clone() });
    let meta = serde_json::json!({
        "config": config,
        "data": fingerprint,
        "stages": specs.iter().map(|s| serde_json::json!({"key": s.key, "name": s.name})).collect::<Vec<_>>(),
        "command": opts.command,
    });
    let mut reuse: Vec<Option<StageReport>> = vec![None; specs.len()];
    let mut biased: Vec<Vec<(Method, StageReport)>> = vec![Vec::new(); specs.len()];
    let mut manifest = if let (true, Some(m)) = (spec.resume, in_progress) {
        let what = format!("the interrupted run ({})", dir.staging().join(MANIFEST).display());
        check_same_run(&m.meta, &config, &fingerprint, &what, &[])?;
        say!(opts, "resuming run {} (started {})", m.run_id, m.started_utc);
        m
    } else {
        if let (true, OutState::Run(prev)) = (spec.stage2_only, &published) {
            // The exponent only shapes stage 2: rerunning stage 2 with another p is the point.
            let what = format!("stage 1 ({})", dir.out().join(MANIFEST).display());
            check_same_run(&prev.meta, &config, &fingerprint, &what, &["exponent", "weights_from"])?;
        }
        if let (true, OutState::Run(prev)) = (spec.stage2_only, &published) {
            // Before anything is written: a corrupted stage 1 leaves no trace.
            for ext in ["json", "safetensors"] {
                let name = format!("{}.{ext}", specs[0].key);
                if RunDir::verify(dir.out(), prev, &name)? == Checked::NotRecorded {
                    say!(opts, "note: {} has no checksum (a run of an older build): not verified", name);
                }
            }
        }
        let mut m = RunManifest::new(meta);
        dir.start(&m)?;
        if let (true, OutState::Run(prev)) = (spec.stage2_only, &published) {
            let key = &specs[0].key;
            let mut copied = Vec::new();
            for ext in ["json", "safetensors"] {
                let name = format!("{key}.{ext}");
                let (from, to) = (dir.out().join(&name), dir.staging().join(&name));
                std::fs::copy(&from, &to).map_err(ExperimentError::io("copy (--stage2-only)", &from))?;
                copied.push(name);
            }
            dir.record(&mut m, &copied)?;
            let path = dir.out().join(format!("{key}.json"));
            say!(opts, "{}:\n  reusing {} of run {}", specs[0].name, path.display(), prev.run_id);
        }
        m
    };
    say!(opts, "run {} in {}", manifest.run_id, dir.staging().display());

    let upload = |what: &'static str| move || format!("uploading the {what} set");
    let train_data = DeviceData::new(be, &train_set.images, &train_set.labels).at("data", upload("training"))?;
    let test_data = DeviceData::new(be, &test_set.images, &test_set.labels).at("data", upload("test"))?;
    let val_data = val_set
        .as_ref()
        .map(|v| DeviceData::new(be, &v.images, &v.labels))
        .transpose()
        .at("data", upload("validation"))?;
    let progress = Progress { bars: !opts.quiet && !opts.silent, summaries: !opts.silent };
    let ck_dir = dir.staging().join("checkpoints");
    std::fs::create_dir_all(&ck_dir).map_err(ExperimentError::io("create", &ck_dir))?;

    // Trainings already finished in the run folder (a resumed run, or stage 1 for --stage2-only).
    for (i, st) in specs.iter().enumerate() {
        let path = dir.staging().join(format!("{}.json", st.key));
        if path.exists() && !finished_intact(&dir, &manifest, st)? {
            say!(
                opts,
                "{}: its files were written but not recorded before the interruption: training it again",
                st.name
            );
        } else if path.exists() {
            let s: StageReport = read_json(&path)?;
            if s.class_weights.len() != classes {
                return Err(ExperimentError::Refused(format!(
                    "{} has {} classes, the data {classes}",
                    path.display(),
                    s.class_weights.len()
                )));
            }
            if spec.resume {
                say!(opts, "{}: done before the interruption ({})", st.name, path.display());
            }
            reuse[i] = Some(s);
            for kind in &st.fit_bias {
                // Written before the training's own file, so a finished one always has them.
                let path = dir.staging().join(format!("{}.{}.json", st.key, kind.method()));
                biased[i].push((kind.method(), read_json(&path)?));
            }
        }
    }

    // ---- the plan, with an estimate of its duration ----
    // crt trains no epoch of the network (its retraining is a small part of one epoch's cost).
    let epochs_of = |st: &StageSpec| if st.crt.is_some() { 0 } else { st.epochs.unwrap_or(plan.train.epochs) };
    let todo: Vec<usize> = (0..specs.len()).filter(|&i| reuse[i].is_none()).collect();
    let total_epochs: usize = todo.iter().map(|&i| epochs_of(&specs[i])).sum();
    if !opts.silent {
        // crt trains no network epoch: the plan counts the trainings.
        let trained: Vec<usize> = todo.iter().copied().filter(|&i| specs[i].crt.is_none()).collect();
        print_plan(be, &plan, &specs, &trained, &train_set, val_images + test_set.len())?;
    }
    let clock = EtaClock { start: Instant::now(), done: Cell::new(0), total: total_epochs };

    let mut done: Vec<StageReport> = Vec::new();
    for (i, st) in specs.iter().enumerate() {
        if let Some(s) = reuse[i].take() {
            done.push(s);
            continue;
        }
        let weights: Vec<f32> = match st.weights {
            Weights::Uniform | Weights::Online(_) => {
                say!(opts, "\n{}", st.name);
                vec![1.0; classes]
            }
            Weights::FromRecall { of, exponent, split, compose } => {
                let base = &done[of];
                let m = match split {
                    RecallSplit::Test => &base.test,
                    RecallSplit::Val => {
                        base.val.as_ref().ok_or_else(|| usage("weights from validation recall need --val-size > 0"))?
                    }
                };
                let w = weights_from_metrics(m, &base.class_weights, exponent, compose)?;
                let from = if split == RecallSplit::Test { "TEST" } else { "validation" };
                say!(opts, "\n{}", st.name);
                say!(opts, "  weights (p = {exponent}) from {from} recall of {}:", specs[of].name);
                say!(opts, "  {}", w.iter().map(|&w| compact(w)).collect::<Vec<_>>().join(" "));
                w.iter().map(|&w| w as f32).collect()
            }
        };
        // A logit adjustment of the training loss, from the earlier training's validation recall
        // (derived again on resume, from the same finished training: the checkpoint must match).
        let logit_adjust = match st.logit {
            Some((of, rule)) => {
                let m =
                    done[of].val.as_ref().ok_or_else(|| usage(format!("{} needs --val-size > 0", rule.method())))?;
                let a = rule.adjustment(m)?;
                let show = |v: &Option<Vec<f32>>| match v {
                    Some(v) => v.iter().map(|&x| compact(f64::from(x))).collect::<Vec<_>>().join(" "),
                    None => "none".to_string(),
                };
                say!(opts, "  logit scale from validation recall of {}:", specs[of].name);
                say!(opts, "  {}", show(&a.scale));
                if a.offset.is_some() {
                    say!(opts, "  logit offset:");
                    say!(opts, "  {}", show(&a.offset));
                }
                Some(a)
            }
            None => None,
        };
        if let Some(crt) = st.crt {
            // No checkpoint: an interrupted crt is redone from its base model (deterministic).
            let base = dir.staging().join(format!("{}.safetensors", specs[crt.of].key));
            let mut train_cfg = TrainConfig { seed: st.seed, epochs: crt.epochs, ..plan.train.clone() };
            train_cfg.eval_each_epoch = false;
            let data = CrtData { train: &train_data, test: &test_data, val: val_data.as_ref() };
            let s = run_crt(be, st, &base, &weights, plan.model, &train_cfg, &data, opts)?;
            let model_file = dir.staging().join(format!("{}.safetensors", st.key));
            train::save_model(&model_file, &s.1, be).at(&st.name, || "saving the model".to_string())?;
            write_json(&dir.staging().join(format!("{}.json", st.key)), &s.0)?;
            dir.record(&mut manifest, &[format!("{}.safetensors", st.key), format!("{}.json", st.key)])?;
            done.push(s.0);
            continue;
        }
        let ck_path = ck_dir.join(format!("{}.ckpt", st.key));
        let resume_from = if spec.resume && ck_path.exists() {
            let ck = Checkpoint::load(&ck_path).map_err(|e| match e {
                e @ crate::Error::InvalidFile { .. } | e @ crate::Error::FormatVersion { .. } => {
                    ExperimentError::Damaged { error: Box::new(e.into()), hint: RESUME_HINT.into() }
                }
                e => e.into(),
            })?;
            match &ck.meta.run_id {
                None => say!(opts, "note: {} has no run id (an older build): not checked", ck_path.display()),
                // A swapped file with the same configuration would pass every other check.
                Some(id) if *id != manifest.run_id => {
                    return Err(ExperimentError::Refused(format!(
                        "{} was written by run {id}, but {} is run {}'s: one of the two is another run's file; \
                         start over with --overwrite",
                        ck_path.display(),
                        dir.staging().join(MANIFEST).display(),
                        manifest.run_id
                    )))
                }
                Some(_) => {}
            }
            say!(
                opts,
                "{}: resuming from {} (epoch {}, step {})",
                st.name,
                ck_path.display(),
                ck.meta.epoch + usize::from(ck.meta.batch > 0),
                ck.meta.step
            );
            Some(ck)
        } else {
            None
        };
        let mut train_cfg = TrainConfig { seed: st.seed, ..plan.train.clone() };
        if let Some(e) = st.epochs {
            train_cfg.epochs = e;
        }
        if let Some(wd) = st.weight_decay {
            train_cfg.weight_decay = wd;
        }
        let stage = StageRun {
            spec: st,
            weights: &weights,
            logit_adjust: logit_adjust.as_ref(),
            model_cfg: plan.model,
            train_cfg: &train_cfg,
            train_data: &train_data,
            test_data: &test_data,
            val_data: val_data.as_ref(),
            progress,
            model_path: &dir.staging().join(format!("{}.safetensors", st.key)),
            checkpoint: &ck_path,
            resume: resume_from.as_ref(),
            run_id: &manifest.run_id,
            opts,
            clock: &clock,
        };
        match run_stage(be, &stage)? {
            Some((mut s, b)) => {
                s.seed = Some(st.seed);
                let mut written = vec![format!("{}.safetensors", st.key)];
                for (method, b) in b {
                    let name = format!("{}.{method}.json", st.key);
                    write_json(&dir.staging().join(&name), &b)?;
                    written.push(name);
                    biased[i].push((method, b));
                }
                write_json(&dir.staging().join(format!("{}.json", st.key)), &s)?;
                written.push(format!("{}.json", st.key));
                written.retain(|f| dir.staging().join(f).exists());
                // Checksums before the checkpoint goes: a file read back later is checked first.
                dir.record(&mut manifest, &written)?;
                let _ = std::fs::remove_file(&ck_path);
                done.push(s);
            }
            None => return Ok(RunOutcome::Stopped { stage: st.name.clone(), checkpoint: ck_path }),
        }
    }

    let methods: Vec<StageReport> = method_specs
        .iter()
        .map(|m| {
            let from = match m.bias {
                Some(kind) => {
                    biased[m.stage].iter().find(|(k, _)| *k == kind).map(|(_, b)| b.clone()).ok_or_else(|| {
                        ExperimentError::Refused(format!("{}: a post-hoc bias that was not fitted", m.name))
                    })?
                }
                None => done[m.stage].clone(),
            };
            Ok(StageReport {
                name: m.name.clone(),
                method: Some(m.id.to_string()),
                model: Some(specs[m.stage].key.clone()),
                seed: Some(m.seed),
                ..from
            })
        })
        .collect::<Result<_>>()?;
    let diag = (!methods.is_empty()).then(|| diagnostics(&specs, &method_specs, &methods));
    let report = Report {
        format: report::REPORT_FORMAT,
        dataset,
        device: be.describe(),
        config,
        class_names: train_set.class_names.clone(),
        stages: done,
        methods,
        diagnostics: diag
            .as_ref()
            .map_or(serde_json::Value::Null, |d| serde_json::to_value(d).expect("diagnostics are plain data")),
        command: opts.command.clone(),
        created_utc: report::utc_now_rfc3339(),
        run_id: manifest.run_id.clone(),
        synthetic,
    };
    report::write_all(&report, dir.staging())?;
    let _ = std::fs::remove_dir_all(&ck_dir);
    dir.publish(&mut manifest)?;
    say!(opts, "\n{}", report::terminal_table(&report));
    if let Some(d) = &diag {
        say!(opts, "{}", comparison_text(&report));
        say!(opts, "{}", diagnostics_text(d, &report.class_names));
    }
    say!(opts, "run {} published in {}:", manifest.run_id, dir.out().display());
    for f in ["report.json", "per_class.csv", "recall.svg", "recall.png"] {
        say!(opts, "wrote {}", dir.out().join(f).display());
    }
    if !report.methods.is_empty() {
        for f in ["comparison.md", "comparison.csv", "methods.svg", "methods.png"] {
            say!(opts, "wrote {}", dir.out().join(f).display());
        }
    }
    say!(opts, "total wall time {}", format_duration(started.elapsed().as_secs_f64()));
    Ok(RunOutcome::Finished { report: Box::new(report), diagnostics: diag, out: dir.out().to_path_buf() })
}

/// A class weight in at most 6 characters: `0.123`, `597.9`, `1.3e5`.
fn compact(w: f64) -> String {
    if w.abs() < 10.0 {
        format!("{w:.3}")
    } else if w.abs() < 1000.0 {
        format!("{w:.1}")
    } else {
        format!("{w:.1e}")
    }
}

/// Spec values and combinations that no run can use; usage errors before any work. The names
/// are the command line's.
fn check_spec(spec: &ExperimentSpec) -> Result<()> {
    let range = |flag: &str, v: Option<usize>, lo: usize, hi: usize| match v {
        Some(v) if !(lo..=hi).contains(&v) => {
            let range = if hi == usize::MAX { format!("at least {lo}") } else { format!("from {lo} to {hi}") };
            Err(usage(format!("{flag} {v}: must be a whole number {range}")))
        }
        _ => Ok(()),
    };
    // A file where the output folder is expected: one clear error, not the OS's.
    if let Some(file) = data::file_in_place_of_folder(&spec.out) {
        let what = if file == spec.out { "is a file".to_string() } else { format!("{} is a file", file.display()) };
        return Err(usage(format!(
            "--out {}: {what}, where a folder is expected: choose a folder for --out",
            spec.out.display()
        )));
    }
    range("--epochs", spec.epochs, 1, 10_000)?;
    range("--batch-size", spec.batch_size, 1, 8192)?;
    range("--width", spec.width, 1, 1024)?;
    range("--depth", spec.depth, 1, 16)?;
    range("--train-subset", spec.data.train_subset, 1, usize::MAX)?;
    range("--test-subset", spec.data.test_subset, 1, usize::MAX)?;
    range("--rounds", spec.comparison.rounds, 2, 10)?;
    range("--long-epochs", spec.comparison.long_epochs, 1, 10_000)?;
    range("--crt-epochs", spec.comparison.crt_epochs, 1, 1000)?;
    if let Some(lr) = spec.lr {
        if !(lr.is_finite() && lr > 0.0 && lr <= 100.0) {
            return Err(usage(format!("--lr {lr}: must be a finite number in (0, 100]")));
        }
    }
    let sweep = spec.comparison.sweep.iter().map(|&p| ("--sweep", p));
    for (flag, p) in std::iter::once(("--exponent", spec.exponent)).chain(sweep) {
        if !(p.is_finite() && (-8.0..=8.0).contains(&p)) {
            return Err(usage(format!("{flag} {p}: must be a finite number in [-8, 8]")));
        }
    }
    let c = &spec.comparison;
    for (flag, v) in
        [("--eg-step", c.eg_step), ("--tau", c.tau), ("--strong-wd", c.strong_wd), ("--bias-budget", c.bias_budget)]
    {
        if let Some(v) = v.filter(|v| !(v.is_finite() && (0.0..=100.0).contains(v))) {
            return Err(usage(format!("{flag} {v}: must be a finite number in [0, 100]")));
        }
    }
    for (flag, v) in [("--vs-gamma", c.vs_gamma), ("--vs-tau", c.vs_tau), ("--cdt-gamma", c.cdt_gamma)] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && (0.0..=MAX_LOGIT_PARAM).contains(v))) {
            return Err(usage(format!("{flag} {v}: must be a finite number in [0, {MAX_LOGIT_PARAM}]")));
        }
    }
    for (set, a, b) in [
        (spec.data.synthetic && spec.data.dir.is_some(), "--synthetic", "--data-dir"),
        (spec.resume && spec.stage2_only, "--resume", "--stage2-only"),
        (spec.compare && spec.stage2_only, "--compare", "--stage2-only"),
        (c.cdb_dynamic && c.tau.is_some(), "--cdb-dynamic", "--tau"),
    ] {
        if set {
            return Err(usage(format!("{a} cannot be used with {b}")));
        }
    }
    if !spec.compare {
        // Settings that only a comparison uses: given without it, they would be ignored.
        for (set, flag) in [
            (c.methods.is_some(), "--methods"),
            (c.seeds.is_some_and(|n| n > 1), "--seeds"),
            (c.rounds.is_some(), "--rounds"),
            (c.eg_step.is_some(), "--eg-step"),
            (c.tau.is_some(), "--tau"),
            (c.cdb_dynamic, "--cdb-dynamic"),
            (c.drw_epochs.is_some(), "--drw-epochs"),
            (c.vs_gamma.is_some(), "--vs-gamma"),
            (c.vs_tau.is_some(), "--vs-tau"),
            (c.cdt_gamma.is_some(), "--cdt-gamma"),
            (c.strong_wd.is_some(), "--strong-wd"),
            (!c.sweep.is_empty(), "--sweep"),
            (c.bias_budget.is_some(), "--bias-budget"),
            (c.long_epochs.is_some(), "--long-epochs"),
            (c.crt_epochs.is_some(), "--crt-epochs"),
        ] {
            if set {
                return Err(usage(format!("{flag} only applies with --compare")));
            }
        }
        if spec.val_size == Some(0) && spec.weights_from == RecallSplit::Val {
            return Err(usage(
                "--val-size 0 leaves no validation split for stage 2's weights: use --weights-from test (the \
                 practitioner's variant) or a validation split",
            ));
        }
    } else {
        range("--seeds", c.seeds, 1, 100)?;
        if spec.val_size == Some(0) {
            return Err(usage("--compare fits every per-class quantity on a validation split: --val-size must be > 0"));
        }
    }
    Ok(())
}

/// A validation split that cannot be made, with a size that can.
fn val_size_error(val_size: usize, e: &data::DataError, train: usize, classes: usize) -> String {
    // At least one image of each class on each side of the split.
    let lo = classes;
    let hi = train.saturating_sub(classes);
    let suggest = default_val_size(train).clamp(lo.min(hi), hi);
    if lo <= hi && suggest != val_size {
        format!(
            "--val-size {val_size}: {e}; try --val-size {suggest} (a tenth of the {train} training images; \
             from {lo} to {hi} work)"
        )
    } else {
        format!("--val-size {val_size}: {e}; choose another --val-size, or more training images")
    }
}

/// The run's configuration as report.json and the run folder record it (a resumed run must
/// have the same).
fn config_json(
    spec: &ExperimentSpec,
    plan: &Plan,
    train: usize,
    test: usize,
    val: usize,
    precision: &str,
) -> serde_json::Value {
    let c = &spec.comparison;
    let mut config = serde_json::json!({
        "model": plan.model,
        "train": plan.train,
        "exponent": spec.exponent,
        "train_images": train,
        "test_images": test,
        "val_images": val,
        "split_seed": spec.split_seed(),
        "weights_from": if spec.compare { None } else { Some(spec.weights_from) },
        "compare": spec.compare.then(|| serde_json::json!({
            "methods": c.methods(),
            "seeds": spec.seed_count(),
            "rounds": c.rounds(),
            "eg_step": c.eg_step(),
            "tau": c.tau(),
            "strong_wd": c.strong_wd(),
            "bias_budget": c.bias_budget(),
            "sweep": c.sweep,
            "long_epochs": c.long_epochs,
        })),
    });
    // Settings added later enter only the runs that use them, so that earlier runs (and their
    // report.json) keep the configuration they were written with and still resume and merge.
    if precision != "f32" {
        config["precision"] = precision.into();
    }
    if let Some(cmp) = config.get_mut("compare").and_then(serde_json::Value::as_object_mut) {
        if c.methods().contains(&Method::Drw) {
            let k = c.drw_epochs.unwrap_or_else(|| drw_default_epochs(plan.train.epochs));
            cmp.insert("drw_epochs".into(), k.into());
        }
        if c.methods().contains(&Method::VsLoss) {
            cmp.insert("vs_gamma".into(), c.vs_gamma().into());
            cmp.insert("vs_tau".into(), c.vs_tau().into());
        }
        if c.methods().contains(&Method::Cdt) {
            cmp.insert("cdt_gamma".into(), c.cdt_gamma().into());
        }
        if c.methods().contains(&Method::Crt) {
            cmp.insert("crt_epochs".into(), c.crt_epochs().into());
        }
        if c.cdb_dynamic && c.methods().contains(&Method::OnlineDifficulty) {
            cmp.insert("tau".into(), "cdb-dynamic".into());
        }
    }
    config
}

/// Estimated seconds of evaluation per image relative to a training image (a forward pass
/// against a forward and backward pass with the update).
const EVAL_COST: f64 = 0.35;

/// Prints what the run will train and an estimate of how long it takes, from a warm-up of two
/// training steps on a throwaway model.
fn print_plan<B: Backend>(
    be: &B,
    plan: &Plan,
    specs: &[StageSpec],
    todo: &[usize],
    train_set: &Dataset,
    eval_images: usize,
) -> Result<()> {
    let train_images = train_set.len();
    let epochs_of = |i: usize| specs[i].epochs.unwrap_or(plan.train.epochs);
    let mut counts: Vec<(usize, usize)> = Vec::new(); // (epochs, trainings)
    for &i in todo {
        match counts.iter_mut().find(|(e, _)| *e == epochs_of(i)) {
            Some((_, n)) => *n += 1,
            None => counts.push((epochs_of(i), 1)),
        }
    }
    let total: usize = todo.iter().map(|&i| epochs_of(i)).sum();
    if todo.is_empty() {
        println!("plan: every training is done; writing the report");
        return Ok(());
    }
    let each = counts.iter().map(|(e, n)| format!("{n} x {e}")).collect::<Vec<_>>().join(" + ");
    let n = todo.len();
    let trainings = if n == 1 { "training" } else { "trainings" };
    println!("plan: {n} {trainings} ({each} epochs, {total} in all) on {train_images} images");
    let speed = warm_up_speed(be, plan, train_set)?;
    let train_s = (total * train_images) as f64 / speed;
    let eval_s = EVAL_COST * (total * eval_images + todo.len() * (train_images + eval_images)) as f64 / speed;
    println!("estimated duration: about {} ({:.0} images/s in a warm-up)", format_duration(train_s + eval_s), speed);
    Ok(())
}

/// Training images per second of the run's model, measured over two steps on a throwaway copy.
fn warm_up_speed<B: Backend>(be: &B, plan: &Plan, train_set: &Dataset) -> Result<f64> {
    let part = train_set.first(2 * plan.train.batch_size);
    let n = part.len();
    let setup = || "setup".to_string();
    let data = DeviceData::new(be, &part.images, &part.labels).at("warm-up", setup)?;
    let max_batch = plan.train.batch_size.max(plan.train.eval_batch_size);
    let mut model = Model::new(be, plan.model, max_batch, plan.train.seed).at("warm-up", setup)?;
    let cfg = TrainConfig { epochs: 1, eval_each_epoch: false, ..plan.train.clone() };
    let weights = vec![1.0; plan.model.classes];
    let t0 = Instant::now();
    train::train(be, &mut model, &TrainJob::new(&data, &weights, &cfg, "warm-up"))?;
    Ok(n as f64 / t0.elapsed().as_secs_f64().max(1e-6))
}

/// The whole run's progress: epochs trained in this process and the time they took.
struct EtaClock {
    start: Instant,
    done: Cell<usize>,
    total: usize,
}

impl EtaClock {
    /// One epoch more is done: the line with the whole run's remaining time.
    fn tick(&self) -> String {
        let done = self.done.get() + 1;
        self.done.set(done);
        let per_epoch = self.start.elapsed().as_secs_f64() / done as f64;
        let left = self.total.saturating_sub(done);
        format!("run: {done}/{} epochs done, about {} left", self.total, format_duration(per_epoch * left as f64))
    }
}

struct StageRun<'a, B: Backend> {
    spec: &'a StageSpec,
    weights: &'a [f32],
    logit_adjust: Option<&'a LogitAdjustment>,
    model_cfg: ModelConfig,
    train_cfg: &'a TrainConfig,
    train_data: &'a DeviceData<B>,
    test_data: &'a DeviceData<B>,
    val_data: Option<&'a DeviceData<B>>,
    progress: Progress,
    model_path: &'a Path,
    checkpoint: &'a Path,
    resume: Option<&'a Checkpoint>,
    /// The manifest's run id, stamped into the checkpoints.
    run_id: &'a str,
    opts: &'a RunOptions<'a>,
    clock: &'a EtaClock,
}

/// Metrics of `model` on `data` (with a logit bias when given).
fn metrics<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &DeviceData<B>,
    cfg: &TrainConfig,
    bars: bool,
    bias: Option<&[f32]>,
) -> Result<Metrics> {
    let opts = EvalOptions { batch_size: cfg.eval_batch_size, show_bar: bars, bias, keep_logits: false };
    Ok(Metrics::from_matrix(&train::evaluate_with(be, model, data, &opts)?.confusion))
}

/// A training's report and the reports of its post-hoc biases.
type Trained = (StageReport, Vec<(Method, StageReport)>);

/// Trains one training (checkpointing every epoch); `None` when stopped. With `fit_bias`, also
/// its model with each post-hoc logit bias fitted on the validation split.
fn run_stage<B: Backend>(be: &B, st: &StageRun<'_, B>) -> Result<Option<Trained>> {
    let t0 = Instant::now();
    let (cfg, opts, name) = (st.train_cfg, st.opts, st.spec.name.as_str());
    let online = st.spec.online();
    let max_batch = cfg.batch_size.max(cfg.eval_batch_size);
    // Same seed in every training of a seed: they differ only in what the training changes.
    let mut model = Model::new(be, st.model_cfg, max_batch, cfg.seed).at(name, || "setup".to_string())?;
    say!(
        opts,
        "  {} parameters, {:.1} M multiply-adds per image, {} epoch{} of batch {}",
        model.parameter_count(),
        model.forward_macs() as f64 / 1e6,
        cfg.epochs,
        if cfg.epochs == 1 { "" } else { "s" },
        cfg.batch_size
    );
    if online.is_some() && st.val_data.is_none() {
        return Err(usage(format!("{name}: online weights need a validation split (--val-size > 0)")));
    }
    // After every epoch but the last: the whole run's remaining time, and the online rule.
    let hook = |be: &B, model: &mut Model<B>, end: &EpochEnd<'_>| -> crate::Result<Option<Vec<f32>>> {
        say!(opts, "{}", st.clock.tick());
        match (online, st.val_data) {
            // The trainer monitors the validation split here (see `monitor` below).
            (Some(rule), Some(val)) => rule.next_weights(
                be,
                model,
                val,
                end.monitor,
                end.weights,
                (end.epoch, cfg.epochs),
                cfg.eval_batch_size,
            ),
            _ => Ok(None),
        }
    };
    let control = TrainControl {
        checkpoint: Some(st.checkpoint),
        resume: st.resume,
        stop: st.opts.stop,
        on_epoch: Some(&hook as EpochHook<'_, B>),
        run_id: Some(st.run_id),
    };
    // Epochs are monitored on the validation split when there is one: the test set is only
    // evaluated once, for the report.
    let monitor = match st.val_data {
        Some(v) => Monitor::Val(v),
        None => Monitor::Test(st.test_data),
    };
    let job = TrainJob {
        monitor: Some(monitor),
        progress: st.progress,
        logit_adjust: st.logit_adjust,
        ..TrainJob::new(st.train_data, st.weights, cfg, name)
    };
    let outcome = train::train_with(be, &mut model, &job, control)?;
    let (epochs, last) = match outcome {
        TrainOutcome::Finished { logs, monitor } => (logs, monitor),
        TrainOutcome::Stopped { .. } => return Ok(None),
    };
    let bars = st.progress.bars;
    // The last epoch's evaluation of the monitored split is of the final model: reuse it.
    let (last_val, last_test) = match monitor {
        Monitor::Val(_) => (last, None),
        Monitor::Test(_) => (None, last),
    };
    let fin = |split: &'static str| move || format!("final evaluation ({split} split)");
    let test = match last_test {
        Some(c) => Metrics::from_matrix(&c),
        None => metrics(be, &mut model, st.test_data, cfg, bars, None).at(name, fin("test"))?,
    };
    let train_m = metrics(be, &mut model, st.train_data, cfg, bars, None).at(name, fin("training"))?;
    let val = match (st.val_data, last_val) {
        (Some(_), Some(c)) => Some(Metrics::from_matrix(&c)),
        (Some(v), None) => Some(metrics(be, &mut model, v, cfg, bars, None).at(name, fin("validation"))?),
        (None, _) => None,
    };
    train::save_model(st.model_path, &model, be).at(name, || "saving the model".to_string())?;
    // Wall time of this process; a resumed training adds the epochs' time before the stop.
    let before: f64 = st.resume.map_or(0.0, |c| c.meta.logs.iter().map(|l| l.seconds).sum::<f64>());
    let seconds = before + t0.elapsed().as_secs_f64();
    say!(
        opts,
        "  test acc. {:.1}%, balanced {:.1}%, worst class {:.1}%, train acc. {:.1}% ({})",
        100.0 * test.accuracy,
        100.0 * test.balanced_accuracy,
        100.0 * test.worst_recall(),
        100.0 * train_m.accuracy,
        format_duration(seconds)
    );
    // The hook does not run after the last epoch.
    if epochs.len() > st.resume.map_or(0, |c| c.meta.logs.len()) {
        say!(opts, "{}", st.clock.tick());
    }
    let report = StageReport {
        name: name.to_string(),
        class_weights: match epochs.last() {
            Some(l) if !l.class_weights.is_empty() => l.class_weights.clone(),
            _ => st.weights.iter().map(|&w| w as f64).collect(),
        },
        seconds,
        epochs,
        test,
        train: train_m,
        val,
        seed: Some(cfg.seed),
        method: None,
        model: None,
        bias: None,
    };
    let mut biased = Vec::new();
    for &kind in &st.spec.fit_bias {
        let val = st
            .val_data
            .ok_or_else(|| usage(format!("{name}: a post-hoc bias needs a validation split (--val-size > 0)")))?;
        let place = || format!("post-hoc {}", kind.method());
        biased.push((kind.method(), fit_bias(be, &mut model, val, st, &report, kind).at(name, place)?));
    }
    Ok(Some((report, biased)))
}

/// The splits crt retrains on (training) and evaluates on.
struct CrtData<'a, B: Backend> {
    train: &'a DeviceData<B>,
    test: &'a DeviceData<B>,
    val: Option<&'a DeviceData<B>>,
}

/// crt: the model saved in `base` with its final linear layer retrained on frozen features
/// with `weights` ([`train::retrain_classifier`]), evaluated on every split.
#[allow(clippy::too_many_arguments)]
fn run_crt<B: Backend>(
    be: &B,
    st: &StageSpec,
    base: &Path,
    weights: &[f32],
    model_cfg: ModelConfig,
    cfg: &TrainConfig,
    data: &CrtData<'_, B>,
    opts: &RunOptions<'_>,
) -> Result<(StageReport, Model<B>)> {
    let t0 = Instant::now();
    let name = st.name.as_str();
    let max_batch = cfg.batch_size.max(cfg.eval_batch_size);
    let place = || "crt: loading the base model".to_string();
    let mut model = Model::new(be, model_cfg, max_batch, cfg.seed).at(name, place)?;
    train::load_model(base, &mut model, be).at(name, place)?;
    let place = || "crt: retraining the classifier".to_string();
    let losses = train::retrain_classifier(be, &mut model, data.train, weights, cfg).at(name, place)?;
    let bars = !opts.quiet && !opts.silent;
    let fin = |split: &'static str| move || format!("final evaluation ({split} split)");
    let test = metrics(be, &mut model, data.test, cfg, bars, None).at(name, fin("test"))?;
    let train_m = metrics(be, &mut model, data.train, cfg, bars, None).at(name, fin("training"))?;
    let val = match data.val {
        Some(v) => Some(metrics(be, &mut model, v, cfg, bars, None).at(name, fin("validation"))?),
        None => None,
    };
    let seconds = t0.elapsed().as_secs_f64();
    say!(
        opts,
        "  crt: {} epochs on frozen features, loss {:.3} -> {:.3}",
        cfg.epochs,
        losses.first().copied().unwrap_or(f32::NAN),
        losses.last().copied().unwrap_or(f32::NAN)
    );
    say!(
        opts,
        "  test acc. {:.1}%, balanced {:.1}%, worst class {:.1}%, train acc. {:.1}% ({})",
        100.0 * test.accuracy,
        100.0 * test.balanced_accuracy,
        100.0 * test.worst_recall(),
        100.0 * train_m.accuracy,
        format_duration(seconds)
    );
    let report = StageReport {
        name: name.to_string(),
        class_weights: weights.iter().map(|&w| f64::from(w)).collect(),
        seconds,
        epochs: Vec::new(),
        test,
        train: train_m,
        val,
        seed: Some(cfg.seed),
        method: None,
        model: None,
        bias: None,
    };
    Ok((report, model))
}

/// Fits a per-class logit bias on the validation logits and evaluates the model with it on
/// every split.
fn fit_bias<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    val: &DeviceData<B>,
    st: &StageRun<'_, B>,
    plain: &StageReport,
    kind: BiasKind,
) -> Result<StageReport> {
    let (cfg, opts, name) = (st.train_cfg, st.opts, st.spec.name.as_str());
    let fit = kind.fit(be, model, val, cfg.eval_batch_size)?;
    let method = kind.method();
    let (what, before, after) = match kind.targets_f1() {
        true => ("F1", fit.worst_f1_before(), fit.worst_f1()),
        false => ("recall", fit.worst_recall_before(), fit.worst_recall()),
    };
    say!(
        opts,
        "  {method} fitted ({} steps): worst validation {what} {:.1}% -> {:.1}%",
        fit.steps,
        100.0 * before,
        100.0 * after
    );
    let bias = Some(fit.bias.as_slice());
    let bars = st.progress.bars;
    let test = metrics(be, model, st.test_data, cfg, bars, bias)?;
    let train_m = metrics(be, model, st.train_data, cfg, bars, bias)?;
    let val_m = metrics(be, model, val, cfg, bars, bias)?;
    say!(
        opts,
        "  with {method}: test acc. {:.1}%, worst class {:.1}%, spread {:.1} points",
        100.0 * test.accuracy,
        100.0 * test.worst_recall(),
        100.0 * test.recall_spread()
    );
    Ok(StageReport {
        name: format!("{name} + post-hoc {method}"),
        test,
        train: train_m,
        val: Some(val_m),
        bias: Some(fit.bias.iter().map(|&b| b as f64).collect()),
        epochs: Vec::new(),
        ..plain.clone()
    })
}

/// Whether a manifest failed to read because it is damaged (unparsable, truncated, another
/// format version, its checksum not matching), rather than unreadable (permissions, a full disk).
fn damaged(e: &report::ReportError) -> bool {
    use report::ReportError as R;
    matches!(e, R::Json { .. } | R::Corrupted { .. } | R::FormatVersion { .. })
}

/// What to do when a file the interrupted run needs is damaged.
const RESUME_HINT: &str = "the interrupted run cannot be resumed: start it over with --overwrite (without --resume)";

/// A damaged manifest's error with what to do; a checksum mismatch says so itself.
fn with_hint(e: report::ReportError, hint: &str) -> ExperimentError {
    match e {
        e @ report::ReportError::Corrupted { .. } => e.into(),
        e => ExperimentError::Damaged { error: Box::new(e.into()), hint: hint.into() },
    }
}

/// Whether the files of a finished training in the run in progress were recorded and are intact:
/// `Ok(false)` when they were not recorded (the run stopped between writing and recording them:
/// train it again), an error naming the file when one no longer matches its checksum.
fn finished_intact(dir: &RunDir, manifest: &RunManifest, st: &StageSpec) -> Result<bool> {
    let mut names = vec![format!("{}.json", st.key), format!("{}.safetensors", st.key)];
    names.extend(st.fit_bias.iter().map(|kind| format!("{}.{}.json", st.key, kind.method())));
    for name in &names {
        if dir.staging().join(name).exists() && RunDir::verify(dir.staging(), manifest, name)? == Checked::NotRecorded {
            return Ok(false);
        }
    }
    Ok(true)
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut bytes =
        serde_json::to_vec_pretty(v).map_err(|source| ExperimentError::Json { path: path.into(), source })?;
    bytes.push(b'\n');
    Ok(crate::fs::write_atomic(path, &bytes)?)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(ExperimentError::io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| ExperimentError::Json { path: path.into(), source })
}

/// Refuses to combine results with a run made on other data or with another configuration,
/// naming each field that differs. `ignore`: configuration keys allowed to differ.
fn check_same_run(
    saved: &serde_json::Value,
    config: &serde_json::Value,
    data: &DataFingerprint,
    what: &str,
    ignore: &[&str],
) -> Result<()> {
    let saved_data: DataFingerprint = serde_json::from_value(saved.get("data").cloned().unwrap_or_default())
        .map_err(|e| ExperimentError::Refused(format!("{what} has no readable data fingerprint: {e}")))?;
    let diffs = saved_data.diff(data);
    if !diffs.is_empty() {
        return Err(usage(format!(
            "{what} was run on other data; fields that differ:\n{}\nuse the same data (--data-dir, --synthetic, \
             --seed, subsets), or run both stages",
            describe_diffs(&diffs)
        )));
    }
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            for k in ignore {
                o.remove(*k);
            }
        }
        v
    };
    let diffs = diff_fields(&strip(saved.get("config").unwrap_or(&serde_json::Value::Null)), &strip(config));
    if !diffs.is_empty() {
        return Err(usage(format!(
            "{what} was run with another configuration; fields that differ:\n{}\nuse the same flags (or run both \
             stages)",
            describe_diffs(&diffs)
        )));
    }
    Ok(())
}
