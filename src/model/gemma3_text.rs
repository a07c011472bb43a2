//! Gemma 3 text models (`model_type` "gemma3_text": Gemma 3 1B, and the language model of the
//! larger ones). Reference: mlx-lm `mlx_lm/models/gemma3_text.py`.
//!
//! Like Gemma 2 (offset norms `1 + w` folded at load, scaled embeddings, post-attention and
//! post-MLP norms before the residual add, GELU-tanh MLP, `query_pre_attn_scalar`), plus: RMSNorm
//! over each head's queries and keys before RoPE (`q_norm`, `k_norm`, also offsets); sliding
//! layers (per `layer_types`, else every layer but each `sliding_window_pattern`-th) use a window
//! of `sliding_window` keys and RoPE base `rope_local_base_freq`; full layers use `rope_theta` and
//! `rope_scaling`. The embedding scale `sqrt(hidden_size)` is rounded to bfloat16 first, as
//! mlx-lm does. No soft-capping in released configs (honoured when set, as Hugging Face does).
//! `lm_head.weight` is used when present, else the embeddings are tied.

use mlx_rs::{ops, Array, Dtype};
use serde::Deserialize;

use super::layers::{
    attend, gated_mlp, offset_norm, Act, Heads, KvCache, Linear, Masks, RmsNorm, Rope, RopeScaling,
    Stack, Step, Tail,
};
use super::lora::Target;
use super::validate;
use super::weights::Weights;
use super::{Architecture, Dims};
use crate::error::Result;
use crate::hooks::HookName;

fn default_head_dim() -> i32 {
    256
}
fn default_eps() -> f32 {
    1e-6
}
fn default_kv_heads() -> i32 {
    1
}
fn default_rope_theta() -> f32 {
    1_000_000.0
}
fn default_local_base() -> f32 {
    10_000.0
}
fn default_query_scalar() -> f32 {
    256.0
}
fn default_window() -> i32 {
    512
}
fn default_pattern() -> usize {
    6
}

/// config.json of a Gemma 3 text checkpoint; absent fields take mlx-lm's defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    #[serde(default = "default_kv_heads")]
    pub num_key_value_heads: i32,
    #[serde(default = "default_head_dim")]
    pub head_dim: i32,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_local_base")]
    pub rope_local_base_freq: f32,
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_query_scalar")]
    pub query_pre_attn_scalar: f32,
    #[serde(default = "default_window")]
    pub sliding_window: i32,
    #[serde(default = "default_pattern")]
    pub sliding_window_pattern: usize,
    /// Per-layer `full_attention` / `sliding_attention` (written by recent transformers).
    pub layer_types: Option<Vec<String>>,
    pub attn_logit_softcapping: Option<f32>,
    pub final_logit_softcapping: Option<f32>,
}

impl Config {
    /// The attention geometry: heads, head width, score scale and soft-cap.
    pub fn heads(&self) -> Heads {
        let d = self.head_dim;
        Heads {
            n: self.num_attention_heads,
            kv: self.num_key_value_heads,
            d,
            scale: self.query_pre_attn_scalar.powf(-0.5),
            softcap: self.attn_logit_softcapping,
        }
    }

    /// Checks every number before anything is allocated ([`Gemma3Text::load`] calls it).
    pub fn validate(&self) -> Result<()> {
        validate::Attention {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
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
        validate::positive("rope_local_base_freq", self.rope_local_base_freq)?;
        validate::rope_scaling(self.rope_scaling.as_ref())?;
        validate::positive("query_pre_attn_scalar", self.query_pre_attn_scalar)?;
        validate::positive_opt("attn_logit_softcapping", self.attn_logit_softcapping)?;
        validate::positive_opt("final_logit_softcapping", self.final_logit_softcapping)?;
        validate::count("sliding_window", self.sliding_window, i32::MAX.into())
    }

    /// Whether layer `i` is a local (sliding-window) layer.
    fn is_sliding(&self, i: usize) -> bool {
        match &self.layer_types {
            Some(t) => t.get(i).is_some_and(|t| t == "sliding_attention"),
            None => (i + 1) % self.sliding_window_pattern.max(1) != 0,
        }
    }
}

/// `x + y`; in float16, summed in float32 and clipped to the float16 range (mlx-lm's
/// `clip_residual`: Gemma 3's residual stream overflows float16).
fn residual_add(x: &Array, y: &Array) -> Result<Array> {
    if x.dtype() != Dtype::Float16 {
        return Ok(x.add(y)?);
    }
    let bound = f32::from(half::f16::MAX);
    let sum = x
        .as_dtype(Dtype::Float32)?
        .add(y.as_dtype(Dtype::Float32)?)?;
    let clipped = ops::clip(&sum, (-bound, bound))?;
    Ok(clipped.as_dtype(Dtype::Float16)?)
}

struct Block {
    input_norm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    pre_ff_norm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    post_ff_norm: RmsNorm,
    rope: Rope,
    /// The sliding window, on local layers.
    window: Option<i32>,
}

/// A loaded Gemma 3 text model.
pub struct Gemma3Text {
    pub cfg: Config,
    tail: Tail,
    layers: Stack<Block>,
}

impl Gemma3Text {
    pub fn load(cfg: Config, w: &mut Weights) -> Result<Gemma3Text> {
        cfg.validate()?;
        w.check_layers(cfg.num_hidden_layers)?;
        let (d, h, kv, hd, ff) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        );
        let eps = cfg.rms_norm_eps;
        let embed = w.embedding("model.embed_tokens", cfg.vocab_size, d)?;
        let local_rope = Rope::new(hd, cfg.rope_local_base_freq, false, None)?;
        let global_rope = Rope::new(hd, cfg.rope_theta, false, cfg.rope_scaling.as_ref())?;
        let layers = Stack::load(w, cfg.num_hidden_layers, |w, i| {
            let p = format!("model.layers.{i}");
            let sliding = cfg.is_sliding(i);
            Ok(Block {
                input_norm: offset_norm(w, &format!("{p}.input_layernorm"), d, eps)?,
                q_proj: w.linear(&format!("{p}.self_attn.q_proj"), d, h * hd, false)?,
                k_proj: w.linear(&format!("{p}.self_attn.k_proj"), d, kv * hd, false)?,
                v_proj: w.linear(&format!("{p}.self_attn.v_proj"), d, kv * hd, false)?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), h * hd, d, false)?,
                q_norm: offset_norm(w, &format!("{p}.self_attn.q_norm"), hd, eps)?,
                k_norm: offset_norm(w, &format!("{p}.self_attn.k_norm"), hd, eps)?,
                post_attn_norm: offset_norm(w, &format!("{p}.post_attention_layernorm"), d, eps)?,
                pre_ff_norm: offset_norm(w, &format!("{p}.pre_feedforward_layernorm"), d, eps)?,
                gate_proj: w.linear(&format!("{p}.mlp.gate_proj"), d, ff, false)?,
                up_proj: w.linear(&format!("{p}.mlp.up_proj"), d, ff, false)?,
                down_proj: w.linear(&format!("{p}.mlp.down_proj"), ff, d, false)?,
                post_ff_norm: offset_norm(w, &format!("{p}.post_feedforward_layernorm"), d, eps)?,
                rope: if sliding {
                    local_rope.clone()
                } else {
                    global_rope.clone()
                },
                window: sliding.then_some(cfg.sliding_window),
            })
        })?;
        let norm = offset_norm(w, "model.norm", d, eps)?;
        // `lm_head.weight` when stored, else tied; embeddings times `sqrt(hidden_size)` rounded
        // to bfloat16 (as mlx-lm).
        let tied = !w.contains("lm_head.weight");
        let tail = Tail::load(w, embed, norm, tied, (d, cfg.vocab_size))?
            .with_embed_scale(Array::from_f32((d as f32).sqrt()).as_dtype(Dtype::Bfloat16)?)
            .with_final_softcap(cfg.final_logit_softcapping);
        Ok(Gemma3Text { cfg, tail, layers })
    }
}

impl Architecture for Gemma3Text {
    fn blocks(
        &self,
        mut h: Array,
        mut cache: Option<&mut KvCache>,
        step: &mut Step,
        n: Option<usize>,
    ) -> Result<Array> {
        let masks = Masks::build(step, self.layers.held().find_map(|l| l.window))?;
        let heads = self.cfg.heads();
        let (h_heads, kv_heads, hd) = (heads.n, heads.kv, heads.d);
        for (i, layer) in self.layers.upto(n) {
            let (b, t) = (h.shape()[0], h.shape()[1]);
            h = step.hook(HookName::ResidPre(i), h)?;
            let x = layer.input_norm.hooked(&h, HookName::ln1(i), step)?;
            let q = step
                .project(i, Target::Q, &layer.q_proj, &x)?
                .reshape(&[b, t, h_heads, hd])?;
            let k = step
                .project(i, Target::K, &layer.k_proj, &x)?
                .reshape(&[b, t, kv_heads, hd])?;
            let v = step
                .project(i, Target::V, &layer.v_proj, &x)?
                .reshape(&[b, t, kv_heads, hd])?;
            let q = layer.q_norm.forward(&q)?;
            let k = layer.k_norm.forward(&k)?;
            let mask = masks.for_layer(layer.window);
            let o = attend(
                i,
                q,
                k,
                v,
                &layer.rope,
                cache.as_deref_mut(),
                mask,
                &heads,
                &layer.o_proj,
                step,
            )?;
            let attn_out = step.hook(HookName::AttnOut(i), layer.post_attn_norm.forward(&o)?)?;
            h = step.hook(HookName::ResidMid(i), residual_add(&h, &attn_out)?)?;
            let x = layer.pre_ff_norm.hooked(&h, HookName::ln2(i), step)?;
            let gate = step.project(i, Target::Gate, &layer.gate_proj, &x)?;
            let up = step.project(i, Target::Up, &layer.up_proj, &x)?;
            let post = gated_mlp(i, gate, up, Act::GeluTanh, step)?;
            let down = step.project(i, Target::Down, &layer.down_proj, &post)?;
            let mlp_out = step.hook(HookName::MlpOut(i), layer.post_ff_norm.forward(&down)?)?;
            h = step.hook(HookName::ResidPost(i), residual_add(&h, &mlp_out)?)?;
        }
        Ok(h)
    }

    fn tail(&self) -> &Tail {
        &self.tail
    }
    fn quantization(&self) -> Option<(i32, i32)> {
        self.layers
            .held()
            .next()
            .and_then(|l| l.q_proj.quantization())
    }
    fn projection_mut(&mut self, layer: usize, target: Target) -> Option<&mut Linear> {
        let l = self.layers.get_mut(layer)?;
        Some(target.pick([
            &mut l.q_proj,
            &mut l.k_proj,
            &mut l.v_proj,
            &mut l.o_proj,
            &mut l.gate_proj,
            &mut l.up_proj,
            &mut l.down_proj,
        ]))
    }
    fn windows(&self) -> Vec<Option<i32>> {
        self.layers.per_layer(|l| l.window)
    }
    fn dims(&self) -> Dims {
        let c = &self.cfg;
        Dims {
            n_layers: self.layers.total(),
            d_model: c.hidden_size,
            heads: c.heads(),
            d_mlp: c.intermediate_size,
            vocab: c.vocab_size,
        }
    }
}
