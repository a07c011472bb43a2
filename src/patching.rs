//! Activation patching: run a corrupted prompt many times, each copy with one activation (a
//! hook point at one position) taken from the clean prompt's run, and measure how much of the
//! clean behaviour each patch restores.
//!
//! The copies run as batches: row `r` of a batch patches its own (point, position), so a grid of
//! 30 layers x 6 positions is a few forwards, not 180. A patch is a select between the
//! corrupted activation and the clean one under a `[batch, .., pos, ..]` mask, one hook per
//! point present in the batch.

use mlx_rs::{ops, Array, Dtype};

use crate::error::{Error, Result};
use crate::hooks::{Hook, HookName};
use crate::model::Model;

/// What a patched run is scored by: one number per row of logits `[rows, pos, vocab]`.
pub type MetricFn<'a> = dyn FnMut(&Array) -> Result<Vec<f64>> + 'a;

/// A built-in metric, read at the last position of each row.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// `logit(a) - logit(b)`
    LogitDiff(u32, u32),
    /// `log p(a) - log p(b)`
    LogprobDiff(u32, u32),
    /// `logit(a)`
    Logit(u32),
    /// `log p(a)`
    Logprob(u32),
}

impl Metric {
    /// The token ids the metric reads, to check against the vocabulary.
    pub fn ids(&self) -> Vec<u32> {
        match *self {
            Metric::LogitDiff(a, b) | Metric::LogprobDiff(a, b) => vec![a, b],
            Metric::Logit(a) | Metric::Logprob(a) => vec![a],
        }
    }

    /// The metric of each row of `logits` (`[rows, pos, vocab]`), at the last position.
    pub fn eval(&self, logits: &Array) -> Result<Vec<f64>> {
        Ok(crate::arrays::to_f32_vec(&self.array(logits)?)?
            .into_iter()
            .map(|x| x as f64)
            .collect())
    }

    /// [`Metric::eval`] as an array `[rows]` (float32) built from `logits` by MLX operations,
    /// so autodiff can go through it.
    pub fn array(&self, logits: &Array) -> Result<Array> {
        let shape = logits.shape();
        if shape.len() != 3 {
            return Err(Error::Invalid(format!(
                "metric: expected logits [rows, pos, vocab], got {shape:?}"
            )));
        }
        let vocab = shape[2] as u32;
        if let Some(bad) = self.ids().into_iter().find(|&t| t >= vocab) {
            return Err(Error::Invalid(format!(
                "metric: token id {bad} is out of range (vocabulary of {vocab})"
            )));
        }
        let last = logits
            .take_axis(Array::from_int(shape[1] - 1), 1)?
            .as_dtype(Dtype::Float32)?;
        let logp = || -> Result<Array> {
            let lse = last.logsumexp_axis(-1, true)?;
            Ok(last.subtract(lse)?)
        };
        let pick = |a: &Array, t: u32| -> Result<Array> {
            Ok(a.take_axis(Array::from_int(t as i32), -1)?)
        };
        Ok(match *self {
            Metric::LogitDiff(a, b) => pick(&last, a)?.subtract(pick(&last, b)?)?,
            Metric::Logit(a) => pick(&last, a)?,
            Metric::LogprobDiff(a, b) => {
                let lp = logp()?;
                pick(&lp, a)?.subtract(pick(&lp, b)?)?
            }
            Metric::Logprob(a) => pick(&logp()?, a)?,
        })
    }
}

/// The result of [`patch`]: one row per point, one column per position.
#[derive(Debug, Clone)]
pub struct PatchGrid {
    pub points: Vec<HookName>,
    pub positions: Vec<usize>,
    /// The metric of the clean and of the corrupted run.
    pub clean: f64,
    pub corrupted: f64,
    /// The metric of each patched run.
    pub raw: Vec<Vec<f64>>,
    /// `(patched - corrupted) / (clean - corrupted)`: 0 restores nothing, 1 restores the clean
    /// run's metric. NaN where the clean and corrupted metrics are equal.
    pub normalized: Vec<Vec<f64>>,
}

/// How [`patch`] runs.
pub struct PatchOptions<'a> {
    /// Patched copies per forward.
    pub batch_rows: usize,
    /// Only the last position's logits are needed by the metric (the built-in ones).
    pub last_only: bool,
    /// Called after each batch with (rows done, rows in all).
    pub progress: Option<&'a mut dyn FnMut(usize, usize)>,
}

/// Patches each of `points` at each of `positions` from the run of `clean` into the run of
/// `corrupted` (token ids of the same length) and scores every patched run with `metric`.
/// Hooks already attached to the model run as usual (steering stays on); the patching hooks
/// are removed again whatever happens.
pub fn patch(
    model: &mut Model,
    clean: &[u32],
    corrupted: &[u32],
    points: &[HookName],
    positions: &[usize],
    metric: &mut MetricFn<'_>,
    opts: PatchOptions<'_>,
) -> Result<PatchGrid> {
    check_pair("patch", model, clean, corrupted, positions)?;
    if points.is_empty() {
        return Err(Error::Invalid("patch: no points".into()));
    }
    let t = clean.len();
    let row = |ids: &[u32]| {
        Array::from_slice(
            &ids.iter().map(|&x| x as i32).collect::<Vec<_>>(),
            &[1, t as i32],
        )
    };

    // The clean run, keeping every point's activation whole.
    model.hooks.start_capture(points);
    let clean_logits = model.run(&row(clean), &[], None, false);
    let mut got = model.hooks.take_capture();
    let clean_logits = clean_logits?;
    let mut acts = Vec::with_capacity(points.len());
    for p in points {
        let a = got
            .remove(p)
            .and_then(|mut v| v.pop())
            .ok_or_else(|| Error::Invalid(format!("patch: {p} was not reached")))?;
        acts.push(a);
    }
    mlx_rs::transforms::eval(acts.iter().chain([&clean_logits]))?;
    let clean_m = one(metric(&clean_logits)?, "clean")?;
    let corrupted_logits = model.run(&row(corrupted), &[], None, false)?;
    let corrupted_m = one(metric(&corrupted_logits)?, "corrupted")?;

    // Before the first token where the prompts differ, every activation of the two runs is the
    // same (the model is causal): patching there changes nothing, so it is not run.
    let first_diff = clean
        .iter()
        .zip(corrupted)
        .position(|(a, b)| a != b)
        .unwrap_or(t);
    let jobs: Vec<(usize, usize)> = (0..points.len())
        .flat_map(|i| positions.iter().map(move |&p| (i, p)))
        .filter(|&(_, p)| p >= first_diff)
        .collect();
    let batch_rows = opts.batch_rows.max(1);
    let mut progress = opts.progress;
    let mut values = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(batch_rows) {
        crate::interrupt::check()?;
        let b = chunk.len();
        let ids: Vec<i32> = (0..b)
            .flat_map(|_| corrupted.iter().map(|&x| x as i32))
            .collect();
        let ids = Array::from_slice(&ids, &[b as i32, t as i32]);
        let mut attached = Vec::new();
        for (i, point) in points.iter().enumerate() {
            let rows: Vec<(usize, usize)> = chunk
                .iter()
                .enumerate()
                .filter(|(_, (pi, _))| *pi == i)
                .map(|(r, &(_, pos))| (r, pos))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let source = acts[i].clone();
            let axis = point.pos_axis();
            let mut mshape = vec![1i32; source.ndim()];
            mshape[0] = b as i32;
            mshape[axis] = t as i32;
            let mut sel = vec![false; b * t];
            for (r, pos) in rows {
                sel[r * t + pos] = true;
            }
            let mask = Array::from_slice(&sel, &mshape);
            let name = *point;
            attached.push(model.hooks.attach(Hook {
                name,
                label: "patch (activation patching)".into(),
                steering: false,
                func: Box::new(move |x, _ctx| {
                    if x.shape()[1..] != source.shape()[1..] || x.shape()[0] != b as i32 {
                        return Err(Error::Invalid(format!(
                            "patch at {name}: the clean activation has shape {:?}, the \
                             patched run's {:?}",
                            source.shape(),
                            x.shape()
                        )));
                    }
                    let clean = source.as_dtype(x.dtype())?;
                    Ok(Some(ops::select(&mask, &clean, x)?))
                }),
            }));
        }
        let run = model.run(&ids, &[], None, opts.last_only);
        model.hooks.detach(&attached);
        let got = metric(&run?)?;
        if got.len() != b {
            return Err(Error::Invalid(format!(
                "patch: the metric gave {} values for {b} patched runs",
                got.len()
            )));
        }
        values.extend(got);
        if let Some(p) = progress.as_mut() {
            p(values.len(), jobs.len());
        }
    }

    let mut values = values.into_iter();
    let raw: Vec<Vec<f64>> = (0..points.len())
        .map(|_| {
            positions
                .iter()
                .map(|&p| {
                    if p < first_diff {
                        Some(corrupted_m)
                    } else {
                        values.next()
                    }
                })
                .collect::<Option<Vec<f64>>>()
                .unwrap_or_default()
        })
        .collect();
    Ok(PatchGrid::new(
        points.to_vec(),
        positions.to_vec(),
        clean_m,
        corrupted_m,
        raw,
    ))
}

impl PatchGrid {
    /// A grid from its raw metrics, normalised by the clean and corrupted ones.
    pub fn new(
        points: Vec<HookName>,
        positions: Vec<usize>,
        clean: f64,
        corrupted: f64,
        raw: Vec<Vec<f64>>,
    ) -> PatchGrid {
        let span = clean - corrupted;
        let normalized = raw
            .iter()
            .map(|r| {
                r.iter()
                    .map(|v| {
                        if span == 0.0 {
                            f64::NAN
                        } else {
                            (v - corrupted) / span
                        }
                    })
                    .collect()
            })
            .collect();
        PatchGrid {
            points,
            positions,
            clean,
            corrupted,
            raw,
            normalized,
        }
    }
}

/// Checks a clean/corrupted pair of prompts and the positions to patch (or attribute) at:
/// both non-empty, the same length, ids in the vocabulary, positions inside the prompts.
pub fn check_pair(
    verb: &str,
    model: &Model,
    clean: &[u32],
    corrupted: &[u32],
    positions: &[usize],
) -> Result<()> {
    let t = clean.len();
    if t == 0 || corrupted.is_empty() {
        return Err(Error::Invalid(format!("{verb}: an input has no tokens")));
    }
    if corrupted.len() != t {
        return Err(Error::Invalid(format!(
            "{verb}: the clean input has {t} tokens and the corrupted one {}; activation \
             patching needs prompts of the same length (position i of one is patched into \
             position i of the other)",
            corrupted.len()
        )));
    }
    if positions.is_empty() {
        return Err(Error::Invalid(format!("{verb}: no positions")));
    }
    if let Some(&p) = positions.iter().find(|&&p| p >= t) {
        return Err(Error::Invalid(format!(
            "{verb}: position {p} is out of range for prompts of {t} tokens"
        )));
    }
    let vocab = model.info.vocab as u32;
    if let Some(bad) = clean.iter().chain(corrupted).find(|&&x| x >= vocab) {
        return Err(Error::Invalid(format!(
            "{verb}: token id {bad} is out of range (vocabulary of {vocab})"
        )));
    }
    Ok(())
}

fn one(v: Vec<f64>, which: &str) -> Result<f64> {
    match v[..] {
        [x] => Ok(x),
        _ => Err(Error::Invalid(format!(
            "patch: the metric gave {} values for the {which} run (expected one)",
            v.len()
        ))),
    }
}
