//! Directions and steering: `direction`, `random_direction`, `steer`, `unsteer`,
//! `save(d, path)`, `load_direction`, and `cosine` on Directions.

use std::collections::HashMap;

use mlx_rs::{Array, Dtype};
use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, Map, NativeCallContext, FLOAT, INT};

use super::capture::{rows_of, Cache};
use super::hooks::{parse_window, point_widths, with_call};
use super::model::ModelHandle;
use super::options::Options;
use super::tensor::{read_safetensors, write_safetensors, Tensor};
use super::{context, RhaiResult};
use crate::capture::{capture, Captured, Positions};
use crate::directions::{compute, norm, Method};
use crate::hooks::{Hook, HookName};
use crate::interventions::{Intervention, Op};
use crate::model::Model;
use crate::{Error, Result};

/// A direction in activation space at one layer and point.
#[derive(Clone)]
pub struct Direction {
    /// float32 `[d]`
    pub vector: Array,
    pub layer: usize,
    /// The point within the block, e.g. "hook_resid_post".
    pub point: String,
    pub method: String,
    /// Number of examples it was computed from (positive + negative).
    pub n: usize,
    /// The model it was computed on, and its architecture.
    pub model: String,
    pub arch: String,
    /// Length of the vector before normalizing.
    pub norm: f64,
}

impl Direction {
    /// One line for printing.
    pub fn summary(&self) -> String {
        format!(
            "Direction({} at blocks.{}.{}, d={}, n={}, norm {})",
            self.method,
            self.layer,
            self.point,
            self.vector.shape().first().copied().unwrap_or(0),
            self.n,
            super::tensor::fmt_number(self.norm as f32)
        )
    }

    /// Metadata and vector as a script map (what `save_json` writes).
    pub fn to_map(&self) -> Map {
        let mut m = Map::new();
        m.insert("method".into(), self.method.clone().into());
        m.insert("layer".into(), (self.layer as INT).into());
        m.insert("point".into(), self.point.clone().into());
        m.insert("n".into(), (self.n as INT).into());
        m.insert("model".into(), self.model.clone().into());
        m.insert("arch".into(), self.arch.clone().into());
        m.insert("norm".into(), (self.norm as FLOAT).into());
        m.insert(
            "vector".into(),
            Dynamic::from(Tensor::new(self.vector.clone())),
        );
        m
    }

    /// The hook point at `layer`.
    pub fn hook_at(&self, layer: usize, n_layers: usize) -> Result<HookName> {
        HookName::parse(&format!("blocks.{layer}.{}", self.point), n_layers)
    }
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

/// Activations `[n, d]` at `point` for texts (captured) or from a Cache.
fn activations(
    m: &mut Model,
    v: &Dynamic,
    point: HookName,
    positions: Positions,
    batch_size: usize,
) -> Result<Array> {
    if let Some(c) = v.read_lock::<Cache>() {
        return match c.get(&point.to_string())? {
            Captured::Stacked(a) => Ok(a.clone()),
            Captured::PerInput(_) => Err(Error::Invalid(
                "direction: a cache captured with positions \"all\" has no single vector per \
                 input; capture with \"last\" or \"mean\""
                    .into(),
            )),
        };
    }
    let rows = rows_of(m, v, "direction")?;
    let c = capture(m, &rows, &[point], positions, batch_size, true)?;
    match c.entries.get(&point) {
        Some(Captured::Stacked(a)) => Ok(a.clone()),
        _ => Err(Error::Invalid(format!(
            "direction: {point} was not captured"
        ))),
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
struct Recipe {
    method: Method,
    positions: Positions,
    batch_size: usize,
    normalize: bool,
}

impl Recipe {
    fn parse(o: &Options, verb: &str) -> Result<Recipe> {
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

    /// The Direction separating `p` from `q` (`[n, ...]` each) at `layer` and `point`.
    fn build(
        &self,
        m: &Model,
        p: &Array,
        q: &Array,
        layer: usize,
        point: &str,
    ) -> Result<Direction> {
        let flat = |a: &Array| -> Result<Array> { Ok(a.reshape(&[a.shape()[0], -1])?) };
        let (p, q) = (flat(p)?, flat(q)?);
        let v = compute(self.method, &p, &q)?;
        let raw = norm(&v) as f64;
        let v = if self.normalize && raw > 0.0 {
            v.iter().map(|x| x / raw as f32).collect()
        } else {
            v
        };
        Ok(Direction {
            vector: Array::from_slice(&v, &[v.len() as i32]),
            layer,
            point: point.to_string(),
            method: self.method.name().into(),
            n: (p.shape()[0] + q.shape()[0]) as usize,
            model: m.info.name.clone(),
            arch: m.info.arch.clone(),
            norm: raw,
        })
    }
}

fn direction_impl(m: &mut Model, pos: &Dynamic, neg: &Dynamic, opts: &Map) -> Result<Direction> {
    let o = Options::parse("direction", opts, DIRECTION_KEYS)?;
    let n_layers = m.n_layers();
    let point = o
        .string("point")?
        .unwrap_or_else(|| "hook_resid_post".into());
    let (layer, point) = resolve_point(&point, o.opt_int("layer")?, n_layers)?;
    let recipe = Recipe::parse(&o, "direction")?;
    let hook = HookName::parse(&format!("blocks.{layer}.{point}"), n_layers)?;
    let is_cache = |v: &Dynamic| v.is::<Cache>();
    if is_cache(pos) != is_cache(neg) {
        return Err(Error::Invalid(
            "direction: give two arrays of texts or two Caches, not one of each".into(),
        ));
    }
    let p = activations(m, pos, hook, recipe.positions, recipe.batch_size)?;
    let q = activations(m, neg, hook, recipe.positions, recipe.batch_size)?;
    recipe.build(m, &p, &q, layer, &point)
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
    let recipe = Recipe::parse(&o, "directions")?;
    let hooks = layers
        .iter()
        .map(|l| HookName::parse(&format!("blocks.{l}.{point}"), n_layers))
        .collect::<Result<Vec<_>>>()?;
    let p_rows = rows_of(m, pos, "directions")?;
    let q_rows = rows_of(m, neg, "directions")?;
    let rows: Vec<Vec<u32>> = p_rows.iter().chain(&q_rows).cloned().collect();
    let c = capture(m, &rows, &hooks, recipe.positions, recipe.batch_size, true)?;
    let idx = |r: std::ops::Range<i32>| {
        let v: Vec<i32> = r.collect();
        Array::from_slice(&v, &[v.len() as i32])
    };
    let (np, n) = (p_rows.len() as i32, rows.len() as i32);
    hooks
        .iter()
        .zip(&layers)
        .map(|(h, &layer)| {
            let Some(Captured::Stacked(a)) = c.entries.get(h) else {
                return Err(Error::Invalid(format!("directions: {h} was not captured")));
            };
            let p = a.take_axis(idx(0..np), 0)?;
            let q = a.take_axis(idx(np..n), 0)?;
            recipe.build(m, &p, &q, layer, &point)
        })
        .collect()
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

fn random_impl(like: &Direction, seed: INT) -> Result<Direction> {
    let d = like.vector.shape()[0];
    let key = mlx_rs::random::key(seed as u64)?;
    let r = mlx_rs::random::normal::<f32>(&[d], None, None, &key)?;
    let target = Tensor::new(like.vector.clone()).to_f32_vec()?;
    let target = norm(&target);
    let rn = Tensor::new(r.clone()).to_f32_vec()?;
    let scale = target / norm(&rn).max(1e-12);
    Ok(Direction {
        vector: r.multiply(Array::from_f32(scale))?,
        layer: like.layer,
        point: like.point.clone(),
        method: "random".into(),
        n: 0,
        model: like.model.clone(),
        arch: like.arch.clone(),
        norm: target as f64,
    })
}

pub(super) const STEER_KEYS: &[&str] = &["alpha", "mode", "layers", "window", "tau"];
const MODES: [&str; 4] = ["add", "project_out", "reflect", "cap"];

pub(super) fn steer_impl(m: &mut Model, d: &Direction, opts: &Map) -> Result<()> {
    let o = Options::parse("steer", opts, STEER_KEYS)?;
    let alpha = o.float("alpha", 1.0)? as f32;
    let mode = o.choice("mode", &MODES, "add")?;
    let window = parse_window("steer", o.get("window"))?;
    let n_layers = m.n_layers();
    let layers: Vec<INT> = match o.get("layers") {
        None => vec![d.layer as INT],
        Some(v) => match v.as_int() {
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
        },
    };
    if mode != "cap" && o.get("tau").is_some() {
        return Err(Error::Invalid(
            "steer: 'tau' applies to mode \"cap\" only".into(),
        ));
    }
    let mut ivs = Vec::new();
    for l in layers {
        let li = if l < 0 { l + n_layers as INT } else { l };
        if !(0..n_layers as INT).contains(&li) {
            return Err(Error::Invalid(format!(
                "steer: layer {l} is out of range for a model with {n_layers} layers"
            )));
        }
        let point = d.hook_at(li as usize, n_layers)?;
        let vector = d.vector.clone();
        let op = match mode.as_str() {
            "add" => Op::Add { vector, alpha },
            "project_out" => Op::ProjectOut { vector },
            "reflect" => Op::Reflect { vector, alpha },
            _ => Op::Cap {
                vector,
                tau: o.float("tau", 0.0)? as f32,
            },
        };
        let iv = Intervention {
            point,
            op,
            window: window.clone(),
        };
        iv.check(&point_widths(m, &point))?;
        ivs.push(iv);
    }
    for iv in ivs {
        let label = format!("steer {} ({} direction)", iv.label(), d.method);
        m.hooks.attach(Hook {
            name: iv.point,
            label,
            steering: true,
            func: iv.into_hook(),
        });
    }
    Ok(())
}

/// A direction's metadata as safetensors metadata entries (all but its vector).
fn meta_of(d: &Direction) -> Vec<(&'static str, String)> {
    vec![
        ("layer", d.layer.to_string()),
        ("point", d.point.clone()),
        ("method", d.method.clone()),
        ("n", d.n.to_string()),
        ("model", d.model.clone()),
        ("arch", d.arch.clone()),
        ("norm", d.norm.to_string()),
    ]
}

/// A direction from its vector and the metadata entries `field` reads (the inverse of
/// [`meta_of`]); `bad` names what is missing or malformed.
fn direction_from_meta(
    vector: Tensor,
    field: impl Fn(&str) -> Option<String>,
    bad: impl Fn(&str) -> Error,
) -> Result<Direction> {
    let get = |k: &str| field(k).ok_or_else(|| bad(&format!("no {k}")));
    Ok(Direction {
        vector: vector.into_array().as_dtype(Dtype::Float32)?,
        layer: get("layer")?.parse().map_err(|_| bad("layer"))?,
        point: get("point")?,
        method: get("method")?,
        n: get("n")?.parse().map_err(|_| bad("n"))?,
        model: get("model")?,
        arch: field("arch").unwrap_or_default(),
        norm: get("norm")?.parse().map_err(|_| bad("norm"))?,
    })
}

fn save_impl(d: &Direction, path: &std::path::Path) -> Result<()> {
    let meta: HashMap<String, String> = std::iter::once(("format", "mlxi.direction".to_string()))
        .chain(meta_of(d))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    write_safetensors(
        path,
        &[("vector", &Tensor::new(d.vector.clone()))],
        Some(meta),
    )
}

fn load_impl(path: &std::path::Path) -> Result<Direction> {
    let (tensors, meta) = read_safetensors(path)?;
    let bad = |what: &str| {
        Error::Invalid(format!(
            "{}: not a direction saved by mlxi ({what})",
            path.display()
        ))
    };
    if meta.get("format").map(String::as_str) != Some("mlxi.direction") {
        return Err(bad("no mlxi.direction format tag"));
    }
    let vector = tensors
        .into_iter()
        .find(|(n, _)| n == "vector")
        .ok_or_else(|| bad("no vector"))?
        .1;
    direction_from_meta(vector, |k| meta.get(k).cloned(), bad)
}

/// A named set of Directions in one safetensors file: tensor `NAME` per direction, metadata
/// `NAME.layer`, `NAME.point`, ... and `format` "mlxi.directions".
fn save_library_impl(lib: &Map, path: &std::path::Path) -> Result<()> {
    if lib.is_empty() {
        return Err(Error::Invalid("save_library: the library is empty".into()));
    }
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), "mlxi.directions".into());
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, v) in lib.iter() {
        let d = v.read_lock::<Direction>().ok_or_else(|| {
            Error::Invalid(format!(
                "save_library: {name:?} is a {}, not a Direction",
                super::display::type_name(v)
            ))
        })?;
        if name.contains('.') {
            return Err(Error::Invalid(format!(
                "save_library: names cannot contain '.', got {name:?}"
            )));
        }
        for (k, val) in meta_of(&d) {
            meta.insert(format!("{name}.{k}"), val);
        }
        tensors.push((name.to_string(), Tensor::new(d.vector.clone())));
    }
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(path, &refs, Some(meta))
}

fn load_library_impl(path: &std::path::Path) -> Result<Map> {
    let (tensors, meta) = read_safetensors(path)?;
    let bad = |what: String| {
        Error::Invalid(format!(
            "{}: not a direction library saved by mlxi ({what})",
            path.display()
        ))
    };
    if meta.get("format").map(String::as_str) != Some("mlxi.directions") {
        return Err(bad("no mlxi.directions format tag".into()));
    }
    let mut out = Map::new();
    for (name, t) in tensors {
        let d = direction_from_meta(
            t,
            |k| meta.get(&format!("{name}.{k}")).cloned(),
            |what| bad(format!("{name}: {what}")),
        )?;
        out.insert(name.into(), Dynamic::from(d));
    }
    Ok(out)
}

/// Directions as a llama.cpp control vector: tensors `direction.{L}` (llama.cpp adds tensor L
/// to the output of block L, which is `blocks.{L}.hook_resid_post`; it cannot steer block 0),
/// `general.architecture` "controlvector", `controlvector.model_hint` and
/// `controlvector.layer_count`. Written to a temporary file, then renamed.
pub fn export_control_vector(ds: &[Direction], path: &std::path::Path) -> Result<()> {
    use mlx_rs::io::GgufFile;
    let gg = |e: mlx_rs::io::GgufError| Error::Invalid(format!("export_control_vector: {e}"));
    if ds.is_empty() {
        return Err(Error::Invalid(
            "export_control_vector: no directions given".into(),
        ));
    }
    if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
        return Err(Error::Invalid(format!(
            "export_control_vector: {}: the file name must end in .gguf",
            path.display()
        )));
    }
    let mut file = GgufFile::new().map_err(gg)?;
    let mut seen = Vec::new();
    for d in ds {
        if d.point != "hook_resid_post" {
            return Err(Error::Invalid(format!(
                "export_control_vector: llama.cpp adds control vectors to block outputs; a \
                 direction at {} cannot be exported (use point \"hook_resid_post\")",
                d.point
            )));
        }
        if d.layer == 0 {
            return Err(Error::Invalid(
                "export_control_vector: llama.cpp control vectors start at layer 1".into(),
            ));
        }
        if seen.contains(&d.layer) {
            return Err(Error::Invalid(format!(
                "export_control_vector: two directions at layer {}",
                d.layer
            )));
        }
        seen.push(d.layer);
        let v = d.vector.as_dtype(Dtype::Float32)?;
        file.insert_array(format!("direction.{}", d.layer), &v)
            .map_err(gg)?;
    }
    file.insert_metadata("general.architecture", "controlvector")
        .map_err(gg)?;
    file.insert_metadata("controlvector.model_hint", ds[0].arch.as_str())
        .map_err(gg)?;
    file.insert_metadata(
        "controlvector.layer_count",
        Array::from_int(ds.len() as i32),
    )
    .map_err(gg)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp.gguf", std::process::id()));
    file.save(&tmp).map_err(gg)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
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
        Ok(random_impl(&like, 0)?)
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
        Ok(random_impl(&like, seed)?)
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
        Ok(save_impl(&d, &path)?)
    }

    /// Reads a direction written by `save(d, path)`.
    ///
    /// Example: `let d = load_direction("happy.safetensors");`
    #[rhai_fn(return_raw)]
    pub fn load_direction(ctx: NativeCallContext, path: &str) -> RhaiResult<Direction> {
        let path = context(&ctx).read_path("load_direction", path)?;
        Ok(load_impl(&path)?)
    }

    /// Writes a map of named Directions (a concept library) to one safetensors file, each
    /// with its metadata.
    ///
    /// Example: `save_library(#{happy: d1, formal: d2}, "concepts.safetensors")`
    #[rhai_fn(return_raw)]
    pub fn save_library(ctx: NativeCallContext, lib: Map, path: &str) -> RhaiResult<()> {
        let path = context(&ctx).write_path("save_library", path)?;
        Ok(save_library_impl(&lib, &path)?)
    }

    /// Reads a concept library written by `save_library`: a map of name to Direction.
    ///
    /// Example: `let lib = load_library("concepts.safetensors"); steer(m, lib.happy)`
    #[rhai_fn(return_raw)]
    pub fn load_library(ctx: NativeCallContext, path: &str) -> RhaiResult<Map> {
        let path = context(&ctx).read_path("load_library", path)?;
        Ok(load_library_impl(&path)?)
    }

    /// Writes one Direction as a llama.cpp control-vector GGUF (`--control-vector FILE`).
    ///
    /// Example: `export_control_vector(d, "happy.gguf")`
    #[rhai_fn(name = "export_control_vector", return_raw)]
    pub fn export_one(ctx: NativeCallContext, d: Direction, path: &str) -> RhaiResult<()> {
        let path = context(&ctx).write_path("export_control_vector", path)?;
        Ok(super::export_control_vector(&[d], &path)?)
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
        Ok(super::export_control_vector(&ds, &path)?)
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
