//! GGUF checkpoints (llama.cpp's format), read and validated by [`crate::gguf`]: Q4_0, Q4_1 and
//! Q8_0 matrices become MLX affine triplets (4- or 8-bit, group 32, exactly), F32/F16/BF16 plain
//! arrays, and every other supported type (Q5_0, Q5_1, Q2_K to Q6_K) is dequantized to f32. Names
//! become Hugging Face keys and a config is built from the metadata, so the same architecture
//! code runs them.

use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};
use mlx_rs::Array;

use super::layers::RopeScaling;
use super::llama;
use crate::error::{Error, Result};
use crate::gguf::{shown, GgmlType, GgufFile, TensorInfo};

/// An opened GGUF file: its tensors (with Hugging Face names) and metadata access.
pub struct Gguf {
    pub file: GgufFile,
    pub arch: String,
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = GgufFile::open(path)?;
        let arch = file
            .string("general.architecture")?
            .ok_or_else(|| file.error("no general.architecture"))?
            .to_string();
        Ok(Gguf { file, arch })
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    /// A numeric metadata value.
    pub fn number(&self, key: &str) -> Result<Option<f64>> {
        self.file.number(key)
    }

    fn required<T>(&self, suffix: &str, v: Option<T>) -> Result<T> {
        v.ok_or_else(|| {
            self.file
                .error(format!("GGUF metadata lacks {}", self.key(suffix)))
        })
    }

    /// A whole number from 1 to `max` (a count or a size), so that nothing the file says can
    /// make a division by zero, a negative shape or a huge allocation downstream.
    fn count(&self, suffix: &str, max: i32) -> Result<Option<i32>> {
        let key = self.key(suffix);
        match self.number(&key)? {
            None => Ok(None),
            Some(v) if v.fract() == 0.0 && v >= 1.0 && v <= max as f64 => Ok(Some(v as i32)),
            Some(v) => Err(self.file.error(format!(
                "metadata {key} = {v} (valid: a whole number from 1 to {max})"
            ))),
        }
    }

    /// A finite positive number (epsilons, RoPE bases).
    fn positive(&self, suffix: &str) -> Result<Option<f64>> {
        let key = self.key(suffix);
        match self.number(&key)? {
            Some(v) if !(v.is_finite() && v > 0.0) => Err(self.file.error(format!(
                "metadata {key} = {v} (valid: a finite positive number)"
            ))),
            v => Ok(v),
        }
    }

    /// A Llama-family config from the metadata (llama, qwen2, qwen3 and mistral GGUFs).
    pub fn llama_config(&self, tensors: &HashMap<String, Array>) -> Result<llama::Config> {
        let (heads, kv_heads) = self.head_counts()?;
        let hidden = self.count("embedding_length", i32::MAX)?;
        let hidden = self.required("embedding_length", hidden)?;
        let vocab = match self.count("vocab_size", i32::MAX)? {
            Some(v) => v,
            None => tensors
                .get("model.embed_tokens.weight")
                .map(|t| t.shape()[0])
                .ok_or_else(|| self.file.error("GGUF has no token embedding"))?,
        };
        let layers = self.count("block_count", MAX_COUNT)?;
        let ffn = self.count("feed_forward_length", i32::MAX)?;
        let eps = self.positive("attention.layer_norm_rms_epsilon")?;
        Ok(llama::Config {
            hidden_size: hidden,
            num_hidden_layers: self.required("block_count", layers)? as usize,
            intermediate_size: self.required("feed_forward_length", ffn)?,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: self.count("attention.key_length", MAX_COUNT)?,
            rms_norm_eps: self.required("attention.layer_norm_rms_epsilon", eps)? as f32,
            vocab_size: vocab,
            rope_theta: self.positive("rope.freq_base")?.unwrap_or(10000.0) as f32,
            rope_traditional: false,
            rope_scaling: None::<RopeScaling>,
            tie_word_embeddings: !tensors.contains_key("lm_head.weight"),
            attention_bias: tensors.contains_key("model.layers.0.self_attn.o_proj.bias"),
            mlp_bias: false,
            sliding_window: None,
            layer_types: None,
            qk_norm: tensors.contains_key("model.layers.0.self_attn.q_norm.weight"),
            qkv_bias: tensors.contains_key("model.layers.0.self_attn.q_proj.bias"),
        })
    }

    /// All tensors, renamed to Hugging Face keys. For llama-architecture files, the Q and K
    /// projections are un-permuted (llama.cpp stores them interleaved for its RoPE).
    pub fn tensors(&self, cfg_heads: Option<(i32, i32)>) -> Result<HashMap<String, Array>> {
        self.tensors_where(cfg_heads, &|_| true)
    }

    /// [`Gguf::tensors`], reading only the tensors whose Hugging Face name `keep` accepts (the
    /// others are never read: a pipeline stage reads only its own blocks).
    pub fn tensors_where(
        &self,
        cfg_heads: Option<(i32, i32)>,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<HashMap<String, Array>> {
        let mut out = HashMap::with_capacity(self.file.tensors().len());
        for t in self.file.tensors() {
            let Some(hf) = hf_name(&t.name) else {
                return Err(self.file.error(format!(
                    "unsupported GGUF tensor {} (architecture {})",
                    shown(&t.name),
                    self.arch
                )));
            };
            if !keep(&hf) {
                continue;
            }
            match self.to_arrays(t)? {
                Stored::Dense(a) => {
                    out.insert(hf, a);
                }
                Stored::Affine {
                    weight,
                    scales,
                    biases,
                } => {
                    let stem = hf.strip_suffix(".weight").unwrap_or(&hf);
                    out.insert(format!("{stem}.scales"), scales);
                    out.insert(format!("{stem}.biases"), biases);
                    out.insert(hf, weight);
                }
            }
        }
        if self.arch == "llama" {
            let (heads, kv_heads) = cfg_heads.ok_or_else(|| {
                Error::Model("llama GGUF: head counts needed to un-permute Q/K".into())
            })?;
            let keys: Vec<String> = out.keys().cloned().collect();
            for key in keys {
                let n = if key.contains(".self_attn.q_proj.") {
                    heads
                } else if key.contains(".self_attn.k_proj.") {
                    kv_heads
                } else {
                    continue;
                };
                if let Some(a) = out.remove(&key) {
                    out.insert(key, unpermute_rows(&a, n)?);
                }
            }
        }
        Ok(out)
    }

    /// The number of blocks (`{arch}.block_count`).
    pub fn block_count(&self) -> Result<usize> {
        let layers = self.count("block_count", MAX_COUNT)?;
        Ok(self.required("block_count", layers)? as usize)
    }

    /// The number of blocks the file holds tensors for (`blk.N.*`, highest N plus one).
    pub fn blocks_present(&self) -> usize {
        self.file
            .tensors()
            .iter()
            .filter_map(|t| {
                t.name
                    .strip_prefix("blk.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |n| n + 1)
    }

    /// Head counts `(heads, kv_heads)` from the metadata; `heads` a multiple of `kv_heads`.
    pub fn head_counts(&self) -> Result<(i32, i32)> {
        let heads = self.count("attention.head_count", MAX_COUNT)?;
        let heads = self.required("attention.head_count", heads)?;
        let kv = self
            .count("attention.head_count_kv", MAX_COUNT)?
            .unwrap_or(heads);
        if heads % kv != 0 {
            return Err(self.file.error(format!(
                "{heads} attention heads are not a multiple of {kv} key-value heads"
            )));
        }
        Ok((heads, kv))
    }
}

/// The largest layer or head count (or head size) accepted from metadata.
const MAX_COUNT: i32 = 1 << 16;

/// Undo llama.cpp's Q/K row order: rows viewed as `(n_heads, head_dim/2, 2, ...)`, axes 1 and 2
/// swapped, and reshaped back. Rows are independent, so packed weights, scales and biases permute alike.
fn unpermute_rows(a: &Array, n_heads: i32) -> Result<Array> {
    let shape = a.shape().to_vec();
    let rows = shape[0];
    if n_heads <= 0 || rows % (2 * n_heads) != 0 {
        return Err(Error::Model(format!(
            "cannot un-permute a tensor of shape {shape:?} for {n_heads} heads"
        )));
    }
    let rest: Vec<i32> = shape[1..].to_vec();
    let mut view = vec![n_heads, rows / n_heads / 2, 2];
    view.extend(&rest);
    let mut axes: Vec<i32> = vec![0, 2, 1];
    axes.extend((3..view.len() as i32).collect::<Vec<_>>());
    Ok(a.reshape(&view)?.transpose_axes(&axes)?.reshape(&shape)?)
}

/// GGUF tensor name -> Hugging Face name.
fn hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (i, part) = rest.split_once('.')?;
            let i: usize = i.parse().ok()?;
            let local = match part {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{i}.{local}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

/// A tensor as MLX arrays: plain, or an affine quantized triplet.
enum Stored {
    Dense(Array),
    Affine {
        weight: Array,
        scales: Array,
        biases: Array,
    },
}

impl Gguf {
    /// One tensor as MLX arrays. Q4_0, Q4_1 and Q8_0 weight matrices map exactly onto MLX's affine
    /// quantization with group 32 (Q4_0: scale d, bias -8d; Q4_1: d, m; Q8_0: q + 128, scale d,
    /// bias -128d), with the nibbles reordered into MLX's packing; F32, F16 and BF16 stay as
    /// they are; the other supported types are dequantized to f32.
    fn to_arrays(&self, t: &TensorInfo) -> Result<Stored> {
        if !t.ty.is_supported() {
            return Err(self.file.unsupported(t));
        }
        let shape = t.shape();
        let bytes = self.file.tensor_bytes(t)?;
        let dense = |values: Vec<f32>| Stored::Dense(Array::from_slice(&values, &shape));
        Ok(match t.ty {
            GgmlType::F32 => dense(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            GgmlType::F16 => {
                let v: Vec<f16> = bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect();
                Stored::Dense(Array::from_slice(&v, &shape))
            }
            GgmlType::BF16 => {
                let v: Vec<bf16> = bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                    .collect();
                Stored::Dense(Array::from_slice(&v, &shape))
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0
                if t.name.ends_with(".weight") && shape.len() >= 2 =>
            {
                match affine_triplet(t.ty, &bytes, &shape) {
                    Some(s) => s,
                    None => dense(self.file.dequantize(t)?),
                }
            }
            _ => dense(self.file.dequantize(t)?),
        })
    }
}

/// Q4_0, Q4_1 or Q8_0 blocks as MLX affine triplets (f16 scales and biases, group 32), or None
/// when a bias would overflow f16 (then the caller dequantizes instead).
fn affine_triplet(ty: GgmlType, bytes: &[u8], shape: &[i32]) -> Option<Stored> {
    let (_, size) = ty.block();
    let n_blocks = bytes.len() / size as usize;
    let bits = if ty == GgmlType::Q8_0 { 8 } else { 4 };
    let mut packed: Vec<u8> = Vec::with_capacity(n_blocks * 32 * bits / 8);
    let mut scales: Vec<f16> = Vec::with_capacity(n_blocks);
    let mut biases: Vec<f16> = Vec::with_capacity(n_blocks);
    let h = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]);
    for b in bytes.chunks_exact(size as usize) {
        let d = h(b, 0);
        let (bias, qs) = match ty {
            GgmlType::Q4_0 => (f16::from_f32(-8.0) * d, &b[2..18]),
            GgmlType::Q4_1 => (h(b, 2), &b[4..20]),
            _ => (f16::from_f32(-128.0) * d, &b[2..34]),
        };
        if d.is_finite() && !bias.is_finite() {
            return None;
        }
        scales.push(d);
        biases.push(bias);
        if bits == 8 {
            packed.extend(qs.iter().map(|&q| (q as i8 as i16 + 128) as u8));
        } else {
            // GGML: byte j holds element j (low nibble) and j + 16 (high nibble).
            // MLX: byte k holds element 2k (low nibble) and 2k + 1 (high nibble).
            let e = |i: usize| if i < 16 { qs[i] & 0xf } else { qs[i - 16] >> 4 };
            packed.extend((0..16).map(|k| e(2 * k) | (e(2 * k + 1) << 4)));
        }
    }
    let words: Vec<u32> = packed
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    let last = shape.len() - 1;
    let mut wshape = shape.to_vec();
    wshape[last] = shape[last] * bits as i32 / 32;
    let mut sshape = shape.to_vec();
    sshape[last] = shape[last] / 32;
    Some(Stored::Affine {
        weight: Array::from_slice(&words, &wshape),
        scales: Array::from_slice(&scales, &sshape),
        biases: Array::from_slice(&biases, &sshape),
    })
}
