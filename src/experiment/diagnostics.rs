//! The comparison's diagnostics (means over seeds), as report.json's `diagnostics` holds them:
//! per method the fit on train, validation and test; per method and class the training loss
//! and gradient share in the first and last epoch; the exponent sweep; short versus long
//! training.
use serde::Serialize;

use crate::confusion::Metrics;
use crate::methods::{Method, MethodId, RecallSplit, Weights};
use crate::report::{StageReport, Stat};
use crate::train::EpochLog;

use super::plan::{MethodSpec, StageSpec};

/// Everything the diagnostics hold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnostics {
    pub fit: Vec<FitRow>,
    pub gradient: Vec<GradientRow>,
    pub exponent_sweep: Vec<SweepPoint>,
    pub regime: Vec<RegimeRow>,
}

/// One method's fit of each split.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FitRow {
    pub method: MethodId,
    pub train: SplitFit,
    pub val: SplitFit,
    pub test: SplitFit,
}

/// Accuracy, worst recall and recall spread over seeds, and the mean recall per class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SplitFit {
    pub accuracy: Stat,
    pub worst_recall: Stat,
    pub recall_spread: Stat,
    pub recall: Vec<f64>,
}

/// One method's per-class training quantities in its first and last epoch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GradientRow {
    pub method: MethodId,
    pub first_epoch: EpochMeans,
    pub last_epoch: EpochMeans,
}

/// Means over seeds of one epoch's per-class log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpochMeans {
    pub epoch: Option<usize>,
    pub class_weights: Vec<f64>,
    pub class_loss: Vec<f64>,
    pub grad_share_uniform: Vec<f64>,
    pub grad_share_weighted: Vec<f64>,
}

/// One exponent of the sweep (p = 0 is uniform, p = the run's exponent is reweight), test set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepPoint {
    pub exponent: f64,
    pub method: MethodId,
    pub accuracy: Stat,
    pub worst_recall: Stat,
    pub recall_spread: Stat,
    pub train_accuracy: Stat,
}

/// Uniform against reweighted training in one regime (short or long, usual or strong weight
/// decay): does reweighting still move the test spread once the training set is fit?
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegimeRow {
    pub regime: String,
    pub epochs: Option<usize>,
    pub uniform_train_accuracy: Stat,
    pub uniform_test_spread: Stat,
    pub reweight_train_accuracy: Stat,
    pub reweight_test_spread: Stat,
    pub uniform_train_spread: Stat,
    pub reweight_train_spread: Stat,
    pub uniform_test_accuracy: Stat,
    pub reweight_test_accuracy: Stat,
}

/// Mean over seeds of a per-class vector, element by element.
fn mean_vec<'a>(vs: impl Iterator<Item = &'a Vec<f64>>) -> Vec<f64> {
    let vs: Vec<&Vec<f64>> = vs.filter(|v| !v.is_empty()).collect();
    let n = vs.first().map_or(0, |v| v.len());
    (0..n).map(|k| vs.iter().map(|v| v.get(k).copied().unwrap_or(f64::NAN)).sum::<f64>() / vs.len() as f64).collect()
}

/// The diagnostics of a comparison: `specs` and `rows` as planned, `methods` the report's
/// entries (one per row, same order).
pub fn diagnostics(specs: &[StageSpec], rows: &[MethodSpec], methods: &[StageReport]) -> Diagnostics {
    let mut ids: Vec<MethodId> = Vec::new();
    for r in rows {
        if !ids.contains(&r.id) {
            ids.push(r.id);
        }
    }
    let runs_of = |id: MethodId| rows.iter().zip(methods).filter(move |(r, _)| r.id == id).map(|(_, m)| m);
    let stat = |id: MethodId, f: &dyn Fn(&StageReport) -> f64| Stat::of(&runs_of(id).map(f).collect::<Vec<_>>());
    let split_fit = |id: MethodId, get: &dyn Fn(&StageReport) -> Option<&Metrics>| SplitFit {
        accuracy: stat(id, &|r| get(r).map_or(f64::NAN, |m| m.accuracy)),
        worst_recall: stat(id, &|r| get(r).map_or(f64::NAN, |m| m.worst_recall())),
        recall_spread: stat(id, &|r| get(r).map_or(f64::NAN, |m| m.recall_spread())),
        recall: mean_vec(runs_of(id).filter_map(|r| get(r).map(|m| &m.recall))),
    };
    let fit = ids
        .iter()
        .map(|&id| FitRow {
            method: id,
            train: split_fit(id, &|r| Some(&r.train)),
            val: split_fit(id, &|r| r.val.as_ref()),
            test: split_fit(id, &|r| Some(&r.test)),
        })
        .collect();
    let gradient = ids
        .iter()
        .filter(|id| !id.is_bias())
        .map(|&id| {
            let at = |pick: &dyn Fn(&[EpochLog]) -> Option<&EpochLog>| {
                let logs: Vec<&EpochLog> = runs_of(id).filter_map(|r| pick(&r.epochs)).collect();
                EpochMeans {
                    epoch: logs.first().map(|l| l.epoch),
                    class_weights: mean_vec(logs.iter().map(|l| &l.class_weights)),
                    class_loss: mean_vec(logs.iter().map(|l| &l.class_loss)),
                    grad_share_uniform: mean_vec(logs.iter().map(|l| &l.grad_share_uniform)),
                    grad_share_weighted: mean_vec(logs.iter().map(|l| &l.grad_share_weighted)),
                }
            };
            GradientRow { method: id, first_epoch: at(&|e| e.first()), last_epoch: at(&|e| e.last()) }
        })
        .collect();
    let mut sweep: Vec<(f64, MethodId)> = Vec::new();
    for r in rows.iter().filter(|r| r.bias.is_none()) {
        match (&specs[r.stage].weights, r.id) {
            (Weights::Uniform, MethodId::Plain(Method::Uniform)) => sweep.push((0.0, r.id)),
            (
                Weights::FromRecall { exponent, compose: false, split: RecallSplit::Val, .. },
                MethodId::Plain(Method::Reweight) | MethodId::Sweep { .. },
            ) => sweep.push((*exponent, r.id)),
            _ => {}
        }
    }
    sweep.sort_by(|a, b| a.0.total_cmp(&b.0));
    sweep.dedup();
    let exponent_sweep = sweep
        .iter()
        .map(|&(p, id)| SweepPoint {
            exponent: p,
            method: id,
            accuracy: stat(id, &|r| r.test.accuracy),
            worst_recall: stat(id, &|r| r.test.worst_recall()),
            recall_spread: stat(id, &|r| r.test.recall_spread()),
            train_accuracy: stat(id, &|r| r.train.accuracy),
        })
        .collect();
    let (plain, long) = (MethodId::Plain, MethodId::Long);
    let regime = [
        ("short", plain(Method::Uniform), plain(Method::Reweight)),
        ("long", long(Method::Uniform), long(Method::Reweight)),
        ("short-wd", plain(Method::UniformWd), plain(Method::ReweightWd)),
        ("long-wd", long(Method::UniformWd), long(Method::ReweightWd)),
    ]
    .into_iter()
    .filter(|(_, u, r)| ids.contains(u) && ids.contains(r))
    .map(|(name, u, r)| RegimeRow {
        regime: name.to_string(),
        epochs: runs_of(u).next().map(|m| m.epochs.len()),
        uniform_train_accuracy: stat(u, &|m| m.train.accuracy),
        uniform_test_spread: stat(u, &|m| m.test.recall_spread()),
        reweight_train_accuracy: stat(r, &|m| m.train.accuracy),
        reweight_test_spread: stat(r, &|m| m.test.recall_spread()),
        uniform_train_spread: stat(u, &|m| m.train.recall_spread()),
        reweight_train_spread: stat(r, &|m| m.train.recall_spread()),
        uniform_test_accuracy: stat(u, &|m| m.test.accuracy),
        reweight_test_accuracy: stat(r, &|m| m.test.accuracy),
    })
    .collect();
    Diagnostics { fit, gradient, exponent_sweep, regime }
}
