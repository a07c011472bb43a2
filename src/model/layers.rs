//! Building blocks shared by the architecture files: linear layers (plain or quantized),
//! embeddings, norms, rotary embeddings, attention masks, the KV cache, the attention core, and
//! the decoder's two ends ([`Tail`]: embedding, final norm, unembedding).
//!
//! Architecture differences do not live here; each architecture file composes these pieces
//! (its block loop stays in its own file).

use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::ops::{
    self,
    indexing::{TryIndexMutOp, TryIndexOp},
};
use mlx_rs::{nn, Array, Dtype};

use super::lora::{Adapter, Target};
use super::quant::{self, QuantMode};
use super::weights::Weights;
use crate::error::{Error, Result};
use crate::hooks::{HookName, Hooks};

/// A linear layer `y = x W^T + b`, with `W` stored plain (`[out, in]`) or quantized in one of
/// MLX's formats (packed `uint32` weight, per-group `scales`, and per-group `biases` in the
/// affine mode; see [`QuantMode`]).
#[derive(Debug, Clone)]
pub enum Linear {
    Dense {
        weight: Array,
        bias: Option<Array>,
    },
    Quantized {
        weight: Array,
        scales: Array,
        /// The affine mode's per-group offsets (none in mxfp4).
        biases: Option<Array>,
        bias: Option<Array>,
        group_size: i32,
        bits: i32,
        mode: QuantMode,
    },
}

impl Linear {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let (y, bias) = match self {
            // One fused `bias + x W^T` (one rounding in half precision), as mlx-lm's nn.Linear.
            Linear::Dense {
                weight,
                bias: Some(b),
            } => return Ok(ops::addmm(b, x, weight.t(), None, None)?),
            Linear::Dense { weight, bias } => (x.matmul(weight.t())?, bias),
            Linear::Quantized {
                weight,
                scales,
                biases,
                bias,
                group_size,
                bits,
                mode,
            } => (
                quant::quantized_matmul(
                    x,
                    weight,
                    scales,
                    biases.as_ref(),
                    *group_size,
                    *bits,
                    *mode,
                )?,
                bias,
            ),
        };
        Ok(match bias {
            Some(b) => y.add(b)?,
            None => y,
        })
    }

    /// The plain `[out, in]` weight (dequantized when stored quantized).
    pub fn dense_weight(&self) -> Result<Array> {
        match self {
            Linear::Dense { weight, .. } => Ok(weight.clone()),
            Linear::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
                mode,
                ..
            } => quant::dequantize(weight, scales, biases.as_ref(), *group_size, *bits, *mode),
        }
    }

    /// Expert-stacked weights (`[experts, out, in]`, plain or quantized) applied to `x`
    /// `[..., 1, in]` with the experts chosen by `indices` `[..., k]`: returns `[..., k, 1, out]`
    /// (MLX's `gather_mm` / `gather_qmm`).
    pub fn gather(&self, x: &Array, indices: &Array) -> Result<Array> {
        let (y, bias) = match self {
            Linear::Dense { weight, bias } => (
                ops::gather_mm(x, weight.swap_axes(-1, -2)?, None, indices, None)?,
                bias,
            ),
            Linear::Quantized {
                weight,
                scales,
                biases,
                bias,
                group_size,
                bits,
                mode,
            } => (
                quant::gather_qmm(
                    x,
                    weight,
                    scales,
                    biases.as_ref(),
                    indices,
                    *group_size,
                    *bits,
                    *mode,
                )?,
                bias,
            ),
        };
        Ok(match bias {
            Some(b) => y.add(b.take_axis(indices, 0)?.expand_dims(-2)?)?,
            None => y,
        })
    }

    /// The additive bias, if the layer has one.
    pub fn bias(&self) -> Option<&Array> {
        match self {
            Linear::Dense { bias, .. } | Linear::Quantized { bias, .. } => bias.as_ref(),
        }
    }

    /// `(in, out)`: the input and output widths.
    pub fn dims(&self) -> (i32, i32) {
        match self {
            Linear::Dense { weight, .. } => {
                let s = weight.shape();
                (s[s.len() - 1], s[s.len() - 2])
            }
            Linear::Quantized {
                scales, group_size, ..
            } => {
                let s = scales.shape();
                (s[s.len() - 1] * group_size, s[s.len() - 2])
            }
        }
    }

    /// `(bits, group_size)` when quantized.
    pub fn quantization(&self) -> Option<(i32, i32)> {
        match self {
            Linear::Dense { .. } => None,
            Linear::Quantized {
                bits, group_size, ..
            } => Some((*bits, *group_size)),
        }
    }

    /// Bytes of the stored parameters.
    pub fn nbytes(&self) -> usize {
        match self {
            Linear::Dense { weight, bias } => {
                weight.nbytes() + bias.as_ref().map_or(0, |b| b.nbytes())
            }
            Linear::Quantized {
                weight,
                scales,
                biases,
                bias,
                ..
            } => {
                weight.nbytes()
                    + scales.nbytes()
                    + biases.as_ref().map_or(0, |b| b.nbytes())
                    + bias.as_ref().map_or(0, |b| b.nbytes())
            }
        }
    }
}

/// A token embedding table, usable as the (tied) unembedding too.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub table: Linear,
}

impl Embedding {
    /// Rows of the table for `ids` (any integer shape), as `[..., d_model]`.
    pub fn lookup(&self, ids: &Array) -> Result<Array> {
        match &self.table {
            Linear::Dense { weight, .. } => Ok(weight.take_axis(ids, 0)?),
            Linear::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
                mode,
                ..
            } => {
                let w = weight.take_axis(ids, 0)?;
                let s = scales.take_axis(ids, 0)?;
                let b = biases.as_ref().map(|b| b.take_axis(ids, 0)).transpose()?;
                quant::dequantize(&w, &s, b.as_ref(), *group_size, *bits, *mode)
            }
        }
    }

    /// `x @ table^T`: logits from hidden states with tied embeddings.
    pub fn as_linear(&self, x: &Array) -> Result<Array> {
        self.table.forward(x)
    }
}

/// RMSNorm with a learned scale (`weight`), optionally Gemma-style `x * (1 + weight)`, which
/// the architecture file folds into `weight` at load time.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Array,
    pub eps: f32,
}

impl RmsNorm {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        Ok(fast::rms_norm(x, Some(&self.weight), self.eps)?)
    }

    /// The norm with its hook points `(scale, normalized)`: the root mean square
    /// `sqrt(mean(x^2) + eps)` `[batch, pos, 1]` (float32; computed only when hooked, and then
    /// the output is `x / scale * weight` from the hooked scale) and the output, weight applied.
    pub fn hooked(
        &self,
        x: &Array,
        (scale, normalized): (HookName, HookName),
        step: &mut Step,
    ) -> Result<Array> {
        let out = if step.is_active(&scale) {
            let xf = x.as_dtype(Dtype::Float32)?;
            let eps = Array::from_f32(self.eps);
            let rms = xf.square()?.mean_axis(-1, true)?.add(&eps)?.sqrt()?;
            let rms = step.hook(scale, rms)?;
            xf.divide(&rms)?
                .as_dtype(x.dtype())?
                .multiply(&self.weight)?
        } else {
            self.forward(x)?
        };
        step.hook(normalized, out)
    }
}

/// A Gemma RMSNorm: the stored offset `w` becomes the scale `1 + w` (folded in at load).
pub fn offset_norm(w: &mut Weights, prefix: &str, d: i32, eps: f32) -> Result<RmsNorm> {
    let mut norm = w.rms_norm(prefix, d, eps)?;
    let one = Array::from_f32(1.0).as_dtype(norm.weight.dtype())?;
    norm.weight = norm.weight.add(&one)?;
    Ok(norm)
}

/// `rope_scaling` from config.json.
#[derive(Debug, Clone, serde::Deserialize, Default)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: Option<String>,
    pub factor: Option<f32>,
    pub low_freq_factor: Option<f32>,
    pub high_freq_factor: Option<f32>,
    pub original_max_position_embeddings: Option<f32>,
    /// Phi-3 `longrope`/`su`: per-frequency factors.
    pub short_factor: Option<Vec<f32>>,
    pub long_factor: Option<Vec<f32>>,
    pub long_mscale: Option<f32>,
    /// YaRN: the rotation counts that bound the blend between kept and interpolated
    /// frequencies, and the attention temperature terms.
    pub beta_fast: Option<f32>,
    pub beta_slow: Option<f32>,
    pub mscale: Option<f32>,
    pub mscale_all_dim: Option<f32>,
}

/// Rotary position embedding, applied to `[batch, heads, pos, d_head]`.
#[derive(Debug, Clone)]
pub struct Rope {
    pub dims: i32,
    pub traditional: bool,
    pub base: Option<f32>,
    pub scale: f32,
    /// Per-pair periods, when the scaling scheme needs them (Llama 3, Phi-3 longrope).
    pub freqs: Option<Array>,
    /// Factor on the rotated features before rotation (Phi-3 longrope), 1 otherwise.
    pub mscale: f32,
}

impl Rope {
    pub fn new(
        dims: i32,
        base: f32,
        traditional: bool,
        scaling: Option<&RopeScaling>,
    ) -> Result<Rope> {
        let plain = Rope {
            dims,
            traditional,
            base: Some(base),
            scale: 1.0,
            freqs: None,
            mscale: 1.0,
        };
        let Some(scaling) = scaling else {
            return Ok(plain);
        };
        match scaling.rope_type.as_deref().unwrap_or("default") {
            "default" => Ok(plain),
            "linear" => {
                let factor = scaling.factor.unwrap_or(1.0);
                Ok(Rope {
                    scale: 1.0 / factor,
                    ..plain
                })
            }
            "llama3" => {
                let factor = scaling
                    .factor
                    .ok_or_else(|| Error::Model("rope_scaling llama3 needs `factor`".into()))?;
                let low = scaling.low_freq_factor.unwrap_or(1.0);
                let high = scaling.high_freq_factor.unwrap_or(4.0);
                let old_len = scaling.original_max_position_embeddings.unwrap_or(8192.0);
                let (low_wavelen, high_wavelen) = (old_len / low, old_len / high);
                let freqs: Vec<f32> = (0..dims / 2)
                    .map(|i| {
                        let f = base.powf(2.0 * i as f32 / dims as f32);
                        let wavelen = 2.0 * std::f32::consts::PI * f;
                        if wavelen > low_wavelen {
                            f * factor
                        } else if wavelen > high_wavelen {
                            let smooth = (old_len / wavelen - low) / (high - low);
                            f / ((1.0 - smooth) / factor + smooth)
                        } else {
                            f
                        }
                    })
                    .collect();
                Ok(Rope {
                    base: None,
                    freqs: Some(Array::from_slice(&freqs, &[dims / 2])),
                    ..plain
                })
            }
            "yarn" => Rope::yarn(dims, base, scaling),
            other => Err(Error::Model(format!(
                "unsupported rope_scaling type {other:?} (supported: default, linear, llama3, \
                 yarn)"
            ))),
        }
    }

    /// YaRN scaling, as mlx-lm's `YarnRoPE`: pair `i` of `dims / 2` keeps its period
    /// `base^(2i/dims)` below the correction range (fast rotations), is slowed by `factor` above
    /// it, and blends linearly in between; the range runs from the pair that rotates `beta_fast`
    /// times in `original_max_position_embeddings` positions (floored) to the one that rotates
    /// `beta_slow` times (ceiled). Queries and keys are also scaled by
    /// `mscale(factor, mscale) / mscale(factor, mscale_all_dim)`, `mscale(s, m) = 0.1 m ln s + 1`
    /// (1 when `s <= 1`). Hugging Face's `truncate: false` (no floor/ceil) is ignored, as mlx-lm
    /// ignores it.
    fn yarn(dims: i32, base: f32, scaling: &RopeScaling) -> Result<Rope> {
        let factor = scaling
            .factor
            .ok_or_else(|| Error::Model("rope_scaling yarn needs `factor`".into()))?;
        let orig = f64::from(scaling.original_max_position_embeddings.unwrap_or(4096.0));
        let (d, ln_base) = (f64::from(dims), f64::from(base).ln());
        let correction_dim = |rotations: f64| {
            d * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * ln_base)
        };
        let low = correction_dim(f64::from(scaling.beta_fast.unwrap_or(32.0)))
            .floor()
            .max(0.0);
        let mut high = correction_dim(f64::from(scaling.beta_slow.unwrap_or(1.0)))
            .ceil()
            .min(d - 1.0);
        if low == high {
            high += 0.001;
        }
        let freqs: Vec<f32> = (0..dims / 2)
            .map(|i| {
                let extra = base.powf(2.0 * i as f32 / dims as f32);
                let inter = factor * extra;
                let ramp = ((f64::from(i) - low) / (high - low)).clamp(0.0, 1.0) as f32;
                let keep = 1.0 - ramp;
                inter * extra / (inter * keep + extra * (1.0 - keep))
            })
            .collect();
        let mscale = |m: f32| {
            if factor <= 1.0 {
                1.0
            } else {
                0.1 * m * factor.ln() + 1.0
            }
        };
        Ok(Rope {
            dims,
            traditional: false,
            base: None,
            scale: 1.0,
            freqs: Some(Array::from_slice(&freqs, &[dims / 2])),
            mscale: mscale(scaling.mscale.unwrap_or(1.0))
                / mscale(scaling.mscale_all_dim.unwrap_or(0.0)),
        })
    }

    /// Phi-3's `longrope` (also called `su`) scaling, as mlx-lm's `SuScaledRoPE`: periods
    /// `long_factor * base^(2i/dims)` and the rotated features scaled by
    /// `sqrt(1 + ln(max/orig) / ln(orig))` (or `long_mscale`).
    pub fn su_scaled(
        dims: i32,
        base: f32,
        scaling: &RopeScaling,
        max_position_embeddings: f32,
        original_max_position_embeddings: f32,
    ) -> Result<Rope> {
        let long = scaling
            .long_factor
            .as_ref()
            .ok_or_else(|| Error::Model("rope_scaling longrope needs `long_factor`".into()))?;
        if long.len() != (dims / 2) as usize {
            return Err(Error::Model(format!(
                "rope_scaling long_factor has {} entries, expected {}",
                long.len(),
                dims / 2
            )));
        }
        let freqs: Vec<f32> = long
            .iter()
            .enumerate()
            .map(|(i, f)| f * base.powf(2.0 * i as f32 / dims as f32))
            .collect();
        let factor = max_position_embeddings / original_max_position_embeddings;
        let mscale = scaling.long_mscale.unwrap_or(if factor <= 1.0 {
            1.0
        } else {
            (1.0 + factor.ln() / original_max_position_embeddings.ln()).sqrt()
        });
        Ok(Rope {
            dims,
            traditional: false,
            base: None,
            scale: 1.0,
            freqs: Some(Array::from_slice(&freqs, &[dims / 2])),
            mscale,
        })
    }

    pub fn apply(&self, x: &Array, offset: i32) -> Result<Array> {
        let scaled;
        let x = if self.mscale == 1.0 {
            x
        } else {
            let m = Array::from_f32(self.mscale).as_dtype(x.dtype())?;
            let d = x.shape()[x.ndim() - 1];
            scaled = if self.dims >= d {
                x.multiply(&m)?
            } else {
                // Contiguous parts: MLX's CUDA backend mishandles strided split views (phi3.rs).
                let parts = ops::split_at_indices(x, &[self.dims], -1)?;
                ops::concatenate(
                    &[parts[0].contiguous()?.multiply(&m)?, parts[1].contiguous()?],
                    -1,
                )?
            };
            &scaled
        };
        Ok(fast::rope(
            x,
            self.dims,
            self.traditional,
            self.base,
            self.scale,
            offset,
            self.freqs.as_ref(),
        )?)
    }
}

/// Positions a layer's cache grows by. Its buffers are allocated this many positions at a time
/// and filled in place, so a decoding step writes its own keys and values without copying what
/// is already cached (a copy of everything happens once per this many positions, not per step).
const CACHE_STEP: i32 = 256;

/// Keys and values of one layer, `[batch, kv_heads, pos, d_head]`, grown one step at a time.
#[derive(Debug, Default, Clone)]
pub struct LayerCache {
    /// `[batch, kv_heads, capacity, d_head]`: positions `..len` hold keys, the rest is room.
    keys: Option<Array>,
    values: Option<Array>,
    len: i32,
}

impl LayerCache {
    /// Positions held.
    pub fn held(&self) -> i32 {
        self.len
    }

    /// Forget the first `n` cached positions (a sliding-window layer's keys that no query will
    /// see again), keeping [`CACHE_STEP`] positions of room after the rest.
    fn drop_front(&mut self, n: i32) -> Result<()> {
        if n <= 0 {
            return Ok(());
        }
        let n = n.min(self.len);
        let keep = self.len - n;
        for buf in [&mut self.keys, &mut self.values] {
            if let Some(a) = buf.take() {
                let rest = a.try_index((.., .., n..self.len, ..))?;
                *buf = Some(grow(Some(rest.clone()), &rest, keep, CACHE_STEP)?);
            }
        }
        self.len = keep;
        Ok(())
    }

    /// Append this step's keys and values; return everything cached so far.
    pub fn update(&mut self, k: Array, v: Array) -> Result<(Array, Array)> {
        let t = k.shape()[2];
        let end = self.len + t;
        let capacity = self.keys.as_ref().map_or(0, |a| a.shape()[2]);
        if end > capacity {
            let room = (end + CACHE_STEP - 1) / CACHE_STEP * CACHE_STEP - self.len;
            self.keys = Some(grow(self.keys.take(), &k, self.len, room)?);
            self.values = Some(grow(self.values.take(), &v, self.len, room)?);
        }
        let (Some(keys), Some(values)) = (self.keys.as_mut(), self.values.as_mut()) else {
            unreachable!("allocated above");
        };
        // Written in place when the buffer is not shared (MLX donates it to the update).
        keys.try_index_mut((.., .., self.len..end, ..), &k)?;
        values.try_index_mut((.., .., self.len..end, ..), &v)?;
        self.len = end;
        Ok((
            keys.try_index((.., .., ..end, ..))?,
            values.try_index((.., .., ..end, ..))?,
        ))
    }
}

/// `old`'s first `len` positions followed by `room` free ones, shaped and typed like `new`.
fn grow(old: Option<Array>, new: &Array, len: i32, room: i32) -> Result<Array> {
    let mut shape = new.shape().to_vec();
    shape[2] = room;
    let free = ops::zeros_dtype(&shape, new.dtype())?;
    Ok(match old {
        Some(old) if len > 0 => ops::concatenate(&[old.try_index((.., .., ..len, ..))?, free], 2)?,
        _ => free,
    })
}

/// The KV cache for a whole model.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    /// Positions already processed (the same for every row; left padding counts).
    pub offset: i32,
    /// The first position the sliding-window layers' caches still hold (0 until they are
    /// trimmed; see [`KvCache::trim_windows`]). Full-attention layers hold every position.
    pub window_start: i32,
}

impl KvCache {
    pub fn new(n_layers: usize) -> KvCache {
        KvCache {
            layers: vec![LayerCache::default(); n_layers],
            offset: 0,
            window_start: 0,
        }
    }

    /// Before a step at `self.offset`: drop the keys and values that sliding-window layers
    /// (`windows[i]` is layer i's window; they share one size) will never attend to again, once
    /// there are [`CACHE_STEP`] of them, so that a long generation keeps `window - 1` to `window
    /// - 1 + CACHE_STEP` positions on those layers instead of all of them. The queries of the
    /// coming step see keys from `offset - window + 1` on, which are kept.
    pub fn trim_windows(&mut self, windows: &[Option<i32>]) -> Result<()> {
        let Some(w) = windows.iter().flatten().copied().next() else {
            return Ok(());
        };
        let new_start = self.offset - (w - 1).max(0);
        if new_start - self.window_start < CACHE_STEP {
            return Ok(());
        }
        let n = new_start - self.window_start;
        for (layer, window) in self.layers.iter_mut().zip(windows) {
            if window.is_some() {
                layer.drop_front(n)?;
            }
        }
        self.window_start = new_start;
        Ok(())
    }

    /// The buffers every layer holds, to evaluate them (e.g. between prefill chunks).
    pub fn arrays(&self) -> Vec<&Array> {
        self.layers
            .iter()
            .flat_map(|l| [l.keys.as_ref(), l.values.as_ref()])
            .flatten()
            .collect()
    }
}

/// Per-forward facts every layer needs: where the queries sit and which keys each row may see.
pub struct Step<'a> {
    /// Number of query positions in this call.
    pub len: i32,
    /// Absolute position of the first query (the cache length before this call).
    pub offset: i32,
    /// Absolute position of the first key sliding-window layers hold in the cache (0 without a
    /// cache or before their cache is trimmed).
    pub window_start: i32,
    /// Left-padding length of each row (empty when no row is padded).
    pub pads: &'a [i32],
    pub hooks: &'a mut Hooks,
    /// The model's LoRA adapter, when one is attached unfused (its `enabled` flag decides).
    pub lora: Option<&'a Adapter>,
}

impl Step<'_> {
    /// Block `layer`'s linear layer `target` applied to `x`, plus the adapter's low-rank update
    /// when one is on for that layer (hooked as `hook_lora_*` before it is added).
    pub fn project(
        &mut self,
        layer: usize,
        target: Target,
        linear: &Linear,
        x: &Array,
    ) -> Result<Array> {
        let y = linear.forward(x)?;
        match self.lora.and_then(|a| a.module(layer, target)) {
            None => Ok(y),
            Some(m) => {
                let update = m.update(x)?;
                let update = self.hook(HookName::Lora(layer, target), update)?;
                Ok(y.add(&update)?)
            }
        }
    }

    /// Pass `x` through whatever is attached at `name` (a no-op when nothing is).
    pub fn hook(&mut self, name: HookName, x: Array) -> Result<Array> {
        self.hook_with(name, x, None)
    }

    /// [`Step::hook`] at a point of a mixture-of-experts block, telling the hooks which experts
    /// were chosen (`[batch, pos, k]`), so an intervention can act on one expert's slot.
    pub fn hook_experts(&mut self, name: HookName, x: Array, experts: &Array) -> Result<Array> {
        self.hook_with(name, x, Some(experts))
    }

    fn hook_with(&mut self, name: HookName, x: Array, experts: Option<&Array>) -> Result<Array> {
        let ctx = crate::hooks::HookCtx {
            offset: self.offset,
            len: self.len,
            prompt_len: self.hooks.prompt_len,
            pads: self.pads,
            experts,
        };
        self.hooks.at(&name, x, ctx)
    }

    /// True when `name` has a hook or is being captured: points that cost work to compute
    /// (attention scores, per-head results, norm scales) are computed only then.
    pub fn is_active(&self, name: &HookName) -> bool {
        self.hooks.is_active(name)
    }

    /// Pass `x` `[batch, heads, pos, d_head]` through whatever is attached at `name`, which sees
    /// it as `[batch, pos, heads, d_head]` (no work at all when nothing is attached there).
    fn hook_heads(&mut self, name: HookName, x: Array) -> Result<Array> {
        if !self.is_active(&name) {
            return Ok(x);
        }
        Ok(self.hook(name, x.swap_axes(1, 2)?)?.swap_axes(1, 2)?)
    }
}

/// An attention mask for one forward step.
pub enum Mask {
    /// Every query sees every key (a single query with no padding).
    None,
    /// MLX's built-in causal mask (no cache offset, no padding, no window).
    Causal,
    /// Explicit boolean mask `[batch|1, 1, q, k]`, true where attention is allowed.
    Explicit(Array),
}

impl Mask {
    /// Causal mask for `step`, with left padding and an optional sliding window.
    pub fn build(step: &Step, window: Option<i32>) -> Result<Mask> {
        let total = step.offset + step.len;
        let simple = step.pads.iter().all(|&p| p == 0) && window.is_none_or(|w| w >= total);
        if simple {
            if step.len == 1 {
                return Ok(Mask::None);
            }
            if step.offset == 0 {
                return Ok(Mask::Causal);
            }
        }
        // Keys are absolute positions `first..total`: a sliding-window layer's cache may have
        // dropped the ones before `step.window_start`.
        let first = if window.is_some() {
            step.window_start
        } else {
            0
        };
        let n_keys = total - first;
        let q = Array::from_iter(step.offset..total, &[step.len, 1]);
        let k = Array::from_iter(first..total, &[1, n_keys]);
        let mut allowed = k.le(&q)?;
        if let Some(w) = window {
            allowed = allowed.logical_and(&k.gt(&q.subtract(Array::from_int(w))?)?)?;
        }
        let allowed = if step.pads.iter().any(|&p| p > 0) {
            let b = step.pads.len() as i32;
            let pads = Array::from_slice(step.pads, &[b, 1, 1, 1]);
            let k4 = k.reshape(&[1, 1, 1, n_keys])?;
            let q4 = q.reshape(&[1, 1, step.len, 1])?;
            // Keys in the padding are hidden; a padding query sees itself so no row is empty.
            let visible = k4.ge(&pads)?.logical_or(&k4.eq(&q4)?)?;
            allowed
                .reshape(&[1, 1, step.len, n_keys])?
                .logical_and(&visible)?
        } else {
            allowed.reshape(&[1, 1, step.len, n_keys])?
        };
        Ok(Mask::Explicit(allowed))
    }
}

/// The masks of one forward step: the causal mask, and the sliding-window one when some layer
/// has a window (architectures give every windowed layer the same window).
pub struct Masks {
    full: Mask,
    window: Option<Mask>,
}

impl Masks {
    /// The masks for `step`; `window` is the first windowed layer's window, if any.
    pub fn build(step: &Step, window: Option<i32>) -> Result<Masks> {
        Ok(Masks {
            full: Mask::build(step, None)?,
            window: window.map(|w| Mask::build(step, Some(w))).transpose()?,
        })
    }

    /// The mask of a layer with the sliding window `window` (`None`: full attention).
    pub fn for_layer(&self, window: Option<i32>) -> &Mask {
        match (window, &self.window) {
            (Some(_), Some(m)) => m,
            _ => &self.full,
        }
    }
}

/// A model's attention geometry: query and key/value head counts, the head width, the score
/// scale, and the attention logit soft-cap (Gemma).
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n: i32,
    pub kv: i32,
    pub d: i32,
    pub scale: f32,
    pub softcap: Option<f32>,
}

/// Attention shared by every architecture, from layer `layer`'s queries `[B, T, H, D]` and this
/// step's keys and values `[B, T, Hkv, D]` as projected (and normed, where the architecture norms
/// them): hooks `q`, `k` and `v`, applies `rope` (hooking `rot_q` and `rot_k`), updates the
/// cache, attends (see [`attention_core`]), hooks `z`, and returns the output projection `o_proj`
/// of `z`, `[B, T, d_model]` (through `hook_result` when that is hooked).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    layer: usize,
    q: Array,
    k: Array,
    v: Array,
    rope: &Rope,
    cache: Option<&mut KvCache>,
    mask: &Mask,
    heads: &Heads,
    o_proj: &Linear,
    step: &mut Step,
) -> Result<Array> {
    attend_with_sinks(layer, q, k, v, rope, cache, mask, heads, None, o_proj, step)
}

/// [`attend`] with attention sinks (gpt-oss): one learned logit per query head `[H]` that joins
/// every softmax as an extra key with no value, so a query can give part of its attention to
/// nothing (see [`attention_core`]).
#[allow(clippy::too_many_arguments)]
pub fn attend_with_sinks(
    layer: usize,
    q: Array,
    k: Array,
    v: Array,
    rope: &Rope,
    cache: Option<&mut KvCache>,
    mask: &Mask,
    heads: &Heads,
    sinks: Option<&Array>,
    o_proj: &Linear,
    step: &mut Step,
) -> Result<Array> {
    let q = step.hook(HookName::Q(layer), q)?.swap_axes(1, 2)?;
    let k = step.hook(HookName::K(layer), k)?.swap_axes(1, 2)?;
    let v = step.hook(HookName::V(layer), v)?.swap_axes(1, 2)?;
    let q = step.hook_heads(HookName::RotQ(layer), rope.apply(&q, step.offset)?)?;
    let k = step.hook_heads(HookName::RotK(layer), rope.apply(&k, step.offset)?)?;
    let (k, v) = match cache {
        Some(c) => c.layers[layer].update(k, v)?,
        None => (k, v),
    };
    let z = attention_core(layer, q, k, v, mask, heads, sinks, step)?;
    let z = step.hook(HookName::Z(layer), z)?;
    output_projection(layer, z, o_proj, step)
}

/// `o_proj` of `z` `[B, T, H, D]`. When `hook_result` is hooked, each head's share
/// `z[.., h, :] W_O[:, h]^T` `[B, T, H, d_model]` is computed and hooked, and the output is its
/// sum over heads plus the projection's bias; otherwise one matmul.
fn output_projection(layer: usize, z: Array, o_proj: &Linear, step: &mut Step) -> Result<Array> {
    let shape = z.shape().to_vec();
    let (b, t, h, d) = (shape[0], shape[1], shape[2], shape[3]);
    let name = HookName::HeadResult(layer);
    let z_flat = z.reshape(&[b, t, h * d])?;
    if !step.is_active(&name) {
        return step.project(layer, Target::O, o_proj, &z_flat);
    }
    let w = o_proj.dense_weight()?;
    let d_model = w.shape()[0];
    // [d_model, H * D] -> [H, D, d_model]; [B, T, H, 1, D] @ [H, D, d_model] -> [B, T, H, 1, d_model].
    let w = w.reshape(&[d_model, h, d])?.transpose_axes(&[1, 2, 0])?;
    let result = z
        .as_dtype(w.dtype())?
        .expand_dims(-2)?
        .matmul(&w)?
        .squeeze_axes(&[-2])?
        .as_dtype(z.dtype())?;
    let result = step.hook(name, result)?;
    let out = result.sum_axis(2, false)?;
    let out = match o_proj.bias() {
        Some(bias) => out.add(bias)?,
        None => out,
    };
    // An adapter's update of o_proj is not split by head: it is added after the heads' sum.
    let Some(m) = step.lora.and_then(|a| a.module(layer, Target::O)) else {
        return Ok(out);
    };
    let update = step.hook(HookName::Lora(layer, Target::O), m.update(&z_flat)?)?;
    Ok(out.add(&update)?)
}

/// The attention core: roped `q` `[B, H, T, D]` against all cached `k`, `v` `[B, Hkv, S, D]`;
/// returns `z` as `[B, T, H, D]`.
///
/// The fused kernel is used unless the scores or the pattern are hooked or the architecture
/// soft-caps logits; then the scores are computed explicitly (scaled `q k^T`, soft-capped, masked
/// entries `-inf`, with the same GQA grouping), hooked as `hook_attn_scores` (and masked again
/// when hooked, so a replacement cannot unmask a key), and their softmax hooked as `hook_pattern`.
///
/// With `sinks` `[H]` (gpt-oss), each head's sink logit joins the softmax as one more column
/// (not scaled, never masked), as MLX's fused kernel does; `hook_attn_scores` holds the key
/// scores only, and `hook_pattern` the keys' share of the softmax without the sink's column,
/// so its rows sum to `1 - p(sink)`.
#[allow(clippy::too_many_arguments)]
fn attention_core(
    layer: usize,
    q: Array,
    k: Array,
    v: Array,
    mask: &Mask,
    heads: &Heads,
    sinks: Option<&Array>,
    step: &mut Step,
) -> Result<Array> {
    let (scale, softcap) = (heads.scale, heads.softcap);
    let pattern_name = HookName::Pattern(layer);
    let scores_name = HookName::AttnScores(layer);
    let explicit =
        softcap.is_some() || step.is_active(&pattern_name) || step.is_active(&scores_name);
    let out = if explicit {
        let shape = q.shape().to_vec();
        let (b, h, t, d) = (shape[0], shape[1], shape[2], shape[3]);
        let hkv = k.shape()[1];
        let groups = h / hkv;
        // [B, Hkv, G, T, D] against [B, Hkv, 1, S, D].
        let qg = q.reshape(&[b, hkv, groups, t, d])?;
        let kt = k.expand_dims(2)?.swap_axes(-1, -2)?;
        let scale = Array::from_f32(scale).as_dtype(q.dtype())?;
        let mut scores = qg.multiply(&scale)?.matmul(&kt)?;
        if let Some(cap) = softcap {
            scores = soft_cap(&scores, cap)?;
        }
        let s = scores.shape()[4];
        let scores = scores.reshape(&[b, h, t, s])?;
        let allowed = match mask {
            Mask::None => None,
            Mask::Causal => {
                let q_idx = Array::from_iter(0..t, &[t, 1]);
                let k_idx = Array::from_iter(0..s, &[1, s]);
                Some(k_idx.le(&q_idx.add(Array::from_int(s - t))?)?)
            }
            Mask::Explicit(m) => Some(m.clone()),
        };
        let scores = match &allowed {
            Some(a) => masked_fill(&scores, a)?,
            None => scores,
        };
        let scores = if step.is_active(&scores_name) {
            let scores = step.hook(scores_name, scores)?;
            match &allowed {
                Some(a) => masked_fill(&scores, a)?,
                None => scores,
            }
        } else {
            scores
        };
        let scores = scores.as_dtype(Dtype::Float32)?;
        let pattern = match sinks {
            None => ops::softmax_axis(&scores, -1, true)?,
            Some(sinks) => {
                let sink = ops::broadcast_to(
                    sinks.as_dtype(Dtype::Float32)?.reshape(&[1, h, 1, 1])?,
                    &[b, h, t, 1],
                )?;
                let with_sink = ops::concatenate(&[sink, scores], -1)?;
                ops::softmax_axis(&with_sink, -1, true)?.try_index((.., .., .., 1..))?
            }
        };
        let pattern = pattern.as_dtype(q.dtype())?;
        let pattern = step.hook(pattern_name, pattern)?;
        let pg = pattern.reshape(&[b, hkv, groups, t, s])?;
        pg.matmul(v.expand_dims(2)?)?.reshape(&[b, h, t, d])?
    } else {
        match mask {
            Mask::None => fast::scaled_dot_product_attention(&q, &k, &v, scale, None, sinks)?,
            Mask::Causal => fast::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                scale,
                ScaledDotProductAttentionMask::Causal,
                sinks,
            )?,
            Mask::Explicit(m) => fast::scaled_dot_product_attention(&q, &k, &v, scale, m, sinks)?,
        }
    };
    Ok(out.swap_axes(1, 2)?)
}

/// Gemma's soft-capping: `cap * tanh(x / cap)`.
pub fn soft_cap(x: &Array, cap: f32) -> Result<Array> {
    let c = Array::from_f32(cap).as_dtype(x.dtype())?;
    Ok(ops::tanh(x.divide(&c)?)?.multiply(&c)?)
}

/// `scores` with the entries `allowed` does not allow set to `-inf`.
fn masked_fill(scores: &Array, allowed: &Array) -> Result<Array> {
    let neg = Array::from_f32(f32::NEG_INFINITY).as_dtype(scores.dtype())?;
    Ok(ops::select(allowed, scores, &neg)?)
}

/// The activation function of a gated MLP.
#[derive(Debug, Clone, Copy)]
pub enum Act {
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
    /// gpt-oss's SwiGLU: the gate clamped from above at `limit`, the up projection to
    /// `[-limit, limit]`, then `(up + 1) * gate * sigmoid(alpha * gate)`.
    SwigluOai {
        alpha: f32,
        limit: f32,
    },
}

/// A gated MLP's hidden activation `act(gate) * up` of block `layer`, from its gate and up
/// projections (any shape, the same for both), hooked as `mlp.hook_pre` (the gate),
/// `mlp.hook_pre_linear` (the up projection) and `mlp.hook_post` (the product). Both
/// projections are hooked as computed, before any clamping ([`Act::SwigluOai`]).
pub fn gated_mlp(layer: usize, gate: Array, up: Array, act: Act, step: &mut Step) -> Result<Array> {
    let gate = step.hook(HookName::MlpPre(layer), gate)?;
    let up = step.hook(HookName::MlpPreLinear(layer), up)?;
    let post = match super::fastmath::gated(act, &gate, &up)? {
        Some(post) => post,
        None => {
            let (activated, up) = match act {
                Act::Silu => (nn::silu(&gate)?, up),
                Act::GeluTanh => (nn::gelu_approximate(&gate)?, up),
                Act::SwigluOai { alpha, limit } => {
                    let dt = gate.dtype();
                    let scalar = |x: f32| Array::from_f32(x).as_dtype(dt);
                    let g = ops::minimum(&gate, scalar(limit)?)?;
                    let glu = g.multiply(ops::sigmoid(g.multiply(scalar(alpha)?)?)?)?;
                    let (lo, hi) = (scalar(-limit)?, scalar(limit)?);
                    let up = ops::clip(&up, (&lo, &hi))?.add(scalar(1.0)?)?;
                    (glu, up)
                }
            };
            activated.multiply(&up)?
        }
    };
    step.hook(HookName::MlpPost(layer), post)
}

/// Take the last position of `[B, T, ...]` as `[B, 1, ...]`.
pub fn last_position(x: &Array) -> Result<Array> {
    let t = x.shape()[1];
    Ok(x.try_index((.., (t - 1)..t))?)
}

/// The two ends every decoder shares: the token embedding (`model.embed_tokens`), the final norm
/// (`model.norm`) and the unembedding (`lm_head`, or the tied embedding), with the Gemma options
/// an architecture file sets: an embedding scale and a final logit soft-cap.
pub struct Tail {
    embed: Embedding,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    /// Multiplies the embeddings (Gemma's `sqrt(hidden_size)`), cast to the activation dtype.
    embed_scale: Option<Array>,
    /// Gemma's final logit soft-capping.
    final_softcap: Option<f32>,
}

impl Tail {
    /// The tail of a model whose `embed` and final `norm` are loaded; reads `lm_head` `[vocab, d]`
    /// unless `tied` (then a stored copy of it is dropped). Called after the blocks, so
    /// parameters keep the checkpoint's order.
    pub fn load(
        w: &mut Weights,
        embed: Embedding,
        norm: RmsNorm,
        tied: bool,
        (d, vocab): (i32, i32),
    ) -> Result<Tail> {
        let lm_head = if tied {
            w.discard("lm_head.weight");
            None
        } else {
            Some(w.linear("lm_head", d, vocab, false)?)
        };
        Ok(Tail {
            embed,
            norm,
            lm_head,
            embed_scale: None,
            final_softcap: None,
        })
    }

    /// Multiply the embeddings by `scale` (an array, so an architecture can round it first).
    pub fn with_embed_scale(mut self, scale: Array) -> Tail {
        self.embed_scale = Some(scale);
        self
    }

    /// Soft-cap the logits at `cap` (`cap * tanh(x / cap)`), when set.
    pub fn with_final_softcap(mut self, cap: Option<f32>) -> Tail {
        self.final_softcap = cap;
        self
    }

    /// Token embeddings of `ids` (scaled, if the architecture scales them), hooked as
    /// `hook_embed`.
    pub fn embed(&self, ids: &Array, step: &mut Step) -> Result<Array> {
        let h = self.embed.lookup(ids)?;
        let h = match &self.embed_scale {
            Some(s) => h.multiply(&s.as_dtype(h.dtype())?)?,
            None => h,
        };
        step.hook(HookName::Embed, h)
    }

    /// Final norm (hooked as `ln_final.hook_scale` and `ln_final.hook_normalized`).
    pub fn final_norm(&self, h: &Array, step: &mut Step) -> Result<Array> {
        self.norm
            .hooked(h, (HookName::LnFinalScale, HookName::LnFinal), step)
    }

    /// Logits from normalized hidden states: the head (or tied embeddings), then the
    /// soft-capping if set.
    pub fn unembed(&self, x: &Array) -> Result<Array> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(x)?,
            None => self.embed.as_linear(x)?,
        };
        match self.final_softcap {
            Some(cap) => soft_cap(&logits, cap),
            None => Ok(logits),
        }
    }
}

/// A model's blocks as this process holds them: every block, or with pipeline sharding a
/// contiguous range of them (see `Weights::shard`). Blocks are addressed by their global index
/// (the one hook names use) whichever blocks are held.
pub struct Stack<B> {
    first: usize,
    total: usize,
    blocks: Vec<B>,
}

impl<B> Stack<B> {
    /// Builds the blocks `w` holds out of `total`, calling `build(w, i)` with each global index.
    pub fn load(
        w: &mut super::weights::Weights,
        total: usize,
        mut build: impl FnMut(&mut super::weights::Weights, usize) -> Result<B>,
    ) -> Result<Stack<B>> {
        let range = w.layer_range(total);
        let mut blocks = Vec::with_capacity(range.len());
        for i in range.clone() {
            blocks.push(build(w, i)?);
        }
        Ok(Stack {
            first: range.start,
            total,
            blocks,
        })
    }

    /// Every block of the model, held here or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The held blocks with a global index below `n` (all held blocks when `None`), in order.
    pub fn upto(&self, n: Option<usize>) -> impl Iterator<Item = (usize, &B)> {
        let n = n.unwrap_or(self.total);
        let first = self.first;
        self.blocks
            .iter()
            .enumerate()
            .map(move |(j, b)| (first + j, b))
            .take_while(move |(i, _)| *i < n)
    }

    /// The held blocks, in order.
    pub fn held(&self) -> impl Iterator<Item = &B> {
        self.blocks.iter()
    }

    /// Block `i` (global index), if held here.
    pub fn get(&self, i: usize) -> Option<&B> {
        self.blocks.get(i.checked_sub(self.first)?)
    }

    /// Block `i` (global index), if held here.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut B> {
        self.blocks.get_mut(i.checked_sub(self.first)?)
    }

    /// `f` of every block by global index, `T::default()` for the blocks not held here.
    pub fn per_layer<T: Default>(&self, f: impl Fn(&B) -> T) -> Vec<T> {
        (0..self.total)
            .map(|i| self.get(i).map(&f).unwrap_or_default())
            .collect()
    }
}
