//! Capture verbs: `capture(m, inputs, opts)` returns a `Cache` of activations; `cache[name]`,
//! `keys(cache)`, `save(cache, path)` and `load_cache(path)`.

use std::rc::Rc;

use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, Map, NativeCallContext, INT};

use super::hooks::with_call;
use super::model::{input, Input, ModelHandle};
use super::options::Options;
use super::tensor::Tensor;
use super::{context, RhaiResult};
use crate::capture::{capture, run_with_cache, ActivationCache, Captured, Positions};
use crate::hooks::HookName;
use crate::model::Model;
use crate::{Error, Result};

/// Captured activations (a shared, read-only value).
#[derive(Clone)]
pub struct Cache(pub Rc<ActivationCache>);

impl Cache {
    /// One line for printing.
    pub fn summary(&self) -> String {
        let c = &self.0;
        format!(
            "Cache({}: {} input{}, {} point{}, positions {})",
            c.model,
            c.n,
            if c.n == 1 { "" } else { "s" },
            c.points.len(),
            if c.points.len() == 1 { "" } else { "s" },
            c.positions
        )
    }

    /// The activations at `name` (negative layers allowed).
    pub fn get(&self, name: &str) -> Result<&Captured> {
        self.0.get(name)
    }
}

/// Token-id rows of `inputs` (text, ids, or an array of either).
pub fn rows_of(m: &Model, inputs: &Dynamic, verb: &str) -> Result<Vec<Vec<u32>>> {
    let rows = match input(m, inputs, verb)? {
        Input::One(ids) => vec![ids],
        Input::Batch(rows) => rows,
    };
    let v = m.info.vocab as u32;
    for r in &rows {
        if r.is_empty() {
            return Err(Error::Invalid(format!("{verb}: an input has no tokens")));
        }
        if let Some(bad) = r.iter().find(|&&t| t >= v) {
            return Err(Error::Invalid(format!(
                "{verb}: token id {bad} is out of range (vocabulary of {v})"
            )));
        }
    }
    Ok(rows)
}

/// `positions`: "last", "mean", "all", or an integer.
pub fn parse_positions(o: &Options, verb: &str) -> Result<Positions> {
    match o.get("positions") {
        None => Ok(Positions::Last),
        Some(v) => match v.as_int() {
            Ok(i) => Ok(Positions::Index(i)),
            Err(_) => match v.clone().into_immutable_string() {
                Ok(s) if ["last", "mean", "all"].contains(&s.as_str()) => Positions::parse(&s),
                _ => Err(Error::Invalid(format!(
                    "{verb}: positions must be \"last\", \"mean\", \"all\" or an integer index, \
                     got {}",
                    super::display::inline(v)
                ))),
            },
        },
    }
}

const CAPTURE_KEYS: &[&str] = &["points", "positions", "batch_size", "progress"];

/// `points`: a name or an array of names (`*` for every layer), or "all" (every hook point;
/// attention patterns only with positions "all"); default every `hook_resid_post`.
fn parse_points(
    o: &Options,
    m: &crate::model::Model,
    positions: Positions,
    verb: &str,
) -> Result<Vec<HookName>> {
    let patterns: Vec<String> = match o.get("points") {
        None => vec!["blocks.*.hook_resid_post".into()],
        Some(v) => {
            if let Ok(s) = v.clone().into_immutable_string() {
                if s == "all" {
                    return Ok(m
                        .hook_points()
                        .into_iter()
                        .filter(|p| {
                            positions == Positions::All || !matches!(p, HookName::Pattern(_))
                        })
                        .collect());
                }
                vec![s.to_string()]
            } else {
                o.array("points")?
                    .unwrap_or_default()
                    .iter()
                    .map(|p| {
                        p.clone().into_string().map_err(|_| {
                            Error::Invalid(format!("{verb}: points must be hook names (strings)"))
                        })
                    })
                    .collect::<Result<_>>()?
            }
        }
    };
    m.expand_points(&patterns)
}

/// The texts of `inputs` when every input is text (one text, or an array of texts).
pub fn texts_of(inputs: &Dynamic) -> Option<Vec<String>> {
    if let Ok(s) = inputs.clone().into_immutable_string() {
        return Some(vec![s.to_string()]);
    }
    let a = inputs.read_lock::<RhaiArray>()?;
    a.iter()
        .map(|x| {
            x.clone()
                .into_immutable_string()
                .ok()
                .map(|s| s.to_string())
        })
        .collect()
}

fn capture_impl(m: &mut Model, inputs: &Dynamic, opts: &Map) -> Result<Cache> {
    let o = Options::parse("capture", opts, CAPTURE_KEYS)?;
    let positions = parse_positions(&o, "capture")?;
    let points = parse_points(&o, m, positions, "capture")?;
    let batch_size = o.int("batch_size", 32)?;
    if batch_size < 1 {
        return Err(Error::Invalid(
            "capture: batch_size must be at least 1".into(),
        ));
    }
    let rows = rows_of(m, inputs, "capture")?;
    let progress = o.bool("progress", true)?;
    let mut c = capture(m, &rows, &points, positions, batch_size as usize, progress)?;
    c.prompts = texts_of(inputs);
    Ok(Cache(Rc::new(c)))
}

const RUN_WITH_CACHE_KEYS: &[&str] = &["points", "positions"];

/// `#{logits, cache}` from one forward of `inputs`.
fn run_with_cache_impl(m: &mut Model, inputs: &Dynamic, opts: &Map) -> Result<Map> {
    let o = Options::parse("run_with_cache", opts, RUN_WITH_CACHE_KEYS)?;
    let positions = match o.get("positions") {
        None => Positions::All,
        Some(_) => parse_positions(&o, "run_with_cache")?,
    };
    let points = parse_points(&o, m, positions, "run_with_cache")?;
    let batch = inputs
        .read_lock::<RhaiArray>()
        .is_some_and(|a| !a.iter().all(|x| x.is_int()));
    let rows = rows_of(m, inputs, "run_with_cache")?;
    let t = rows.iter().map(Vec::len).max().unwrap_or(0) as i32;
    crate::arrays::check_fits(
        &[rows.len() as i32, t, m.info.vocab],
        mlx_rs::Dtype::Float32,
    )?;
    let (logits, mut c) = run_with_cache(m, &rows, &points, positions)?;
    c.prompts = texts_of(inputs);
    let logits = if batch {
        logits
    } else {
        logits.reshape(&[t, -1])?
    };
    let mut out = Map::new();
    out.insert("logits".into(), Dynamic::from(Tensor::new(logits)));
    out.insert("cache".into(), Dynamic::from(Cache(Rc::new(c))));
    Ok(out)
}

#[export_module]
mod capture_functions {
    use super::*;

    pub type Model = super::ModelHandle;

    pub type Cache = super::Cache;

    /// Runs `inputs` (a text, ids, or an array of texts) and keeps the activations at every
    /// `hook_resid_post`, last position: a Cache.
    ///
    /// Example: `let c = capture(m, ["I love it", "I hate it"]);`
    #[rhai_fn(name = "capture", return_raw)]
    pub fn capture_default(
        ctx: NativeCallContext,
        m: &mut Model,
        inputs: Dynamic,
    ) -> RhaiResult<Cache> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || {
            capture_impl(&mut g, &inputs, &Map::new())
        })?)
    }

    /// `capture` with options: `points` (names; `*` for every layer, default
    /// "blocks.*.hook_resid_post"), `positions` ("last" (default), "mean", "all", or an index;
    /// negative from the end), `batch_size` (32), `progress` (true: a progress bar on long runs).
    ///
    /// Example: `capture(m, texts, #{points: ["blocks.*.hook_resid_post"], positions: "mean"})`
    #[rhai_fn(name = "capture", return_raw)]
    pub fn capture_with(
        ctx: NativeCallContext,
        m: &mut Model,
        inputs: Dynamic,
        opts: Map,
    ) -> RhaiResult<Cache> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || capture_impl(&mut g, &inputs, &opts))?)
    }

    /// One forward of `input` (text, ids, or an array of texts) that gives both its logits and
    /// its activations: `#{logits, cache}`. `logits` as `forward` gives them; `cache` a Cache
    /// of every `hook_resid_post` at every position (`cache[name][i]` is input i's
    /// `[pos, d_model]`).
    ///
    /// Example: `let r = run_with_cache(m, "The capital of France is"); r.cache["blocks.5.hook_resid_post"][0]`
    #[rhai_fn(name = "run_with_cache", return_raw)]
    pub fn run_with_cache_default(
        ctx: NativeCallContext,
        m: &mut Model,
        input: Dynamic,
    ) -> RhaiResult<Map> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || {
            run_with_cache_impl(&mut g, &input, &Map::new())
        })?)
    }

    /// `run_with_cache` with options: `points` (names, `*` for every layer, or "all" for
    /// every hook point as TransformerLens caches them; default every `hook_resid_post`),
    /// `positions` ("all" (default), "last", "mean", or an index).
    ///
    /// Example: `run_with_cache(m, text, #{points: ["blocks.*.hook_resid_post", "blocks.*.attn.hook_pattern"]})`
    #[rhai_fn(name = "run_with_cache", return_raw)]
    pub fn run_with_cache_with(
        ctx: NativeCallContext,
        m: &mut Model,
        input: Dynamic,
        opts: Map,
    ) -> RhaiResult<Map> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || {
            run_with_cache_impl(&mut g, &input, &opts)
        })?)
    }

    /// The texts the cache was captured from, or `()` when it was given token ids (or saved
    /// before caches recorded them).
    ///
    /// Example: `c.prompts  // ["I love it", "I hate it"]`
    #[rhai_fn(get = "prompts", pure)]
    pub fn prompts(c: &mut Cache) -> Dynamic {
        match &c.0.prompts {
            Some(p) => Dynamic::from_array(p.iter().map(|s| Dynamic::from(s.clone())).collect()),
            None => Dynamic::UNIT,
        }
    }

    /// The token ids of each input (an array of arrays), or `()` for a cache saved before
    /// caches recorded them.
    ///
    /// Example: `c.ids[0]  // [57, 1123, 357]`
    #[rhai_fn(get = "ids", pure)]
    pub fn ids(c: &mut Cache) -> Dynamic {
        match &c.0.ids {
            Some(rows) => Dynamic::from_array(
                rows.iter()
                    .map(|r| {
                        Dynamic::from_array(
                            r.iter().map(|&i| Dynamic::from_int(i as INT)).collect(),
                        )
                    })
                    .collect(),
            ),
            None => Dynamic::UNIT,
        }
    }

    /// The activations at a hook point: a Tensor `[n_inputs, ...]`, or for positions "all" an
    /// array of `[pos, ...]` Tensors, one per input.
    ///
    /// Example: `c["blocks.-1.hook_resid_post"].shape  // [2, 576]`
    #[rhai_fn(index_get, return_raw, pure)]
    pub fn get(c: &mut Cache, name: &str) -> RhaiResult<Dynamic> {
        Ok(match c.get(name)? {
            Captured::Stacked(a) => Dynamic::from(Tensor::new(a.clone())),
            Captured::PerInput(rows) => Dynamic::from_array(
                rows.iter()
                    .map(|a| Dynamic::from(Tensor::new(a.clone())))
                    .collect(),
            ),
        })
    }

    /// The hook points the cache holds, in forward order.
    ///
    /// Example: `keys(c)[0]  // "blocks.0.hook_resid_post"`
    #[rhai_fn(name = "keys", pure)]
    pub fn keys(c: &mut Cache) -> RhaiArray {
        c.0.points
            .iter()
            .map(|p| Dynamic::from(p.to_string()))
            .collect()
    }

    /// Number of inputs captured.
    ///
    /// Example: `c.n  // 2`
    #[rhai_fn(get = "n", pure)]
    pub fn n(c: &mut Cache) -> INT {
        c.0.n as INT
    }

    /// The positions kept: "last", "mean", "all", or an index.
    ///
    /// Example: `c.positions  // "last"`
    #[rhai_fn(get = "positions", pure)]
    pub fn positions(c: &mut Cache) -> String {
        c.0.positions.to_string()
    }

    /// Writes the cache as safetensors with its metadata (model, points, positions, the
    /// inputs' ids and texts), atomically.
    ///
    /// Example: `save(c, "acts.safetensors")`
    #[rhai_fn(name = "save", return_raw)]
    pub fn save(ctx: NativeCallContext, c: Cache, path: &str) -> RhaiResult<()> {
        let path = context(&ctx).write_path("save", path)?;
        Ok(c.0.save(&path)?)
    }

    /// Reads a cache written by `save(cache, path)`.
    ///
    /// Example: `let c = load_cache("acts.safetensors");`
    #[rhai_fn(return_raw)]
    pub fn load_cache(ctx: NativeCallContext, path: &str) -> RhaiResult<Cache> {
        let path = context(&ctx).read_path("load_cache", path)?;
        Ok(Cache(Rc::new(ActivationCache::load(&path)?)))
    }

    /// A short description of the cache.
    ///
    /// Example: `print(c)`
    #[rhai_fn(name = "to_string", name = "to_debug", pure)]
    pub fn to_string(c: &mut Cache) -> String {
        c.summary()
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<Cache>("Cache");
    engine.register_global_module(exported_module!(capture_functions).into());
}
