//! Capturing activations: run many inputs in batches and keep only the requested points and
//! positions (the last token, the mean over tokens, one token, or every token), so a capture of
//! the last position never holds the whole `[batch, pos, d]` stream.
//!
//! Rows are left-padded within a batch; positions always refer to each row's own tokens, so
//! "last" is every row's real last token and "mean" averages over real tokens only. The forward
//! stops after the last block a requested point needs. A cache saves to and loads from one
//! safetensors file.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use mlx_rs::{ops, ops::indexing::TryIndexOp, Array, Dtype};

use crate::arrays::{read_safetensors, write_safetensors};
use crate::error::{Error, Result};
use crate::hooks::{HookCtx, HookName, Reducer};
use crate::model::{pad_left, Model};

/// Which positions of each input a capture keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// The last token: `[n, ...]`.
    Last,
    /// The mean over the input's tokens: `[n, ...]`.
    Mean,
    /// Every token: one `[len, ...]` array per input.
    All,
    /// One token (negative counts from the end): `[n, ...]`.
    Index(i64),
}

impl Positions {
    /// `"last"`, `"mean"`, `"all"`, or an index as text.
    pub fn parse(s: &str) -> Result<Positions> {
        match s {
            "last" => Ok(Positions::Last),
            "mean" => Ok(Positions::Mean),
            "all" => Ok(Positions::All),
            other => other.parse::<i64>().map(Positions::Index).map_err(|_| {
                Error::Invalid(format!(
                    "positions must be \"last\", \"mean\", \"all\" or an integer index, got {other:?}"
                ))
            }),
        }
    }
}

impl fmt::Display for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Positions::Last => write!(f, "last"),
            Positions::Mean => write!(f, "mean"),
            Positions::All => write!(f, "all"),
            Positions::Index(i) => write!(f, "{i}"),
        }
    }
}

/// What was captured at one point.
#[derive(Debug, Clone)]
pub enum Captured {
    /// One row per input: `[n, ...]` (float32).
    Stacked(Array),
    /// Every token of each input: `[len, ...]` per input (float32).
    PerInput(Vec<Array>),
}

/// Activations of several inputs at several points.
#[derive(Debug, Clone)]
pub struct ActivationCache {
    /// The model's name.
    pub model: String,
    pub n_layers: usize,
    /// Captured points, in forward order.
    pub points: Vec<HookName>,
    pub positions: Positions,
    /// Number of inputs.
    pub n: usize,
    /// FNV-1a hash of the inputs' token ids (hex), to tell caches of different prompts apart.
    pub prompts_hash: String,
    /// The inputs' texts, when they were given as texts (set by the caller that tokenized
    /// them); `None` for token ids.
    pub prompts: Option<Vec<String>>,
    /// Each input's token ids; `None` for a cache saved before mlxi recorded them.
    pub ids: Option<Vec<Vec<u32>>>,
    pub entries: HashMap<HookName, Captured>,
}

impl ActivationCache {
    /// The activations at `name` (negative layers allowed).
    pub fn get(&self, name: &str) -> Result<&Captured> {
        let point = HookName::parse(name, self.n_layers)?;
        self.entries.get(&point).ok_or_else(|| {
            let names: Vec<String> = self.points.iter().map(|p| p.to_string()).collect();
            let shown = if names.len() > 6 {
                format!("{}, ... ({} in all)", names[..6].join(", "), names.len())
            } else {
                names.join(", ")
            };
            Error::Invalid(format!("the cache has no {point}; it holds {shown}"))
        })
    }

    /// Writes the cache as safetensors, atomically: one tensor per point (`NAME#i` per input
    /// for positions "all") and metadata `format` "mlxi.cache", `model`, `n_layers`, `points`
    /// (JSON), `positions`, `n`, `prompts_hash`, and where known `ids` and `prompts` (JSON).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, &Array)> = Vec::new();
        for p in &self.points {
            match self.entries.get(p) {
                Some(Captured::Stacked(a)) => tensors.push((p.to_string(), a)),
                Some(Captured::PerInput(rows)) => {
                    for (i, a) in rows.iter().enumerate() {
                        tensors.push((format!("{p}#{i}"), a));
                    }
                }
                None => {}
            }
        }
        let points: Vec<String> = self.points.iter().map(|p| p.to_string()).collect();
        let mut meta: HashMap<String, String> = [
            ("format", "mlxi.cache".to_string()),
            ("model", self.model.clone()),
            ("n_layers", self.n_layers.to_string()),
            (
                "points",
                serde_json::to_string(&points).unwrap_or_else(|_| "[]".into()),
            ),
            ("positions", self.positions.to_string()),
            ("n", self.n.to_string()),
            ("prompts_hash", self.prompts_hash.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(ids) = &self.ids {
            let text = serde_json::to_string(ids).map_err(|e| Error::Invalid(e.to_string()))?;
            meta.insert("ids".into(), text);
        }
        if let Some(prompts) = &self.prompts {
            let text = serde_json::to_string(prompts).map_err(|e| Error::Invalid(e.to_string()))?;
            meta.insert("prompts".into(), text);
        }
        let refs: Vec<(&str, &Array)> = tensors.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        write_safetensors(path, &refs, Some(meta))
    }

    /// Reads a cache written by [`ActivationCache::save`].
    pub fn load(path: &Path) -> Result<ActivationCache> {
        let (tensors, meta) = read_safetensors(path)?;
        let bad = |what: &str| {
            Error::Invalid(format!(
                "{}: not a cache saved by mlxi ({what})",
                path.display()
            ))
        };
        if meta.get("format").map(String::as_str) != Some("mlxi.cache") {
            return Err(bad("no mlxi.cache format tag"));
        }
        let field = |k: &str| meta.get(k).cloned().ok_or_else(|| bad(&format!("no {k}")));
        let n_layers: usize = field("n_layers")?.parse().map_err(|_| bad("n_layers"))?;
        let n: usize = field("n")?.parse().map_err(|_| bad("n"))?;
        let positions = Positions::parse(&field("positions")?)?;
        let names: Vec<String> =
            serde_json::from_str(&field("points")?).map_err(|_| bad("points"))?;
        let points = names
            .iter()
            .map(|p| HookName::parse(p, n_layers))
            .collect::<Result<Vec<_>>>()?;
        let mut by_name: HashMap<String, Array> = tensors.into_iter().collect();
        let mut entries = HashMap::new();
        for p in &points {
            let key = p.to_string();
            let c = if positions == Positions::All {
                let rows = (0..n)
                    .map(|i| {
                        by_name
                            .remove(&format!("{key}#{i}"))
                            .ok_or_else(|| bad(&format!("no {key}#{i}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Captured::PerInput(rows)
            } else {
                Captured::Stacked(
                    by_name
                        .remove(&key)
                        .ok_or_else(|| bad(&format!("no {key}")))?,
                )
            };
            entries.insert(*p, c);
        }
        // Caches saved before mlxi recorded their inputs have neither.
        let ids: Option<Vec<Vec<u32>>> = match meta.get("ids") {
            Some(t) => Some(serde_json::from_str(t).map_err(|_| bad("ids"))?),
            None => None,
        };
        let prompts: Option<Vec<String>> = match meta.get("prompts") {
            Some(t) => Some(serde_json::from_str(t).map_err(|_| bad("prompts"))?),
            None => None,
        };
        if ids.as_ref().is_some_and(|v| v.len() != n)
            || prompts.as_ref().is_some_and(|v| v.len() != n)
        {
            return Err(bad("ids or prompts do not match n"));
        }
        Ok(ActivationCache {
            model: field("model")?,
            n_layers,
            points,
            positions,
            n,
            prompts_hash: field("prompts_hash")?,
            prompts,
            ids,
            entries,
        })
    }
}

/// A stable hash of rows of token ids (FNV-1a, 64 bits, as hex).
pub fn hash_ids(rows: &[Vec<u32>]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |x: u32| {
        for b in x.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    for r in rows {
        for &t in r {
            eat(t);
        }
        eat(u32::MAX);
    }
    format!("{h:016x}")
}

/// Expands point patterns: exact names (negative layers allowed) or names with `*` in place of
/// the layer index (`blocks.*.hook_resid_post`). Returns them in forward order, without
/// repeats.
pub fn expand_points(patterns: &[String], n_layers: usize) -> Result<Vec<HookName>> {
    let mut out = Vec::new();
    for p in patterns {
        if p.contains('*') {
            let mut any = false;
            for i in 0..n_layers {
                let name = p.replace('*', &i.to_string());
                if let Ok(h) = HookName::parse(&name, n_layers) {
                    out.push(h);
                    any = true;
                }
            }
            if !any {
                // Report the error the first layer's name gives (it lists the valid forms).
                HookName::parse(&p.replace('*', "0"), n_layers)?;
                return Err(Error::Invalid(format!("no hook point matches {p:?}")));
            }
        } else {
            out.push(HookName::parse(p, n_layers)?);
        }
    }
    let order = HookName::forward_order(n_layers);
    out.sort_by_key(|h| order.iter().position(|o| o == h));
    out.dedup();
    Ok(out)
}

/// What a capture keeps of each activation at `point`.
fn reducer(point: HookName, positions: Positions) -> Reducer {
    Box::new(move |x: &Array, ctx: HookCtx<'_>| -> Result<Array> {
        let x = x.as_dtype(Dtype::Float32)?;
        let shape = x.shape().to_vec();
        let (b, t) = (shape[0], shape[point.pos_axis()]);
        match positions {
            Positions::All => Ok(x),
            Positions::Last => Ok(x.take_axis(Array::from_int(t - 1), 1)?),
            Positions::Index(i) => {
                let mut flat = Vec::with_capacity(b as usize);
                for r in 0..b as usize {
                    let pad = ctx.pad(r) as i64;
                    let a = if i >= 0 { pad + i } else { t as i64 + i };
                    if a < pad || a >= t as i64 {
                        return Err(Error::Invalid(format!(
                            "capture: position {i} is out of range for an input of {} tokens",
                            t as i64 - pad
                        )));
                    }
                    flat.push(r as i32 * t + a as i32);
                }
                let mut fshape = vec![b * t];
                fshape.extend_from_slice(&shape[2..]);
                Ok(x.reshape(&fshape)?
                    .take_axis(Array::from_slice(&flat, &[b]), 0)?)
            }
            Positions::Mean => {
                let mut keep = Vec::with_capacity((b * t) as usize);
                let mut counts = Vec::with_capacity(b as usize);
                for r in 0..b as usize {
                    let pad = ctx.pad(r);
                    keep.extend((0..t).map(|j| if j >= pad { 1.0f32 } else { 0.0 }));
                    counts.push((t - pad) as f32);
                }
                let mut mshape = vec![1i32; shape.len()];
                mshape[0] = b;
                mshape[1] = t;
                let mask = Array::from_slice(&keep, &mshape);
                let mut cshape = vec![1i32; shape.len() - 1];
                cshape[0] = b;
                let counts = Array::from_slice(&counts, &cshape);
                Ok(x.multiply(&mask)?.sum_axis(1, None)?.divide(&counts)?)
            }
        }
    })
}

/// What a capture keeps, gathered batch by batch.
#[derive(Default)]
struct Gathered {
    stacked: HashMap<HookName, Vec<Array>>,
    per_input: HashMap<HookName, Vec<Array>>,
}

impl Gathered {
    /// Takes what the hooks kept of one batch (`n_rows` rows left-padded by `pads` to length
    /// `t`). Returns the arrays to evaluate now.
    fn add(
        &mut self,
        got: &HashMap<HookName, Vec<Array>>,
        points: &[HookName],
        positions: Positions,
        n_rows: usize,
        pads: &[i32],
        t: i32,
    ) -> Result<Vec<Array>> {
        let mut fresh = Vec::new();
        for p in points {
            let a = got
                .get(p)
                .and_then(|v| v.last())
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("capture: {p} was not reached")))?;
            // The batch's activation is computed here; its rows are views, made when first read.
            fresh.push(a.clone());
            if positions == Positions::All {
                for r in 0..n_rows {
                    let pad = pads.get(r).copied().unwrap_or(0);
                    let r = r as i32;
                    // Slices, not gathers: a row of a `[batch, pos, ...]` activation is a view
                    // of the batch's buffer (no copy, no kernel launch on a GPU, still row
                    // contiguous). A pattern's rows are cut on two axes, so they are copied.
                    let row = match p {
                        p if p.is_attention_map() => {
                            let keep = Array::from_iter(pad..t, &[t - pad]);
                            let row = a
                                .take_axis(Array::from_int(r), 0)?
                                .take_axis(&keep, 1)?
                                .take_axis(&keep, 2)?;
                            // Copied now, so that the batch's patterns can be freed.
                            fresh.push(row.clone());
                            row
                        }
                        _ => a.try_index((r..r + 1, pad..t))?.squeeze_axes(&[0])?,
                    };
                    self.per_input.entry(*p).or_default().push(row);
                }
            } else {
                self.stacked.entry(*p).or_default().push(a);
            }
        }
        Ok(fresh)
    }

    /// The cache of `rows` captured at `points`.
    fn into_cache(
        mut self,
        model: &Model,
        rows: &[Vec<u32>],
        points: &[HookName],
        positions: Positions,
    ) -> Result<ActivationCache> {
        let mut entries = HashMap::new();
        for p in points {
            let c = if positions == Positions::All {
                Captured::PerInput(self.per_input.remove(p).unwrap_or_default())
            } else {
                let parts = self.stacked.remove(p).unwrap_or_default();
                let a = if parts.len() == 1 {
                    parts
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| Array::from_f32(0.0))
                } else {
                    ops::concatenate(&parts, 0)?
                };
                Captured::Stacked(a)
            };
            entries.insert(*p, c);
        }
        Ok(ActivationCache {
            model: model.info.name.clone(),
            n_layers: model.n_layers(),
            points: points.to_vec(),
            positions,
            n: rows.len(),
            prompts_hash: hash_ids(rows),
            prompts: None,
            ids: Some(rows.to_vec()),
            entries,
        })
    }
}

/// Checks what a capture is asked for.
fn check_request(rows: &[Vec<u32>], points: &[HookName], positions: Positions) -> Result<()> {
    if rows.is_empty() {
        return Err(Error::Invalid("capture: no inputs".into()));
    }
    if points.is_empty() {
        return Err(Error::Invalid("capture: no points to capture".into()));
    }
    if positions != Positions::All && points.iter().any(HookName::is_attention_map) {
        return Err(Error::Invalid(
            "capture: attention scores and patterns are captured with positions \"all\" only"
                .into(),
        ));
    }
    Ok(())
}

/// Runs `rows` (token ids) through `model` in batches of `batch_size`, keeping `positions` of
/// the activations at `points`. Hooks attached to the model run as usual. `progress` shows a
/// progress bar (on a terminal) when there is more than one batch.
///
/// In a group of several processes ([`crate::distributed`]) this is a collective call: each
/// rank runs its share of `rows` and the ranks exchange what they kept, so every rank returns
/// the cache of all the rows, as one process would (batches differ, so up to float noise). With
/// fewer rows than ranks, every rank runs them all.
pub fn capture(
    model: &mut Model,
    rows: &[Vec<u32>],
    points: &[HookName],
    positions: Positions,
    batch_size: usize,
    progress: bool,
) -> Result<ActivationCache> {
    // Attention maps are [heads, pos, pos] per input: not split (every rank runs every row).
    let maps = points.iter().any(HookName::is_attention_map);
    let world = match model.data_parallel()? {
        Some(w) if rows.len() >= w.size() && !maps => w,
        _ => return capture_local(model, rows, points, positions, batch_size, progress),
    };
    check_request(rows, points, positions)?;
    let mine = capture_local(
        model,
        &rows[world.share(rows.len())],
        points,
        positions,
        batch_size,
        progress,
    )?;
    gather_cache(&world, "capture", rows, points, mine)
}

/// [`capture`] in this process alone.
fn capture_local(
    model: &mut Model,
    rows: &[Vec<u32>],
    points: &[HookName],
    positions: Positions,
    batch_size: usize,
    progress: bool,
) -> Result<ActivationCache> {
    check_request(rows, points, positions)?;
    let batch_size = batch_size.max(1);
    let n_blocks = if points.iter().any(HookName::is_final_norm) {
        None
    } else {
        Some(
            points
                .iter()
                .filter_map(|p| p.layer())
                .max()
                .map_or(0, |l| l + 1),
        )
    };
    let n_batches = rows.len().div_ceil(batch_size);
    let bar = (progress && n_batches > 1).then(|| {
        let bar = indicatif::ProgressBar::new(rows.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "capture {bar:30} {pos}/{len} inputs [{elapsed} < {eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut gathered = Gathered::default();
    let pad_id = model.pad_id();
    for chunk in rows.chunks(batch_size) {
        crate::interrupt::check()?;
        let (ids, pads) = pad_left(chunk, pad_id)?;
        model
            .hooks
            .start_capture_with(points.iter().map(|&p| (p, reducer(p, positions))).collect());
        let run = model.run_hidden(&ids, &pads, n_blocks);
        let got = model.hooks.take_capture();
        run?;
        let fresh = gathered.add(&got, points, positions, chunk.len(), &pads, ids.shape()[1])?;
        mlx_rs::transforms::eval(fresh.iter())?;
        if let Some(bar) = &bar {
            bar.inc(chunk.len() as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    gathered.into_cache(model, rows, points, positions)
}

/// One forward of `rows` (one batch, left-padded as `Model::forward_ids` pads) that returns
/// both the logits `[batch, pos, vocab]` (float32, as `forward_ids` gives them) and the cache
/// of `positions` at `points`, as [`capture`] would keep them.
///
/// In a group of several processes this is a collective call, as [`capture`]: each rank runs
/// its share of `rows` (padded to the longest row of all, so that each row is the input one
/// process would run) and the ranks exchange logits and caches, so every rank returns those of
/// all the rows (up to float noise: the batches differ). With fewer rows than ranks every rank
/// runs them all.
pub fn run_with_cache(
    model: &mut Model,
    rows: &[Vec<u32>],
    points: &[HookName],
    positions: Positions,
) -> Result<(Array, ActivationCache)> {
    let world = match model.data_parallel()? {
        Some(w) if rows.len() >= w.size() => w,
        _ => return run_with_cache_local(model, rows, points, positions, 0),
    };
    check_request(rows, points, positions)?;
    let t = rows.iter().map(Vec::len).max().unwrap_or(0);
    let share = &rows[world.share(rows.len())];
    let (logits, mine) = run_with_cache_local(model, share, points, positions, t)?;
    let logits = world.all_gather(&logits)?;
    let cache = gather_cache(&world, "run_with_cache", rows, points, mine)?;
    Ok((logits, cache))
}

/// The cache of all `rows` from each rank's cache of its share (`mine`), in rank order, on
/// every rank: what the data-parallel [`capture`] and [`run_with_cache`] return.
fn gather_cache(
    world: &crate::distributed::World,
    verb: &str,
    rows: &[Vec<u32>],
    points: &[HookName],
    mine: ActivationCache,
) -> Result<ActivationCache> {
    let mut entries = HashMap::new();
    for p in points {
        let all = match mine.entries.get(p) {
            Some(Captured::Stacked(a)) => Captured::Stacked(world.all_gather(a)?),
            Some(Captured::PerInput(parts)) => {
                Captured::PerInput(gather_parts(world, verb, parts)?)
            }
            None => {
                return Err(Error::Invalid(format!(
                    "{verb}: {p} was not captured on rank {}",
                    world.rank()
                )))
            }
        };
        entries.insert(*p, all);
    }
    Ok(ActivationCache {
        n: rows.len(),
        prompts_hash: hash_ids(rows),
        ids: Some(rows.to_vec()),
        entries,
        ..mine
    })
}

/// Every rank's `parts` (arrays of one dtype and rank, any shapes), in rank order: each part
/// travels flattened, with its shape beside it.
fn gather_parts(
    world: &crate::distributed::World,
    verb: &str,
    parts: &[Array],
) -> Result<Vec<Array>> {
    let ndim = parts.first().map_or(0, |a| a.ndim());
    if parts.iter().any(|a| a.ndim() != ndim) {
        return Err(Error::Invalid(format!(
            "{verb}: the parts of one point differ in rank"
        )));
    }
    let shapes: Vec<i32> = parts.iter().flat_map(|a| a.shape().to_vec()).collect();
    let flat = parts
        .iter()
        .map(|a| a.reshape(&[-1]))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let joined = world.all_gather(&ops::concatenate(&flat, 0)?)?;
    let shapes = world.all_gather(&Array::from_slice(
        &shapes,
        &[parts.len() as i32, ndim as i32],
    ))?;
    let shapes = shapes.as_slice::<i32>().to_vec();
    let mut out = Vec::new();
    let mut start = 0;
    for shape in shapes.chunks(ndim.max(1)) {
        let n: i32 = shape.iter().product();
        let idx = Array::from_iter(start..start + n, &[n]);
        out.push(joined.take_axis(&idx, 0)?.reshape(shape)?);
        start += n;
    }
    Ok(out)
}

/// Rows left-padded with `pad_id` to `t` tokens, or to the longest row if that is longer
/// (as [`pad_left`]).
fn pad_left_to(rows: &[Vec<u32>], pad_id: u32, t: usize) -> Result<(Array, Vec<i32>)> {
    let (ids, pads) = pad_left(rows, pad_id)?;
    let have = ids.shape()[1] as usize;
    if have >= t {
        return Ok((ids, pads));
    }
    let extra = (t - have) as i32;
    let fill = Array::from_slice(
        &vec![pad_id as i32; rows.len() * extra as usize],
        &[rows.len() as i32, extra],
    );
    let ids = ops::concatenate(&[&fill, &ids], 1)?;
    let pads = rows.iter().map(|r| (t - r.len()) as i32).collect();
    Ok((ids, pads))
}

/// [`run_with_cache`] in this process alone, the rows left-padded to at least `t` tokens.
fn run_with_cache_local(
    model: &mut Model,
    rows: &[Vec<u32>],
    points: &[HookName],
    positions: Positions,
    t: usize,
) -> Result<(Array, ActivationCache)> {
    check_request(rows, points, positions)?;
    crate::interrupt::check()?;
    let (ids, pads) = pad_left_to(rows, 0, t)?;
    model
        .hooks
        .start_capture_with(points.iter().map(|&p| (p, reducer(p, positions))).collect());
    let run = model.run(&ids, &pads, None, false);
    let got = model.hooks.take_capture();
    let logits = run?.as_dtype(Dtype::Float32)?;
    let mut gathered = Gathered::default();
    let mut fresh = gathered.add(&got, points, positions, rows.len(), &pads, ids.shape()[1])?;
    fresh.push(logits.clone());
    mlx_rs::transforms::eval(fresh.iter())?;
    Ok((logits, gathered.into_cache(model, rows, points, positions)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_expand_in_forward_order() {
        let pts =
            expand_points(&["blocks.*.hook_resid_post".into(), "hook_embed".into()], 3).unwrap();
        assert_eq!(
            pts,
            vec![
                HookName::Embed,
                HookName::ResidPost(0),
                HookName::ResidPost(1),
                HookName::ResidPost(2)
            ]
        );
        assert!(expand_points(&["blocks.*.hook_nothing".into()], 3).is_err());
        assert_eq!(
            expand_points(&["blocks.-1.attn.hook_q".into()], 3).unwrap(),
            vec![HookName::Q(2)]
        );
    }

    #[test]
    fn positions_parse() {
        assert_eq!(Positions::parse("last").unwrap(), Positions::Last);
        assert_eq!(Positions::parse("-2").unwrap(), Positions::Index(-2));
        assert!(Positions::parse("first").is_err());
    }

    #[test]
    fn hashes_tell_prompts_apart() {
        assert_ne!(hash_ids(&[vec![1, 2]]), hash_ids(&[vec![1], vec![2]]));
        assert_eq!(hash_ids(&[vec![1, 2]]), hash_ids(&[vec![1, 2]]));
    }
}
