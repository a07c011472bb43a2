//! What a loaded model is made of: every parameter tensor as it was loaded (name, shape,
//! parameter count, how the checkpoint stored it, how it is held in memory), rows of the token
//! embedding, and the tokens nearest a vector in embedding space.
//!
//! The list is recorded by [`super::weights::Weights`] as the architecture takes each tensor,
//! so its parameter counts add up to `info().params` and its bytes to `info().bytes`.

use mlx_rs::{ops, Array, Dtype};
use serde::Serialize;

use super::layers::Step;
use super::quant::{self, QuantMode};
use super::Model;
use crate::error::{Error, Result};
use crate::hooks::Hooks;

/// The values of one parameter tensor, as the model holds them.
#[derive(Debug, Clone)]
pub enum ParamValue {
    Dense(Array),
    /// MLX quantization: packed weights, per-group scales and (affine mode) biases.
    Quantized {
        weight: Array,
        scales: Array,
        biases: Option<Array>,
        group_size: i32,
        bits: i32,
        mode: QuantMode,
    },
}

/// One parameter tensor of a loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ParamInfo {
    /// The checkpoint's key (Hugging Face names; GGUF names are mapped to them).
    pub name: String,
    /// The logical shape (a quantized matrix's unpacked `[out, in]`).
    pub shape: Vec<i32>,
    /// Number of parameters (quantized weights counted unpacked).
    pub params: u64,
    /// How the checkpoint stored it: a dtype ("float32", "bfloat16") or "4-bit group 32".
    pub stored: String,
    /// How it is held in memory: a dtype, or "4-bit group 32" when kept quantized.
    pub dtype: String,
    /// Bytes held in memory (packed weights, scales and biases for a quantized tensor).
    pub bytes: u64,
    #[serde(skip)]
    pub value: ParamValue,
}

impl ParamInfo {
    /// The family of the tensor: "embedding", "attention", "mlp", "norm", "head" or "other".
    pub fn group(&self) -> &'static str {
        let n = self.name.as_str();
        if n.contains("embed") {
            "embedding"
        } else if n.starts_with("lm_head") {
            "head"
        } else if n.contains("norm") {
            "norm"
        } else if n.contains("self_attn") || n.contains(".attn.") {
            "attention"
        } else if n.contains("mlp") || n.contains("experts") || n.contains("feed_forward") {
            "mlp"
        } else {
            "other"
        }
    }

    /// The block index for `model.layers.{i}...` tensors.
    pub fn layer(&self) -> Option<usize> {
        let rest = self.name.split_once("layers.")?.1;
        rest.split('.').next()?.parse().ok()
    }

    /// The tensor as a float32 array of its logical shape (dequantized if held quantized).
    pub fn to_f32(&self) -> Result<Array> {
        let a = match &self.value {
            ParamValue::Dense(a) => a.clone(),
            ParamValue::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
                mode,
            } => quant::dequantize(weight, scales, biases.as_ref(), *group_size, *bits, *mode)?,
        };
        Ok(a.as_dtype(Dtype::Float32)?)
    }
}

impl Model {
    /// Rows of the token embedding for `ids` as `[n, d_model]` float32, as the embedding layer
    /// hands them to block 0 (Gemma's scaling included), without running any hook.
    pub fn embedding_rows(&self, ids: &[u32]) -> Result<Array> {
        let vocab = self.info.vocab as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is out of range (vocabulary of {vocab})"
            )));
        }
        let n = ids.len() as i32;
        let idx = Array::from_slice(&ids.iter().map(|&i| i as i32).collect::<Vec<_>>(), &[1, n]);
        let mut hooks = Hooks::default();
        let mut step = Step {
            len: n,
            offset: 0,
            window_start: 0,
            pads: &[],
            hooks: &mut hooks,
            lora: None,
        };
        let h = self.net.embed(&idx, &mut step)?;
        Ok(h.reshape(&[n, -1])?.as_dtype(Dtype::Float32)?)
    }

    /// The `k` tokens whose embedding rows have the highest cosine similarity with `v`
    /// (`[d_model]`), most similar first, leaving out the ids in `skip`.
    pub fn nearest_tokens(&self, v: &Array, k: usize, skip: &[u32]) -> Result<Vec<(u32, f32)>> {
        let d = self.info.d_model;
        if v.shape() != [d] {
            return Err(Error::Invalid(format!(
                "the vector has shape {:?}, the embedding rows have {d} values",
                v.shape()
            )));
        }
        let v = v.as_dtype(Dtype::Float32)?;
        let eps = Array::from_f32(1e-12);
        let unit = ops::divide(&v, &ops::maximum(v.square()?.sum(None)?.sqrt()?, &eps)?)?;
        let vocab = self.info.vocab as u32;
        let mut sims: Vec<f32> = Vec::with_capacity(vocab as usize);
        // In chunks, so a large vocabulary never needs a whole float32 copy of the table.
        for start in (0..vocab).step_by(8192) {
            crate::interrupt::check()?;
            let ids: Vec<u32> = (start..(start + 8192).min(vocab)).collect();
            let rows = self.embedding_rows(&ids)?;
            let norms = ops::maximum(rows.square()?.sum_axis(-1, true)?.sqrt()?, &eps)?;
            let s = ops::divide(&rows, &norms)?.matmul(&unit)?;
            s.eval()?;
            sims.extend_from_slice(s.as_slice::<f32>());
        }
        let mut order: Vec<usize> = (0..sims.len())
            .filter(|&i| !skip.contains(&(i as u32)) && sims[i].is_finite())
            .collect();
        let k = k.min(order.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        order.select_nth_unstable_by(k - 1, |&a, &b| sims[b].total_cmp(&sims[a]));
        order.truncate(k);
        order.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]));
        Ok(order.into_iter().map(|i| (i as u32, sims[i])).collect())
    }

    /// A parameter tensor by its checkpoint name.
    pub fn param(&self, name: &str) -> Result<&ParamInfo> {
        self.parameters
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
                let near: Vec<&str> = self
                    .parameters
                    .iter()
                    .map(|p| p.name.as_str())
                    .filter(|n| n.starts_with(stem))
                    .take(8)
                    .collect();
                let near = if near.is_empty() {
                    self.parameters
                        .iter()
                        .map(|p| p.name.as_str())
                        .take(8)
                        .collect()
                } else {
                    near
                };
                Error::Invalid(format!(
                    "no parameter named {name:?}; the model has e.g. {}",
                    near.join(", ")
                ))
            })
    }
}
