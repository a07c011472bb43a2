//! `patch(m, clean, corrupted, opts)`: activation patching as one verb, and the built-in
//! metrics it scores runs by (`logit_diff(a, b)`, `logprob_diff(a, b)`).

use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, FnPtr, Map, NativeCallContext, FLOAT, INT};

use super::hooks::with_call;
use super::model::{input, Input, ModelHandle};
use super::options::Options;
use super::tensor::Tensor;
use super::RhaiResult;
use crate::model::Model;
use crate::patching::{self, Metric, PatchGrid, PatchOptions};
use crate::plot::{Heatmap, Labels};
use crate::{Error, Result};

/// A token named by a script: its text (one token) or its id.
#[derive(Debug, Clone, PartialEq)]
enum TokenRef {
    Text(String),
    Id(INT),
}

impl TokenRef {
    fn of(v: &Dynamic, verb: &str) -> Result<TokenRef> {
        if let Ok(i) = v.as_int() {
            return Ok(TokenRef::Id(i));
        }
        match v.clone().into_string() {
            Ok(s) => Ok(TokenRef::Text(s)),
            Err(t) => Err(Error::Invalid(format!(
                "{verb}: a token is a string (one token, e.g. \" Paris\") or an id, got {t}"
            ))),
        }
    }

    fn id(&self, m: &Model, verb: &str) -> Result<u32> {
        let vocab = m.info.vocab as INT;
        match self {
            TokenRef::Id(i) if (0..vocab).contains(i) => Ok(*i as u32),
            TokenRef::Id(i) => Err(Error::Invalid(format!(
                "{verb}: token id {i} is out of range (vocabulary of {vocab})"
            ))),
            TokenRef::Text(s) => {
                let ids = m.encode(s, false)?;
                match ids[..] {
                    [id] => Ok(id),
                    _ => Err(Error::Invalid(format!(
                        "{verb}: {s:?} is {} tokens ({ids:?}), not one; use a string the \
                         tokenizer keeps whole (mind the leading space: \" Paris\") or an id",
                        ids.len()
                    ))),
                }
            }
        }
    }
}

/// A built-in metric as a script value: resolved to token ids when a model uses it.
#[derive(Debug, Clone)]
pub struct MetricSpec {
    kind: &'static str,
    a: TokenRef,
    b: TokenRef,
}

impl MetricSpec {
    pub(super) fn resolve(&self, m: &Model) -> Result<Metric> {
        let (a, b) = (self.a.id(m, self.kind)?, self.b.id(m, self.kind)?);
        Ok(match self.kind {
            "logprob_diff" => Metric::LogprobDiff(a, b),
            _ => Metric::LogitDiff(a, b),
        })
    }

    pub(super) fn describe(&self) -> String {
        let t = |r: &TokenRef| match r {
            TokenRef::Text(s) => format!("{s:?}"),
            TokenRef::Id(i) => i.to_string(),
        };
        format!("{}({}, {})", self.kind, t(&self.a), t(&self.b))
    }
}

const PATCH_KEYS: &[&str] = &[
    "points",
    "positions",
    "metric",
    "batch_size",
    "progress",
    "plot",
    "title",
];

/// Rows of patched copies per forward: about 4,096 tokens of work per batch.
fn default_batch(t: usize) -> usize {
    (4096 / t.max(1)).clamp(1, 256)
}

pub(super) fn single(m: &Model, v: &Dynamic, what: &str) -> Result<Vec<u32>> {
    single_for("patch", m, v, what)
}

/// One input of `verb` (text or ids, not a batch) as token ids.
pub(super) fn single_for(verb: &str, m: &Model, v: &Dynamic, what: &str) -> Result<Vec<u32>> {
    match input(m, v, verb)? {
        Input::One(ids) => Ok(ids),
        Input::Batch(_) => Err(Error::Invalid(format!(
            "{verb}: the {what} input is one text or one array of ids, not an array of texts"
        ))),
    }
}

pub(super) fn points_of(
    o: &Options,
    m: &crate::model::Model,
) -> Result<Vec<crate::hooks::HookName>> {
    let patterns: Vec<String> = match o.get("points") {
        None => vec!["blocks.*.hook_resid_pre".into()],
        Some(v) => match v.clone().into_string() {
            Ok(s) => vec![s],
            Err(_) => o
                .array("points")?
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    p.clone().into_string().map_err(|_| {
                        Error::Invalid(format!("{}: points must be hook names (strings)", o.verb()))
                    })
                })
                .collect::<Result<_>>()?,
        },
    };
    m.expand_points(&patterns)
}

pub(super) fn positions_of(o: &Options, t: usize) -> Result<Vec<usize>> {
    let verb = o.verb();
    let Some(v) = o.get("positions") else {
        return Ok((0..t).collect());
    };
    if v.clone().into_string().is_ok_and(|s| s == "all") {
        return Ok((0..t).collect());
    }
    let bad = || {
        Error::Invalid(format!(
            "{verb}: positions is \"all\" or an array of token positions (negative from the \
             end), got {}",
            super::display::inline(v)
        ))
    };
    let a = v.read_lock::<RhaiArray>().ok_or_else(bad)?;
    let mut out = Vec::with_capacity(a.len());
    for x in a.iter() {
        let i = x.as_int().map_err(|_| bad())?;
        let k = if i < 0 { i + t as INT } else { i };
        if !(0..t as INT).contains(&k) {
            return Err(Error::Invalid(format!(
                "{verb}: position {i} is out of range for prompts of {t} tokens"
            )));
        }
        if !out.contains(&(k as usize)) {
            out.push(k as usize);
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

pub(super) fn floats(rows: &[Vec<f64>]) -> Dynamic {
    Dynamic::from_array(
        rows.iter()
            .map(|r| Dynamic::from_array(r.iter().map(|&x| Dynamic::from_float(x)).collect()))
            .collect(),
    )
}

pub(super) fn strings(items: impl IntoIterator<Item = String>) -> Dynamic {
    Dynamic::from_array(items.into_iter().map(Dynamic::from).collect())
}

fn patch_impl(
    ctx: &NativeCallContext,
    m: &mut Model,
    clean: &Dynamic,
    corrupted: &Dynamic,
    opts: &Map,
) -> Result<Map> {
    let o = Options::parse("patch", opts, PATCH_KEYS)?;
    let clean_ids = single(m, clean, "clean")?;
    let corrupted_ids = single(m, corrupted, "corrupted")?;
    let t = clean_ids.len();
    let points = points_of(&o, m)?;
    let positions = positions_of(&o, t)?;
    let batch = o.int("batch_size", default_batch(t) as INT)?;
    if !(1..=4096).contains(&batch) {
        return Err(Error::Invalid(format!(
            "patch: batch_size must be from 1 to 4096, got {batch}"
        )));
    }
    let metric_value = o.get("metric").ok_or_else(|| {
        Error::Invalid(
            "patch: option 'metric' is required: logit_diff(\" Paris\", \" Rome\"), \
             logprob_diff(a, b), or a function |logits| ... of one run's logits [pos, vocab]"
                .into(),
        )
    })?;
    let last_only = metric_value.is::<MetricSpec>();
    let (mut metric, metric_name): (Box<patching::MetricFn<'_>>, String) =
        if let Some(spec) = metric_value.clone().try_cast::<MetricSpec>() {
            let metric = spec.resolve(m)?;
            (Box::new(move |l| metric.eval(l)), spec.describe())
        } else if let Some(f) = metric_value.clone().try_cast::<FnPtr>() {
            let name = format!("{}()", f.fn_name());
            let call = move |logits: &mlx_rs::Array| -> Result<Vec<f64>> {
                let rows = logits.shape()[0];
                (0..rows)
                    .map(|r| {
                        let row = logits.take_axis(mlx_rs::Array::from_int(r), 0)?;
                        let out = f
                            .call_within_context::<Dynamic>(ctx, (Tensor::new(row),))
                            .map_err(|e| Error::Invalid(format!("patch: in the metric: {e}")))?;
                        if let Ok(x) = out.as_float() {
                            Ok(x)
                        } else if let Ok(i) = out.as_int() {
                            Ok(i as f64)
                        } else if let Some(t) = out.clone().try_cast::<Tensor>() {
                            t.scalar()
                        } else {
                            Err(Error::Invalid(format!(
                                "patch: the metric must return a number, got {}",
                                super::display::type_name(&out)
                            )))
                        }
                    })
                    .collect()
            };
            (Box::new(call), name)
        } else {
            return Err(Error::Invalid(format!(
                "patch: metric is logit_diff(a, b), logprob_diff(a, b) or a function of the \
                 logits, got {}",
                super::display::type_name(metric_value)
            )));
        };

    let show = o.bool("progress", true)?;
    let bar = show.then(|| {
        let bar = indicatif::ProgressBar::new((points.len() * positions.len()) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "patch {bar:30} {pos}/{len} runs [{elapsed} < {eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut tick = |done: usize, all: usize| {
        if let Some(b) = &bar {
            b.set_length(all as u64);
            b.set_position(done as u64);
        }
    };
    let grid = with_call(ctx, || {
        patching::patch(
            m,
            &clean_ids,
            &corrupted_ids,
            &points,
            &positions,
            &mut *metric,
            PatchOptions {
                batch_rows: batch as usize,
                last_only,
                progress: Some(&mut tick),
            },
        )
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let grid = grid?;
    let title = format!("Activation patching: share of {metric_name} restored");
    result_map(
        ctx,
        m,
        &o,
        &grid,
        &clean_ids,
        &corrupted_ids,
        metric_name,
        title,
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn result_map(
    ctx: &NativeCallContext,
    m: &Model,
    o: &Options,
    grid: &PatchGrid,
    clean: &[u32],
    corrupted: &[u32],
    metric: String,
    default_title: String,
) -> Result<Map> {
    let token = |id: u32| m.tokenizer.decode(&[id], false);
    let clean_tokens: Vec<String> = clean.iter().map(|&i| token(i)).collect::<Result<_>>()?;
    let corrupted_tokens: Vec<String> =
        corrupted.iter().map(|&i| token(i)).collect::<Result<_>>()?;
    let rows: Vec<String> = grid.points.iter().map(|p| p.to_string()).collect();
    let cols: Vec<String> = grid
        .positions
        .iter()
        .map(|&p| {
            if clean_tokens[p] == corrupted_tokens[p] {
                format!("{p} {:?}", clean_tokens[p])
            } else {
                format!("{p} {:?}/{:?}", clean_tokens[p], corrupted_tokens[p])
            }
        })
        .collect();
    let mut out = Map::new();
    out.insert("grid".into(), floats(&grid.normalized));
    out.insert("raw".into(), floats(&grid.raw));
    out.insert("clean".into(), Dynamic::from_float(grid.clean as FLOAT));
    out.insert(
        "corrupted".into(),
        Dynamic::from_float(grid.corrupted as FLOAT),
    );
    out.insert("points".into(), strings(rows.clone()));
    out.insert(
        "positions".into(),
        Dynamic::from_array(
            grid.positions
                .iter()
                .map(|&p| Dynamic::from_int(p as INT))
                .collect(),
        ),
    );
    out.insert("tokens".into(), strings(clean_tokens));
    out.insert("corrupted_tokens".into(), strings(corrupted_tokens));
    out.insert("rows".into(), strings(rows.clone()));
    out.insert("cols".into(), strings(cols.clone()));
    out.insert("metric".into(), Dynamic::from(metric.clone()));
    let plot = match o.string("plot")? {
        None => Dynamic::UNIT,
        Some(path) => {
            let title = o.string("title")?.unwrap_or(default_title);
            let h = Heatmap {
                labels: Labels {
                    title,
                    x_label: "position (clean/corrupted token)".into(),
                    y_label: "patched point".into(),
                },
                cells: grid.normalized.clone(),
                rows: Some(rows),
                cols: Some(cols),
                annotate: None,
                min: None,
                max: None,
            };
            let svg = crate::plot::heatmap_svg(&h)?;
            Dynamic::from(super::plot::write_svg_to(ctx, o.verb(), &path, &svg)?)
        }
    };
    out.insert("plot".into(), plot);
    Ok(out)
}

#[export_module]
mod patch_functions {
    use super::*;

    pub type Model = super::ModelHandle;

    pub type Metric = super::MetricSpec;

    /// Activation patching: runs `corrupted` once per (point, position) with that activation
    /// taken from the run of `clean` (same number of tokens), in batches, and returns the grid
    /// of the metric restored, normalised: `(patched - corrupted) / (clean - corrupted)`.
    /// Options: `metric` (required: `logit_diff(a, b)`, `logprob_diff(a, b)`, or a function
    /// `|logits| number` of one run's logits `[pos, vocab]`, which cannot call verbs on `m`:
    /// read token ids before), `points` (names with `*`; default
    /// "blocks.*.hook_resid_pre"), `positions` ("all" or an array; negative from the end),
    /// `batch_size` (patched runs per forward), `progress` (true), `plot` (an .svg path: the
    /// heatmap), `title`. Returns `#{grid, raw, clean, corrupted, points, positions, tokens,
    /// corrupted_tokens, rows, cols, metric, plot}`: `grid[i][j]` is point `points[i]` (in
    /// forward order) at position `positions[j]`.
    ///
    /// Example: `patch(m, "The Eiffel Tower is in", "The Colosseum is in", #{metric: logit_diff(" Paris", " Rome")})`
    #[rhai_fn(name = "patch", return_raw)]
    pub fn patch(
        ctx: NativeCallContext,
        m: &mut Model,
        clean: Dynamic,
        corrupted: Dynamic,
        opts: Map,
    ) -> RhaiResult<Map> {
        let mut g = m.get()?;
        Ok(patch_impl(&ctx, &mut g, &clean, &corrupted, &opts)?)
    }

    /// A metric for `patch`: the last position's logit of token `a` minus that of `b` (each a
    /// one-token string or an id).
    ///
    /// Example: `logit_diff(" Paris", " Rome")`
    #[rhai_fn(return_raw)]
    pub fn logit_diff(a: Dynamic, b: Dynamic) -> RhaiResult<Metric> {
        Ok(MetricSpec {
            kind: "logit_diff",
            a: TokenRef::of(&a, "logit_diff")?,
            b: TokenRef::of(&b, "logit_diff")?,
        })
    }

    /// A metric for `patch`: the last position's log-probability of token `a` minus that of
    /// `b`.
    ///
    /// Example: `logprob_diff(" Paris", " Rome")`
    #[rhai_fn(return_raw)]
    pub fn logprob_diff(a: Dynamic, b: Dynamic) -> RhaiResult<Metric> {
        Ok(MetricSpec {
            kind: "logprob_diff",
            a: TokenRef::of(&a, "logprob_diff")?,
            b: TokenRef::of(&b, "logprob_diff")?,
        })
    }

    /// The metric's value on one run's logits `[pos, vocab]` (or a batch `[rows, pos, vocab]`:
    /// one value per row), read at the last position.
    ///
    /// Example: `metric_value(m, logit_diff(" Paris", " Rome"), forward(m, "The Eiffel Tower is in"))`
    #[rhai_fn(return_raw)]
    pub fn metric_value(m: &mut Model, spec: Metric, logits: Tensor) -> RhaiResult<Dynamic> {
        let g = m.get()?;
        let metric = spec.resolve(&g)?;
        let a = logits.array();
        let batch = a.ndim() == 3;
        let a = if a.ndim() == 2 {
            a.expand_dims(0).map_err(Error::from)?
        } else if batch {
            a.clone()
        } else {
            return Err(Error::Invalid(format!(
                "metric_value: expected logits [pos, vocab] or [rows, pos, vocab], got {:?}",
                a.shape()
            ))
            .into());
        };
        let v = metric.eval(&a)?;
        Ok(if batch {
            Dynamic::from_array(v.into_iter().map(Dynamic::from_float).collect())
        } else {
            Dynamic::from_float(v[0])
        })
    }

    /// The metric as written.
    #[rhai_fn(name = "to_string", name = "to_debug", pure)]
    pub fn to_string(s: &mut Metric) -> String {
        s.describe()
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<MetricSpec>("Metric");
    engine.register_global_module(exported_module!(patch_functions).into());
}
