//! Directions and steering: `direction`, `random_direction`, `steer`, `unsteer`,
//! `save(d, path)`, `load_direction`, and `cosine` on Directions: options and values converted
//! here, the work done by [`crate::directions`].

use mlx_rs::Array;
use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, Map, NativeCallContext, FLOAT, INT};

use super::capture::{rows_of, Cache};
use super::hooks::{parse_window, with_call};
use super::model::ModelHandle;
use super::options::Options;
use super::tensor::Tensor;
use super::{context, RhaiResult};
use crate::capture::{Captured, Positions};
pub use crate::directions::Direction;
use crate::directions::{files, norm, steer, Method, Recipe, SteerMode, Steering};
use crate::hooks::HookName;
use crate::interventions::point_widths;
use crate::model::Model;
use crate::{Error, Result};

/// A Direction's metadata and vector as a script map (what `save_json` writes).
pub fn direction_map(d: &Direction) -> Map {
    let mut m = Map::new();
    m.insert("method".into(), d.method.clone().into());
    m.insert("layer".into(), (d.layer as INT).into());
    m.insert("point".into(), d.point.clone().into());
    m.insert("n".into(), (d.n as INT).into());
    m.insert("model".into(), d.model.clone().into());
    m.insert("arch".into(), d.arch.clone().into());
    m.insert("norm".into(), (d.norm as FLOAT).into());
    m.insert(
        "vector".into(),
        Dynamic::from(Tensor::new(d.vector.clone())),
    );
    m
}

/// The point within a block, from a full name (`blocks.3.hook_resid_post`) or the part after
/// the layer (`hook_resid_post`, `attn.hook_z`), with the layer (negative from the end).
fn resolve_point(point: &str, layer: Option<INT>, n_layers: usize) -> Result<(usize, String)> {
    if let Some(rest) = point.strip_prefix("blocks.") {
        let h = HookName::parse(point, n_layers)?;
        let i = h.layer().unwrap_or(0);
        if let Some(l) = layer {
            let l2 = if l < 0 { l + n_layers as INT } else { l };
            if l2 != i as INT {
                return Err(Error::Invalid(format!(
                    "direction: point {point:?} names layer {i} but layer is {l}"
                )));
            }
        }
        let suffix = rest.split_once('.').map(|x| x.1).unwrap_or(rest);
        return Ok((i, suffix.to_string()));
    }
    let l = layer.unwrap_or((2 * n_layers / 3) as INT);
    let h = HookName::parse(&format!("blocks.{l}.{point}"), n_layers).map_err(|e| {
        Error::Invalid(format!(
            "direction: point {point:?} is not a per-layer hook point (e.g. \"hook_resid_post\", \
             \"attn.hook_z\"): {e}"
        ))
    })?;
    Ok((h.layer().unwrap_or(0), point.to_string()))
}

const DIRECTION_KEYS: &[&str] = &[
    "layer",
    "point",
    "method",
    "normalize",
    "positions",
    "batch_size",
];

/// Activations `[n, d]` at `point` from a Cache.
fn cached(c: &Cache, point: HookName) -> Result<Array> {
    match c.get(&point.to_string())? {
        Captured::Stacked(a) => Ok(a.clone()),
        Captured::PerInput(_) => Err(Error::Invalid(
            "direction: a cache captured with positions \"all\" has no single vector per \
             input; capture with \"last\" or \"mean\""
                .into(),
        )),
    }
}

/// `layers`: "all" (the default), a layer or an array of layers, negative from the end;
/// every one in range, in the order given.
pub(super) fn parse_layers(o: &Options, n_layers: usize, verb: &str) -> Result<Vec<usize>> {
    let all = || (0..n_layers).collect::<Vec<_>>();
    let Some(v) = o.get("layers") else {
        return Ok(all());
    };
    if v.clone().into_immutable_string().is_ok_and(|s| s == "all") {
        return Ok(all());
    }
    let wrong = || {
        Error::Invalid(format!(
            "{verb}: layers must be \"all\", an integer or an array of them, got {}",
            super::display::inline(v)
        ))
    };
    let list: Vec<INT> = if let Ok(i) = v.as_int() {
        vec![i]
    } else if let Some(a) = v.read_lock::<RhaiArray>() {
        a.iter()
            .map(|x| x.as_int().map_err(|_| wrong()))
            .collect::<Result<_>>()?
    } else {
        return Err(wrong());
    };
    if list.is_empty() {
        return Err(Error::Invalid(format!("{verb}: layers is empty")));
    }
    list.into_iter()
        .map(|l| {
            let i = if l < 0 { l + n_layers as INT } else { l };
            if (0..n_layers as INT).contains(&i) {
                Ok(i as usize)
            } else {
                Err(Error::Invalid(format!(
                    "{verb}: layer {l} is out of range for a model with {n_layers} layers"
                )))
            }
        })
        .collect()
}

/// How `direction` and `directions` compute: method, positions, batch size, normalizing.
fn parse_recipe(o: &Options, verb: &str) -> Result<Recipe> {
    let positions = super::capture::parse_positions(o, verb)?;
    if positions == Positions::All {
        return Err(Error::Invalid(format!(
            "{verb}: positions must be \"last\", \"mean\" or an index"
        )));
    }
    Ok(Recipe {
        method: Method::parse(&o.choice("method", &Method::NAMES, "mean_diff")?)?,
        positions,
        batch_size: o.int("batch_size", 32)?.max(1) as usize,
        normalize: o.bool("normalize", true)?,
    })
}

fn direction_impl(m: &mut Model, pos: &Dynamic, neg: &Dynamic, opts: &Map) -> Result<Direction> {
    let o = Options::parse("direction", opts, DIRECTION_KEYS)?;
    let n_layers = m.n_layers();
    let point = o
        .string("point")?
        .unwrap_or_else(|| "hook_resid_post".into());
    let (layer, point) = resolve_point(&point, o.opt_int("layer")?, n_layers)?;
    let recipe = parse_recipe(&o, "direction")?;
    let hook = HookName::parse(&format!("blocks.{layer}.{point}"), n_layers)?;
    match (pos.read_lock::<Cache>(), neg.read_lock::<Cache>()) {
        (Some(p), Some(q)) => {
            recipe.build(m, &cached(&p, hook)?, &cached(&q, hook)?, layer, &point)
        }
        (None, None) => {
            let p = rows_of(m, pos, "direction")?;
            let q = rows_of(m, neg, "direction")?;
            recipe.direction(m, &p, &q, layer, &point)
        }
        _ => Err(Error::Invalid(
            "direction: give two arrays of texts or two Caches, not one of each".into(),
        )),
    }
}

const FROM_VECTOR_KEYS: &[&str] = &["layer", "point", "normalize", "method", "model"];

/// A Direction from a vector `[d]`: `layer` (required), `point` (default "hook_resid_post"),
/// `normalize` (false: the vector as given), `method` (a label, default "custom"), `model`
/// (the Model it belongs to: its name and architecture are recorded, negative layers count
/// from its end, and the length is checked now). Without `model`, the length is checked where
/// it is used (`steer`).
fn direction_from_tensor(t: &Tensor, opts: &Map) -> Result<Direction> {
    let o = Options::parse("direction", opts, FROM_VECTOR_KEYS)?;
    let model = o.value::<ModelHandle>("model", "a Model")?;
    let (name, arch, n_layers, d_model) = match &model {
        Some(h) => {
            let g = h.get()?;
            (
                g.info.name.clone(),
                g.info.arch.clone(),
                Some(g.n_layers()),
                Some(g.info.d_model),
            )
        }
        None => (String::new(), String::new(), None, None),
    };
    let shape = t.shape().to_vec();
    if shape.len() != 1 || shape[0] < 1 {
        return Err(Error::Invalid(format!(
            "direction: the vector must be 1-dimensional [d], got shape {shape:?}"
        )));
    }
    let layer = o.opt_int("layer")?.ok_or_else(|| {
        Error::Invalid(
            "direction: a Direction from a vector needs its layer: direction(v, #{layer: 20})"
                .into(),
        )
    })?;
    let layer = match n_layers {
        Some(n) if layer < 0 => layer + n as INT,
        _ => layer,
    };
    if layer < 0 || n_layers.is_some_and(|n| layer >= n as INT) {
        return Err(Error::Invalid(match n_layers {
            Some(n) => {
                format!("direction: layer {layer} is out of range for a model with {n} layers")
            }
            None => format!(
                "direction: layer must be >= 0 (give #{{model: m}} to count from the end), \
                 got {layer}"
            ),
        }));
    }
    let point = o
        .string("point")?
        .unwrap_or_else(|| "hook_resid_post".into());
    let point = match point.strip_prefix("blocks.") {
        Some(rest) => {
            let (l, suffix) = rest.split_once('.').unwrap_or((rest, ""));
            if l != layer.to_string() {
                return Err(Error::Invalid(format!(
                    "direction: point {point:?} names another layer than layer {layer}"
                )));
            }
            suffix.to_string()
        }
        None => point,
    };
    // The point must name a per-layer hook point (checked on a model deep enough).
    let hook = HookName::parse(
        &format!("blocks.{layer}.{point}"),
        n_layers.unwrap_or(layer as usize + 1),
    )
    .map_err(|e| {
        Error::Invalid(format!(
            "direction: point {point:?} is not a per-layer hook point (e.g. \"hook_resid_post\", \
             \"attn.hook_z\"): {e}"
        ))
    })?;
    let v = t.to_f32_vec()?;
    if let (Some(d), true) = (d_model, hook.layer().is_some()) {
        let h = model.as_ref().map(|h| h.get()).transpose()?;
        let widths = h.map(|g| point_widths(&g.info, &hook)).unwrap_or_default();
        if !widths.is_empty() && !widths.contains(&(v.len() as i32)) {
            return Err(Error::Invalid(format!(
                "direction: the vector has {} entries; {point} of model {name} takes {} \
                 (d_model {d})",
                v.len(),
                widths
                    .iter()
                    .map(|w| w.to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
    }
    let raw = norm(&v) as f64;
    if !raw.is_finite() {
        return Err(Error::Invalid(
            "direction: the vector holds NaN or infinite values".into(),
        ));
    }
    let v: Vec<f32> = if o.bool("normalize", false)? && raw > 0.0 {
        v.iter().map(|x| x / raw as f32).collect()
    } else {
        v
    };
    Ok(Direction {
        vector: Array::from_slice(&v, &[v.len() as i32]),
        layer: layer as usize,
        point,
        method: o.string("method")?.unwrap_or_else(|| "custom".into()),
        n: 0,
        model: name,
        arch,
        norm: raw,
    })
}

const DIRECTIONS_KEYS: &[&str] = &[
    "layers",
    "point",
    "method",
    "normalize",
    "positions",
    "batch_size",
];

/// One Direction per layer from a single capture of the texts.
fn directions_impl(
    m: &mut Model,
    pos: &Dynamic,
    neg: &Dynamic,
    opts: &Map,
) -> Result<Vec<Direction>> {
    let o = Options::parse("directions", opts, DIRECTIONS_KEYS)?;
    let n_layers = m.n_layers();
    let layers = parse_layers(&o, n_layers, "directions")?;
    let point = o
        .string("point")?
        .unwrap_or_else(|| "hook_resid_post".into());
    let recipe = parse_recipe(&o, "directions")?;
    let p = rows_of(m, pos, "directions")?;
    let q = rows_of(m, neg, "directions")?;
    recipe.directions(m, &p, &q, &layers, &point)
}

/// Pairwise cosine similarities of Directions or Tensors (flattened).
fn cosine_matrix_impl(items: &RhaiArray) -> Result<RhaiArray> {
    let vecs = items
        .iter()
        .enumerate()
        .map(|(i, x)| {
            if let Some(d) = x.read_lock::<Direction>() {
                Tensor::new(d.vector.clone()).to_f32_vec()
            } else if let Some(t) = x.read_lock::<Tensor>() {
                t.to_f32_vec()
            } else {
                Err(Error::Invalid(format!(
                    "cosine_matrix: element [{i}] is a {}, not a Direction or Tensor",
                    super::display::type_name(x)
                )))
            }
        })
        .collect::<Result<Vec<Vec<f32>>>>()?;
    if let Some(v) = vecs.iter().find(|v| v.len() != vecs[0].len()) {
        return Err(Error::Invalid(format!(
            "cosine_matrix: vectors have different lengths ({} and {})",
            vecs[0].len(),
            v.len()
        )));
    }
    let norms: Vec<f64> = vecs.iter().map(|v| norm(v) as f64).collect();
    Ok((0..vecs.len())
        .map(|i| {
            let row: RhaiArray = (0..vecs.len())
                .map(|j| {
                    let dot: f64 = vecs[i]
                        .iter()
                        .zip(&vecs[j])
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                    let c = if norms[i] > 0.0 && norms[j] > 0.0 {
                        dot / (norms[i] * norms[j])
                    } else {
                        f64::NAN
                    };
                    Dynamic::from_float(c as FLOAT)
                })
                .collect();
            Dynamic::from_array(row)
        })
        .collect())
}

pub(super) const STEER_KEYS: &[&str] = &["alpha", "mode", "layers", "window", "tau"];

pub(super) fn steer_impl(m: &mut Model, d: &Direction, opts: &Map) -> Result<()> {
    let o = Options::parse("steer", opts, STEER_KEYS)?;
    let alpha = o.float("alpha", 1.0)? as f32;
    let mode = SteerMode::parse(&o.choice("mode", &SteerMode::NAMES, "add")?)?;
    let window = parse_window("steer", o.get("window"))?;
    let layers: Option<Vec<INT>> = match o.get("layers") {
        None => None,
        Some(v) => Some(match v.as_int() {
            Ok(l) => vec![l],
            Err(_) => o
                .array("layers")?
                .unwrap_or_default()
                .iter()
                .map(|x| {
                    x.as_int().map_err(|_| {
                        Error::Invalid("steer: layers must be an integer or integers".into())
                    })
                })
                .collect::<Result<_>>()?,
        }),
    };
    if mode != SteerMode::Cap && o.get("tau").is_some() {
        return Err(Error::Invalid(
            "steer: 'tau' applies to mode \"cap\" only".into(),
        ));
    }
    let steering = Steering {
        alpha,
        mode,
        tau: o.float("tau", 0.0)? as f32,
        layers,
        window,
    };
    steer(m, d, &steering)
}

/// The Directions of a script map of them (a concept library), in name order.
fn library_of(lib: &Map) -> Result<Vec<(String, Direction)>> {
    lib.iter()
        .map(|(name, v)| {
            let d = v.read_lock::<Direction>().ok_or_else(|| {
                Error::Invalid(format!(
                    "save_library: {name:?} is a {}, not a Direction",
                    super::display::type_name(v)
                ))
            })?;
            Ok((name.to_string(), d.clone()))
        })
        .collect()
}

fn cos(a: &Array, b: &Array) -> Result<FLOAT> {
    let r = super::tensor::cosine_impl(&Tensor::new(a.clone()), &Tensor::new(b.clone()))?;
    r.as_float()
        .map_err(|_| Error::Invalid("cosine: expected two vectors".into()))
}

#[export_module]
mod steer_functions {
    use super::*;

    pub type Model = super::ModelHandle;

    pub type Direction = super::Direction;

    /// A direction from two arrays of texts (or two Caches): by default the difference of the
    /// mean `hook_resid_post` activations at the last token, at two thirds of the depth,
    /// normalized. opts: `layer`, `point`, `method` ("mean_diff", "pca", "probe"), `normalize`
    /// (true), `positions` ("last", "mean", index), `batch_size`.
    ///
    /// Example: `let d = direction(m, ["I am happy"], ["I am sad"], #{layer: 20});`
    #[rhai_fn(name = "direction", return_raw)]
    pub fn direction_with(
        ctx: NativeCallContext,
        m: &mut Model,
        positive: Dynamic,
        negative: Dynamic,
        opts: Map,
    ) -> RhaiResult<Direction> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || {
            direction_impl(&mut g, &positive, &negative, &opts)
        })?)
    }

    /// `direction` with the default options.
    ///
    /// Example: `let d = direction(m, ["I love this"], ["I hate this"]);`
    #[rhai_fn(name = "direction", return_raw)]
    pub fn direction(
        ctx: NativeCallContext,
        m: &mut Model,
        positive: Dynamic,
        negative: Dynamic,
    ) -> RhaiResult<Direction> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || {
            direction_impl(&mut g, &positive, &negative, &Map::new())
        })?)
    }

    /// A Direction from any vector `[d]` (a Tensor), so a custom vector goes through `steer`,
    /// `save` and `export_control_vector`. opts: `layer` (required), `point`
    /// ("hook_resid_post"), `normalize` (false: kept as given), `method` (a label, "custom"),
    /// `model` (records its name and architecture, allows negative layers and checks the
    /// length now; otherwise `steer` checks it).
    ///
    /// Example: `let d = direction(v, #{layer: 20});`
    #[rhai_fn(name = "direction", return_raw)]
    pub fn direction_from_vector(vector: Tensor, opts: Map) -> RhaiResult<Direction> {
        Ok(direction_from_tensor(&vector, &opts)?)
    }

    /// One Direction per layer from a single capture: opts as for `direction`, with `layers`
    /// ("all", the default, or an array) instead of `layer`.
    ///
    /// Example: `let ds = directions(m, happy, sad, #{layers: [8, 12, 16]});`
    #[rhai_fn(name = "directions", return_raw)]
    pub fn directions_with(
        ctx: NativeCallContext,
        m: &mut Model,
        positive: Dynamic,
        negative: Dynamic,
        opts: Map,
    ) -> RhaiResult<RhaiArray> {
        let mut g = m.get()?;
        let ds = with_call(&ctx, || {
            directions_impl(&mut g, &positive, &negative, &opts)
        })?;
        Ok(ds.into_iter().map(Dynamic::from).collect())
    }

    /// `directions` at every layer with the default options.
    ///
    /// Example: `cosine_matrix(directions(m, happy, sad))`
    #[rhai_fn(name = "directions", return_raw)]
    pub fn directions(
        ctx: NativeCallContext,
        m: &mut Model,
        positive: Dynamic,
        negative: Dynamic,
    ) -> RhaiResult<RhaiArray> {
        let mut g = m.get()?;
        let ds = with_call(&ctx, || {
            directions_impl(&mut g, &positive, &negative, &Map::new())
        })?;
        Ok(ds.into_iter().map(Dynamic::from).collect())
    }

    /// The matrix (array of rows) of cosine similarities between Directions or Tensors, e.g.
    /// the directions of every layer, or of several methods at one layer.
    ///
    /// Example: `cosine_matrix([d_mean, d_pca, d_probe])`
    #[rhai_fn(name = "cosine_matrix", return_raw)]
    pub fn cosine_matrix(items: RhaiArray) -> RhaiResult<RhaiArray> {
        Ok(cosine_matrix_impl(&items)?)
    }

    /// A random direction at the same layer and point as `like`, with the same norm (seed 0).
    ///
    /// Example: `let r = random_direction(m, d);`
    #[rhai_fn(name = "random_direction", return_raw)]
    pub fn random_direction(_m: &mut Model, like: Direction) -> RhaiResult<Direction> {
        Ok(like.random_like(0)?)
    }

    /// A seeded random direction at the same layer and point as `like`, with the same norm.
    ///
    /// Example: `let r = random_direction(m, d, 7);`
    #[rhai_fn(name = "random_direction", return_raw)]
    pub fn random_direction_seeded(
        _m: &mut Model,
        like: Direction,
        seed: INT,
    ) -> RhaiResult<Direction> {
        Ok(like.random_like(seed as u64)?)
    }

    /// Attaches a steering intervention along `d` at its point and layer, on every forward
    /// and generation step. opts: `alpha` (1.0), `mode` ("add", "project_out", "reflect",
    /// "cap"), `layers` (an int or array, instead of d.layer), `window` ("all", "prompt",
    /// "generated", positions), `tau` (for "cap", 0).
    ///
    /// Example: `steer(m, d, #{alpha: 8.0, window: "generated"})`
    #[rhai_fn(name = "steer", return_raw)]
    pub fn steer_with(m: &mut Model, d: Direction, opts: Map) -> RhaiResult<()> {
        let mut g = m.get()?;
        Ok(steer_impl(&mut g, &d, &opts)?)
    }

    /// `steer` with alpha 1, mode "add", at `d`'s layer.
    ///
    /// Example: `steer(m, d)`
    #[rhai_fn(name = "steer", return_raw)]
    pub fn steer(m: &mut Model, d: Direction) -> RhaiResult<()> {
        let mut g = m.get()?;
        Ok(steer_impl(&mut g, &d, &Map::new())?)
    }

    /// Removes every steering intervention (other hooks stay).
    ///
    /// Example: `unsteer(m)`
    #[rhai_fn(return_raw)]
    pub fn unsteer(m: &mut Model) -> RhaiResult<()> {
        m.get()?.hooks.clear_steering();
        Ok(())
    }

    /// The direction's vector (float32 `[d]`).
    ///
    /// Example: `d.vector.shape  // [576]`
    #[rhai_fn(get = "vector", pure)]
    pub fn vector(d: &mut Direction) -> Tensor {
        Tensor::new(d.vector.clone())
    }

    /// The layer the direction was read at.
    ///
    /// Example: `d.layer  // 20`
    #[rhai_fn(get = "layer", pure)]
    pub fn layer(d: &mut Direction) -> INT {
        d.layer as INT
    }

    /// The hook point within the layer, e.g. "hook_resid_post".
    ///
    /// Example: `d.point  // "hook_resid_post"`
    #[rhai_fn(get = "point", pure)]
    pub fn point(d: &mut Direction) -> String {
        d.point.clone()
    }

    /// How it was computed: "mean_diff", "pca", "probe", or "random".
    ///
    /// Example: `d.method  // "mean_diff"`
    #[rhai_fn(get = "method", pure)]
    pub fn method(d: &mut Direction) -> String {
        d.method.clone()
    }

    /// Number of examples it was computed from (positive plus negative).
    ///
    /// Example: `d.n  // 16`
    #[rhai_fn(get = "n", pure)]
    pub fn n(d: &mut Direction) -> INT {
        d.n as INT
    }

    /// The length of the vector before normalizing.
    ///
    /// Example: `d.norm  // 12.7`
    #[rhai_fn(get = "norm", pure)]
    pub fn raw_norm(d: &mut Direction) -> FLOAT {
        d.norm
    }

    /// Cosine similarity of two directions.
    ///
    /// Example: `cosine(d, random_direction(m, d))`
    #[rhai_fn(name = "cosine", return_raw)]
    pub fn cosine_dd(a: Direction, b: Direction) -> RhaiResult<FLOAT> {
        Ok(cos(&a.vector, &b.vector)?)
    }

    /// Cosine similarity of a direction and a vector.
    ///
    /// Example: `cosine(d, c["blocks.20.hook_resid_post"][0])`
    #[rhai_fn(name = "cosine", return_raw)]
    pub fn cosine_dt(a: Direction, b: Tensor) -> RhaiResult<FLOAT> {
        Ok(cos(&a.vector, b.array())?)
    }

    /// Cosine similarity of a vector and a direction.
    ///
    /// Example: `cosine(v, d)`
    #[rhai_fn(name = "cosine", return_raw)]
    pub fn cosine_td(a: Tensor, b: Direction) -> RhaiResult<FLOAT> {
        Ok(cos(a.array(), &b.vector)?)
    }

    /// Writes the direction as safetensors with its metadata (layer, point, method, n, model).
    ///
    /// Example: `save(d, "happy.safetensors")`
    #[rhai_fn(name = "save", return_raw)]
    pub fn save(ctx: NativeCallContext, d: Direction, path: &str) -> RhaiResult<()> {
        let path = context(&ctx).write_path("save", path)?;
        Ok(files::save(&d, &path)?)
    }

    /// Reads a direction written by `save(d, path)`.
    ///
    /// Example: `let d = load_direction("happy.safetensors");`
    #[rhai_fn(return_raw)]
    pub fn load_direction(ctx: NativeCallContext, path: &str) -> RhaiResult<Direction> {
        let path = context(&ctx).read_path("load_direction", path)?;
        Ok(files::load(&path)?)
    }

    /// Writes a map of named Directions (a concept library) to one safetensors file, each
    /// with its metadata.
    ///
    /// Example: `save_library(#{happy: d1, formal: d2}, "concepts.safetensors")`
    #[rhai_fn(return_raw)]
    pub fn save_library(ctx: NativeCallContext, lib: Map, path: &str) -> RhaiResult<()> {
        let path = context(&ctx).write_path("save_library", path)?;
        Ok(files::save_library(&library_of(&lib)?, &path)?)
    }

    /// Reads a concept library written by `save_library`: a map of name to Direction.
    ///
    /// Example: `let lib = load_library("concepts.safetensors"); steer(m, lib.happy)`
    #[rhai_fn(return_raw)]
    pub fn load_library(ctx: NativeCallContext, path: &str) -> RhaiResult<Map> {
        let path = context(&ctx).read_path("load_library", path)?;
        Ok(files::load_library(&path)?
            .into_iter()
            .map(|(name, d)| (name.into(), Dynamic::from(d)))
            .collect())
    }

    /// Writes one Direction as a llama.cpp control-vector GGUF (`--control-vector FILE`).
    ///
    /// Example: `export_control_vector(d, "happy.gguf")`
    #[rhai_fn(name = "export_control_vector", return_raw)]
    pub fn export_one(ctx: NativeCallContext, d: Direction, path: &str) -> RhaiResult<()> {
        let path = context(&ctx).write_path("export_control_vector", path)?;
        Ok(files::export_control_vector(&[d], &path)?)
    }

    /// Writes several Directions (at different layers, `hook_resid_post`) as one llama.cpp
    /// control-vector GGUF.
    ///
    /// Example: `export_control_vector([d10, d15, d20], "happy.gguf")`
    #[rhai_fn(name = "export_control_vector", return_raw)]
    pub fn export_many(ctx: NativeCallContext, ds: RhaiArray, path: &str) -> RhaiResult<()> {
        let ds = ds
            .into_iter()
            .map(|d| {
                d.try_cast::<Direction>().ok_or_else(|| {
                    Error::Invalid("export_control_vector: expects an array of Directions".into())
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let path = context(&ctx).write_path("export_control_vector", path)?;
        Ok(files::export_control_vector(&ds, &path)?)
    }

    /// A short description of the direction.
    ///
    /// Example: `print(d)`
    #[rhai_fn(name = "to_string", name = "to_debug", pure)]
    pub fn to_string(d: &mut Direction) -> String {
        d.summary()
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<Direction>("Direction");
    engine.register_global_module(exported_module!(steer_functions).into());
}
