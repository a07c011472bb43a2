//! Gradients at hook points as verbs: `grad(m, input, metric, opts)`,
//! `attribute(m, clean, corrupted, opts)` (attribution patching) and
//! `integrated_gradients(m, input, baseline, metric, opts)`.

use rhai::plugin::*;
use rhai::{Dynamic, Engine, FnPtr, Map, NativeCallContext, FLOAT};

use super::hooks::with_call;
use super::model::ModelHandle;
use super::options::Options;
use super::patch::{points_of, positions_of, result_map, single_for, MetricSpec};
use super::tensor::Tensor;
use super::RhaiResult;
use crate::grad::{self, Baseline, DiffMetricFn, IgOptions, Run};
use crate::model::Model;
use crate::{Error, Result};

/// A script's metric as a function autodiff can go through, its name, and whether it reads
/// only the last position (the built-in ones).
fn diff_metric<'c>(
    ctx: &'c NativeCallContext,
    m: &Model,
    value: &Dynamic,
    verb: &'static str,
) -> Result<(Box<DiffMetricFn<'c>>, String, bool)> {
    if let Some(spec) = value.clone().try_cast::<MetricSpec>() {
        let metric = spec.resolve(m)?;
        return Ok((Box::new(move |l| metric.array(l)), spec.describe(), true));
    }
    let Some(f) = value.clone().try_cast::<FnPtr>() else {
        return Err(Error::Invalid(format!(
            "{verb}: the metric is logit_diff(a, b), logprob_diff(a, b) or a function |logits| \
             of one run's logits [pos, vocab] returning a scalar Tensor, got {}",
            super::display::type_name(value)
        )));
    };
    let name = format!("{}()", f.fn_name());
    let call = move |logits: &mlx_rs::Array| -> Result<mlx_rs::Array> {
        let rows = logits.shape()[0];
        let mut out = Vec::with_capacity(rows as usize);
        for r in 0..rows {
            let row = logits.take_axis(mlx_rs::Array::from_int(r), 0)?;
            let v = super::tensor::keeping_scalars(|| {
                f.call_within_context::<Dynamic>(ctx, (Tensor::new(row),))
            })
            .map_err(|e| Error::Invalid(format!("{verb}: in the metric: {e}")))?;
            let Some(t) = v.clone().try_cast::<Tensor>() else {
                let hint = if v.is_float() || v.is_int() {
                    " (a number read with item() or to_array() carries no gradient: keep it a \
                     Tensor, e.g. |l| l[-1][a] - l[-1][b])"
                } else {
                    ""
                };
                return Err(Error::Invalid(format!(
                    "{verb}: the metric must return a scalar Tensor computed from the logits, \
                     got {}{hint}",
                    super::display::type_name(&v)
                )));
            };
            if t.array().size() != 1 {
                return Err(Error::Invalid(format!(
                    "{verb}: the metric must return a scalar Tensor, got shape {:?}",
                    t.shape()
                )));
            }
            out.push(t.array().reshape(&[1])?);
        }
        Ok(mlx_rs::ops::concatenate(&out, 0)?)
    };
    Ok((Box::new(call), name, false))
}

/// Keeps `positions` of `x` along its position axis.
fn at_positions(x: &mlx_rs::Array, axis: usize, positions: &[usize]) -> Result<mlx_rs::Array> {
    let idx: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
    Ok(x.take_axis(
        mlx_rs::Array::from_slice(&idx, &[idx.len() as i32]),
        axis as i32,
    )?)
}

const GRAD_KEYS: &[&str] = &["points", "positions", "times_activation"];

fn grad_impl(
    ctx: &NativeCallContext,
    m: &mut Model,
    input: &Dynamic,
    metric: &Dynamic,
    opts: &Map,
) -> Result<Map> {
    let o = Options::parse("grad", opts, GRAD_KEYS)?;
    let ids = single_for("grad", m, input, "")?;
    let points = points_of(&o, m)?;
    let positions = positions_of(&o, ids.len())?;
    let times = o.bool("times_activation", false)?;
    let (mut f, _, last_only) = diff_metric(ctx, m, metric, "grad")?;
    let g = with_call(ctx, || {
        grad::gradients(
            m,
            Run {
                ids: &ids,
                last_only,
            },
            &points,
            &mut *f,
        )
    })?;
    let mut out = Map::new();
    for (i, p) in points.iter().enumerate() {
        let mut x = g.grads[i].clone();
        if times {
            x = x.multiply(g.acts[i].as_dtype(x.dtype())?)?;
        }
        let x = at_positions(&x, p.pos_axis(), &positions)?;
        out.insert(p.to_string().into(), Dynamic::from(Tensor::new(x)));
    }
    Ok(out)
}

const ATTRIBUTE_KEYS: &[&str] = &["points", "positions", "metric", "plot", "title"];

fn attribute_impl(
    ctx: &NativeCallContext,
    m: &mut Model,
    clean: &Dynamic,
    corrupted: &Dynamic,
    opts: &Map,
) -> Result<Map> {
    let o = Options::parse("attribute", opts, ATTRIBUTE_KEYS)?;
    let clean_ids = single_for("attribute", m, clean, "clean")?;
    let corrupted_ids = single_for("attribute", m, corrupted, "corrupted")?;
    let points = points_of(&o, m)?;
    let positions = positions_of(&o, clean_ids.len())?;
    let metric = o.get("metric").ok_or_else(|| {
        Error::Invalid(
            "attribute: option 'metric' is required: logit_diff(\" Paris\", \" Rome\"), \
             logprob_diff(a, b), or a function |logits| of one run's logits [pos, vocab] \
             returning a scalar Tensor"
                .into(),
        )
    })?;
    let (mut f, name, last_only) = diff_metric(ctx, m, metric, "attribute")?;
    let grid = with_call(ctx, || {
        grad::attribute(
            m,
            &clean_ids,
            &corrupted_ids,
            &points,
            &positions,
            last_only,
            &mut *f,
        )
    })?;
    drop(f);
    let title = format!("Attribution patching: estimated share of {name} restored");
    result_map(ctx, m, &o, &grid, &clean_ids, &corrupted_ids, name, title)
}

const IG_KEYS: &[&str] = &["points", "steps", "batch_size"];

fn ig_impl(
    ctx: &NativeCallContext,
    m: &mut Model,
    input: &Dynamic,
    baseline: &Dynamic,
    metric: &Dynamic,
    opts: &Map,
) -> Result<Map> {
    let o = Options::parse("integrated_gradients", opts, IG_KEYS)?;
    let verb = "integrated_gradients";
    let ids = single_for(verb, m, input, "")?;
    let base_ids = if baseline.is_unit() {
        None
    } else {
        Some(single_for(verb, m, baseline, "baseline")?)
    };
    let points = points_of(&o, m)?;
    let steps = o.int("steps", 20)?;
    if !(1..=10_000).contains(&steps) {
        return Err(Error::Invalid(format!(
            "integrated_gradients: steps must be from 1 to 10000, got {steps}"
        )));
    }
    let batch = o.int("batch_size", 32)?;
    if !(1..=1024).contains(&batch) {
        return Err(Error::Invalid(format!(
            "integrated_gradients: batch_size must be from 1 to 1024, got {batch}"
        )));
    }
    let (mut f, _, last_only) = diff_metric(ctx, m, metric, verb)?;
    let base = match &base_ids {
        Some(b) => Baseline::Prompt(b),
        None => Baseline::Zero,
    };
    let got = with_call(ctx, || {
        grad::integrated_gradients(
            m,
            &ids,
            base,
            &points,
            IgOptions {
                steps: steps as usize,
                batch_rows: batch as usize,
                last_only,
            },
            &mut *f,
        )
    })?;
    let mut out = Map::new();
    for p in got {
        let by_pos = grad::per_position(&p.attributions, &p.point)?;
        let sum: f64 = by_pos.iter().sum();
        let mut r = Map::new();
        r.insert(
            "attributions".into(),
            Dynamic::from(Tensor::new(p.attributions)),
        );
        r.insert(
            "by_position".into(),
            Dynamic::from_array(
                by_pos
                    .into_iter()
                    .map(|x| Dynamic::from_float(x as FLOAT))
                    .collect(),
            ),
        );
        r.insert("sum".into(), Dynamic::from_float(sum));
        r.insert("input_metric".into(), Dynamic::from_float(p.input_metric));
        r.insert(
            "baseline_metric".into(),
            Dynamic::from_float(p.baseline_metric),
        );
        r.insert(
            "error".into(),
            Dynamic::from_float(sum - (p.input_metric - p.baseline_metric)),
        );
        out.insert(p.point.to_string().into(), Dynamic::from_map(r));
    }
    Ok(out)
}

#[export_module]
mod grad_functions {
    use super::*;

    pub type Model = super::ModelHandle;

    /// Gradients at hook points: d metric / d activation for one run of `input` (text or ids),
    /// from one backward pass through MLX's autodiff of the same forward hooks see (attached
    /// hooks and steering stay on). `metric`: `logit_diff(a, b)`, `logprob_diff(a, b)`, or a
    /// function `|logits| scalar Tensor` of the run's logits `[pos, vocab]` built with tensor
    /// operations. Returns a map point name -> Tensor shaped as the activation (`[1, pos, ...]`).
    ///
    /// Example: `grad(m, "The Eiffel Tower is in", logit_diff(" Paris", " Rome"))["blocks.0.hook_resid_pre"]`
    #[rhai_fn(name = "grad", return_raw)]
    pub fn grad_default(
        ctx: NativeCallContext,
        m: &mut Model,
        input: Dynamic,
        metric: Dynamic,
    ) -> RhaiResult<Map> {
        let mut g = m.get()?;
        Ok(grad_impl(&ctx, &mut g, &input, &metric, &Map::new())?)
    }

    /// `grad` with options: `points` (names with `*`; default "blocks.*.hook_resid_pre"),
    /// `positions` ("all" or an array, negative from the end: keeps those positions),
    /// `times_activation` (false: true gives gradient x activation).
    ///
    /// Example: `grad(m, "The Eiffel Tower is in", logit_diff(" Paris", " Rome"), #{points: "blocks.*.hook_attn_out", positions: [-1]})`
    #[rhai_fn(name = "grad", return_raw)]
    pub fn grad_with(
        ctx: NativeCallContext,
        m: &mut Model,
        input: Dynamic,
        metric: Dynamic,
        opts: Map,
    ) -> RhaiResult<Map> {
        let mut g = m.get()?;
        Ok(grad_impl(&ctx, &mut g, &input, &metric, &opts)?)
    }

    /// Attribution patching: the linear estimate of `patch`'s grid,
    /// `(clean - corrupted activation) . gradient at the corrupted run`, for every point and
    /// position from one clean forward and one forward and backward pass of `corrupted`.
    /// Options and result as `patch` (`metric` required; `points`, `positions`, `plot`,
    /// `title`): `grid` is the estimated share restored, `raw` the estimated patched metric.
    ///
    /// Example: `attribute(m, "The Eiffel Tower is in", "The Colosseum is in", #{metric: logit_diff(" Paris", " Rome")})`
    #[rhai_fn(name = "attribute", return_raw)]
    pub fn attribute(
        ctx: NativeCallContext,
        m: &mut Model,
        clean: Dynamic,
        corrupted: Dynamic,
        opts: Map,
    ) -> RhaiResult<Map> {
        let mut g = m.get()?;
        Ok(attribute_impl(&ctx, &mut g, &clean, &corrupted, &opts)?)
    }

    /// Integrated gradients at each point (separately): the point's activation in the run of
    /// `input` moves from the `baseline` prompt's activation (same length; `()` for zero) to
    /// its own in `steps` midpoint steps; attributions = difference x mean gradient. Options:
    /// `points` (default "blocks.*.hook_resid_pre"), `steps` (20), `batch_size` (32 path
    /// points per pass). Returns point name -> `#{attributions (Tensor [1, pos, ...]),
    /// by_position, sum, input_metric, baseline_metric, error}`; `error` = sum - (input_metric -
    /// baseline_metric) (completeness).
    ///
    /// Example: `integrated_gradients(m, "The Eiffel Tower is in", "The Colosseum is in", logit_diff(" Paris", " Rome"), #{points: "blocks.10.hook_resid_pre"})`
    #[rhai_fn(name = "integrated_gradients", return_raw)]
    pub fn integrated_gradients(
        ctx: NativeCallContext,
        m: &mut Model,
        input: Dynamic,
        baseline: Dynamic,
        metric: Dynamic,
        opts: Map,
    ) -> RhaiResult<Map> {
        let mut g = m.get()?;
        Ok(ig_impl(&ctx, &mut g, &input, &baseline, &metric, &opts)?)
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(grad_functions).into());
}
