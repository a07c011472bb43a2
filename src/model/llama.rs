//! Llama decoder (Llama 2/3.x, SmolLM, TinyLlama; Mistral, Qwen2 and Qwen3 reuse it through
//! their own config files, `qwen2.rs` and `qwen3.rs`). Reference: mlx-lm `mlx_lm/models/llama.py`.
//!
//! Pre-norm blocks: `h += attn(rms_norm(h))`, `h += mlp(rms_norm(h))`, SwiGLU MLP, rotary
//! embeddings (rotate-half unless `rope_traditional`), grouped-query attention.

use mlx_rs::Array;
use serde::Deserialize;

use super::layers::{
    attend, gated_mlp, Act, Heads, KvCache, Linear, Masks, RmsNorm, Rope, RopeScaling, Stack, Step,
    Tail,
};
use super::lora::Target;
use super::validate;
use super::weights::Weights;
use super::{Architecture, Dims};
use crate::error::Result;
use crate::hooks::HookName;

fn default_rope_theta() -> f32 {
    10000.0
}
fn default_true() -> bool {
    true
}

/// config.json of a Llama-family checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub num_key_value_heads: Option<i32>,
    pub head_dim: Option<i32>,
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_traditional: bool,
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    pub sliding_window: Option<i32>,
    /// Per-layer `full_attention` / `sliding_attention`.
    pub layer_types: Option<Vec<String>>,
    /// Qwen3: RMSNorm over each head's queries and keys before RoPE. Not a config.json field;
    /// set by the qwen3 file.
    #[serde(skip)]
    pub qk_norm: bool,
    /// Qwen2: biases on the q/k/v projections only (`attention_bias` puts them on all four).
    /// Not a config.json field; set by the qwen2 file.
    #[serde(skip)]
    pub qkv_bias: bool,
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
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks every number before anything is allocated. [`Llama::load`] calls it, so configs
    /// from config.json (llama, mistral, qwen2, qwen3) and from GGUF metadata pass it alike.
    pub fn validate(&self) -> Result<()> {
        validate::Attention {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.n_kv_heads(),
            head_dim: self.head_dim,
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
        if let Some(w) = self.sliding_window {
            validate::count("sliding_window", w, i32::MAX.into())?;
        }
        Ok(())
    }
}

struct Block {
    input_norm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    post_attn_norm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    /// Sliding-window size for this layer, if it uses one.
    window: Option<i32>,
}

/// A loaded Llama-family model.
pub struct Llama {
    pub cfg: Config,
    tail: Tail,
    layers: Stack<Block>,
    rope: Rope,
}

impl Llama {
    pub fn load(cfg: Config, w: &mut Weights) -> Result<Llama> {
        cfg.validate()?;
        w.check_layers(cfg.num_hidden_layers)?;
        let (d, h, kv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
        );
        let eps = cfg.rms_norm_eps;
        w.discard_matching(|k| k.ends_with("self_attn.rotary_emb.inv_freq"));
        let embed = w.embedding("model.embed_tokens", cfg.vocab_size, d)?;
        let layers = Stack::load(w, cfg.num_hidden_layers, |w, i| {
            let p = format!("model.layers.{i}");
            let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
            let qkv_b = ab || cfg.qkv_bias;
            let sliding = cfg
                .layer_types
                .as_ref()
                .and_then(|t| t.get(i))
                .is_some_and(|t| t == "sliding_attention");
            Ok(Block {
                input_norm: w.rms_norm(&format!("{p}.input_layernorm"), d, eps)?,
                q_proj: w.linear(&format!("{p}.self_attn.q_proj"), d, h * hd, qkv_b)?,
                k_proj: w.linear(&format!("{p}.self_attn.k_proj"), d, kv * hd, qkv_b)?,
                v_proj: w.linear(&format!("{p}.self_attn.v_proj"), d, kv * hd, qkv_b)?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), h * hd, d, ab)?,
                q_norm: cfg
                    .qk_norm
                    .then(|| w.rms_norm(&format!("{p}.self_attn.q_norm"), hd, eps))
                    .transpose()?,
                k_norm: cfg
                    .qk_norm
                    .then(|| w.rms_norm(&format!("{p}.self_attn.k_norm"), hd, eps))
                    .transpose()?,
                post_attn_norm: w.rms_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
                gate_proj: w.linear(&format!("{p}.mlp.gate_proj"), d, cfg.intermediate_size, mb)?,
                up_proj: w.linear(&format!("{p}.mlp.up_proj"), d, cfg.intermediate_size, mb)?,
                down_proj: w.linear(&format!("{p}.mlp.down_proj"), cfg.intermediate_size, d, mb)?,
                window: if sliding { cfg.sliding_window } else { None },
            })
        })?;
        let norm = w.rms_norm("model.norm", d, eps)?;
        let tail = Tail::load(w, embed, norm, cfg.tie_word_embeddings, (d, cfg.vocab_size))?;
        let rope = Rope::new(
            hd,
            cfg.rope_theta,
            cfg.rope_traditional,
            cfg.rope_scaling.as_ref(),
        )?;
        Ok(Llama {
            cfg,
            tail,
            layers,
            rope,
        })
    }
}

impl Architecture for Llama {
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
            let q = step.project(i, Target::Q, &layer.q_proj, &x)?;
            let k = step.project(i, Target::K, &layer.k_proj, &x)?;
            let v = step.project(i, Target::V, &layer.v_proj, &x)?;
            let q = q.reshape(&[b, t, h_heads, hd])?;
            let k = k.reshape(&[b, t, kv_heads, hd])?;
            let v = v.reshape(&[b, t, kv_heads, hd])?;
            let (q, k) = match (&layer.q_norm, &layer.k_norm) {
                (Some(qn), Some(kn)) => (qn.forward(&q)?, kn.forward(&k)?),
                _ => (q, k),
            };
            let mask = masks.for_layer(layer.window);
            let attn_out = attend(
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
            let attn_out = step.hook(HookName::AttnOut(i), attn_out)?;
            h = step.hook(HookName::ResidMid(i), h.add(&attn_out)?)?;
            let x = layer.post_attn_norm.hooked(&h, HookName::ln2(i), step)?;
            let gate = step.project(i, Target::Gate, &layer.gate_proj, &x)?;
            let up = step.project(i, Target::Up, &layer.up_proj, &x)?;
            let post = gated_mlp(i, gate, up, Act::Silu, step)?;
            let down = step.project(i, Target::Down, &layer.down_proj, &post)?;
            let mlp_out = step.hook(HookName::MlpOut(i), down)?;
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
