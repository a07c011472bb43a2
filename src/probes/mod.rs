//! Linear probes on activations, evaluated the way a careful paper would: (stratified) k-fold
//! cross-validation with the standardisation fitted inside each training fold only, an optional
//! sweep of the regularisation strength chosen by an inner cross-validation, seeded shuffling,
//! and a final fit on all the data for directions and predictions.
//!
//! Three kinds of probe, chosen by the target:
//! - two classes: L2-regularised logistic regression (`linfa-logistic`);
//! - more classes: multinomial logistic regression (`linfa-logistic`);
//! - continuous values: ridge regression (closed form with `nalgebra`), scored by R².
//!
//! `c` is the inverse regularisation strength as in scikit-learn: the objective is
//! `sum(loss) + ||w||² / (2c)` for logistic probes (scikit-learn's `LogisticRegression(C=c)`,
//! intercept unpenalised) and `||y - Xw - b||² + ||w||² / c` for ridge (`Ridge(alpha=1/c)`).
//! Features are standardised (mean 0, variance 1 over the training fold; constant features are
//! left unscaled) before fitting; weights are mapped back to activation units for directions.
//!
//! Nothing in this file touches MLX: the activations come in as `ndarray` matrices, so layers
//! are trained in parallel on plain threads. [`Probe`] (in `probe.rs`) captures them from a
//! model and holds the trained probes, their report and directions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use linfa::prelude::*;
use linfa_logistic::{LogisticRegression, MultiLogisticRegression};
use nalgebra::{DMatrix, DVector};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{interrupt, Error, Result};

mod probe;

pub use probe::{probe_points, to_matrix, Examples, Probe};

/// What a probe predicts.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A class index per example; `names[i]` names class `i`. With two classes, class 1 is the
    /// positive one (directions point towards it).
    Classes { y: Vec<usize>, names: Vec<String> },
    /// A continuous value per example.
    Values(Vec<f64>),
}

impl Target {
    pub fn len(&self) -> usize {
        match self {
            Target::Classes { y, .. } => y.len(),
            Target::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_regression(&self) -> bool {
        matches!(self, Target::Values(_))
    }

    /// Examples per class (empty for regression).
    pub fn counts(&self) -> Vec<usize> {
        match self {
            Target::Classes { y, names } => {
                let mut c = vec![0; names.len()];
                y.iter().for_each(|&k| c[k] += 1);
                c
            }
            Target::Values(_) => Vec::new(),
        }
    }

    /// The score of the best constant guess: the majority class's share (accuracy), or 0 for
    /// regression (the R² of predicting the mean).
    pub fn chance(&self) -> f64 {
        match self {
            Target::Classes { .. } => {
                let c = self.counts();
                *c.iter().max().unwrap_or(&0) as f64 / self.len().max(1) as f64
            }
            Target::Values(_) => 0.0,
        }
    }

    /// The name of the score: "accuracy" or "r2".
    pub fn metric(&self) -> &'static str {
        if self.is_regression() {
            "r2"
        } else {
            "accuracy"
        }
    }

    fn subset(&self, idx: &[usize]) -> Target {
        match self {
            Target::Classes { y, names } => Target::Classes {
                y: idx.iter().map(|&i| y[i]).collect(),
                names: names.clone(),
            },
            Target::Values(v) => Target::Values(idx.iter().map(|&i| v[i]).collect()),
        }
    }

    /// Checks that `folds`-fold cross-validation is possible: two classes at least, and at
    /// least `folds` examples of each (or `folds` examples for regression).
    pub fn check(&self, folds: usize, verb: &str) -> Result<()> {
        if folds < 2 {
            return Err(Error::Invalid(format!(
                "{verb}: folds must be at least 2, got {folds}"
            )));
        }
        match self {
            Target::Classes { names, .. } => {
                let counts = self.counts();
                let present: Vec<usize> = (0..names.len()).filter(|&k| counts[k] > 0).collect();
                if present.len() < 2 {
                    let only = present.first().map(|&k| names[k].as_str()).unwrap_or("");
                    return Err(Error::Invalid(format!(
                        "{verb}: every label is {only:?}; a probe needs at least two classes"
                    )));
                }
                for (k, &c) in counts.iter().enumerate() {
                    if c < folds {
                        return Err(Error::Invalid(format!(
                            "{verb}: class {:?} has {c} example{}, fewer than the {folds} \
                             folds; give more examples or set `folds` lower",
                            names[k],
                            if c == 1 { "" } else { "s" }
                        )));
                    }
                }
            }
            Target::Values(v) => {
                if v.len() < folds {
                    return Err(Error::Invalid(format!(
                        "{verb}: {} examples are fewer than the {folds} folds",
                        v.len()
                    )));
                }
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(Error::Invalid(format!(
                        "{verb}: a target value is not finite"
                    )));
                }
                let first = v[0];
                if v.iter().all(|&x| x == first) {
                    return Err(Error::Invalid(format!(
                        "{verb}: every target value is {first}; nothing to predict"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// How probes are trained and evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Outer cross-validation folds.
    pub folds: usize,
    /// Seed of the fold shuffles.
    pub seed: u64,
    /// Inverse regularisation strengths to try (one: no sweep).
    pub cs: Vec<f64>,
    /// Folds of the inner cross-validation that picks `c` when there are several.
    pub inner_folds: usize,
    /// L-BFGS iteration limit of the logistic fits.
    pub max_iterations: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            folds: 5,
            seed: 0,
            cs: vec![1.0],
            inner_folds: 3,
            max_iterations: 500,
        }
    }
}

/// Fold of each example (0..k): within each class the examples are shuffled (seeded) and dealt
/// round-robin, continuing where the previous class stopped, so every fold gets each class in
/// proportion and the folds have equal sizes to within one.
pub fn stratified_folds(y: &[usize], n_classes: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fold = vec![0; y.len()];
    let mut next = 0;
    for c in 0..n_classes {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == c).collect();
        idx.shuffle(&mut rng);
        for i in idx {
            fold[i] = next % k;
            next += 1;
        }
    }
    fold
}

/// Fold of each of `n` examples for plain (unstratified) k-fold: a seeded shuffle dealt
/// round-robin.
pub fn plain_folds(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng);
    let mut fold = vec![0; n];
    for (j, i) in idx.into_iter().enumerate() {
        fold[i] = j % k;
    }
    fold
}

/// The folds for `target`: stratified for classes, plain for values.
pub fn folds_for(target: &Target, k: usize, seed: u64) -> Vec<usize> {
    match target {
        Target::Classes { y, names } => stratified_folds(y, names.len(), k, seed),
        Target::Values(v) => plain_folds(v.len(), k, seed),
    }
}

/// Per-feature standardisation fitted on training data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Array1<f64>,
    /// Standard deviation (ddof 0); 1 where a feature is constant.
    pub scale: Array1<f64>,
}

impl Scaler {
    pub fn fit(x: ArrayView2<f64>) -> Scaler {
        let mean = x
            .mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(x.ncols()));
        let scale = x
            .std_axis(Axis(0), 0.0)
            .mapv(|s| if s > 1e-12 { s } else { 1.0 });
        Scaler { mean, scale }
    }

    pub fn apply(&self, x: ArrayView2<f64>) -> Array2<f64> {
        (&x - &self.mean) / &self.scale
    }
}

/// Weights of a fitted probe, on standardised features.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Weights {
    /// Logit of the positive class (class 1) = `w·z + b`.
    Binary { w: Array1<f64>, b: f64 },
    /// Logits `z W + b`, `w` `[d, classes]`.
    Multi { w: Array2<f64>, b: Array1<f64> },
    /// Prediction `w·z + b`.
    Ridge { w: Array1<f64>, b: f64 },
}

/// A probe fitted on some data: its standardisation and weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fitted {
    pub scaler: Scaler,
    pub weights: Weights,
}

/// Convergence threshold on the gradient of the summed loss: 1e-5 per example, which puts the
/// mean-loss gradient below 1e-5 (scikit-learn's lbfgs stops at 1e-4 by default).
fn tolerance(n: usize) -> f64 {
    1e-5 * n.max(1) as f64
}

fn lin_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("probe: fitting failed: {e}"))
}

fn check_c(c: f64) -> Result<()> {
    if c.is_finite() && c > 0.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "probe: c must be a positive number, got {c}"
        )))
    }
}

impl Fitted {
    /// Standardises `x` and fits a probe with inverse regularisation `c`.
    pub fn fit(x: ArrayView2<f64>, target: &Target, c: f64, max_iterations: u64) -> Result<Fitted> {
        check_c(c)?;
        let scaler = Scaler::fit(x);
        let z = scaler.apply(x);
        let weights = match target {
            Target::Classes { y, names } if names.len() == 2 => {
                let ds = Dataset::new(z, Array1::from(y.clone()));
                let m = LogisticRegression::default()
                    .alpha(1.0 / c)
                    .gradient_tolerance(tolerance(x.nrows()))
                    .max_iterations(max_iterations)
                    .fit(&ds)
                    .map_err(lin_err)?;
                // linfa calls the more frequent class positive; orient towards class 1.
                let sign = if m.labels().pos.class == 1 { 1.0 } else { -1.0 };
                Weights::Binary {
                    w: m.params() * sign,
                    b: m.intercept() * sign,
                }
            }
            Target::Classes { y, names } => {
                let ds = Dataset::new(z, Array1::from(y.clone()));
                let m = MultiLogisticRegression::default()
                    .alpha(1.0 / c)
                    .gradient_tolerance(tolerance(x.nrows()))
                    .max_iterations(max_iterations)
                    .fit(&ds)
                    .map_err(lin_err)?;
                // Columns in class order; a class absent from this training set gets none.
                let mut w = Array2::zeros((x.ncols(), names.len()));
                let mut b = Array1::from_elem(names.len(), f64::NEG_INFINITY);
                for (j, &k) in m.classes().iter().enumerate() {
                    w.column_mut(k).assign(&m.params().column(j));
                    b[k] = m.intercept()[j];
                }
                Weights::Multi { w, b }
            }
            Target::Values(v) => {
                let (w, b) = ridge(&z, v, 1.0 / c)?;
                Weights::Ridge { w, b }
            }
        };
        Ok(Fitted { scaler, weights })
    }

    /// Predictions for the rows of `x`: class probabilities `[n, classes]` (binary: two
    /// columns, negative then positive), or values `[n, 1]`.
    pub fn predict(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let z = self.scaler.apply(x);
        match &self.weights {
            Weights::Binary { w, b } => {
                let p = (z.dot(w) + *b).mapv(|t| 1.0 / (1.0 + (-t).exp()));
                let mut out = Array2::zeros((z.nrows(), 2));
                out.column_mut(1).assign(&p);
                out.column_mut(0).assign(&p.mapv(|q| 1.0 - q));
                out
            }
            Weights::Multi { w, b } => {
                let mut logits = z.dot(w) + b;
                for mut row in logits.rows_mut() {
                    let m = row.fold(f64::NEG_INFINITY, |a, &v| a.max(v));
                    row.mapv_inplace(|v| (v - m).exp());
                    let s = row.sum();
                    row.mapv_inplace(|v| v / s);
                }
                logits
            }
            Weights::Ridge { w, b } => (z.dot(w) + *b).insert_axis(Axis(1)),
        }
    }

    /// Accuracy (classes) or R² (values) on `x`.
    pub fn score(&self, x: ArrayView2<f64>, target: &Target) -> f64 {
        let pred = self.predict(x);
        match target {
            Target::Classes { y, .. } => {
                let right = pred
                    .rows()
                    .into_iter()
                    .zip(y)
                    .filter(|(row, &k)| argmax(row.iter().copied()) == k)
                    .count();
                right as f64 / y.len() as f64
            }
            Target::Values(v) => r2(pred.column(0).iter().copied(), v),
        }
    }

    /// The weights in activation units (the standardisation undone: `w / scale`) for `class`
    /// (binary and ridge probes have one weight vector and ignore it).
    pub fn input_weights(&self, class: usize) -> Vec<f64> {
        let w = match &self.weights {
            Weights::Binary { w, .. } | Weights::Ridge { w, .. } => w.to_owned(),
            Weights::Multi { w, .. } => w.column(class).to_owned(),
        };
        (w / &self.scaler.scale).to_vec()
    }
}

fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// The coefficient of determination of `pred` for `truth`.
pub fn r2(pred: impl Iterator<Item = f64>, truth: &[f64]) -> f64 {
    let mean = truth.iter().sum::<f64>() / truth.len() as f64;
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    let ss_res: f64 = pred.zip(truth).map(|(p, t)| (p - t).powi(2)).sum();
    if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        0.0
    }
}

/// Ridge regression on centred features `z` (`[n, d]`): `min ||y - zw - b||² + lambda ||w||²`,
/// through the smaller of the `[n, n]` and `[d, d]` systems.
fn ridge(z: &Array2<f64>, y: &[f64], lambda: f64) -> Result<(Array1<f64>, f64)> {
    let (n, d) = z.dim();
    let ybar = y.iter().sum::<f64>() / n as f64;
    let zm = z.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(d));
    let zc = z - &zm;
    let x = DMatrix::from_row_iterator(n, d, zc.iter().copied());
    let yc = DVector::from_iterator(n, y.iter().map(|v| v - ybar));
    let singular = || Error::Invalid("probe: the ridge system is singular".into());
    let w = if n <= d {
        let mut k = &x * x.transpose();
        for i in 0..n {
            k[(i, i)] += lambda;
        }
        let a = k.cholesky().ok_or_else(singular)?.solve(&yc);
        x.transpose() * a
    } else {
        let mut k = x.transpose() * &x;
        for i in 0..d {
            k[(i, i)] += lambda;
        }
        k.cholesky()
            .ok_or_else(singular)?
            .solve(&(x.transpose() * yc))
    };
    let w = Array1::from_iter(w.iter().copied());
    let b = ybar - zm.dot(&w);
    Ok((w, b))
}

fn split(folds: &[usize], f: usize) -> (Vec<usize>, Vec<usize>) {
    (0..folds.len()).partition(|&i| folds[i] != f)
}

/// Mean cross-validated score of `c` on (`x`, `target`) with the given folds.
fn cv_score(
    x: ArrayView2<f64>,
    target: &Target,
    folds: &[usize],
    k: usize,
    c: f64,
    s: &Settings,
) -> Result<f64> {
    let mut total = 0.0;
    for f in 0..k {
        let (train, test) = split(folds, f);
        let fit = Fitted::fit(
            x.select(Axis(0), &train).view(),
            &target.subset(&train),
            c,
            s.max_iterations,
        )?;
        total += fit.score(x.select(Axis(0), &test).view(), &target.subset(&test));
    }
    Ok(total / k as f64)
}

/// The `c` with the best inner cross-validated score on (`x`, `target`); ties go to the
/// smaller `c` (stronger regularisation).
fn choose_c(x: ArrayView2<f64>, target: &Target, s: &Settings, seed: u64) -> Result<f64> {
    if s.cs.len() == 1 {
        return Ok(s.cs[0]);
    }
    let fewest = match target {
        Target::Classes { .. } => target.counts().into_iter().filter(|&c| c > 0).min(),
        Target::Values(v) => Some(v.len()),
    }
    .unwrap_or(0);
    let k = s.inner_folds.min(fewest);
    if k < 2 {
        return Err(Error::Invalid(
            "probe: too few examples per class in a training fold to choose c by inner \
             cross-validation; give more examples or a single c"
                .into(),
        ));
    }
    best_c(x, target, &folds_for(target, k, seed), k, s)
}

/// The `c` of `s.cs` with the best mean score over the `k` given folds; ties go to the
/// smaller `c`.
fn best_c(
    x: ArrayView2<f64>,
    target: &Target,
    folds: &[usize],
    k: usize,
    s: &Settings,
) -> Result<f64> {
    let mut cs = s.cs.clone();
    cs.sort_by(f64::total_cmp);
    let mut best = (cs[0], f64::NEG_INFINITY);
    for c in cs {
        let score = cv_score(x, target, folds, k, c, s)?;
        if score > best.1 {
            best = (c, score);
        }
    }
    Ok(best.0)
}

/// One layer's cross-validated evaluation and final fit. Serializable so that ranks sharing the
/// training exchange it (postcard, every f64 bit for bit: see `probe.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerResult {
    /// Score (accuracy or R²) on each outer test fold.
    pub scores: Vec<f64>,
    pub mean: f64,
    /// Sample standard deviation (ddof 1) of the fold scores.
    pub std: f64,
    /// The `c` chosen inside each outer training fold.
    pub fold_c: Vec<f64>,
    /// The `c` of the final fit, chosen by cross-validation over all the data.
    pub c: f64,
    /// Fitted on all the data.
    pub fitted: Fitted,
}

/// Cross-validates and fits a probe on `x` (`[n, d]`) with the given outer `folds`.
pub fn evaluate(
    x: ArrayView2<f64>,
    target: &Target,
    folds: &[usize],
    s: &Settings,
) -> Result<LayerResult> {
    if x.nrows() != target.len() {
        return Err(Error::Invalid(format!(
            "probe: {} activation rows but {} labels",
            x.nrows(),
            target.len()
        )));
    }
    let mut scores = Vec::with_capacity(s.folds);
    let mut fold_c = Vec::with_capacity(s.folds);
    for f in 0..s.folds {
        let (train, test) = split(folds, f);
        let xt = x.select(Axis(0), &train);
        let tt = target.subset(&train);
        let c = choose_c(xt.view(), &tt, s, s.seed.wrapping_add(1 + f as u64))?;
        let fit = Fitted::fit(xt.view(), &tt, c, s.max_iterations)?;
        scores.push(fit.score(x.select(Axis(0), &test).view(), &target.subset(&test)));
        fold_c.push(c);
    }
    let c = if s.cs.len() == 1 {
        s.cs[0]
    } else {
        best_c(x, target, folds, s.folds, s)?
    };
    let fitted = Fitted::fit(x, target, c, s.max_iterations)?;
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let std = if scores.len() > 1 {
        (scores.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (scores.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    Ok(LayerResult {
        scores,
        mean,
        std,
        fold_c,
        c,
        fitted,
    })
}

/// Evaluates a probe on each of `xs` (one `[n, d]` matrix per layer) with the same folds,
/// layers spread over the available cores. `done` is called after each layer (from any thread).
/// Stops early on Ctrl-C.
pub fn evaluate_layers(
    xs: &[Array2<f64>],
    target: &Target,
    s: &Settings,
    done: &(dyn Fn() + Sync),
) -> Result<Vec<LayerResult>> {
    target.check(s.folds, "probe")?;
    for &c in &s.cs {
        check_c(c)?;
    }
    if s.cs.is_empty() {
        return Err(Error::Invalid("probe: c is an empty array".into()));
    }
    let folds = folds_for(target, s.folds, s.seed);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<LayerResult>>>> =
        Mutex::new((0..xs.len()).map(|_| None).collect());
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(xs.len())
        .max(1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= xs.len() {
                    break;
                }
                let r = interrupt::check().and_then(|_| evaluate(xs[i].view(), target, &folds, s));
                let failed = r.is_err();
                if let Ok(mut all) = results.lock() {
                    all[i] = Some(r);
                }
                done();
                if failed {
                    // Let the other threads run out: nothing after a failure is used.
                    next.store(xs.len(), Ordering::Relaxed);
                    break;
                }
            });
        }
    });
    let all = results
        .into_inner()
        .map_err(|_| Error::Invalid("probe: a training thread panicked".into()))?;
    // The first failure in layer order, so the message does not depend on thread timing.
    let mut out = Vec::with_capacity(all.len());
    for r in all {
        match r {
            Some(r) => out.push(r?),
            None => return Err(Error::Interrupted),
        }
    }
    Ok(out)
}

/// Logistic-probe weights (C = 1, standardised features, in activation units) separating
/// `positive` rows from `negative` rows (`[n, d]` row-major, as f64).
pub fn binary_weights(d: usize, positive: &[f64], negative: &[f64]) -> Result<Vec<f64>> {
    let (np, nn) = (positive.len() / d, negative.len() / d);
    let x = Array2::from_shape_vec(
        (np + nn, d),
        positive.iter().chain(negative).copied().collect(),
    )
    .map_err(|e| Error::Invalid(format!("probe: {e}")))?;
    let target = Target::Classes {
        y: (0..np + nn).map(|i| usize::from(i < np)).collect(),
        names: vec!["negative".into(), "positive".into()],
    };
    let fit = Fitted::fit(x.view(), &target, 1.0, Settings::default().max_iterations)?;
    Ok(fit.input_weights(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(y: &[usize], k: usize) -> Target {
        Target::Classes {
            y: y.to_vec(),
            names: (0..k).map(|i| format!("c{i}")).collect(),
        }
    }

    #[test]
    fn stratified_folds_balance_every_class() {
        let y: Vec<usize> = (0..23).map(|i| usize::from(i % 3 == 0)).collect();
        let folds = stratified_folds(&y, 2, 5, 7);
        for f in 0..5 {
            let ones = (0..y.len()).filter(|&i| folds[i] == f && y[i] == 1).count();
            let zeros = (0..y.len()).filter(|&i| folds[i] == f && y[i] == 0).count();
            // 8 ones and 15 zeros over 5 folds: 1-2 ones and 3 zeros each, sizes 4-5.
            assert!((1..=2).contains(&ones), "fold {f}: {ones} ones");
            assert_eq!(zeros, 3, "fold {f}");
        }
        assert_eq!(folds, stratified_folds(&y, 2, 5, 7));
        assert_ne!(folds, stratified_folds(&y, 2, 5, 8));
    }

    #[test]
    fn scaler_uses_population_std_and_leaves_constants() {
        let x = Array2::from_shape_vec((3, 2), vec![1.0, 5.0, 2.0, 5.0, 3.0, 5.0]).unwrap();
        let s = Scaler::fit(x.view());
        assert_eq!(s.mean.to_vec(), vec![2.0, 5.0]);
        assert!((s.scale[0] - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.scale[1], 1.0);
    }

    #[test]
    fn ridge_matches_the_normal_equations() {
        // y = 2 x0 - x1 + 3 exactly; lambda tiny: both solves recover it.
        let x = Array2::from_shape_vec(
            (5, 2),
            vec![0.0, 1.0, 1.0, 0.0, 2.0, 1.0, 3.0, 3.0, -1.0, 2.0],
        )
        .unwrap();
        let y: Vec<f64> = x
            .rows()
            .into_iter()
            .map(|r| 2.0 * r[0] - r[1] + 3.0)
            .collect();
        let (w, b) = ridge(&x, &y, 1e-9).unwrap();
        assert!(
            (w[0] - 2.0).abs() < 1e-6 && (w[1] + 1.0).abs() < 1e-6,
            "{w}"
        );
        assert!((b - 3.0).abs() < 1e-6, "{b}");
        // Wide case (n < d) goes through the dual system.
        let xw = x.t().to_owned(); // [2, 5]
        let (w2, _) = ridge(&xw, &[1.0, -1.0], 1.0).unwrap();
        let pred = xw.dot(&w2);
        assert!(pred[0] > pred[1]);
    }

    #[test]
    fn errors_name_the_problem() {
        let one = classes(&[0, 0, 0], 2);
        let e = one.check(2, "probe").unwrap_err().to_string();
        assert!(e.contains("at least two classes"), "{e}");
        let few = classes(&[0, 0, 0, 1, 1], 2);
        let e = few.check(3, "probe").unwrap_err().to_string();
        assert!(
            e.contains("\"c1\" has 2 examples, fewer than the 3 folds"),
            "{e}"
        );
        let x = Array2::zeros((4, 2));
        let e = Fitted::fit(x.view(), &classes(&[0, 1, 0, 1], 2), 0.0, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c must be a positive number"), "{e}");
    }
    #[test]
    fn layer_results_cross_the_wire_bit_for_bit() {
        use probe::Share;
        // One rank's message, read back: the same results, every bit (the bytes of what was
        // read back are the bytes that were sent, NaN payloads and signed zeros included).
        let cross = |results: &[LayerResult]| {
            let sent = Share {
                fingerprint: 7,
                results: Ok(results),
            };
            let bytes = sent.encode().unwrap();
            let back = Share::decode(&bytes).unwrap();
            assert_eq!(back.fingerprint, 7);
            let back = back.results.unwrap();
            assert_eq!(format!("{results:?}"), format!("{back:?}"));
            let again = Share {
                fingerprint: 7,
                results: Ok(&back[..]),
            };
            assert_eq!(again.encode().unwrap(), bytes);
            // A message cut short anywhere is an error, not a panic.
            for cut in 0..bytes.len() {
                let e = Share::decode(&bytes[..cut]).err().unwrap().to_string();
                assert!(e.contains("did not arrive whole"), "{e}");
            }
            back
        };
        let x = Array2::from_shape_fn((12, 3), |(i, j)| {
            ((i * 7 + j * 3) % 5) as f64 + 0.1 * j as f64
        });
        let folds = |t: &Target| folds_for(t, 3, 1);
        let binary = classes(&(0..12).map(|i| i % 2).collect::<Vec<_>>(), 2);
        let multi = classes(&(0..12).map(|i| i % 3).collect::<Vec<_>>(), 4);
        let values = Target::Values((0..12).map(|i| i as f64 * 0.5 - 1.0).collect());
        let s = Settings {
            folds: 3,
            ..Settings::default()
        };
        let rs: Vec<LayerResult> = [&binary, &values]
            .into_iter()
            .map(|t| evaluate(x.view(), t, &folds(t), &s).unwrap())
            .collect();
        cross(&rs);
        // A multinomial fit where class 3 is absent: its intercept is -inf, which survives.
        let fit = Fitted::fit(x.view(), &multi, 1.0, 100).unwrap();
        let r = LayerResult {
            scores: vec![0.5, f64::NAN, -0.0],
            mean: 0.5,
            std: f64::from_bits(0x7ff8_0000_0000_beef),
            fold_c: vec![1.0],
            c: 1.0,
            fitted: fit,
        };
        let back = cross(std::slice::from_ref(&r));
        assert!(
            matches!(&back[0].fitted.weights, Weights::Multi { b, .. } if b[3] == f64::NEG_INFINITY)
        );
        assert_eq!(back[0].std.to_bits(), 0x7ff8_0000_0000_beef);
        assert_eq!(back[0].scores[2].to_bits(), (-0.0f64).to_bits());
        // A failed rank's error crosses too.
        let failed: Share<&[LayerResult]> = Share {
            fingerprint: 1,
            results: Err("probe: layer 3 failed".into()),
        };
        let back = Share::decode(&failed.encode().unwrap()).unwrap();
        assert_eq!(back.results.err().as_deref(), Some("probe: layer 3 failed"));
        // Garbage is an error, and a length claiming more than the bytes hold is not
        // allocated: fingerprint 0, Ok, then u64::MAX layers (a varint), then nothing.
        let e = Share::decode(&[0xff; 40]).err().unwrap().to_string();
        assert!(e.contains("did not arrive whole"), "{e}");
        let mut huge = vec![0, 0];
        huge.extend([0xff; 9]);
        huge.push(0x01);
        assert!(Share::decode(&huge).is_err());
    }
}
