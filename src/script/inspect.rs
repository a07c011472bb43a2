//! Looking at what a model is made of: `weights(m)` (every parameter tensor with its shape,
//! count, group and storage), `weight(m, name)`, `embedding(m, input)`,
//! `nearest_tokens(m, query, k)`; and `diagonal(t, offset)` for reading attention patterns
//! (previous-token and induction scores are diagonals of the pattern).

use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, Map, INT};

use super::model::ModelHandle;
use super::tensor::Tensor;
use super::RhaiResult;
use crate::model::Model;
use crate::{Error, Result};

fn weights_impl(m: &Model) -> RhaiArray {
    m.parameters
        .iter()
        .map(|p| {
            let mut e = Map::new();
            e.insert("name".into(), p.name.clone().into());
            e.insert("group".into(), p.group().into());
            e.insert(
                "layer".into(),
                p.layer()
                    .map_or(Dynamic::UNIT, |l| Dynamic::from_int(l as INT)),
            );
            e.insert(
                "shape".into(),
                Dynamic::from_array(
                    p.shape
                        .iter()
                        .map(|&d| Dynamic::from_int(d as INT))
                        .collect(),
                ),
            );
            e.insert("params".into(), Dynamic::from_int(p.params as INT));
            e.insert("stored".into(), p.stored.clone().into());
            e.insert("dtype".into(), p.dtype.clone().into());
            e.insert("bytes".into(), Dynamic::from_int(p.bytes as INT));
            Dynamic::from_map(e)
        })
        .collect()
}

/// Token ids from text (tokenized without special tokens), an array of ids, or one id.
fn ids_of(m: &Model, input: &Dynamic, verb: &str) -> Result<Vec<u32>> {
    if let Ok(i) = input.as_int() {
        return u32::try_from(i)
            .map(|i| vec![i])
            .map_err(|_| Error::Invalid(format!("{verb}: token id {i} is out of range")));
    }
    if let Ok(s) = input.clone().into_immutable_string() {
        let ids = m.encode(&s, false)?;
        if ids.is_empty() {
            return Err(Error::Invalid(format!("{verb}: the text has no tokens")));
        }
        return Ok(ids);
    }
    if let Some(a) = input.read_lock::<RhaiArray>() {
        if a.is_empty() {
            return Err(Error::Invalid(format!("{verb}: no token ids")));
        }
        return a
            .iter()
            .map(|x| {
                x.as_int()
                    .ok()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "{verb}: token ids must be non-negative integers, got {}",
                            super::display::inline(x)
                        ))
                    })
            })
            .collect();
    }
    Err(Error::Invalid(format!(
        "{verb}: expects text, a token id or an array of ids; got {}",
        super::display::type_name(input)
    )))
}

fn embedding_impl(m: &Model, input: &Dynamic) -> Result<Tensor> {
    let ids = ids_of(m, input, "embedding")?;
    Ok(Tensor::new(m.embedding_rows(&ids)?))
}

fn nearest_impl(m: &Model, query: &Dynamic, k: INT) -> Result<RhaiArray> {
    let verb = "nearest_tokens";
    if k < 1 {
        return Err(Error::Invalid(format!(
            "{verb}: k must be at least 1, got {k}"
        )));
    }
    let (v, skip) = if let Some(t) = query.read_lock::<Tensor>() {
        (t.array().clone(), Vec::new())
    } else {
        let ids = ids_of(m, query, verb)?;
        if ids.len() != 1 {
            let pieces: Vec<String> = ids
                .iter()
                .map(|&i| m.tokenizer.decode(&[i], false).map(|s| format!("{s:?}")))
                .collect::<Result<_>>()?;
            return Err(Error::Invalid(format!(
                "{verb}: {} is {} tokens ({}); give one token, an id or a vector",
                super::display::inline(query),
                ids.len(),
                pieces.join(", ")
            )));
        }
        let row = m.embedding_rows(&ids)?;
        (row.reshape(&[-1])?, ids)
    };
    m.nearest_tokens(&v, k as usize, &skip)?
        .into_iter()
        .map(|(id, cos)| {
            let mut e = Map::new();
            e.insert("token".into(), m.tokenizer.decode(&[id], false)?.into());
            e.insert("id".into(), Dynamic::from_int(id as INT));
            e.insert(
                "cosine".into(),
                Dynamic::from_float(super::tensor::f32_to_f64(cos)),
            );
            Ok(Dynamic::from_map(e))
        })
        .collect()
}

fn diagonal_impl(t: &Tensor, offset: INT) -> Result<Tensor> {
    let nd = t.ndim();
    if nd < 2 {
        return Err(Error::Invalid(format!(
            "diagonal: needs a Tensor of 2 or more dimensions, got shape {}",
            crate::arrays::fmt_shape(t.shape())
        )));
    }
    let (rows, cols) = (t.shape()[nd - 2] as INT, t.shape()[nd - 1] as INT);
    if offset >= cols || -offset >= rows {
        return Err(Error::Invalid(format!(
            "diagonal: offset {offset} is outside a {rows} x {cols} matrix"
        )));
    }
    let d = t
        .array()
        .diagonal(offset as i32, nd as i32 - 2, nd as i32 - 1)?;
    Ok(Tensor::new(d))
}

#[export_module]
mod inspect_functions {
    use super::*;

    pub type Model = super::ModelHandle;

    /// Every parameter tensor of the model, in load order: `#{name, group, layer, shape,
    /// params, stored, dtype, bytes}`. `group` is "embedding", "attention", "mlp", "norm",
    /// "head" or "other"; `layer` is the block index (or `()`); `shape` is the logical shape
    /// (quantized matrices unpacked); `stored` is how the checkpoint stores it ("float32",
    /// "4-bit group 32"), `dtype` how it is held in memory; `params` add up to
    /// `m.info().params` and `bytes` to `m.info().bytes`.
    ///
    /// Example: `weights(m).filter(|w| w.layer == 0)`
    #[rhai_fn(return_raw, pure)]
    pub fn weights(m: &mut Model) -> RhaiResult<RhaiArray> {
        let g = m.get()?;
        Ok(weights_impl(&g))
    }

    /// One parameter tensor by its name (see `weights(m)`), as float32 (dequantized when the
    /// model holds it quantized).
    ///
    /// Example: `weight(m, "model.layers.0.self_attn.q_proj.weight").shape  // [576, 576]`
    #[rhai_fn(return_raw, pure)]
    pub fn weight(m: &mut Model, name: &str) -> RhaiResult<Tensor> {
        let g = m.get()?;
        Ok(Tensor::new(g.param(name)?.to_f32()?))
    }

    /// Rows of the token embedding, `[n, d_model]` float32, for text (tokenized without
    /// special tokens), one token id, or an array of ids. The same token always gets the same
    /// row: context comes later, from attention.
    ///
    /// Example: `embedding(m, " Paris").shape  // [1, 576]`
    #[rhai_fn(return_raw, pure)]
    pub fn embedding(m: &mut Model, input: Dynamic) -> RhaiResult<Tensor> {
        let g = m.get()?;
        Ok(embedding_impl(&g, &input)?)
    }

    /// The `k` tokens whose embedding rows are most similar (cosine) to `query`:
    /// `#{token, id, cosine}`, most similar first. `query` is one token (text or id; itself is
    /// left out) or a vector `[d_model]`.
    ///
    /// Example: `nearest_tokens(m, " Paris", 5)`
    #[rhai_fn(return_raw, pure)]
    pub fn nearest_tokens(m: &mut Model, query: Dynamic, k: INT) -> RhaiResult<RhaiArray> {
        let g = m.get()?;
        Ok(nearest_impl(&g, &query, k)?)
    }

    /// The diagonal of the last two axes at `offset` (0 the main diagonal, -1 the one below
    /// it), as numpy's `diagonal(t, offset, -2, -1)`: for an attention pattern `[head, q, k]`,
    /// `diagonal(p, -1)` is `[head, q - 1]`, each query's attention to the previous token.
    ///
    /// Example: `diagonal(attention(m, text, 2), -1)`
    #[rhai_fn(return_raw)]
    pub fn diagonal(t: Tensor, offset: INT) -> RhaiResult<Tensor> {
        Ok(diagonal_impl(&t, offset)?)
    }

    /// This process's memory in MB: `rss_peak` (the operating system's peak resident set
    /// size), `mlx_active` (what MLX's arrays hold now) and `mlx_peak` (their peak). Under
    /// `mlxi launch` each rank reports its own.
    ///
    /// Example: `memory().rss_peak`
    #[rhai_fn(return_raw)]
    pub fn memory() -> RhaiResult<Map> {
        let mb = |b: u64| Dynamic::from_float(b as f64 / 1e6);
        let mut out = Map::new();
        out.insert("rss_peak".into(), mb(crate::bench::max_rss_bytes()));
        let active = mlx_rs::memory::active_memory().map_err(Error::from)?;
        let peak = mlx_rs::memory::peak_memory().map_err(Error::from)?;
        out.insert("mlx_active".into(), mb(active as u64));
        out.insert("mlx_peak".into(), mb(peak as u64));
        Ok(out)
    }
}

/// Registers `weights`, `weight`, `embedding`, `nearest_tokens`, `diagonal` and `memory`.
pub fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(inspect_functions).into());
}
