//! Gradients with respect to activations, through MLX's autodiff of the same forward the hooks
//! use: the gradient of a metric of the logits at hook points, attribution patching (the linear
//! estimate of activation patching from one backward pass) and integrated gradients at a point.
//!
//! The differentiated function takes one zero "delta" per requested point; the forward adds
//! each delta at its hook point (after the hooks already attached there, so steering and other
//! interventions stay on) and returns the metric. The vector-Jacobian product with cotangent 1
//! is d metric / d activation at every point, from one backward pass.

use mlx_rs::{ops, Array, Dtype};

use crate::error::{Error, Result};
use crate::hooks::{Hook, HookName};
use crate::model::{fastmath, Model};
use crate::patching::{self, PatchGrid};

/// A metric autodiff can go through: logits `[rows, pos, vocab]` to one value per row `[rows]`,
/// computed from the logits with MLX operations (a value read to the host and turned back into
/// an array carries no gradient).
pub type DiffMetricFn<'a> = dyn FnMut(&Array) -> Result<Array> + 'a;

/// One input to differentiate at: token ids, and whether the metric reads only the last
/// position (then the head runs on the last position only).
pub struct Run<'i> {
    pub ids: &'i [u32],
    pub last_only: bool,
}

/// What one forward and backward pass gives.
pub struct Gradients {
    /// The metric of the run.
    pub value: f64,
    /// Per point: the activation of the run there `[1, ...]` (after the hooks attached there).
    pub acts: Vec<Array>,
    /// Per point: d metric / d activation, shaped as the activation.
    pub grads: Vec<Array>,
}

/// d metric / d activation at each of `points` for one run of `run.ids`, from one forward and
/// one backward pass (plus one forward that records the activations' shapes). Hooks already
/// attached stay active in both.
pub fn gradients(
    model: &mut Model,
    run: Run<'_>,
    points: &[HookName],
    metric: &mut DiffMetricFn<'_>,
) -> Result<Gradients> {
    check_ids(model, "grad", run.ids)?;
    check_points("grad", points)?;
    let ids = row(run.ids, 1);
    let (acts, _) = capture(model, &ids, points, "grad")?;
    let deltas: Vec<Array> = acts
        .iter()
        .map(|a| Ok(ops::zeros_like(a)?))
        .collect::<Result<_>>()?;
    let (values, grads) = backward(model, &ids, points, None, deltas, run.last_only, metric)?;
    Ok(Gradients {
        value: values[0],
        acts,
        grads,
    })
}

/// The run: logits with each point's activation replaced by `replace[i]` when given, plus
/// `deltas[i]`; returns each row's metric and d (sum of the rows' metrics) / d delta.
fn backward(
    model: &mut Model,
    ids: &Array,
    points: &[HookName],
    replace: Option<&[Array]>,
    deltas: Vec<Array>,
    last_only: bool,
    metric: &mut DiffMetricFn<'_>,
) -> Result<(Vec<f64>, Vec<Array>)> {
    let rows = ids.shape()[0];
    let mut failure: Option<Error> = None;
    let mut values: Option<Array> = None;
    let f = |d: &[Array]| -> mlx_rs::error::Result<Vec<Array>> {
        let mut run = || -> Result<Array> {
            let logits = forward_with(model, ids, points, replace, d, last_only)?;
            let v = metric(&logits)?;
            if v.shape() != [rows] {
                return Err(Error::Invalid(format!(
                    "grad: the metric gave shape {:?} for {rows} runs (expected one number \
                     per run)",
                    v.shape()
                )));
            }
            Ok(v.as_dtype(Dtype::Float32)?)
        };
        match run() {
            Ok(v) => {
                values = Some(v.clone());
                Ok(vec![v])
            }
            Err(e) => {
                let msg = e.to_string();
                failure = Some(e);
                Err(mlx_rs::error::Exception::custom(msg))
            }
        }
    };
    let primals = deltas;
    let cotangent = ops::ones::<f32>(&[rows])?;
    let result = fastmath::plain(|| {
        let r = mlx_rs::transforms::fallible_vjp(f, &primals, &[cotangent]);
        // The backward pass runs here, still without the fast path.
        if let Ok((_, grads)) = &r {
            mlx_rs::transforms::eval(grads)?;
        }
        r
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let (_, grads) = result?;
    let values = values.ok_or_else(|| Error::Invalid("grad: the forward did not run".into()))?;
    mlx_rs::transforms::eval(grads.iter().chain([&values]))?;
    if grads.len() != points.len() {
        return Err(Error::Invalid(format!(
            "grad: {} gradients for {} points",
            grads.len(),
            points.len()
        )));
    }
    // A metric that reads the logits to the host (item(), to_array()) and builds its value
    // again gives exactly zero everywhere: say so rather than return it.
    let mut all_zero = true;
    for g in &grads {
        if crate::arrays::to_f32_vec(&g.abs()?.max(None)?)?[0] != 0.0 {
            all_zero = false;
            break;
        }
    }
    if all_zero {
        return Err(Error::Invalid(
            "grad: the metric's gradient is zero at every point: it does not depend on the \
             activations through tensor operations (a value read with item(), to_array() or \
             to_list() and made a tensor again carries no gradient)"
                .into(),
        ));
    }
    let values = crate::arrays::to_f32_vec(&values)?
        .into_iter()
        .map(|x| x as f64)
        .collect();
    Ok((values, grads))
}

/// A forward of `ids` with `replace[i]` (when given) instead of point `i`'s activation, plus
/// `deltas[i]`; the extra hooks are removed again whatever happens.
fn forward_with(
    model: &mut Model,
    ids: &Array,
    points: &[HookName],
    replace: Option<&[Array]>,
    deltas: &[Array],
    last_only: bool,
) -> Result<Array> {
    let mut attached = Vec::with_capacity(points.len());
    for (i, &name) in points.iter().enumerate() {
        let delta = deltas[i].clone();
        let base = replace.map(|r| r[i].clone());
        attached.push(model.hooks.attach(Hook {
            name,
            label: "grad (activation delta)".into(),
            steering: false,
            func: Box::new(move |x, _ctx| {
                if x.shape() != delta.shape() {
                    return Err(Error::Invalid(format!(
                        "grad at {name}: the activation has shape {:?} in this run, {:?} in \
                         the run that set up the gradient",
                        x.shape(),
                        delta.shape()
                    )));
                }
                let x = match &base {
                    Some(b) => b.as_dtype(x.dtype())?,
                    None => x.clone(),
                };
                Ok(Some(x.add(delta.as_dtype(x.dtype())?)?))
            }),
        }));
    }
    let out = model.run(ids, &[], None, last_only);
    model.hooks.detach(&attached);
    out
}

/// One forward of `ids` recording `points`; returns each point's activation (evaluated) and
/// the logits.
fn capture(
    model: &mut Model,
    ids: &Array,
    points: &[HookName],
    verb: &str,
) -> Result<(Vec<Array>, Array)> {
    model.hooks.start_capture(points);
    let logits = model.run(ids, &[], None, false);
    let mut got = model.hooks.take_capture();
    let logits = logits?;
    let mut acts = Vec::with_capacity(points.len());
    for p in points {
        let a = got
            .remove(p)
            .and_then(|mut v| v.pop())
            .ok_or_else(|| Error::Invalid(format!("{verb}: {p} was not reached")))?;
        if !is_float(a.dtype()) {
            return Err(Error::Invalid(format!(
                "{verb}: {p} holds {:?} values (chosen expert ids); gradients exist only at \
                 floating-point activations",
                a.dtype()
            )));
        }
        acts.push(a);
    }
    mlx_rs::transforms::eval(acts.iter().chain([&logits]))?;
    Ok((acts, logits))
}

fn is_float(d: Dtype) -> bool {
    matches!(
        d,
        Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float64
    )
}

fn row(ids: &[u32], copies: usize) -> Array {
    let t = ids.len();
    let v: Vec<i32> = (0..copies)
        .flat_map(|_| ids.iter().map(|&x| x as i32))
        .collect();
    Array::from_slice(&v, &[copies as i32, t as i32])
}

fn check_ids(model: &Model, verb: &str, ids: &[u32]) -> Result<()> {
    // MLX's send and recv have no vector-Jacobian product: gradients stop at a stage boundary.
    model.refuse_pipeline(verb)?;
    if ids.is_empty() {
        return Err(Error::Invalid(format!("{verb}: the input has no tokens")));
    }
    let vocab = model.info.vocab as u32;
    if let Some(bad) = ids.iter().find(|&&x| x >= vocab) {
        return Err(Error::Invalid(format!(
            "{verb}: token id {bad} is out of range (vocabulary of {vocab})"
        )));
    }
    Ok(())
}

fn check_points(verb: &str, points: &[HookName]) -> Result<()> {
    if points.is_empty() {
        return Err(Error::Invalid(format!("{verb}: no points")));
    }
    if let Some(p) = points.iter().find(|p| matches!(p, HookName::ExpertIds(_))) {
        return Err(Error::Invalid(format!(
            "{verb}: {p} holds chosen expert ids (integers); gradients exist only at \
             floating-point activations"
        )));
    }
    Ok(())
}

/// Sums `x` `[1, ...]` over every axis but the point's position axis: one number per position.
pub fn per_position(x: &Array, point: &HookName) -> Result<Vec<f64>> {
    let axis = point.pos_axis() as i32;
    let axes: Vec<i32> = (0..x.ndim() as i32).filter(|&a| a != axis).collect();
    let s = x.as_dtype(Dtype::Float32)?.sum_axes(&axes, false)?;
    Ok(crate::arrays::to_f32_vec(&s)?
        .into_iter()
        .map(|v| v as f64)
        .collect())
}

/// Attribution patching: the linear estimate of [`patching::patch`]'s grid,
/// `(clean - corrupted) . d metric / d activation` at the corrupted run, for every point and
/// position from one backward pass. `raw` is the estimated patched metric (corrupted metric
/// plus the estimate), `normalized` the estimate over `clean - corrupted`, as in `patch`.
pub fn attribute(
    model: &mut Model,
    clean: &[u32],
    corrupted: &[u32],
    points: &[HookName],
    positions: &[usize],
    last_only: bool,
    metric: &mut DiffMetricFn<'_>,
) -> Result<PatchGrid> {
    model.refuse_pipeline("attribute")?;
    patching::check_pair("attribute", model, clean, corrupted, positions)?;
    check_points("attribute", points)?;
    let (clean_acts, clean_logits) = capture(model, &row(clean, 1), points, "attribute")?;
    let clean_m = scalar(&metric(&clean_logits)?, "attribute")?;
    let g = gradients(
        model,
        Run {
            ids: corrupted,
            last_only,
        },
        points,
        metric,
    )?;
    let mut raw = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        let diff = clean_acts[i]
            .as_dtype(Dtype::Float32)?
            .subtract(g.acts[i].as_dtype(Dtype::Float32)?)?;
        let est = per_position(&diff.multiply(g.grads[i].as_dtype(Dtype::Float32)?)?, p)?;
        raw.push(positions.iter().map(|&j| g.value + est[j]).collect());
    }
    Ok(PatchGrid::new(
        points.to_vec(),
        positions.to_vec(),
        clean_m,
        g.value,
        raw,
    ))
}

fn scalar(v: &Array, verb: &str) -> Result<f64> {
    if v.size() != 1 {
        return Err(Error::Invalid(format!(
            "{verb}: the metric gave shape {:?} for one run (expected one number)",
            v.shape()
        )));
    }
    Ok(crate::arrays::to_f32_vec(&v.as_dtype(Dtype::Float32)?)?[0] as f64)
}

/// What integrated gradients are taken from: another prompt's activation at the point (a
/// prompt of the same length), or zero.
pub enum Baseline<'i> {
    Prompt(&'i [u32]),
    Zero,
}

/// Integrated gradients at one point.
pub struct IgPoint {
    pub point: HookName,
    /// `(input - baseline) * mean over the path of d metric / d activation`, shaped as the
    /// activation `[1, ...]`.
    pub attributions: Array,
    /// The metric with the point's activation set to the baseline's, and the input's own.
    pub baseline_metric: f64,
    pub input_metric: f64,
}

/// Options of [`integrated_gradients`].
pub struct IgOptions {
    /// Points on the path from the baseline (alpha 0) to the input (alpha 1): the midpoints
    /// `(k + 0.5) / steps`.
    pub steps: usize,
    /// Path points per forward and backward pass.
    pub batch_rows: usize,
    pub last_only: bool,
}

/// Integrated gradients at each of `points` separately: the point's activation in the run of
/// `input` is moved along the straight line from the baseline's activation to its own, and
/// the gradient of the metric is averaged over the path (midpoint rule) and multiplied by the
/// difference. Completeness: the attributions add up to `input_metric - baseline_metric` up to
/// the error of the `steps`-point rule.
pub fn integrated_gradients(
    model: &mut Model,
    input: &[u32],
    baseline: Baseline<'_>,
    points: &[HookName],
    opts: IgOptions,
    metric: &mut DiffMetricFn<'_>,
) -> Result<Vec<IgPoint>> {
    check_ids(model, "integrated_gradients", input)?;
    check_points("integrated_gradients", points)?;
    if opts.steps == 0 || opts.steps > 10_000 {
        return Err(Error::Invalid(format!(
            "integrated_gradients: steps must be from 1 to 10000, got {}",
            opts.steps
        )));
    }
    let (acts, _) = capture(model, &row(input, 1), points, "integrated_gradients")?;
    let base_acts: Vec<Array> = match baseline {
        Baseline::Prompt(b) => {
            check_ids(model, "integrated_gradients", b)?;
            if b.len() != input.len() {
                return Err(Error::Invalid(format!(
                    "integrated_gradients: the input has {} tokens and the baseline {}; the \
                     baseline's activation replaces the input's position by position, so \
                     they need the same length",
                    input.len(),
                    b.len()
                )));
            }
            capture(model, &row(b, 1), points, "integrated_gradients")?.0
        }
        Baseline::Zero => acts
            .iter()
            .map(|a| Ok(ops::zeros_like(a)?))
            .collect::<Result<_>>()?,
    };
    let n = opts.steps;
    let alphas: Vec<f32> = (0..n).map(|k| (k as f32 + 0.5) / n as f32).collect();
    let mut out = Vec::with_capacity(points.len());
    for (i, &point) in points.iter().enumerate() {
        crate::interrupt::check()?;
        let a = acts[i].as_dtype(Dtype::Float32)?;
        let b = base_acts[i].as_dtype(Dtype::Float32)?;
        let diff = a.subtract(&b)?;
        let along = |alphas: &[f32]| -> Result<Array> {
            let mut shape = vec![1i32; a.ndim()];
            shape[0] = alphas.len() as i32;
            let al = Array::from_slice(alphas, &shape);
            let path = b.add(al.multiply(&diff)?)?;
            Ok(path.as_dtype(acts[i].dtype())?)
        };
        let mut total = ops::zeros_like(&a)?;
        for chunk in alphas.chunks(opts.batch_rows.max(1)) {
            crate::interrupt::check()?;
            let path = along(chunk)?;
            let ids = row(input, chunk.len());
            let zero = ops::zeros_like(&path)?;
            let (_, g) = backward(
                model,
                &ids,
                &[point],
                Some(std::slice::from_ref(&path)),
                vec![zero],
                opts.last_only,
                metric,
            )?;
            let g = g[0].as_dtype(Dtype::Float32)?.sum_axis(0, true)?;
            total = total.add(g)?;
            mlx_rs::transforms::eval([&total])?;
        }
        let attributions = diff.multiply(total.divide(Array::from_f32(n as f32))?)?;
        // The ends of the path, run as they are (no gradient).
        let ends = along(&[0.0, 1.0])?;
        let zero = ops::zeros_like(&ends)?;
        let logits = fastmath::plain(|| {
            forward_with(
                model,
                &row(input, 2),
                &[point],
                Some(std::slice::from_ref(&ends)),
                &[zero],
                opts.last_only,
            )
        })?;
        let v = metric(&logits)?;
        if v.shape() != [2] {
            return Err(Error::Invalid(format!(
                "integrated_gradients: the metric gave shape {:?} for 2 runs",
                v.shape()
            )));
        }
        let v = crate::arrays::to_f32_vec(&v.as_dtype(Dtype::Float32)?)?;
        mlx_rs::transforms::eval([&attributions])?;
        out.push(IgPoint {
            point,
            attributions,
            baseline_metric: v[0] as f64,
            input_metric: v[1] as f64,
        });
    }
    Ok(out)
}
