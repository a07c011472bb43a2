//! Phi-3 and Phi-3.5 / Phi-4-mini style decoders (`model_type` "phi3"). Reference: mlx-lm
//! `mlx_lm/models/phi3.py` (rotary scaling: `rope_utils.py` `SuScaledRoPE`).
//!
//! A Llama-shaped block whose projections are stored fused: `self_attn.qkv_proj` (rows q, then k,
//! then v) and `mlp.gate_up_proj` (rows gate, then up). They run fused, under their checkpoint
//! names, and their outputs are split, so the q/k/v and MLP hook points see the same activations
//! as in Llama. `head_dim` is always `hidden_size / num_attention_heads`; RoPE rotates the first
//! `partial_rotary_factor` of each head; `rope_scaling` may be `longrope`/`su` or `linear`.

use mlx_rs::{ops, Array};
use serde::Deserialize;

use super::layers::{
    attend, gated_mlp, Act, Heads, KvCache, Linear, Mask, RmsNorm, Rope, RopeScaling, Stack, Step,
    Tail,
};
use super::validate;
use super::weights::Weights;
use super::{Architecture, Dims};
use crate::error::Result;
use crate::hooks::HookName;

fn default_rope_theta() -> f32 {
    10000.0
}
fn default_one() -> f32 {
    1.0
}
fn default_max_positions() -> f32 {
    131072.0
}
fn default_original_max_positions() -> f32 {
    4096.0
}

/// config.json of a Phi-3 checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub num_key_value_heads: Option<i32>,
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_traditional: bool,
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_one")]
    pub partial_rotary_factor: f32,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: f32,
    #[serde(default = "default_original_max_positions")]
    pub original_max_position_embeddings: f32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

impl Config {
    /// The attention geometry: heads, head width, score scale.
    pub fn heads(&self) -> Heads {
        let d = self.head_dim();
        Heads {
            n: self.num_attention_heads,
            kv: self.n_kv_heads(),
            d,
            scale: (d as f32).powf(-0.5),
            softcap: None,
        }
    }

    pub fn n_kv_heads(&self) -> i32 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> i32 {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks every number before anything is allocated ([`Phi3::load`] calls it).
    pub fn validate(&self) -> Result<()> {
        validate::Attention {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.n_kv_heads(),
            head_dim: None,
        }
        .check()?;
        validate::common(
            self.num_hidden_layers,
            self.intermediate_size,
            self.vocab_size,
            self.rms_norm_eps,
            self.rope_theta,
        )?;
        validate::rope_scaling(self.rope_scaling.as_ref())?;
        if !(self.partial_rotary_factor > 0.0 && self.partial_rotary_factor <= 1.0) {
            return Err(crate::Error::Config {
                key: "partial_rotary_factor".into(),
                value: self.partial_rotary_factor.to_string(),
                why: "must be above 0 and at most 1".into(),
            });
        }
        validate::positive("max_position_embeddings", self.max_position_embeddings)?;
        validate::positive(
            "original_max_position_embeddings",
            self.original_max_position_embeddings,
        )
    }

    fn rope(&self) -> Result<Rope> {
        let dims = (self.head_dim() as f32 * self.partial_rotary_factor) as i32;
        match &self.rope_scaling {
            Some(s) if matches!(s.rope_type.as_deref(), Some("longrope" | "su")) => {
                Rope::su_scaled(
                    dims,
                    self.rope_theta,
                    s,
                    self.max_position_embeddings,
                    self.original_max_position_embeddings,
                )
            }
            s => Rope::new(dims, self.rope_theta, self.rope_traditional, s.as_ref()),
        }
    }
}

struct Block {
    input_norm: RmsNorm,
    qkv_proj: Linear,
    o_proj: Linear,
    post_attn_norm: RmsNorm,
    gate_up_proj: Linear,
    down_proj: Linear,
}

/// A loaded Phi-3 model.
pub struct Phi3 {
    pub cfg: Config,
    tail: Tail,
    layers: Stack<Block>,
    rope: Rope,
}

impl Phi3 {
    pub fn load(cfg: Config, w: &mut Weights) -> Result<Phi3> {
        cfg.validate()?;
        w.check_layers(cfg.num_hidden_layers)?;
        let (d, h, kv, hd, ff) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
            cfg.intermediate_size,
        );
        let eps = cfg.rms_norm_eps;
        let embed = w.embedding("model.embed_tokens", cfg.vocab_size, d)?;
        let layers = Stack::load(w, cfg.num_hidden_layers, |w, i| {
            let p = format!("model.layers.{i}");
            Ok(Block {
                input_norm: w.rms_norm(&format!("{p}.input_layernorm"), d, eps)?,
                qkv_proj: w.linear(
                    &format!("{p}.self_attn.qkv_proj"),
                    d,
                    (h + 2 * kv) * hd,
                    false,
                )?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), h * hd, d, false)?,
                post_attn_norm: w.rms_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
                gate_up_proj: w.linear(&format!("{p}.mlp.gate_up_proj"), d, 2 * ff, false)?,
                down_proj: w.linear(&format!("{p}.mlp.down_proj"), ff, d, false)?,
            })
        })?;
        let norm = w.rms_norm("model.norm", d, eps)?;
        let tail = Tail::load(w, embed, norm, cfg.tie_word_embeddings, (d, cfg.vocab_size))?;
        let rope = cfg.rope()?;
        Ok(Phi3 {
            cfg,
            tail,
            layers,
            rope,
        })
    }
}

impl Architecture for Phi3 {
    fn blocks(
        &self,
        mut h: Array,
        mut cache: Option<&mut KvCache>,
        step: &mut Step,
        n: Option<usize>,
    ) -> Result<Array> {
        let mask = Mask::build(step, None)?;
        let heads = self.cfg.heads();
        let (h_heads, kv_heads, hd) = (heads.n, heads.kv, heads.d);
        let ff = self.cfg.intermediate_size;
        for (i, layer) in self.layers.upto(n) {
            let (b, t) = (h.shape()[0], h.shape()[1]);
            h = step.hook(HookName::ResidPre(i), h)?;
            let x = layer.input_norm.hooked(&h, HookName::ln1(i), step)?;
            let qkv = layer.qkv_proj.forward(&x)?;
            let split = [h_heads * hd, (h_heads + kv_heads) * hd];
            let qkv = split_last(&qkv, &split)?;
            let q = qkv[0].reshape(&[b, t, h_heads, hd])?;
            let k = qkv[1].reshape(&[b, t, kv_heads, hd])?;
            let v = qkv[2].reshape(&[b, t, kv_heads, hd])?;
            let attn_out = attend(
                i,
                q,
                k,
                v,
                &self.rope,
                cache.as_deref_mut(),
                &mask,
                &heads,
                &layer.o_proj,
                step,
            )?;
            let attn_out = step.hook(HookName::AttnOut(i), attn_out)?;
            h = step.hook(HookName::ResidMid(i), h.add(&attn_out)?)?;
            let x = layer.post_attn_norm.hooked(&h, HookName::ln2(i), step)?;
            let gate_up = layer.gate_up_proj.forward(&x)?;
            let [gate, up]: [Array; 2] = split_last(&gate_up, &[ff])?
                .try_into()
                .map_err(|_| crate::Error::Model("gate_up_proj: expected two parts".into()))?;
            let post = gated_mlp(i, gate, up, Act::Silu, step)?;
            let mlp_out = step.hook(HookName::MlpOut(i), layer.down_proj.forward(&post)?)?;
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
            .and_then(|l| l.qkv_proj.quantization())
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

/// The fused projections' outputs split along the last axis, each part made contiguous. MLX's
/// CUDA backend computes wrong values from these strided views (phi3 on an H200: logits off by
/// ~2 against the CPU, for mlx-lm's phi3 too, and an illegal memory access in cached decoding;
/// contiguous parts agree to 2e-6). On the CPU and Metal the copy is cheap.
fn split_last(x: &Array, at: &[i32]) -> Result<Vec<Array>> {
    ops::split_at_indices(x, at, -1)?
        .iter()
        .map(|p| Ok(p.contiguous()?))
        .collect()
}
