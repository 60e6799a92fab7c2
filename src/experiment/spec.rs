//! What an experiment runs: [`ExperimentSpec`], plain data with defaults and serde.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::methods::{Method, RecallSplit};

/// Where the images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataSpec {
    /// A CIFAR-10 binary folder (it must exist); `None`: `$CIFAR10_DIR`, else
    /// `data/cifar-10-batches-bin` (downloaded when missing, see [`crate::data::resolve`]).
    pub dir: Option<PathBuf>,
    /// The built-in synthetic set (shapes and textures, not CIFAR-10).
    pub synthetic: bool,
    /// Whether the default folder may be downloaded.
    pub download: bool,
    /// Train on the first N training images only.
    pub train_subset: Option<usize>,
    /// Evaluate on the first N test images only.
    pub test_subset: Option<usize>,
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec { dir: None, synthetic: false, download: true, train_subset: None, test_subset: None }
    }
}

impl DataSpec {
    /// The built-in synthetic set, never downloading.
    pub fn synthetic() -> Self {
        DataSpec { synthetic: true, download: false, ..DataSpec::default() }
    }
}

/// The method comparison's settings (used when [`ExperimentSpec::compare`] is set). Settings
/// left `None` take their default (the accessors of the same name give the value a run uses);
/// a setting given without `compare` is refused, since nothing would use it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompareSpec {
    /// The methods (the uniform baseline is always included) [all, [`Method::ALL`]].
    pub methods: Option<Vec<Method>>,
    /// Seeds per method: `seed`, `seed + 1`, ... [[`DEFAULT_SEEDS`]].
    pub seeds: Option<usize>,
    /// Rounds of iterated reweighting (round 1 is the practitioner's recipe), 2 to 10 (default 3).
    pub rounds: Option<usize>,
    /// Step eta of online-dro's exponentiated-gradient weights (default 0.3).
    pub eg_step: Option<f64>,
    /// Exponent tau of the online difficulty weights (default 1).
    pub tau: Option<f64>,
    /// CDB's dynamic tau for the online difficulty weights instead of a fixed one (see
    /// [`cdb_dynamic_tau`](crate::methods::cdb_dynamic_tau)).
    pub cdb_dynamic: bool,
    /// Epochs K of drw trained with the recall weights (its last K; 1 to epochs - 1) [the last
    /// fifth, [`drw_default_epochs`](crate::methods::drw_default_epochs)].
    pub drw_epochs: Option<usize>,
    /// Weight decay of reweight-wd and uniform-wd (default 5e-3).
    pub strong_wd: Option<f64>,
    /// Exponent gamma of vs-loss's logit scale (default [`DEFAULT_VS_GAMMA`]).
    pub vs_gamma: Option<f64>,
    /// Factor tau of vs-loss's logit offset (default [`DEFAULT_VS_TAU`]).
    pub vs_tau: Option<f64>,
    /// Exponent gamma of cdt's class temperatures (default [`DEFAULT_CDT_GAMMA`]).
    pub cdt_gamma: Option<f64>,
    /// Further reweighting exponents (the exponent sweep).
    pub sweep: Vec<f64>,
    /// Accuracy budget of bias-budget and bias-f1-budget, in percentage points of validation accuracy (default 1).
    pub bias_budget: Option<f64>,
    /// Also train the long forms of the methods for this many epochs (the fit regime).
    pub long_epochs: Option<usize>,
    /// Epochs of crt's classifier retraining on frozen features, 1 to 1000 [[`DEFAULT_CRT_EPOCHS`]].
    pub crt_epochs: Option<usize>,
}

/// crt's retraining epochs by default: Kang et al. retrain the classifier for 10 epochs, and a
/// linear layer on fixed features converges in a few epochs (each costs one linear pass).
pub const DEFAULT_CRT_EPOCHS: usize = 10;

impl CompareSpec {
    /// The methods compared.
    pub fn methods(&self) -> &[Method] {
        self.methods.as_deref().unwrap_or(&Method::ALL)
    }

    /// Epochs of crt's classifier retraining.
    pub fn crt_epochs(&self) -> usize {
        self.crt_epochs.unwrap_or(DEFAULT_CRT_EPOCHS)
    }

    /// Rounds of iterated reweighting.
    pub fn rounds(&self) -> usize {
        self.rounds.unwrap_or(3)
    }

    /// Step of online-dro's exponentiated-gradient weights.
    pub fn eg_step(&self) -> f64 {
        self.eg_step.unwrap_or(0.3)
    }

    /// Exponent tau of the online difficulty weights.
    pub fn tau(&self) -> f64 {
        self.tau.unwrap_or(1.0)
    }

    /// Weight decay of reweight-wd and uniform-wd.
    pub fn strong_wd(&self) -> f64 {
        self.strong_wd.unwrap_or(5e-3)
    }

    /// Exponent gamma of vs-loss's logit scale.
    pub fn vs_gamma(&self) -> f64 {
        self.vs_gamma.unwrap_or(DEFAULT_VS_GAMMA)
    }

    /// Factor tau of vs-loss's logit offset.
    pub fn vs_tau(&self) -> f64 {
        self.vs_tau.unwrap_or(DEFAULT_VS_TAU)
    }

    /// Exponent gamma of cdt's class temperatures.
    pub fn cdt_gamma(&self) -> f64 {
        self.cdt_gamma.unwrap_or(DEFAULT_CDT_GAMMA)
    }

    /// Accuracy budget of bias-budget and bias-f1-budget, in percentage points of validation accuracy.
    pub fn bias_budget(&self) -> f64 {
        self.bias_budget.unwrap_or(1.0)
    }
}

/// Everything a run needs to know. Sizes left `None` take the device's default (the CPU's are
/// smaller, see [`plan`](super::plan)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExperimentSpec {
    pub data: DataSpec,
    /// Output folder; it always holds one complete run.
    pub out: PathBuf,
    /// Replace the finished run in `out` (or discard an interrupted one).
    pub overwrite: bool,
    /// Continue the interrupted run of `out` from its last checkpoint.
    pub resume: bool,
    /// Reuse stage 1 of the finished run in `out` and run stage 2 again.
    pub stage2_only: bool,
    /// Epochs per training [8 on the CPU, 30 on a GPU].
    pub epochs: Option<usize>,
    /// Training batch size [256 on the CPU, 512 on a GPU].
    pub batch_size: Option<usize>,
    /// Peak learning rate [0.2 x batch size / 256].
    pub lr: Option<f32>,
    /// Channels of the stem [16 on the CPU, 64 on a GPU].
    pub width: Option<usize>,
    /// Convolutions per stage [1 on the CPU, 2 on a GPU].
    pub depth: Option<usize>,
    /// Exponent p of the reweighting `w_c = (mean(r) / r_c)^p`.
    pub exponent: f64,
    /// Seed of the initialization, shuffling and augmentation (and of the synthetic set).
    pub seed: u64,
    /// Train without augmentation (no random crop, no flip).
    pub no_augment: bool,
    /// Images held out of the training set for validation; `None`: a tenth of the training
    /// images, at most 5,000 ([`default_val_size`]); 0 for none.
    pub val_size: Option<usize>,
    /// Seed of the validation split [`seed`](Self::seed).
    pub split_seed: Option<u64>,
    /// Where the two-stage run's stage-2 weights come from.
    pub weights_from: RecallSplit,
    /// Run the method comparison instead of the two-stage run.
    pub compare: bool,
    pub comparison: CompareSpec,
}

impl Default for ExperimentSpec {
    fn default() -> Self {
        ExperimentSpec {
            data: DataSpec::default(),
            out: PathBuf::from("out/cifar10"),
            overwrite: false,
            resume: false,
            stage2_only: false,
            epochs: None,
            batch_size: None,
            lr: None,
            width: None,
            depth: None,
            exponent: 4.0,
            seed: 0,
            no_augment: false,
            val_size: None,
            split_seed: None,
            weights_from: RecallSplit::Val,
            compare: false,
            comparison: CompareSpec::default(),
        }
    }
}

/// VS-loss's gamma when `--vs-gamma` is not given: 0.15, with [`DEFAULT_VS_TAU`] the values of a
/// public VS-loss implementation for CIFAR-10-LT (`model/vsloss.py` of TeamOfProfGuo/GLMC); the
/// paper's own per-dataset values were not checked here (see docs/experiment.md).
pub const DEFAULT_VS_GAMMA: f64 = 0.15;

/// VS-loss's tau when `--vs-tau` is not given: 1.25 (see [`DEFAULT_VS_GAMMA`]).
pub const DEFAULT_VS_TAU: f64 = 1.25;

/// CDT's gamma when `--cdt-gamma` is not given: 0.2, the middle of the range [0, 0.4] that a
/// public CDT implementation's documentation gives for CIFAR-10; an assumption, not the paper's
/// checked value (see docs/experiment.md).
pub const DEFAULT_CDT_GAMMA: f64 = 0.2;

/// The largest `--vs-gamma`, `--vs-tau` and `--cdt-gamma`: far beyond the papers' values (all
/// under 2); larger ones only underflow the scales of hard classes towards 0.
pub const MAX_LOGIT_PARAM: f64 = 4.0;

/// Seeds per method of a comparison when [`CompareSpec::seeds`] is not set.
pub const DEFAULT_SEEDS: usize = 3;

/// The most images the default validation split holds.
pub const MAX_DEFAULT_VAL_SIZE: usize = 5000;

/// The default validation split: a tenth of the training images, at most
/// [`MAX_DEFAULT_VAL_SIZE`] (5,000 of CIFAR-10's 50,000).
pub fn default_val_size(train_images: usize) -> usize {
    (train_images / 10).min(MAX_DEFAULT_VAL_SIZE)
}

impl ExperimentSpec {
    /// The seeds of the run: one for the two-stage run, [`CompareSpec::seeds`] for a comparison.
    pub fn seed_count(&self) -> usize {
        if self.compare {
            self.comparison.seeds.unwrap_or(DEFAULT_SEEDS)
        } else {
            1
        }
    }

    /// The seed of the validation split.
    pub fn split_seed(&self) -> u64 {
        self.split_seed.unwrap_or(self.seed)
    }
}
