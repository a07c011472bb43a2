//! Gemma 2 (`model_type` "gemma2"). Reference: mlx-lm `mlx_lm/models/gemma2.py`, plus the
//! per-layer sliding window of Hugging Face's `modeling_gemma2.py` (mlx-lm attends over the whole
//! prefix on every layer; the two agree below `sliding_window` tokens).
//!
//! Differences from Llama: RMSNorm scales stored as offsets (`1 + w`, folded in at load),
//! embeddings multiplied by `sqrt(hidden_size)`, a norm on the attention output and another on
//! the MLP output (both before the residual add) with a separate pre-MLP norm, attention scale
//! `query_pre_attn_scalar^-1/2`, soft-capped attention logits and final logits
//! (`cap * tanh(x / cap)`), GELU (tanh approximation) gated MLP, tied embeddings, and a sliding
//! window on the layers `layer_types` marks `sliding_attention` (even layers when absent).

use mlx_rs::{nn, Array};
use serde::Deserialize;

use super::layers::{attend, soft_cap, Embedding, KvCache, Linear, Mask, RmsNorm, Rope, Step};
use super::validate;
use super::weights::Weights;
use crate::error::Result;
use crate::hooks::HookName;

fn default_eps() -> f32 {
    1e-6
}
fn default_rope_theta() -> f32 {
    10000.0
}
fn default_attn_cap() -> Option<f32> {
    Some(50.0)
}
fn default_final_cap() -> Option<f32> {
    Some(30.0)
}
fn default_query_scalar() -> f32 {
    144.0
}

/// config.json of a Gemma 2 checkpoint. Absent fields take mlx-lm's defaults; a `null`
/// soft-capping value turns that capping off.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub num_key_value_heads: Option<i32>,
    pub head_dim: i32,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_traditional: bool,
    #[serde(default = "default_attn_cap")]
    pub attn_logit_softcapping: Option<f32>,
    #[serde(default = "default_final_cap")]
    pub final_logit_softcapping: Option<f32>,
    #[serde(default = "default_query_scalar")]
    pub query_pre_attn_scalar: f32,
    pub sliding_window: Option<i32>,
    /// Per-layer `full_attention` / `sliding_attention`.
    pub layer_types: Option<Vec<String>>,
}

impl Config {
    pub fn n_kv_heads(&self) -> i32 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Checks every number before anything is allocated ([`Gemma2::load`] calls it).
    pub fn validate(&self) -> Result<()> {
        validate::Attention {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.n_kv_heads(),
            head_dim: Some(self.head_dim),
        }
        .check()?;
        validate::common(
            self.num_hidden_layers,
            self.intermediate_size,
            self.vocab_size,
            self.rms_norm_eps,
            self.rope_theta,
        )?;
        validate::positive("query_pre_attn_scalar", self.query_pre_attn_scalar)?;
        validate::positive_opt("attn_logit_softcapping", self.attn_logit_softcapping)?;
        validate::positive_opt("final_logit_softcapping", self.final_logit_softcapping)?;
        if let Some(w) = self.sliding_window {
            validate::count("sliding_window", w, i32::MAX.into())?;
        }
        Ok(())
    }

    /// Whether layer `i` attends through the sliding window.
    fn is_sliding(&self, i: usize) -> bool {
        match &self.layer_types {
            Some(t) => t.get(i).is_some_and(|t| t == "sliding_attention"),
            None => i % 2 == 0,
        }
    }
}

/// A Gemma RMSNorm: the stored offset `w` becomes the scale `1 + w`.
fn offset_norm(w: &mut Weights, prefix: &str, d: i32, eps: f32) -> Result<RmsNorm> {
    let mut norm = w.rms_norm(prefix, d, eps)?;
    let one = Array::from_f32(1.0).as_dtype(norm.weight.dtype())?;
    norm.weight = norm.weight.add(&one)?;
    Ok(norm)
}

struct Block {
    input_norm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attn_norm: RmsNorm,
    pre_ff_norm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    post_ff_norm: RmsNorm,
    window: Option<i32>,
}

/// A loaded Gemma 2 model.
pub struct Gemma2 {
    pub cfg: Config,
    embed: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    rope: Rope,
}

impl Gemma2 {
    pub fn load(cfg: Config, w: &mut Weights) -> Result<Gemma2> {
        cfg.validate()?;
        w.check_layers(cfg.num_hidden_layers)?;
        let (d, h, kv, hd, ff) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim,
            cfg.intermediate_size,
        );
        let eps = cfg.rms_norm_eps;
        // Embeddings are always tied; drop a stored copy of the head.
        w.discard("lm_head.weight");
        let embed = w.embedding("model.embed_tokens", cfg.vocab_size, d)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Block {
                input_norm: offset_norm(w, &format!("{p}.input_layernorm"), d, eps)?,
                q_proj: w.linear(&format!("{p}.self_attn.q_proj"), d, h * hd, false)?,
                k_proj: w.linear(&format!("{p}.self_attn.k_proj"), d, kv * hd, false)?,
                v_proj: w.linear(&format!("{p}.self_attn.v_proj"), d, kv * hd, false)?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), h * hd, d, false)?,
                post_attn_norm: offset_norm(w, &format!("{p}.post_attention_layernorm"), d, eps)?,
                pre_ff_norm: offset_norm(w, &format!("{p}.pre_feedforward_layernorm"), d, eps)?,
                gate_proj: w.linear(&format!("{p}.mlp.gate_proj"), d, ff, false)?,
                up_proj: w.linear(&format!("{p}.mlp.up_proj"), d, ff, false)?,
                down_proj: w.linear(&format!("{p}.mlp.down_proj"), ff, d, false)?,
                post_ff_norm: offset_norm(w, &format!("{p}.post_feedforward_layernorm"), d, eps)?,
                window: cfg.sliding_window.filter(|_| cfg.is_sliding(i)),
            });
        }
        let norm = offset_norm(w, "model.norm", d, eps)?;
        let rope = Rope::new(hd, cfg.rope_theta, cfg.rope_traditional, None)?;
        Ok(Gemma2 {
            cfg,
            embed,
            layers,
            norm,
            rope,
        })
    }

    /// Token embeddings times `sqrt(hidden_size)` (in the activation dtype, as mlx-lm).
    pub fn embed(&self, ids: &Array, step: &mut Step) -> Result<Array> {
        let h = self.embed.lookup(ids)?;
        let scale = Array::from_f32((self.cfg.hidden_size as f32).sqrt()).as_dtype(h.dtype())?;
        step.hook(HookName::Embed, h.multiply(&scale)?)
    }

    /// Run blocks `0..n` (all of them when `n` is None) over the residual stream `h`.
    pub fn blocks(
        &self,
        mut h: Array,
        mut cache: Option<&mut KvCache>,
        step: &mut Step,
        n: Option<usize>,
    ) -> Result<Array> {
        let full_mask = Mask::build(step, None)?;
        let window_mask = match self.layers.iter().find_map(|l| l.window) {
            Some(w) => Some(Mask::build(step, Some(w))?),
            None => None,
        };
        let (h_heads, kv_heads, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.n_kv_heads(),
            self.cfg.head_dim,
        );
        let scale = self.cfg.query_pre_attn_scalar.powf(-0.5);
        let n = n.unwrap_or(self.layers.len()).min(self.layers.len());
        for (i, layer) in self.layers.iter().take(n).enumerate() {
            let (b, t) = (h.shape()[0], h.shape()[1]);
            h = step.hook(HookName::ResidPre(i), h)?;
            let x = layer.input_norm.forward(&h)?;
            let q = layer.q_proj.forward(&x)?.reshape(&[b, t, h_heads, hd])?;
            let k = layer.k_proj.forward(&x)?.reshape(&[b, t, kv_heads, hd])?;
            let v = layer.v_proj.forward(&x)?.reshape(&[b, t, kv_heads, hd])?;
            let q = step.hook(HookName::Q(i), q)?.swap_axes(1, 2)?;
            let k = step.hook(HookName::K(i), k)?.swap_axes(1, 2)?;
            let v = step.hook(HookName::V(i), v)?.swap_axes(1, 2)?;
            let q = self.rope.apply(&q, step.offset)?;
            let k = self.rope.apply(&k, step.offset)?;
            let mask = match (layer.window, &window_mask) {
                (Some(_), Some(m)) => m,
                _ => &full_mask,
            };
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let cap = self.cfg.attn_logit_softcapping;
            let z = attend(i, q, k, v, layer_cache, mask, scale, cap, step)?;
            let z = step.hook(HookName::Z(i), z)?;
            let o = layer.o_proj.forward(&z.reshape(&[b, t, h_heads * hd])?)?;
            let attn_out = step.hook(HookName::AttnOut(i), layer.post_attn_norm.forward(&o)?)?;
            h = step.hook(HookName::ResidMid(i), h.add(&attn_out)?)?;
            let x = layer.pre_ff_norm.forward(&h)?;
            let gate = layer.gate_proj.forward(&x)?;
            let post = nn::gelu_approximate(&gate)?.multiply(&layer.up_proj.forward(&x)?)?;
            let post = step.hook(HookName::MlpPost(i), post)?;
            let down = layer.down_proj.forward(&post)?;
            let mlp_out = step.hook(HookName::MlpOut(i), layer.post_ff_norm.forward(&down)?)?;
            h = step.hook(HookName::ResidPost(i), h.add(&mlp_out)?)?;
        }
        Ok(h)
    }

    /// Final norm (hooked as `ln_final.hook_normalized`).
    pub fn final_norm(&self, h: &Array, step: &mut Step) -> Result<Array> {
        let x = self.norm.forward(h)?;
        step.hook(HookName::LnFinal, x)
    }

    /// Logits from normalized hidden states: the tied embeddings, then the final soft-capping.
    pub fn unembed(&self, x: &Array) -> Result<Array> {
        let logits = self.embed.as_linear(x)?;
        match self.cfg.final_logit_softcapping {
            Some(cap) => soft_cap(&logits, cap),
            None => Ok(logits),
        }
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }
    /// Quantization of the first block's projections, if any: `(bits, group_size)`.
    pub fn quantization(&self) -> Option<(i32, i32)> {
        self.layers.first().and_then(|l| l.q_proj.quantization())
    }
}
