//! The methods that try to even out per-class recall (feature `trainer`): the names they go by,
//! the class-weight rules (the practitioner's recipe and its iteration), the online rules run as
//! epoch hooks, and the post-hoc logit bias.
//!
//! [`Method`] is the single source of every method name: its serde names (kebab-case) are the
//! names of the command line, report.json, the CSV files, the tables and the charts.
//! [`MethodId`] adds the forms with a parameter (a method trained for the long run's epochs,
//! `uniform-long`; a reweighting of the exponent sweep, `sweep-p2`) with one
//! [`Display`](std::fmt::Display) and one [`FromStr`].
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::confusion::bias::{fit_f1_bias, fit_recall_bias, BiasFit, FitOptions};
use crate::confusion::ConfusionMatrix;
use crate::confusion::Metrics;
use crate::cross_entropy::weights::{cdt_scale, difficulty_weights, eg_update, vs_loss_adjust};
use crate::cross_entropy::weights_from_recall;
use crate::train::{self, Backend, DeviceData, EvalOptions, LogitAdjustment, Model};

/// A method of the comparison.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Stage 1: uniform class weights (the baseline).
    Uniform,
    /// Uniform again with another training seed (initialisation, batch order, augmentation) on
    /// the same split: its difference from uniform is the noise floor of every comparison.
    Null,
    /// The practitioner's recipe: weights (mean(r)/r_c)^p from stage 1's validation recall.
    Reweight,
    /// The same with stage 1's TEST recall (the practitioner's exact variant; leaks the test set).
    ReweightTest,
    /// Iterated reweighting: each round multiplies the weights by (mean(r)/r_c)^p of the
    /// previous round's validation recall.
    Iterated,
    /// Online group-DRO weights: after every epoch, `w_c <- w_c exp(eta * validation loss_c)`,
    /// mean 1 (a per-epoch, validation-loss variant of the exponentiated-gradient update of
    /// group DRO, Sagawa et al., ICLR 2020, which updates per minibatch on training loss).
    /// Formerly `online-eg`, still read under that name.
    #[serde(alias = "online-eg")]
    OnlineDro,
    /// Online difficulty weights (1 - validation recall_c)^tau, every epoch (CDB-CE of Sinha et
    /// al., ACCV 2020, with a fixed tau, or their dynamic tau with `--cdb-dynamic`).
    OnlineDifficulty,
    /// Deferred re-weighting (DRW, Cao et al., NeurIPS 2019): one training, uniform weights for
    /// its first epochs, then `(mean(r)/r_c)^p` from its own validation recall for the last
    /// `--drw-epochs`.
    Drw,
    /// VS-loss (Kini et al., NeurIPS 2021): the training loss sees `s_c x_c + o_c`, with
    /// `s_c = (r_c / max(r))^gamma` and `o_c = tau ln(r_c / sum(r))` from stage 1's validation
    /// recall `r` standing in for the class frequencies (see [`LogitRule`]).
    VsLoss,
    /// Class-dependent temperature (CDT, Ye et al., 2020): the training loss sees `x_c / a_c`,
    /// `a_c = (max(r) / r_c)^gamma` from stage 1's validation recall (see [`LogitRule`]).
    Cdt,
    /// Post-hoc per-class logit bias fitted on validation logits of stage 1 (no retraining),
    /// for the highest worst-class recall.
    Bias,
    /// The same bias, for the highest worst-class recall that costs at most a budget of
    /// validation accuracy.
    BiasBudget,
    /// Post-hoc per-class logit bias fitted on validation logits of stage 1 for the highest
    /// worst-class F1.
    BiasF1,
    /// The same F1 bias within a budget of validation accuracy.
    BiasF1Budget,
    /// Reweighting with strong weight decay.
    ReweightWd,
    /// Uniform weights with the same strong weight decay (the control of reweight-wd).
    UniformWd,
    /// Classifier retraining (cRT, Kang et al., ICLR 2020): stage 1's features frozen, its final
    /// linear layer re-initialised and retrained for `--crt-epochs` with the weights
    /// `(mean(r)/r_c)^p` from stage 1's validation recall (class-balanced sampling does nothing
    /// on balanced data).
    Crt,
}

impl Method {
    /// Every method, in the order of the comparison.
    pub const ALL: [Method; 17] = [
        Method::Uniform,
        Method::Null,
        Method::Reweight,
        Method::ReweightTest,
        Method::Iterated,
        Method::OnlineDro,
        Method::OnlineDifficulty,
        Method::Drw,
        Method::VsLoss,
        Method::Cdt,
        Method::Bias,
        Method::BiasBudget,
        Method::BiasF1,
        Method::BiasF1Budget,
        Method::ReweightWd,
        Method::UniformWd,
        Method::Crt,
    ];

    /// The method's name (its serde name): `online-dro`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Uniform => "uniform",
            Method::Null => "null",
            Method::Reweight => "reweight",
            Method::ReweightTest => "reweight-test",
            Method::Iterated => "iterated",
            Method::OnlineDro => "online-dro",
            Method::OnlineDifficulty => "online-difficulty",
            Method::Drw => "drw",
            Method::VsLoss => "vs-loss",
            Method::Cdt => "cdt",
            Method::Bias => "bias",
            Method::BiasBudget => "bias-budget",
            Method::BiasF1 => "bias-f1",
            Method::BiasF1Budget => "bias-f1-budget",
            Method::ReweightWd => "reweight-wd",
            Method::UniformWd => "uniform-wd",
            Method::Crt => "crt",
        }
    }

    /// One line on what the method does (the command line's help).
    pub fn help(self) -> &'static str {
        match self {
            Method::Uniform => "uniform class weights (the baseline)",
            Method::Null => "uniform with another training seed: the noise floor",
            Method::Reweight => "weights (mean(r)/r_c)^p from stage 1's validation recall",
            Method::ReweightTest => "the same from stage 1's TEST recall (the practitioner's variant)",
            Method::Iterated => "reweighting iterated over --rounds rounds",
            Method::OnlineDro => "group DRO per epoch: w_c *= exp(eta * val. loss_c) (was online-eg)",
            Method::OnlineDifficulty => "online weights (1 - val. recall_c)^tau (CDB-CE)",
            Method::Drw => "uniform, then (mean(r)/r_c)^p for the last --drw-epochs (DRW)",
            Method::VsLoss => "VS-loss (--vs-gamma, --vs-tau) from stage 1's val. recall",
            Method::Cdt => "class-dependent temperature (--cdt-gamma), stage 1's val. recall",
            Method::Bias => "post-hoc logit bias for the highest worst-class recall",
            Method::BiasBudget => "the same within --bias-budget points of accuracy",
            Method::BiasF1 => "post-hoc logit bias for the highest worst-class F1",
            Method::BiasF1Budget => "the same within --bias-budget points of accuracy",
            Method::ReweightWd => "reweighting with strong weight decay (--strong-wd)",
            Method::UniformWd => "uniform weights with the same weight decay",
            Method::Crt => "stage 1's last layer retrained on frozen features (cRT)",
        }
    }

    /// The method's former names, still accepted on the command line and in report.json.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Method::OnlineDro => &["online-eg"],
            _ => &[],
        }
    }

    /// The method of a name or former name ([`aliases`](Self::aliases)).
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name || m.aliases().contains(&name))
    }

    /// The current key of a method key read from a report (`online-eg` is `online-dro`; a
    /// parameterized key such as `online-eg-long` too); other keys unchanged.
    pub fn canonical_key(key: &str) -> String {
        let (base, long) = match key.strip_suffix("-long") {
            Some(b) => (b, "-long"),
            None => (key, ""),
        };
        match Method::ALL.into_iter().find(|m| m.aliases().contains(&base)) {
            Some(m) => format!("{}{long}", m.name()),
            None => key.to_string(),
        }
    }

    /// Whether the method is a post-hoc bias on a trained model (it trains nothing itself).
    pub fn is_bias(self) -> bool {
        matches!(self, Method::Bias | Method::BiasBudget | Method::BiasF1 | Method::BiasF1Budget)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a method, with the names that are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown method {name:?}: one of {}", Method::ALL.map(Method::name).join(", "))]
pub struct UnknownMethod {
    pub name: String,
}

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::from_name(s).ok_or_else(|| UnknownMethod { name: s.to_string() })
    }
}

/// One row of the comparison: a method, possibly with a parameter.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum MethodId {
    /// The method as the run's epochs train it: `reweight`.
    Plain(Method),
    /// The method trained (or, for a bias, fitted on a model trained) for the run's long
    /// epochs (the fit regime): `reweight-long`.
    Long(Method),
    /// Reweighting with another exponent (the exponent sweep): `sweep-p2`, `sweep-p-0.5`.
    Sweep { exponent: f64 },
}

impl MethodId {
    /// The method without its parameter (reweighting for a sweep point).
    pub fn method(self) -> Method {
        match self {
            MethodId::Plain(m) | MethodId::Long(m) => m,
            MethodId::Sweep { .. } => Method::Reweight,
        }
    }

    /// Whether it is a post-hoc bias.
    pub fn is_bias(self) -> bool {
        matches!(self, MethodId::Plain(m) | MethodId::Long(m) if m.is_bias())
    }
}

impl From<Method> for MethodId {
    fn from(m: Method) -> Self {
        MethodId::Plain(m)
    }
}

impl fmt::Display for MethodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MethodId::Plain(m) => write!(f, "{m}"),
            MethodId::Long(m) => write!(f, "{m}-long"),
            MethodId::Sweep { exponent } => write!(f, "sweep-p{exponent}"),
        }
    }
}

impl FromStr for MethodId {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("sweep-p") {
            return match p.parse::<f64>() {
                Ok(exponent) if exponent.is_finite() => Ok(MethodId::Sweep { exponent }),
                _ => Err(UnknownMethod { name: s.to_string() }),
            };
        }
        if let Ok(m) = s.parse::<Method>() {
            return Ok(MethodId::Plain(m));
        }
        match s.strip_suffix("-long").map(str::parse::<Method>) {
            Some(Ok(m)) => Ok(MethodId::Long(m)),
            _ => Err(UnknownMethod { name: s.to_string() }),
        }
    }
}

impl Serialize for MethodId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MethodId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The split whose recall gives a reweighting's class weights.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecallSplit {
    /// The validation split held out of the training set.
    Val,
    /// The test set (the practitioner's variant: the test set is then no longer unseen).
    Test,
}

/// How a training's class weights are chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Weights {
    Uniform,
    /// `(mean(r) / r_c)^exponent` from the recall of training `of` (an earlier one) on `split`;
    /// with `compose`, multiplied by that training's own weights (iterated reweighting) and
    /// renormalized to mean 1.
    FromRecall {
        of: usize,
        exponent: f64,
        split: RecallSplit,
        compose: bool,
    },
    /// Uniform at first, then updated after every epoch from the validation split.
    Online(OnlineRule),
}

/// The class weights of a reweighting from the earlier training's metrics on the chosen split
/// (`metrics`) and, with `compose`, its weights (`base_weights`).
pub fn weights_from_metrics(
    metrics: &Metrics,
    base_weights: &[f64],
    exponent: f64,
    compose: bool,
) -> crate::Result<Vec<f64>> {
    // A class with no correct sample counts as one sample's recall, so its weight stays finite.
    let per_class = metrics.support.iter().copied().max().unwrap_or(1).max(1);
    let mut w = weights_from_recall(&metrics.recall, exponent, 1.0 / per_class as f64)?;
    if compose {
        w.iter_mut().zip(base_weights).for_each(|(w, b)| *w *= b);
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        w.iter_mut().for_each(|w| *w /= mean);
    }
    Ok(w)
}

/// A per-class adjustment of the logits inside the training loss only (evaluation, validation
/// recall and the confusion counts use the plain logits, as in both papers), with its
/// parameters from an earlier training's validation recall `r`.
///
/// Both papers set the adjustment from the class counts `n_c` of a long-tailed training set; on
/// a balanced set every count is equal and their recipe does nothing. The nearest recipe reads
/// stage 1's validation recall as each class's effective frequency (a hard class behaves as a
/// rare one: its logits come out too small): `n_c / n_max` becomes `r_c / max(r)` and the prior
/// `pi_c` becomes `r_c / sum(r)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LogitRule {
    /// VS-loss: scale `(r_c / max(r))^gamma`, offset `tau ln(r_c / sum(r))`.
    Vs { gamma: f64, tau: f64 },
    /// CDT: scale `(r_c / max(r))^gamma` (the temperature `a_c` is its inverse), no offset.
    Cdt { gamma: f64 },
}

impl LogitRule {
    /// The method it is.
    pub fn method(self) -> Method {
        match self {
            LogitRule::Vs { .. } => Method::VsLoss,
            LogitRule::Cdt { .. } => Method::Cdt,
        }
    }

    /// The adjustment from the earlier training's validation `metrics`. A class with no correct
    /// sample counts as one sample's recall (as in [`weights_from_metrics`]), so every scale is
    /// positive and every offset finite.
    pub fn adjustment(self, metrics: &Metrics) -> crate::Result<LogitAdjustment> {
        let per_class = metrics.support.iter().copied().max().unwrap_or(1).max(1);
        let floor = 1.0 / per_class as f64;
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        Ok(match self {
            LogitRule::Vs { gamma, tau } => {
                let (scale, offset) = vs_loss_adjust(&metrics.recall, gamma, tau, floor)?;
                LogitAdjustment { scale: Some(f32s(scale)), offset: Some(f32s(offset)) }
            }
            LogitRule::Cdt { gamma } => {
                LogitAdjustment { scale: Some(f32s(cdt_scale(&metrics.recall, gamma, floor)?)), offset: None }
            }
        })
    }
}

/// An online reweighting rule (see [`crate::cross_entropy::weights`]), run after every epoch
/// but the last.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OnlineRule {
    /// `w_c <- w_c exp(step * validation loss_c)`, mean 1: group DRO's exponentiated-gradient
    /// update, once per epoch on validation loss (`online-dro`).
    Eg { step: f64 },
    /// `w_c ∝ (1 - validation recall_c)^tau` (CDB-CE); with `dynamic`, tau is recomputed every
    /// epoch by [`cdb_dynamic_tau`] and `tau` is unused.
    Difficulty { tau: f64, dynamic: bool },
    /// Deferred re-weighting: uniform until the end of epoch `E - K` (E: the training's epochs,
    /// K: `reweighted`, else [`drw_default_epochs`]), then `(mean(r)/r_c)^exponent` from the
    /// validation recall at that epoch's end, kept to the last epoch.
    Drw { reweighted: Option<usize>, exponent: f64 },
}

/// DRW's reweighted epochs by default: the last fifth of training, as the paper's CIFAR
/// schedule (reweighting from epoch 160 of 200), rounded up: `ceil(E / 5)`, at least 1 and at
/// most `E - 1`; 0 when `E < 2` (no epoch is left to defer to: the training stays uniform).
pub fn drw_default_epochs(epochs: usize) -> usize {
    epochs.div_ceil(5).max(1).min(epochs.saturating_sub(1))
}

/// CDB's dynamic tau (Sinha et al., ACCV 2020, as their code computes it):
/// `tau = 2 sigmoid(max_c A_c / (min_c A_c + 0.01) - 1)` with `A_c` the per-class accuracy
/// (here validation recall). Equal accuracies give tau just under 1 (the 0.01 keeps b just
/// under 0); the wider the gap between the best and the worst class, the closer tau comes to 2.
pub fn cdb_dynamic_tau(acc: &[f64]) -> f64 {
    let max = acc.iter().copied().fold(0.0, f64::max);
    let min = acc.iter().copied().fold(1.0, f64::min);
    let b = max / (min + 0.01) - 1.0;
    2.0 / (1.0 + (-b).exp())
}

impl OnlineRule {
    /// Whether the rule sets new weights after `epoch` of `epochs` epochs (counted from 1):
    /// after every epoch for EG and difficulty, after epoch `E - K` only for DRW.
    pub fn updates_after(self, epoch: usize, epochs: usize) -> bool {
        match self {
            OnlineRule::Eg { .. } | OnlineRule::Difficulty { .. } => true,
            OnlineRule::Drw { reweighted, .. } => {
                let k = reweighted.unwrap_or_else(|| drw_default_epochs(epochs));
                k > 0 && epoch + k == epochs
            }
        }
    }

    /// The weights from the next epoch on, after `epoch` of `epochs` epochs (counted from 1),
    /// from the model on the validation split `val`; `None` to keep the weights `now`.
    /// `val_counts`: the trainer's evaluation of that split at this epoch's end, which the
    /// recall rules reuse; the EG rule needs the logits and evaluates again.
    #[allow(clippy::too_many_arguments)]
    pub fn next_weights<B: Backend>(
        self,
        be: &B,
        model: &mut Model<B>,
        val: &DeviceData<B>,
        val_counts: Option<&ConfusionMatrix>,
        now: &[f32],
        (epoch, epochs): (usize, usize),
        eval_batch: usize,
    ) -> crate::Result<Option<Vec<f32>>> {
        let classes = model.config.classes;
        let eval = |be: &B, model: &mut Model<B>, keep_logits: bool| {
            let opts = EvalOptions { batch_size: eval_batch, keep_logits, ..Default::default() };
            train::evaluate_with(be, model, val, &opts)
        };
        let metrics = |be: &B, model: &mut Model<B>| -> crate::Result<Metrics> {
            Ok(match val_counts {
                Some(c) => c.metrics(),
                None => eval(be, model, false)?.confusion.metrics(),
            })
        };
        if !self.updates_after(epoch, epochs) {
            return Ok(None);
        }
        let w = match self {
            OnlineRule::Eg { step } => {
                let ev = eval(be, model, true)?;
                let labels: Vec<i32> = val.labels.iter().map(|&l| l as i32).collect();
                let loss = train::per_class_loss(&ev.logits, &labels, classes)?;
                let now: Vec<f64> = now.iter().map(|&w| f64::from(w)).collect();
                eg_update(&now, &loss, step)?
            }
            OnlineRule::Difficulty { tau, dynamic } => {
                let recall = metrics(be, model)?.recall;
                let tau = if dynamic { cdb_dynamic_tau(&recall) } else { tau };
                difficulty_weights(&recall, tau, 0.01)?
            }
            OnlineRule::Drw { exponent, .. } => weights_from_metrics(&metrics(be, model)?, &[], exponent, false)?,
        };
        Ok(Some(w.into_iter().map(|w| w as f32).collect()))
    }
}

/// How a post-hoc bias is fitted (see [`crate::confusion::bias`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BiasKind {
    /// The highest worst-class recall, whatever it costs.
    MaxMin,
    /// The highest worst-class recall that costs at most this much validation accuracy
    /// (a fraction).
    Budget(f64),
    /// The highest worst-class F1, whatever it costs.
    F1MaxMin,
    /// The highest worst-class F1 that costs at most this much validation accuracy.
    F1Budget(f64),
}

impl BiasKind {
    /// The method it is.
    pub fn method(self) -> Method {
        match self {
            BiasKind::MaxMin => Method::Bias,
            BiasKind::Budget(_) => Method::BiasBudget,
            BiasKind::F1MaxMin => Method::BiasF1,
            BiasKind::F1Budget(_) => Method::BiasF1Budget,
        }
    }

    /// Whether it targets F1 (else recall).
    pub fn targets_f1(self) -> bool {
        matches!(self, BiasKind::F1MaxMin | BiasKind::F1Budget(_))
    }

    /// Fits the bias on `model`'s logits of `val` (the validation split).
    pub fn fit<B: Backend>(
        self,
        be: &B,
        model: &mut Model<B>,
        val: &DeviceData<B>,
        eval_batch: usize,
    ) -> crate::Result<BiasFit> {
        let classes = model.config.classes;
        let opts = EvalOptions { batch_size: eval_batch, keep_logits: true, ..Default::default() };
        let ev = train::evaluate_with(be, model, val, &opts)?;
        let logits = ndarray::ArrayView2::from_shape((val.len(), classes), &ev.logits)
            .map_err(|e| crate::Error::shape("post-hoc bias", e.to_string()))?;
        let labels: Vec<i32> = val.labels.iter().map(|&l| l as i32).collect();
        let max_accuracy_drop = match self {
            BiasKind::MaxMin | BiasKind::F1MaxMin => None,
            BiasKind::Budget(b) | BiasKind::F1Budget(b) => Some(b),
        };
        let opts = FitOptions { max_accuracy_drop, ..Default::default() };
        match self {
            BiasKind::MaxMin | BiasKind::Budget(_) => fit_recall_bias(logits, &labels, &opts),
            BiasKind::F1MaxMin | BiasKind::F1Budget(_) => fit_f1_bias(logits, &labels, &opts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_id_reads_back_what_it_writes() {
        let mut ids: Vec<MethodId> = Method::ALL.iter().map(|&m| MethodId::Plain(m)).collect();
        ids.extend(Method::ALL.iter().map(|&m| MethodId::Long(m)));
        ids.extend([0.5, -3.0, 2.0].map(|exponent| MethodId::Sweep { exponent }));
        for id in ids {
            let s = id.to_string();
            assert_eq!(s.parse::<MethodId>().unwrap(), id, "{s}");
            assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(MethodId::Long(Method::UniformWd).to_string(), "uniform-wd-long");
        assert_eq!(MethodId::Sweep { exponent: -0.5 }.to_string(), "sweep-p-0.5");
        // The serde names are the names.
        for m in Method::ALL {
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{}\"", m.name()));
        }
        let e = "reweigh".parse::<MethodId>().unwrap_err();
        assert!(e.to_string().contains("online-difficulty"), "{e}");
        assert!("sweep-pnan".parse::<MethodId>().is_err());
        assert!("nothing-long".parse::<MethodId>().is_err());
    }

    /// `online-eg` (the name before `online-dro`) still reads everywhere a name is read, and is
    /// written under the new name; no alias is another method's name.
    #[test]
    fn former_names_read_as_the_current_ones() {
        assert_eq!("online-eg".parse::<Method>().unwrap(), Method::OnlineDro);
        assert_eq!("online-eg-long".parse::<MethodId>().unwrap(), MethodId::Long(Method::OnlineDro));
        assert_eq!(serde_json::from_str::<Method>("\"online-eg\"").unwrap(), Method::OnlineDro);
        assert_eq!(serde_json::from_str::<MethodId>("\"online-eg\"").unwrap().to_string(), "online-dro");
        assert_eq!(serde_json::to_string(&Method::OnlineDro).unwrap(), "\"online-dro\"");
        assert_eq!(Method::canonical_key("online-eg"), "online-dro");
        assert_eq!(Method::canonical_key("online-eg-long"), "online-dro-long");
        for key in ["online-dro", "sweep-p2", "reweight-long", "not-a-method"] {
            assert_eq!(Method::canonical_key(key), key);
        }
        for m in Method::ALL {
            for a in m.aliases() {
                assert!(Method::ALL.iter().all(|o| o.name() != *a), "{a} is a name and an alias");
            }
        }
    }

    /// DRW: uniform for exactly E - K epochs (the rule sets weights once, after epoch E - K, and
    /// they hold to the end); the default K is the last fifth, rounded up, within [1, E - 1].
    #[test]
    fn drw_reweights_once_after_epoch_e_minus_k() {
        assert_eq!([1, 2, 5, 6, 8, 10, 30, 200].map(drw_default_epochs), [0, 1, 1, 2, 2, 2, 6, 40]);
        for epochs in 1..=40 {
            for reweighted in [None, Some(1), Some(3), Some(epochs.max(2) - 1)] {
                let rule = OnlineRule::Drw { reweighted, exponent: 4.0 };
                let k = reweighted.unwrap_or_else(|| drw_default_epochs(epochs));
                let updates: Vec<usize> = (1..epochs).filter(|&e| rule.updates_after(e, epochs)).collect();
                let want = if k == 0 || k >= epochs { vec![] } else { vec![epochs - k] };
                assert_eq!(updates, want, "{epochs} epochs, K {reweighted:?}");
            }
        }
        // The per-epoch rules update after every epoch.
        for rule in [OnlineRule::Eg { step: 0.3 }, OnlineRule::Difficulty { tau: 1.0, dynamic: true }] {
            assert!((1..8).all(|e| rule.updates_after(e, 8)));
        }
    }

    /// CDB's dynamic tau: 2 sigmoid(b), b = max/(min + 0.01) - 1: about 1 for equal accuracies.
    #[test]
    fn cdb_dynamic_tau_follows_the_gap_between_best_and_worst_class() {
        // b = 0.7 / 0.71 - 1 = -0.0141, so tau = 0.99296 (to 1e-5, rounded by hand).
        let equal = cdb_dynamic_tau(&[0.7; 10]);
        assert!((equal - 0.99296).abs() < 1e-5, "{equal}");
        // b = 0.9 / 0.31 - 1; tolerance 1e-12: one exp and a few divisions in f64.
        let b: f64 = 0.9 / 0.31 - 1.0;
        let want = 2.0 / (1.0 + (-b).exp());
        assert!((cdb_dynamic_tau(&[0.9, 0.3, 0.5]) - want).abs() < 1e-12);
        // A class at 0 recall: b = 100 * max - 1, tau saturates at 2 (in f64, exactly).
        let t = cdb_dynamic_tau(&[1.0, 0.0]);
        assert!(t > 1.999 && t <= 2.0, "{t}");
        let wider = cdb_dynamic_tau(&[0.9, 0.2]);
        assert!(wider > cdb_dynamic_tau(&[0.9, 0.6]) && wider < 2.0);
    }
}
