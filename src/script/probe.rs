//! `probe(...)`: linear probes per layer, cross-validated (see [`crate::probes`]), and the
//! `Probe` value: per-layer scores, `direction(p, layer)`, `predict(p, text)`, `report(p)`.
//! Options and values are converted here; training and the report are
//! [`crate::probes::Probe`]'s.

use std::collections::BTreeSet;

use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, Map, NativeCallContext, FLOAT, INT};

use super::capture::{parse_positions, rows_of, Cache};
use super::hooks::with_call;
use super::model::ModelHandle;
use super::options::Options;
use super::steer::Direction;
use super::RhaiResult;
use crate::capture::{capture, Captured, Positions};
use crate::hooks::HookName;
use crate::model::Model;
use crate::probes::{self, probe_points, Examples, Settings, Target};
use crate::{Error, Result};

/// A trained probe (see [`crate::probes::Probe`]) and the model it reads (for `predict`).
#[derive(Clone)]
pub struct Probe {
    pub model: ModelHandle,
    pub trained: probes::Probe,
}

impl std::ops::Deref for Probe {
    type Target = probes::Probe;

    fn deref(&self) -> &probes::Probe {
        &self.trained
    }
}

impl Probe {
    /// Everything about the probe but its weights, as a script map (for `save_json`).
    pub fn to_map(&self) -> Map {
        let mut m = Map::new();
        let floats = |xs: Vec<f64>| -> Dynamic {
            Dynamic::from_array(
                xs.into_iter()
                    .map(|x| Dynamic::from_float(x as FLOAT))
                    .collect(),
            )
        };
        m.insert("kind".into(), self.kind().into());
        m.insert("model".into(), self.model_name.clone().into());
        m.insert("arch".into(), self.arch.clone().into());
        m.insert("point".into(), self.point.clone().into());
        m.insert("positions".into(), self.positions.to_string().into());
        m.insert("n".into(), (self.target.len() as INT).into());
        m.insert("d".into(), (self.d as INT).into());
        m.insert("inputs_hash".into(), self.inputs_hash.clone().into());
        m.insert("metric".into(), self.target.metric().into());
        m.insert("chance".into(), (self.target.chance() as FLOAT).into());
        if let Target::Classes { names, .. } = &self.target {
            m.insert(
                "classes".into(),
                Dynamic::from_array(names.iter().map(|n| n.clone().into()).collect()),
            );
            m.insert("n_per_class".into(), n_per_class(self).into());
        }
        m.insert("folds".into(), (self.settings.folds as INT).into());
        m.insert("seed".into(), (self.settings.seed as INT).into());
        m.insert("c_grid".into(), floats(self.settings.cs.clone()));
        m.insert(
            "inner_folds".into(),
            (self.settings.inner_folds as INT).into(),
        );
        m.insert(
            "layers".into(),
            Dynamic::from_array(self.layers.iter().map(|&l| (l as INT).into()).collect()),
        );
        m.insert(
            "score".into(),
            floats(self.results.iter().map(|r| r.mean).collect()),
        );
        m.insert(
            "std".into(),
            floats(self.results.iter().map(|r| r.std).collect()),
        );
        m.insert(
            "c".into(),
            floats(self.results.iter().map(|r| r.c).collect()),
        );
        m.insert(
            "fold_scores".into(),
            Dynamic::from_array(
                self.results
                    .iter()
                    .map(|r| floats(r.scores.clone()))
                    .collect(),
            ),
        );
        m.insert(
            "fold_c".into(),
            Dynamic::from_array(
                self.results
                    .iter()
                    .map(|r| floats(r.fold_c.clone()))
                    .collect(),
            ),
        );
        let b = self.best();
        m.insert("best_layer".into(), (self.layers[b] as INT).into());
        m.insert("best_score".into(), (self.results[b].mean as FLOAT).into());
        m.insert("fold_of".into(), fold_of(self).into());
        // Timings stay out, so that the same inputs and seed give byte-identical JSON; they
        // are p.capture_seconds and p.train_seconds.
        m
    }
}

/// The outer fold of each example.
fn fold_of(p: &probes::Probe) -> RhaiArray {
    p.fold_of().into_iter().map(|f| (f as INT).into()).collect()
}

/// Examples per class, as a map.
fn n_per_class(p: &probes::Probe) -> Map {
    let mut m = Map::new();
    for (name, count) in p.n_per_class() {
        m.insert(name.into(), Dynamic::from_int(count as INT));
    }
    m
}

/// The class a script names by its label (an integer, a boolean) or its name.
fn class_name(class: &Dynamic) -> String {
    if let Ok(i) = class.as_int() {
        i.to_string()
    } else if let Ok(b) = class.as_bool() {
        b.to_string()
    } else {
        class.to_string()
    }
}

const PROBE_KEYS: &[&str] = &[
    "layers",
    "point",
    "positions",
    "folds",
    "seed",
    "c",
    "inner_folds",
    "batch_size",
    "classes",
    "kind",
    "max_iterations",
    "progress",
];

/// Labels as a target: bools and integers are classes (sorted; with two, the larger is
/// positive), floats are values. `kind` "classify"/"regress" overrides the guess.
fn target_of(labels: &RhaiArray, kind: &str, names: Option<RhaiArray>) -> Result<Target> {
    let bad = |i: usize, x: &Dynamic| {
        Error::Invalid(format!(
            "probe: label [{i}] is {} ({}); labels are booleans or integers (classes) or \
             numbers (a regression target)",
            super::display::inline(x),
            super::display::type_name(x)
        ))
    };
    let any_float = labels.iter().any(|x| x.is_float());
    if kind == "regress" || (kind == "auto" && any_float) {
        let v = labels
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_float()
                    .or_else(|_| x.as_int().map(|v| v as f64))
                    .map_err(|_| bad(i, x))
            })
            .collect::<Result<Vec<f64>>>()?;
        if names.is_some() {
            return Err(Error::Invalid(
                "probe: `classes` names classes, but these labels are a regression target".into(),
            ));
        }
        return Ok(Target::Values(v));
    }
    let keys = labels
        .iter()
        .enumerate()
        .map(|(i, x)| {
            if let Ok(b) = x.as_bool() {
                Ok(b as INT)
            } else if let Ok(v) = x.as_int() {
                Ok(v)
            } else if let Ok(f) = x.as_float() {
                if f.fract() == 0.0 {
                    Ok(f as INT)
                } else {
                    Err(bad(i, x))
                }
            } else {
                Err(bad(i, x))
            }
        })
        .collect::<Result<Vec<INT>>>()?;
    let bools = labels.iter().all(|x| x.is_bool());
    let distinct: Vec<INT> = if bools {
        vec![0, 1]
    } else {
        keys.iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let mut class_names: Vec<String> = if bools {
        vec!["false".into(), "true".into()]
    } else {
        distinct.iter().map(|v| v.to_string()).collect()
    };
    if let Some(n) = names {
        // Names for the classes 0..k (integer labels index them).
        if bools || distinct.iter().any(|&v| v < 0 || v as usize >= n.len()) {
            return Err(Error::Invalid(format!(
                "probe: `classes` gives {} names, so labels must be integers 0..{}",
                n.len(),
                n.len()
            )));
        }
        class_names = n.iter().map(|x| x.to_string()).collect();
        let y = keys.iter().map(|&v| v as usize).collect();
        return Ok(Target::Classes {
            y,
            names: class_names,
        });
    }
    let y = keys
        .iter()
        .map(|v| distinct.iter().position(|d| d == v).unwrap_or(0))
        .collect();
    Ok(Target::Classes {
        y,
        names: class_names,
    })
}

fn parse_cs(o: &Options) -> Result<Vec<f64>> {
    let Some(v) = o.get("c") else {
        return Ok(vec![1.0]);
    };
    let one = |x: &Dynamic| x.as_float().or_else(|_| x.as_int().map(|i| i as f64));
    if let Ok(c) = one(v) {
        return Ok(vec![c]);
    }
    if let Some(a) = v.read_lock::<RhaiArray>() {
        if a.is_empty() {
            return Err(Error::Invalid("probe: c is an empty array".into()));
        }
        return a
            .iter()
            .map(|x| {
                one(x).map_err(|_| {
                    Error::Invalid("probe: c must be a number or an array of numbers".into())
                })
            })
            .collect();
    }
    Err(Error::Invalid(format!(
        "probe: c must be a number or an array of numbers, got {}",
        super::display::inline(v)
    )))
}

/// The examples of a probe: texts (captured here) or a Cache.
enum Inputs<'a> {
    Texts(Vec<Vec<u32>>),
    Cached(&'a Cache),
}

fn train(
    handle: &ModelHandle,
    m: &mut Model,
    inputs: Inputs,
    target: Target,
    o: &Options,
) -> Result<Probe> {
    let n_layers = m.n_layers();
    let mut layers = super::steer::parse_layers(o, n_layers, "probe")?;
    // A layer asked for twice is trained once (`direction(p, layer)` finds it by number).
    let mut seen = std::collections::HashSet::new();
    layers.retain(|l| seen.insert(*l));
    let point = o
        .string("point")?
        .unwrap_or_else(|| "hook_resid_post".into());
    let point = point
        .strip_prefix("blocks.*.")
        .map(str::to_string)
        .unwrap_or(point);
    let hooks = probe_points(&layers, &point, n_layers)?;
    let settings = Settings {
        folds: o.int("folds", 5)?.max(0) as usize,
        seed: o.int("seed", 0)? as u64,
        cs: parse_cs(o)?,
        inner_folds: o.int("inner_folds", 3)?.max(2) as usize,
        max_iterations: o.int("max_iterations", 500)?.max(1) as u64,
    };
    let progress = o.bool("progress", true)?;
    // Check the labels before spending time on the capture.
    target.check(settings.folds, "probe")?;
    let examples = match inputs {
        Inputs::Texts(rows) => {
            if rows.len() != target.len() {
                return Err(Error::Invalid(format!(
                    "probe: {} inputs but {} labels",
                    rows.len(),
                    target.len()
                )));
            }
            let positions = parse_positions(o, "probe")?;
            if positions == Positions::All {
                return Err(Error::Invalid(
                    "probe: positions must be \"last\", \"mean\" or an index".into(),
                ));
            }
            let batch = o.int("batch_size", 32)?.max(1) as usize;
            Examples::capture(m, &rows, &hooks, positions, batch, progress)?
        }
        Inputs::Cached(cache) => {
            if o.get("positions").is_some() || o.get("batch_size").is_some() {
                return Err(Error::Invalid(
                    "probe: positions and batch_size are fixed by the Cache; leave them out".into(),
                ));
            }
            let examples = Examples::cached(&cache.0, &hooks)?;
            if cache.0.n != target.len() {
                return Err(Error::Invalid(format!(
                    "probe: the cache holds {} inputs but there are {} labels",
                    cache.0.n,
                    target.len()
                )));
            }
            examples
        }
    };
    // In a group each rank trains its share of the layers (see `Probe::fit`).
    let here = match crate::distributed::data_parallel()? {
        Some(world) => world.share(layers.len()).len(),
        None => layers.len(),
    };
    let bar =
        (progress && here > 1).then(|| super::progress::Progress::new(here as u64, "probe layers"));
    let done = || {
        if let Some(b) = &bar {
            b.inc(1);
        }
    };
    let trained = probes::Probe::fit(m, layers, point, examples, target, settings, &done);
    if let Some(b) = &bar {
        b.clear();
    }
    Ok(Probe {
        model: handle.clone(),
        trained: trained?,
    })
}

fn probe_pair(handle: &ModelHandle, pos: &Dynamic, neg: &Dynamic, opts: &Map) -> Result<Probe> {
    let o = Options::parse("probe", opts, PROBE_KEYS)?;
    if o.get("classes").is_some() || o.get("kind").is_some() {
        return Err(Error::Invalid(
            "probe: `classes` and `kind` apply to probe(m, texts, labels, opts); with positive \
             and negative texts the classes are \"negative\" and \"positive\""
                .into(),
        ));
    }
    let mut m = handle.get()?;
    let p = rows_of(&m, pos, "probe")?;
    let q = rows_of(&m, neg, "probe")?;
    let target = Target::Classes {
        y: (0..p.len() + q.len())
            .map(|i| usize::from(i < p.len()))
            .collect(),
        names: vec!["negative".into(), "positive".into()],
    };
    let rows = p.into_iter().chain(q).collect();
    train(handle, &mut m, Inputs::Texts(rows), target, &o)
}

fn probe_labels(
    handle: &ModelHandle,
    inputs: &Dynamic,
    labels: &RhaiArray,
    opts: &Map,
) -> Result<Probe> {
    let o = Options::parse("probe", opts, PROBE_KEYS)?;
    let kind = o.choice("kind", &["auto", "classify", "regress"], "auto")?;
    let target = target_of(labels, &kind, o.array("classes")?)?;
    let mut m = handle.get()?;
    if let Some(c) = inputs.read_lock::<Cache>() {
        let c = c.clone();
        return train(handle, &mut m, Inputs::Cached(&c), target, &o);
    }
    let rows = rows_of(&m, inputs, "probe")?;
    train(handle, &mut m, Inputs::Texts(rows), target, &o)
}

/// Is `v` an array of texts or id arrays (the negative examples), rather than labels?
fn is_inputs(v: &Dynamic) -> bool {
    v.read_lock::<RhaiArray>()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x.is_string() || x.is_array()))
}

fn probe_any(handle: &ModelHandle, a: &Dynamic, b: &Dynamic, opts: &Map) -> Result<Probe> {
    if is_inputs(b) {
        return probe_pair(handle, a, b, opts);
    }
    match b.read_lock::<RhaiArray>() {
        Some(labels) => probe_labels(handle, a, &labels, opts),
        None => Err(Error::Invalid(format!(
            "probe: give two arrays of texts (positive, negative) or texts and an array of \
             labels; got {} as the second argument",
            super::display::type_name(b)
        ))),
    }
}

fn predict_impl(p: &Probe, inputs: &Dynamic, layer: Option<INT>) -> Result<Dynamic> {
    let mut m = p.model.get()?;
    let i = match layer {
        Some(l) => p.index_of(l, m.n_layers())?,
        None => p.best(),
    };
    let single = inputs.is_string()
        || inputs
            .read_lock::<RhaiArray>()
            .is_some_and(|a| a.iter().all(|x| x.is_int()));
    let rows = rows_of(&m, inputs, "predict")?;
    let hook = HookName::parse(&format!("blocks.{}.{}", p.layers[i], p.point), m.n_layers())?;
    let c = capture(&mut m, &rows, &[hook], p.positions, 32, false)?;
    let pred = match c.entries.get(&hook) {
        Some(Captured::Stacked(a)) => p.predict(i, a)?,
        _ => return Err(Error::Invalid(format!("predict: {hook} was not captured"))),
    };
    let names = p.class_names();
    let row = |r: usize| -> Dynamic {
        match &p.target {
            Target::Values(_) => Dynamic::from_float(pred[(r, 0)] as FLOAT),
            Target::Classes { .. } if names.len() == 2 => {
                Dynamic::from_float(pred[(r, 1)] as FLOAT)
            }
            Target::Classes { .. } => {
                let mut m = Map::new();
                for (k, n) in names.iter().enumerate() {
                    m.insert(n.as_str().into(), (pred[(r, k)] as FLOAT).into());
                }
                m.into()
            }
        }
    };
    Ok(if single {
        row(0)
    } else {
        Dynamic::from_array((0..rows.len()).map(row).collect())
    })
}

fn floats(xs: impl Iterator<Item = f64>) -> RhaiArray {
    xs.map(|x| Dynamic::from_float(x as FLOAT)).collect()
}

#[export_module]
mod probe_functions {
    use super::*;

    pub type Model = super::ModelHandle;
    pub type Probe = super::Probe;

    /// Trains a logistic probe per layer separating `positive` from `negative` texts, with
    /// stratified k-fold cross-validation, or, given texts (or a Cache) and `labels`, a probe
    /// for those labels: booleans or integers are classes (two: logistic, more: multinomial),
    /// numbers a regression target (ridge, scored by R²). opts: `layers` ("all" or array),
    /// `point` ("hook_resid_post"), `positions` ("last"), `folds` (5), `seed` (0), `c` (1.0,
    /// or an array to choose from by inner cross-validation), `inner_folds` (3), `classes`
    /// (names for integer labels 0..k), `kind` ("auto", "classify", "regress"),
    /// `batch_size` (32), `max_iterations` (500), `progress` (true).
    ///
    /// Example: `let p = probe(m, happy, sad, #{layers: "all", c: [0.01, 0.1, 1.0]});`
    #[rhai_fn(name = "probe", return_raw)]
    pub fn probe_with(
        ctx: NativeCallContext,
        m: &mut Model,
        a: Dynamic,
        b: Dynamic,
        opts: Map,
    ) -> RhaiResult<Probe> {
        Ok(with_call(&ctx, || probe_any(m, &a, &b, &opts))?)
    }

    /// `probe` with the default options (every layer, 5 folds, c = 1).
    ///
    /// Example: `let p = probe(m, happy, sad); print(report(p));`
    #[rhai_fn(name = "probe", return_raw)]
    pub fn probe(
        ctx: NativeCallContext,
        m: &mut Model,
        a: Dynamic,
        b: Dynamic,
    ) -> RhaiResult<Probe> {
        Ok(with_call(&ctx, || probe_any(m, &a, &b, &Map::new()))?)
    }

    /// The layers probed.
    #[rhai_fn(get = "layers", pure)]
    pub fn layers(p: &mut Probe) -> RhaiArray {
        p.layers.iter().map(|&l| (l as INT).into()).collect()
    }

    /// Mean cross-validated accuracy per layer (classification probes).
    #[rhai_fn(get = "accuracy", pure, return_raw)]
    pub fn accuracy(p: &mut Probe) -> RhaiResult<RhaiArray> {
        if p.target.is_regression() {
            return Err("a regression probe has no accuracy; its per-layer R² is p.score".into());
        }
        Ok(floats(p.results.iter().map(|r| r.mean)))
    }

    /// Mean cross-validated score per layer: accuracy, or R² for a regression probe.
    #[rhai_fn(get = "score", pure)]
    pub fn score(p: &mut Probe) -> RhaiArray {
        floats(p.results.iter().map(|r| r.mean))
    }

    /// Standard deviation (ddof 1) of the fold scores per layer.
    #[rhai_fn(get = "std", pure)]
    pub fn std(p: &mut Probe) -> RhaiArray {
        floats(p.results.iter().map(|r| r.std))
    }

    /// The fold scores per layer: an array (layers) of arrays (folds).
    #[rhai_fn(get = "fold_scores", pure)]
    pub fn fold_scores(p: &mut Probe) -> RhaiArray {
        p.results
            .iter()
            .map(|r| Dynamic::from_array(floats(r.scores.iter().copied())))
            .collect()
    }

    /// The layers this process trained: every layer alone; in a group of several processes
    /// its share of them (the others' results came from their ranks).
    ///
    /// Example: `print(p.trained_here)  // [0, 1, ..., 14] on rank 0 of 2, for 30 layers`
    #[rhai_fn(get = "trained_here", pure)]
    pub fn trained_here(p: &mut Probe) -> RhaiArray {
        p.trained_here.iter().map(|&l| (l as INT).into()).collect()
    }

    /// The c of each layer's final fit.
    #[rhai_fn(get = "c", pure)]
    pub fn c(p: &mut Probe) -> RhaiArray {
        floats(p.results.iter().map(|r| r.c))
    }

    /// The layer with the best mean score (the earliest on ties).
    #[rhai_fn(get = "best_layer", pure)]
    pub fn best_layer(p: &mut Probe) -> INT {
        p.layers[p.best()] as INT
    }

    /// The best layer's mean accuracy (classification probes).
    #[rhai_fn(get = "best_accuracy", pure, return_raw)]
    pub fn best_accuracy(p: &mut Probe) -> RhaiResult<FLOAT> {
        if p.target.is_regression() {
            return Err("a regression probe has no accuracy; its best R² is p.best_score".into());
        }
        Ok(p.results[p.best()].mean as FLOAT)
    }

    /// The best layer's mean score (accuracy or R²).
    #[rhai_fn(get = "best_score", pure)]
    pub fn best_score(p: &mut Probe) -> FLOAT {
        p.results[p.best()].mean as FLOAT
    }

    /// The score of the best constant guess (majority class share; 0 for R²).
    #[rhai_fn(get = "chance", pure)]
    pub fn chance(p: &mut Probe) -> FLOAT {
        p.target.chance() as FLOAT
    }

    /// Number of examples.
    #[rhai_fn(get = "n", pure)]
    pub fn n(p: &mut Probe) -> INT {
        p.target.len() as INT
    }

    /// Examples per class, as a map.
    #[rhai_fn(get = "n_per_class", pure)]
    pub fn n_per_class(p: &mut Probe) -> Map {
        super::n_per_class(p)
    }

    /// Class names (empty for regression).
    #[rhai_fn(get = "classes", pure)]
    pub fn classes(p: &mut Probe) -> RhaiArray {
        p.class_names().into_iter().map(Dynamic::from).collect()
    }

    /// "logistic", "multinomial" or "ridge".
    #[rhai_fn(get = "kind", pure)]
    pub fn kind(p: &mut Probe) -> String {
        p.kind().into()
    }

    /// "accuracy" or "r2".
    #[rhai_fn(get = "metric", pure)]
    pub fn metric(p: &mut Probe) -> String {
        p.target.metric().into()
    }

    /// The point within each block.
    #[rhai_fn(get = "point", pure)]
    pub fn point(p: &mut Probe) -> String {
        p.point.clone()
    }

    /// The seed of the fold shuffles.
    #[rhai_fn(get = "seed", pure)]
    pub fn seed(p: &mut Probe) -> INT {
        p.settings.seed as INT
    }

    /// Number of cross-validation folds.
    #[rhai_fn(get = "folds", pure)]
    pub fn folds(p: &mut Probe) -> INT {
        p.settings.folds as INT
    }

    /// The model's name.
    #[rhai_fn(get = "model", pure)]
    pub fn model(p: &mut Probe) -> String {
        p.model_name.clone()
    }

    /// The outer cross-validation fold of each example (in input order: positives, then
    /// negatives).
    #[rhai_fn(get = "fold_of", pure)]
    pub fn fold_of(p: &mut Probe) -> RhaiArray {
        super::fold_of(p)
    }

    /// Seconds spent capturing activations.
    #[rhai_fn(get = "capture_seconds", pure)]
    pub fn capture_seconds(p: &mut Probe) -> FLOAT {
        p.capture_seconds as FLOAT
    }

    /// Seconds spent training (cross-validation and final fits).
    #[rhai_fn(get = "train_seconds", pure)]
    pub fn train_seconds(p: &mut Probe) -> FLOAT {
        p.train_seconds as FLOAT
    }

    /// The probe at `layer` (fitted on all examples) as a Direction: its weights mapped back
    /// to activation units, normalized, pointing towards the positive class.
    ///
    /// Example: `steer(m, direction(p, p.best_layer), #{alpha: 4.0})`
    #[rhai_fn(name = "direction", return_raw)]
    pub fn direction(p: &mut Probe, layer: INT) -> RhaiResult<super::Direction> {
        let n = p.model.get().map(|m| m.n_layers()).unwrap_or(usize::MAX);
        let i = p.index_of(layer, n)?;
        if matches!(p.kind(), "multinomial") {
            return Err(
                "a multi-class probe has one direction per class; call direction(p, layer, class)"
                    .into(),
            );
        }
        Ok(p.direction_at(i, 1)?)
    }

    /// The direction of one class of a multi-class probe (`class`: its name or label).
    ///
    /// Example: `direction(p, 12, "sports")`
    #[rhai_fn(name = "direction", return_raw)]
    pub fn direction_class(
        p: &mut Probe,
        layer: INT,
        class: Dynamic,
    ) -> RhaiResult<super::Direction> {
        let n = p.model.get().map(|m| m.n_layers()).unwrap_or(usize::MAX);
        let i = p.index_of(layer, n)?;
        let k = p.class_index(&class_name(&class))?;
        Ok(p.direction_at(i, k)?)
    }

    /// Directions of every probed layer (binary and regression probes), for cosine matrices.
    ///
    /// Example: `cosine_matrix(directions(p))`
    #[rhai_fn(name = "directions", return_raw)]
    pub fn directions(p: &mut Probe) -> RhaiResult<RhaiArray> {
        if matches!(p.kind(), "multinomial") {
            return Err("a multi-class probe has one direction per class and layer".into());
        }
        Ok((0..p.layers.len())
            .map(|i| p.direction_at(i, 1).map(Dynamic::from))
            .collect::<Result<_>>()?)
    }

    /// The probability of the positive class for a text (an array of texts gives an array),
    /// at the best layer; multi-class probes give a map of class probabilities, regression
    /// probes the predicted value.
    ///
    /// Example: `predict(p, "What a wonderful day")  // 0.97`
    #[rhai_fn(name = "predict", return_raw)]
    pub fn predict(ctx: NativeCallContext, p: &mut Probe, inputs: Dynamic) -> RhaiResult<Dynamic> {
        Ok(with_call(&ctx, || predict_impl(p, &inputs, None))?)
    }

    /// `predict` at a given layer.
    ///
    /// Example: `predict(p, "What a wonderful day", 12)`
    #[rhai_fn(name = "predict", return_raw)]
    pub fn predict_at(
        ctx: NativeCallContext,
        p: &mut Probe,
        inputs: Dynamic,
        layer: INT,
    ) -> RhaiResult<Dynamic> {
        Ok(with_call(&ctx, || predict_impl(p, &inputs, Some(layer)))?)
    }

    /// A printable report: data and settings, then per layer the mean ± std over folds, the
    /// chosen c and a bar (chance marked ┆), the best layer marked.
    ///
    /// Example: `print(report(p))`
    #[rhai_fn(name = "report", pure)]
    pub fn report(p: &mut Probe) -> String {
        p.report()
    }

    /// Everything but the weights and timings as a map (what `save_json(p, path)` writes).
    #[rhai_fn(name = "to_map", pure)]
    pub fn to_map(p: &mut Probe) -> Map {
        p.to_map()
    }

    /// A one-line description.
    #[rhai_fn(name = "to_string", name = "to_debug", pure)]
    pub fn to_string(p: &mut Probe) -> String {
        p.summary()
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<Probe>("Probe");
    engine.register_global_module(exported_module!(probe_functions).into());
}
