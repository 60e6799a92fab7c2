//! A seeded, stratified split of a training set into training and validation parts, so that
//! per-class quantities (class weights, logit biases, thresholds) are fitted on data the model did
//! not train on, and never on the test set.
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64;

use super::{DataError, Dataset, Result, IMAGE_BYTES};

/// Image indices of the two parts, each sorted ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// Splits `labels` (class indices `< classes`) into a validation part of exactly `val_size`
/// samples and the rest, stratified: each class gives its share of `val_size` (largest-remainder
/// rounding, ties to the lower class), chosen by a shuffle seeded with `seed`, so the same inputs
/// give the same split on every machine.
///
/// Errors, before any work: `val_size` not below the number of samples (nothing would be left to
/// train on), or a split that leaves a present class without a validation sample or without a
/// training sample (a per-class quantity could then not be fitted, or not learned).
pub fn stratified_split(labels: &[u8], classes: usize, val_size: usize, seed: u64) -> Result<Split> {
    let n = labels.len();
    if val_size >= n {
        return Err(DataError::Invalid(format!(
            "a validation split of {val_size} leaves nothing to train on: the training set has {n} images"
        )));
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        match by_class.get_mut(l as usize) {
            Some(v) => v.push(i),
            None => return Err(DataError::Invalid(format!("label {l} of image {i} is not below {classes} classes"))),
        }
    }
    // Largest remainder: floor(val_size * n_c / n), then one more for the largest remainders.
    let mut take: Vec<usize> = by_class.iter().map(|v| val_size * v.len() / n).collect();
    let mut rest: Vec<(usize, usize)> =
        by_class.iter().enumerate().map(|(c, v)| ((val_size * v.len()) % n, c)).collect();
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let short = val_size - take.iter().sum::<usize>();
    for &(_, c) in rest.iter().take(short) {
        take[c] += 1;
    }
    for (c, v) in by_class.iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        if take[c] == 0 {
            return Err(DataError::Invalid(format!(
                "a validation split of {val_size} of {n} images leaves class {c} ({} images) without validation \
                 samples; use a larger --val-size",
                v.len()
            )));
        }
        if take[c] >= v.len() {
            return Err(DataError::Invalid(format!(
                "a validation split of {val_size} of {n} images takes all {} images of class {c}, leaving none to \
                 train on; use a smaller --val-size",
                v.len()
            )));
        }
    }
    let mut rng = Pcg64::seed_from_u64(seed);
    let (mut train, mut val) = (Vec::with_capacity(n - val_size), Vec::with_capacity(val_size));
    for (c, mut v) in by_class.into_iter().enumerate() {
        v.shuffle(&mut rng);
        val.extend_from_slice(&v[..take[c]]);
        train.extend_from_slice(&v[take[c]..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok(Split { train, val })
}

impl Dataset {
    /// The images at `indices` (in that order) as a new dataset with the same class names, named
    /// `name`. Errors on an index past `len()`.
    pub fn select(&self, indices: &[usize], name: impl Into<String>) -> Result<Dataset> {
        let name = name.into();
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::Invalid(format!("dataset {}: image {i} of {}", self.name, self.len())));
        }
        let mut images = Vec::with_capacity(indices.len() * IMAGE_BYTES);
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Dataset { images, labels, class_names: self.class_names.clone(), name })
    }
}
