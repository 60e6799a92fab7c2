//! The planner: which trainings a spec runs, in dependency order, and which comparison rows
//! are read from them.
use crate::methods::{drw_default_epochs, BiasKind, LogitRule, Method, MethodId, OnlineRule, RecallSplit, Weights};
use crate::train::{ModelConfig, TrainConfig};

use super::spec::ExperimentSpec;

/// The model and training settings of a run, defaults resolved for the device.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub model: ModelConfig,
    pub train: TrainConfig,
}

/// The spec's sizes with the device's defaults: the CPU's are smaller than a GPU's.
pub fn plan(spec: &ExperimentSpec, gpu: bool, classes: usize) -> Plan {
    let batch = spec.batch_size.unwrap_or(if gpu { 512 } else { 256 });
    let train = TrainConfig {
        epochs: spec.epochs.unwrap_or(if gpu { 30 } else { 8 }),
        batch_size: batch,
        lr: spec.lr.unwrap_or(0.2 * batch as f32 / 256.0),
        seed: spec.seed,
        ..TrainConfig::default()
    };
    let train = if spec.no_augment { TrainConfig { crop_pad: 0, flip: false, ..train } } else { train };
    let model = ModelConfig {
        width: spec.width.unwrap_or(if gpu { 64 } else { 16 }),
        depth: spec.depth.unwrap_or(if gpu { 2 } else { 1 }),
        classes,
    };
    Plan { model, train }
}

/// The training seed of the null row of `seed`: far from the seeds a comparison uses
/// (`--seed`, `--seed + 1`, ...), so no null training repeats another row's training.
pub fn null_seed(seed: u64) -> u64 {
    seed.wrapping_add(1_000_000)
}

/// One training of a run: a file-name key, a display name, its weights, seed and overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSpec {
    pub key: String,
    pub name: String,
    pub weights: Weights,
    pub seed: u64,
    /// Other than the run's epochs (the fit-regime diagnostic).
    pub epochs: Option<usize>,
    /// Other than the usual weight decay.
    pub weight_decay: Option<f32>,
    /// Post-hoc logit biases to fit on the validation split and evaluate with.
    pub fit_bias: Vec<BiasKind>,
    /// A logit adjustment of the training loss from the validation recall of training `.0`.
    pub logit: Option<(usize, LogitRule)>,
    /// Not a training: the model of training `of` with its final linear layer retrained on
    /// frozen features with this training's weights (crt).
    pub crt: Option<CrtSpec>,
}

/// Which model crt retrains the classifier of, and for how many epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrtSpec {
    pub of: usize,
    pub epochs: usize,
}

impl StageSpec {
    fn new(key: String, name: String, weights: Weights, seed: u64) -> Self {
        StageSpec {
            key,
            name,
            weights,
            seed,
            epochs: None,
            weight_decay: None,
            fit_bias: Vec::new(),
            logit: None,
            crt: None,
        }
    }

    /// The online rule, for an online training.
    pub fn online(&self) -> Option<OnlineRule> {
        match self.weights {
            Weights::Online(rule) => Some(rule),
            _ => None,
        }
    }
}

/// One row of the comparison: a method on one seed, read from training `stage` (with its
/// fitted bias when `bias`).
#[derive(Clone, Debug, PartialEq)]
pub struct MethodSpec {
    pub id: MethodId,
    pub name: String,
    pub seed: u64,
    pub stage: usize,
    /// Read the training's model with this fitted bias.
    pub bias: Option<Method>,
}

/// The trainings of a run, in dependency order, and the comparison rows read from them (none
/// for the two-stage run).
pub fn stages(spec: &ExperimentSpec) -> (Vec<StageSpec>, Vec<MethodSpec>) {
    let p = spec.exponent;
    if !spec.compare {
        let what = match spec.weights_from {
            RecallSplit::Val => "validation",
            RecallSplit::Test => "TEST (practitioner's variant)",
        };
        let specs = vec![
            StageSpec::new("stage1".into(), "stage 1 (uniform weights)".into(), Weights::Uniform, spec.seed),
            StageSpec::new(
                "stage2".into(),
                format!("stage 2 (weights from stage-1 {what} recall, p = {p})"),
                Weights::FromRecall { of: 0, exponent: p, split: spec.weights_from, compose: false },
                spec.seed,
            ),
        ];
        return (specs, Vec::new());
    }
    let cmp = &spec.comparison;
    let want = |m: Method| m == Method::Uniform || cmp.methods().contains(&m);
    let mut biases = Vec::new();
    if want(Method::Bias) {
        biases.push(BiasKind::MaxMin);
    }
    if want(Method::BiasBudget) {
        biases.push(BiasKind::Budget(cmp.bias_budget() / 100.0));
    }
    if want(Method::BiasF1) {
        biases.push(BiasKind::F1MaxMin);
    }
    if want(Method::BiasF1Budget) {
        biases.push(BiasKind::F1Budget(cmp.bias_budget() / 100.0));
    }
    let wd = cmp.strong_wd() as f32;
    let mut specs: Vec<StageSpec> = Vec::new();
    let mut methods: Vec<MethodSpec> = Vec::new();
    for k in 0..spec.seed_count() as u64 {
        let seed = spec.seed.wrapping_add(k);
        let add = |specs: &mut Vec<StageSpec>, st: StageSpec| {
            specs.push(st);
            specs.len() - 1
        };
        let method = |methods: &mut Vec<MethodSpec>, id: MethodId, name: String, stage: usize| {
            let bias = id.is_bias().then(|| id.method());
            methods.push(MethodSpec { id, name, seed, stage, bias })
        };
        let stage = |key: String, name: String, weights: Weights| {
            StageSpec::new(format!("s{seed}-{key}"), format!("{name}, seed {seed}"), weights, seed)
        };
        let u = add(&mut specs, stage("uniform".into(), "uniform".into(), Weights::Uniform));
        specs[u].fit_bias = biases.clone();
        method(&mut methods, Method::Uniform.into(), "uniform (stage 1)".into(), u);
        if want(Method::Null) {
            // Paired with `seed` like every method, but trained with another seed: the same split,
            // another initialisation, batch order and augmentation.
            let mut st = stage("null".into(), "uniform, other training seed".into(), Weights::Uniform);
            st.seed = null_seed(seed);
            st.name = format!("uniform, training seed {} (null for seed {seed})", st.seed);
            let r = add(&mut specs, st);
            method(&mut methods, Method::Null.into(), "null: uniform, training seed + 1000000".into(), r);
        }
        let from = |of, split, compose| Weights::FromRecall { of, exponent: p, split, compose };
        // Reweighting with strong weight decay (weights from `base`'s validation recall) and its
        // uniform control, for the run's epochs or `long` of them.
        let wd_pair = |specs: &mut Vec<StageSpec>, methods: &mut Vec<MethodSpec>, base, long: Option<usize>| {
            let (ep, label, control) = match long {
                Some(n) => (format!(" {n} ep"), format!(", {n} epochs"), ""),
                None => (String::new(), String::new(), " (control)"),
            };
            let mut add_wd = |m: Method, name: String, weights: Weights, label: String| {
                let id = if long.is_some() { MethodId::Long(m) } else { MethodId::Plain(m) };
                let mut st = stage(id.to_string(), format!("{name}{ep}"), weights);
                (st.epochs, st.weight_decay) = (long, Some(wd));
                let r = add(specs, st);
                method(methods, id, label, r);
            };
            if want(Method::ReweightWd) {
                let w = from(base, RecallSplit::Val, false);
                let label = format!("reweight p={p} + weight decay {wd}{label}");
                add_wd(Method::ReweightWd, format!("reweight p={p} + wd {wd}"), w, label);
            }
            if want(Method::UniformWd) {
                let label = format!("uniform + weight decay {wd}{label}{control}");
                add_wd(Method::UniformWd, format!("uniform + wd {wd}"), Weights::Uniform, label);
            }
        };
        let mut reweight = None;
        if want(Method::Reweight) || want(Method::Iterated) {
            let st = stage("reweight".into(), format!("reweight p={p}"), from(u, RecallSplit::Val, false));
            let r = add(&mut specs, st);
            reweight = Some(r);
            if want(Method::Reweight) {
                method(&mut methods, Method::Reweight.into(), format!("reweight p={p} (val recall)"), r);
            }
        }
        if want(Method::ReweightTest) {
            let w = from(u, RecallSplit::Test, false);
            let r = add(&mut specs, stage("reweight-test".into(), format!("reweight p={p} from TEST recall"), w));
            let label = format!("reweight p={p} (TEST recall, practitioner's variant)");
            method(&mut methods, Method::ReweightTest.into(), label, r);
        }
        if let (true, Some(mut prev)) = (want(Method::Iterated), reweight) {
            for round in 2..=cmp.rounds() {
                let w = from(prev, RecallSplit::Val, true);
                prev =
                    add(&mut specs, stage(format!("iterated-{round}"), format!("iterated reweight round {round}"), w));
            }
            let label = format!("iterated reweight, {} rounds", cmp.rounds());
            method(&mut methods, Method::Iterated.into(), label, prev);
        }
        if want(Method::OnlineDro) {
            let w = Weights::Online(OnlineRule::Eg { step: cmp.eg_step() });
            let r = add(&mut specs, stage("online-dro".into(), "online DRO".into(), w));
            let label = format!("online DRO (val loss, step {})", cmp.eg_step());
            method(&mut methods, Method::OnlineDro.into(), label, r);
        }
        if want(Method::OnlineDifficulty) {
            let w = Weights::Online(OnlineRule::Difficulty { tau: cmp.tau(), dynamic: cmp.cdb_dynamic });
            let r = add(&mut specs, stage("online-difficulty".into(), "online difficulty".into(), w));
            let label = if cmp.cdb_dynamic {
                "online (1 - val recall)^tau, CDB's dynamic tau".to_string()
            } else {
                format!("online (1 - val recall)^{}", cmp.tau())
            };
            method(&mut methods, Method::OnlineDifficulty.into(), label, r);
        }
        if want(Method::Drw) {
            let w = Weights::Online(OnlineRule::Drw { reweighted: cmp.drw_epochs, exponent: p });
            let r = add(&mut specs, stage("drw".into(), format!("DRW p={p}"), w));
            // The reweighted epochs, when the run's epochs are known here.
            let k = cmp.drw_epochs.or_else(|| spec.epochs.map(drw_default_epochs));
            let label = match k {
                Some(0) => format!("DRW p={p} (uniform: no epoch to defer to)"),
                Some(k) => format!("DRW p={p} (val recall, last {k} ep)"),
                None => format!("DRW p={p} (val recall, last fifth)"),
            };
            method(&mut methods, Method::Drw.into(), label, r);
        }
        for rule in
            [LogitRule::Vs { gamma: cmp.vs_gamma(), tau: cmp.vs_tau() }, LogitRule::Cdt { gamma: cmp.cdt_gamma() }]
        {
            let m = rule.method();
            if !want(m) {
                continue;
            }
            let (name, label) = match rule {
                LogitRule::Vs { gamma, tau } => {
                    ("VS-loss".to_string(), format!("VS-loss gamma={gamma} tau={tau} (val recall)"))
                }
                LogitRule::Cdt { gamma } => {
                    ("CDT".to_string(), format!("class temperatures gamma={gamma} (val recall)"))
                }
            };
            let mut st = stage(m.name().into(), name, Weights::Uniform);
            st.logit = Some((u, rule));
            let r = add(&mut specs, st);
            method(&mut methods, m.into(), label, r);
        }
        if want(Method::Bias) {
            method(&mut methods, Method::Bias.into(), "post-hoc logit bias (val) on uniform".into(), u);
        }
        if want(Method::BiasBudget) {
            let name = format!("post-hoc logit bias (val), budget {} pt, on uniform", cmp.bias_budget());
            method(&mut methods, Method::BiasBudget.into(), name, u);
        }
        if want(Method::BiasF1) {
            method(&mut methods, Method::BiasF1.into(), "post-hoc bias for worst F1 (val) on uniform".into(), u);
        }
        if want(Method::BiasF1Budget) {
            let name = format!("post-hoc bias for worst F1 (val), budget {} pt", cmp.bias_budget());
            method(&mut methods, Method::BiasF1Budget.into(), name, u);
        }
        if want(Method::Crt) {
            let e = cmp.crt_epochs();
            let mut st =
                stage("crt".into(), format!("crt p={p}, {e} ep on frozen features"), from(u, RecallSplit::Val, false));
            st.crt = Some(CrtSpec { of: u, epochs: e });
            let r = add(&mut specs, st);
            method(&mut methods, Method::Crt.into(), format!("crt: last layer retrained, p={p}, {e} ep"), r);
        }
        wd_pair(&mut specs, &mut methods, u, None);
        for &q in &cmp.sweep {
            if q == 0.0 || q == p {
                continue; // p = 0 is uniform, p = the exponent is reweight
            }
            let id = MethodId::Sweep { exponent: q };
            let w = Weights::FromRecall { of: u, exponent: q, split: RecallSplit::Val, compose: false };
            let r = add(&mut specs, stage(id.to_string(), format!("reweight p={q}"), w));
            method(&mut methods, id, format!("reweight p={q} (sweep)"), r);
        }
        if let Some(n) = cmp.long_epochs {
            let mut st = stage("uniform-long".into(), format!("uniform {n} ep"), Weights::Uniform);
            st.epochs = Some(n);
            st.fit_bias = biases.clone();
            let ul = add(&mut specs, st);
            method(&mut methods, MethodId::Long(Method::Uniform), format!("uniform, {n} epochs"), ul);
            let mut st =
                stage("reweight-long".into(), format!("reweight p={p} {n} ep"), from(ul, RecallSplit::Val, false));
            st.epochs = Some(n);
            let rl = add(&mut specs, st);
            method(&mut methods, MethodId::Long(Method::Reweight), format!("reweight p={p}, {n} epochs"), rl);
            // Strong weight decay in the fitted regime: the condition under which the literature
            // says weights keep their effect. Weights from the long uniform run, as reweight-long.
            wd_pair(&mut specs, &mut methods, ul, Some(n));
            if want(Method::Bias) {
                let label = format!("post-hoc logit bias on uniform, {n} epochs");
                method(&mut methods, MethodId::Long(Method::Bias), label, ul);
            }
            if want(Method::BiasBudget) {
                let label = format!("post-hoc logit bias, budget {} pt, on uniform, {n} epochs", cmp.bias_budget());
                method(&mut methods, MethodId::Long(Method::BiasBudget), label, ul);
            }
            if want(Method::BiasF1) {
                let label = format!("post-hoc bias for worst F1, uniform {n} epochs");
                method(&mut methods, MethodId::Long(Method::BiasF1), label, ul);
            }
            if want(Method::BiasF1Budget) {
                let b = cmp.bias_budget();
                let label = format!("post-hoc bias for worst F1, budget {b} pt, {n} epochs");
                method(&mut methods, MethodId::Long(Method::BiasF1Budget), label, ul);
            }
        }
    }
    (specs, methods)
}
