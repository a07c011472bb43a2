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

use mlx_rs::Array;
use serde::Deserialize;

use super::layers::{
    attend, gated_mlp, offset_norm, Act, Heads, KvCache, Linear, Masks, RmsNorm, Rope, Stack, Step,
    Tail,
};
use super::lora::Target;
use super::validate;
use super::weights::Weights;
use super::{Architecture, Dims};
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
    /// The attention geometry: heads, head width, score scale and soft-cap.
    pub fn heads(&self) -> Heads {
        let d = self.head_dim;
        Heads {
            n: self.num_attention_heads,
            kv: self.n_kv_heads(),
            d,
            scale: self.query_pre_attn_scalar.powf(-0.5),
            softcap: self.attn_logit_softcapping,
        }
    }

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
    tail: Tail,
    layers: Stack<Block>,
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
        let embed = w.embedding("model.embed_tokens", cfg.vocab_size, d)?;
        let layers = Stack::load(w, cfg.num_hidden_layers, |w, i| {
            let p = format!("model.layers.{i}");
            Ok(Block {
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
            })
        })?;
        let norm = offset_norm(w, "model.norm", d, eps)?;
        // Embeddings are always tied (a stored copy of the head is dropped), scaled by
        // `sqrt(hidden_size)` in the activation dtype (as mlx-lm), and the logits soft-capped.
        let tail = Tail::load(w, embed, norm, true, (d, cfg.vocab_size))?
            .with_embed_scale(Array::from_f32((d as f32).sqrt()))
            .with_final_softcap(cfg.final_logit_softcapping);
        let rope = Rope::new(hd, cfg.rope_theta, cfg.rope_traditional, None)?;
        Ok(Gemma2 {
            cfg,
            tail,
            layers,
            rope,
        })
    }
}

impl Architecture for Gemma2 {
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
            let mask = masks.for_layer(layer.window);
            let o = attend(
                i,
                q,
                k,
                v,
                &self.rope,
                cache.as_deref_mut(),
                mask,
                &heads,
                &layer.o_proj,
                step,
            )?;
            let attn_out = step.hook(HookName::AttnOut(i), layer.post_attn_norm.forward(&o)?)?;
            h = step.hook(HookName::ResidMid(i), h.add(&attn_out)?)?;
            let x = layer.pre_ff_norm.hooked(&h, HookName::ln2(i), step)?;
            let gate = step.project(i, Target::Gate, &layer.gate_proj, &x)?;
            let up = step.project(i, Target::Up, &layer.up_proj, &x)?;
            let post = gated_mlp(i, gate, up, Act::GeluTanh, step)?;
            let down = step.project(i, Target::Down, &layer.down_proj, &post)?;
            let mlp_out = step.hook(HookName::MlpOut(i), layer.post_ff_norm.forward(&down)?)?;
            h = step.hook(HookName::ResidPost(i), h.add(&mlp_out)?)?;
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
