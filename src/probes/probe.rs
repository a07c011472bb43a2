//! A trained [`Probe`]: linear probes at several layers of one model on the same examples,
//! with the activations captured from the model (or taken from a cache), its printable report,
//! and its directions.

use std::time::Instant;

use mlx_rs::{Array, Dtype};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::{evaluate_layers, folds_for, LayerResult, Settings, Target};
use crate::capture::{capture, hash_ids, ActivationCache, Captured, Positions};
use crate::directions::{norm, Direction};
use crate::distributed::World;
use crate::error::{Error, Result};
use crate::hooks::HookName;
use crate::model::Model;

/// Probes trained at several layers of one model on the same examples.
#[derive(Clone)]
pub struct Probe {
    pub model_name: String,
    pub arch: String,
    pub layers: Vec<usize>,
    pub results: Vec<LayerResult>,
    pub target: Target,
    pub settings: Settings,
    /// The point within each block, e.g. "hook_resid_post".
    pub point: String,
    pub positions: Positions,
    /// Width of the activations.
    pub d: usize,
    /// FNV-1a hash of the inputs' token ids ("" when trained from a Cache without ids).
    pub inputs_hash: String,
    pub capture_seconds: f64,
    pub train_seconds: f64,
    /// The layers this process trained: all of them alone, its share in a group of several
    /// (the others' results arrived from their ranks).
    pub trained_here: Vec<usize>,
}

/// A probe's training data: one `[n, d]` matrix per layer, and where it came from.
pub struct Examples {
    pub xs: Vec<Array2<f64>>,
    pub positions: Positions,
    /// FNV-1a hash of the inputs' token ids (see [`hash_ids`]).
    pub inputs_hash: String,
    pub capture_seconds: f64,
}

impl Examples {
    /// Captures `rows` (token ids) at `points` (`positions` "last", "mean" or an index).
    pub fn capture(
        m: &mut Model,
        rows: &[Vec<u32>],
        points: &[HookName],
        positions: Positions,
        batch_size: usize,
        progress: bool,
    ) -> Result<Examples> {
        let t0 = Instant::now();
        let c = capture(m, rows, points, positions, batch_size, progress)?;
        let xs = points
            .iter()
            .map(|h| match c.entries.get(h) {
                Some(Captured::Stacked(a)) => to_matrix(a),
                _ => Err(Error::Invalid(format!("probe: {h} was not captured"))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Examples {
            xs,
            positions,
            inputs_hash: hash_ids(rows),
            capture_seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The activations at `points` of a cache captured with one vector per input.
    pub fn cached(cache: &ActivationCache, points: &[HookName]) -> Result<Examples> {
        let t0 = Instant::now();
        let xs = points
            .iter()
            .map(|h| match cache.get(&h.to_string())? {
                Captured::Stacked(a) => to_matrix(a),
                Captured::PerInput(_) => Err(Error::Invalid(
                    "probe: a cache captured with positions \"all\" has no single vector \
                     per input; capture with \"last\" or \"mean\""
                        .into(),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Examples {
            xs,
            positions: cache.positions,
            inputs_hash: cache.prompts_hash.clone(),
            capture_seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// The hook points `blocks.{layer}.{point}` of `layers`, for a probe.
pub fn probe_points(layers: &[usize], point: &str, n_layers: usize) -> Result<Vec<HookName>> {
    layers
        .iter()
        .map(|l| {
            HookName::parse(&format!("blocks.{l}.{point}"), n_layers).map_err(|e| {
                Error::Invalid(format!(
                    "probe: point {point:?} is not a per-layer hook point (e.g. \
                     \"hook_resid_post\", \"hook_mlp_out\"): {e}"
                ))
            })
        })
        .collect()
}

/// One `[n, d]` f64 matrix from a float32 MLX array.
pub fn to_matrix(a: &Array) -> Result<Array2<f64>> {
    let n = a.shape()[0] as usize;
    let a = a.reshape(&[n as i32, -1])?.as_dtype(Dtype::Float32)?;
    a.eval()?;
    let d = a.shape()[1] as usize;
    let v: Vec<f64> = a.as_slice::<f32>().iter().map(|&x| x as f64).collect();
    Array2::from_shape_vec((n, d), v).map_err(|e| Error::Invalid(format!("probe: {e}")))
}

impl Probe {
    /// Cross-validates a probe per layer of `examples` (read at `point` of `layers` of `m`)
    /// for `target`, layers on all cores; `done` is called after each layer.
    pub fn fit(
        m: &Model,
        layers: Vec<usize>,
        point: String,
        examples: Examples,
        target: Target,
        settings: Settings,
        done: &(dyn Fn() + Sync),
    ) -> Result<Probe> {
        if layers.is_empty() || layers.len() != examples.xs.len() {
            return Err(Error::Invalid(format!(
                "probe: {} layers but activations of {}",
                layers.len(),
                examples.xs.len()
            )));
        }
        if let Some(x) = examples.xs.iter().find(|x| x.nrows() != target.len()) {
            return Err(Error::Invalid(format!(
                "probe: {} examples but {} labels",
                x.nrows(),
                target.len()
            )));
        }
        let d = examples.xs.first().map_or(0, |x| x.ncols());
        let t1 = Instant::now();
        let (results, trained_here) = match crate::distributed::data_parallel()? {
            Some(world) => {
                evaluate_shared(&world, &layers, &examples.xs, &target, &settings, done)?
            }
            None => (
                evaluate_layers(&examples.xs, &target, &settings, done)?,
                layers.clone(),
            ),
        };
        Ok(Probe {
            model_name: m.info.name.clone(),
            arch: m.info.arch.clone(),
            layers,
            results,
            target,
            settings,
            point,
            positions: examples.positions,
            d,
            inputs_hash: examples.inputs_hash,
            capture_seconds: examples.capture_seconds,
            train_seconds: t1.elapsed().as_secs_f64(),
            trained_here,
        })
    }

    /// "logistic" (two classes), "multinomial" (more) or "ridge" (a regression).
    pub fn kind(&self) -> &'static str {
        match &self.target {
            Target::Values(_) => "ridge",
            Target::Classes { names, .. } if names.len() == 2 => "logistic",
            Target::Classes { .. } => "multinomial",
        }
    }

    /// Index (into `layers`) of the best mean score; the earliest on ties.
    pub fn best(&self) -> usize {
        let mut best = 0;
        for (i, r) in self.results.iter().enumerate() {
            if r.mean > self.results[best].mean {
                best = i;
            }
        }
        best
    }

    /// The class names (empty for a regression probe).
    pub fn class_names(&self) -> Vec<String> {
        match &self.target {
            Target::Classes { names, .. } => names.clone(),
            Target::Values(_) => Vec::new(),
        }
    }

    /// Index into `layers` of a layer (negative from the end of the model).
    pub fn index_of(&self, layer: i64, n_layers: usize) -> Result<usize> {
        let l = if layer < 0 {
            layer + n_layers as i64
        } else {
            layer
        };
        self.layers
            .iter()
            .position(|&x| x as i64 == l)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "this probe has no layer {layer}; it was trained at layers {}",
                    layer_list(&self.layers)
                ))
            })
    }

    /// One line for printing: the kind, the layers, the best layer and its score.
    pub fn summary(&self) -> String {
        let b = self.best();
        let r = &self.results[b];
        format!(
            "Probe({}, {} layer{}, best blocks.{}.{} {} {:.3} ± {:.3}, n={})",
            self.kind(),
            self.layers.len(),
            if self.layers.len() == 1 { "" } else { "s" },
            self.layers[b],
            self.point,
            self.target.metric(),
            r.mean,
            r.std,
            self.target.len()
        )
    }

    /// The printable report: a header with the data and settings, then one row per layer
    /// with mean ± std over folds, the chosen c, and a bar.
    pub fn report(&self) -> String {
        let t = &self.target;
        let mut out = format!(
            "{} probe on {} at blocks.*.{} (positions {}), {} examples",
            self.kind(),
            self.model_name,
            self.point,
            self.positions,
            t.len()
        );
        if let Target::Classes { names, .. } = t {
            let counts = t.counts();
            let parts: Vec<String> = names
                .iter()
                .zip(&counts)
                .map(|(n, c)| format!("{n} {c}"))
                .collect();
            out.push_str(&format!(" ({})", parts.join(", ")));
        }
        out.push_str(&format!(
            "\n{}-fold {}cross-validation, seed {}, standardised per fold; c {}\n",
            self.settings.folds,
            if t.is_regression() { "" } else { "stratified " },
            self.settings.seed,
            if self.settings.cs.len() == 1 {
                fmt_c(self.settings.cs[0])
            } else {
                format!(
                    "chosen from [{}] by {}-fold inner cross-validation",
                    self.settings
                        .cs
                        .iter()
                        .map(|&c| fmt_c(c))
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.settings.inner_folds
                )
            }
        ));
        let chance = t.chance();
        let metric = t.metric();
        out.push_str(&format!(
            "{metric} by layer (chance {chance:.3}{}):\n",
            if t.is_regression() {
                ", R² of the mean"
            } else {
                ", the majority class"
            }
        ));
        let best = self.best();
        let lo = if t.is_regression() {
            self.results.iter().map(|r| r.mean).fold(0.0, f64::min)
        } else {
            0.0
        };
        let width = 30;
        for (i, (l, r)) in self.layers.iter().zip(&self.results).enumerate() {
            let frac = ((r.mean - lo) / (1.0 - lo)).clamp(0.0, 1.0);
            let mark = if i == best { " ← best" } else { "" };
            out.push_str(&format!(
                "  layer {l:>3}  {:>6.3} ± {:<5.3}  c {:<6} {}{mark}\n",
                r.mean,
                r.std,
                fmt_c(r.c),
                bar(frac, width, ((chance - lo) / (1.0 - lo)).clamp(0.0, 1.0))
            ));
        }
        let r = &self.results[best];
        out.push_str(&format!(
            "best: layer {} {metric} {:.3} ± {:.3} (chance {chance:.3}); capture {:.2} s, training {:.2} s",
            self.layers[best], r.mean, r.std, self.capture_seconds, self.train_seconds
        ));
        out
    }

    /// The outer fold of each example.
    pub fn fold_of(&self) -> Vec<usize> {
        folds_for(&self.target, self.settings.folds, self.settings.seed)
    }

    /// The number of examples of each class, with its name.
    pub fn n_per_class(&self) -> Vec<(String, usize)> {
        self.class_names()
            .into_iter()
            .zip(self.target.counts())
            .collect()
    }

    /// The direction of layer index `i` (into `layers`) for class `class` of a multi-class
    /// probe (other probes have one direction, towards the positive class or larger values).
    pub fn direction_at(&self, i: usize, class: usize) -> Result<Direction> {
        self.check_index(i)?;
        let n_classes = self.class_names().len();
        if n_classes > 2 && class >= n_classes {
            return Err(Error::Invalid(format!(
                "probe: class {class} is out of range for {n_classes} classes"
            )));
        }
        let w: Vec<f32> = self.results[i]
            .fitted
            .input_weights(class)
            .into_iter()
            .map(|x| x as f32)
            .collect();
        let raw = norm(&w);
        let v: Vec<f32> = if raw > 0.0 {
            w.iter().map(|x| x / raw).collect()
        } else {
            w
        };
        Ok(Direction {
            vector: Array::from_slice(&v, &[v.len() as i32]),
            layer: self.layers[i],
            point: self.point.clone(),
            method: "probe".into(),
            n: self.target.len(),
            model: self.model_name.clone(),
            arch: self.arch.clone(),
            norm: raw as f64,
        })
    }

    fn check_index(&self, i: usize) -> Result<()> {
        if i < self.results.len() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "probe: layer index {i} is out of range for a probe of {} layers",
                self.results.len()
            )))
        }
    }

    /// Index of the class named `name` (a regression probe has none).
    pub fn class_index(&self, name: &str) -> Result<usize> {
        let names = self.class_names();
        if names.is_empty() {
            return Err(Error::Invalid(
                "a regression probe has one direction; call direction(p, layer)".into(),
            ));
        }
        names.iter().position(|n| n == name).ok_or_else(|| {
            Error::Invalid(format!(
                "this probe has no class {name:?}; its classes are {}",
                names
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Predictions at layer index `i` for activations `x` (`[n, ...]`): per row, the class
    /// probabilities, or the value of a regression probe.
    pub fn predict(&self, i: usize, x: &Array) -> Result<Array2<f64>> {
        self.check_index(i)?;
        let x = to_matrix(x)?;
        if x.ncols() != self.d {
            return Err(Error::Invalid(format!(
                "predict: activations have width {}, the probe was trained on width {}",
                x.ncols(),
                self.d
            )));
        }
        Ok(self.results[i].fitted.predict(x.view()))
    }
}

fn fmt_c(c: f64) -> String {
    let s = format!("{c}");
    if s.len() > 8 {
        format!("{c:.2e}")
    } else {
        s
    }
}

fn layer_list(layers: &[usize]) -> String {
    if layers.len() > 1 && layers.windows(2).all(|w| w[1] == w[0] + 1) {
        format!("{}..={}", layers[0], layers[layers.len() - 1])
    } else {
        layers
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A bar of `frac` of `width` cells in eighths, with `┆` at the chance level.
fn bar(frac: f64, width: usize, chance: f64) -> String {
    let mut s = crate::plot::bar(frac, width);
    let chance_cell = ((chance * width as f64).round() as usize).min(width.saturating_sub(1));
    let filled = s.chars().count();
    if chance > 0.0 && chance_cell >= filled {
        s.push_str(&" ".repeat(chance_cell - filled));
        s.push('┆');
    }
    s
}

/// [`evaluate_layers`] split over the ranks of `world`: each rank trains its share of the
/// layers (a contiguous range, [`World::share`]) and the ranks exchange their results bit for
/// bit, so every rank returns what one process would, with the layers it trained itself.
///
/// Every rank must hold the same activations and labels (a probe after a collective capture
/// does); ranks that do not get an error on every rank instead of a probe mixing their data.
/// A rank whose training fails still takes part in the exchange, so that every rank stops with
/// the error of the first failing layer.
fn evaluate_shared(
    world: &World,
    layers: &[usize],
    xs: &[Array2<f64>],
    target: &Target,
    settings: &Settings,
    done: &(dyn Fn() + Sync),
) -> Result<(Vec<LayerResult>, Vec<usize>)> {
    let mine = world.share(xs.len());
    let local = evaluate_layers(&xs[mine.clone()], target, settings, done);
    let msg = Share {
        fingerprint: fingerprint(layers, xs, target, settings),
        results: local.as_deref().map_err(|e| e.to_string()),
    }
    .encode()?;
    let shares = world
        .all_gather_bytes(&msg)?
        .iter()
        .map(|bytes| Share::decode(bytes))
        .collect::<Result<Vec<_>>>()?;
    if let Some(r) = shares
        .iter()
        .position(|s| s.fingerprint != shares[0].fingerprint)
    {
        return Err(Error::Invalid(format!(
            "probe: ranks 0 and {r} hold different activations, labels or options, so the \
             layers cannot be shared out; a probe of each rank's own data goes inside \
             locally(...)"
        )));
    }
    let mut results = Vec::with_capacity(xs.len());
    for (rank, share) in shares.into_iter().enumerate() {
        let theirs = match share.results {
            Ok(theirs) => theirs,
            // This rank's own failure keeps its kind (an interruption stays one).
            Err(message) => {
                return Err(match local {
                    Err(e) if rank == world.rank() => e,
                    _ => Error::Invalid(message),
                })
            }
        };
        let want = world.share_of(rank, xs.len()).len();
        if theirs.len() != want {
            return Err(Error::Invalid(format!(
                "probe: rank {rank} trained {} layers, not its share of {want}",
                theirs.len()
            )));
        }
        results.extend(theirs);
    }
    Ok((results, layers[mine].to_vec()))
}

/// What each rank sends the others in [`evaluate_shared`], as postcard bytes (every f64 bit
/// for bit, so an infinite intercept and the last digit survive): sent as
/// `Share<&[LayerResult]>`, read back as `Share<Vec<LayerResult>>`.
#[derive(Serialize, Deserialize)]
pub(super) struct Share<R> {
    /// [`fingerprint`] of what the rank trained on.
    pub fingerprint: u64,
    /// The rank's layers in order, or the error of its first failing layer.
    pub results: std::result::Result<R, String>,
}

impl Share<&[LayerResult]> {
    pub(super) fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self)
            .map_err(|e| Error::Invalid(format!("probe: cannot send the results: {e}")))
    }
}

impl Share<Vec<LayerResult>> {
    /// Reads a [`Share`] back. Truncated or garbled bytes are an error, never a panic, and
    /// what decoding allocates is bounded by the bytes: postcard reads from the slice, and a
    /// length that the remaining bytes cannot hold is not preallocated.
    pub(super) fn decode(bytes: &[u8]) -> Result<Share<Vec<LayerResult>>> {
        postcard::from_bytes(bytes).map_err(|e| {
            Error::Invalid(format!(
                "probe: a rank's results did not arrive whole ({e})"
            ))
        })
    }
}

/// A hash of everything a probe's training depends on (FNV-1a over the bits), to check that
/// the ranks train on the same data.
fn fingerprint(layers: &[usize], xs: &[Array2<f64>], target: &Target, s: &Settings) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        h ^= x;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    layers.iter().for_each(|&l| eat(l as u64));
    for x in xs {
        eat(x.nrows() as u64);
        eat(x.ncols() as u64);
        x.iter().for_each(|v| eat(v.to_bits()));
    }
    match target {
        Target::Classes { y, names } => {
            eat(names.len() as u64);
            y.iter().for_each(|&k| eat(k as u64));
        }
        Target::Values(v) => v.iter().for_each(|x| eat(x.to_bits())),
    }
    eat(s.folds as u64);
    eat(s.seed);
    s.cs.iter().for_each(|c| eat(c.to_bits()));
    eat(s.inner_folds as u64);
    eat(s.max_iterations);
    h
}
