//! Qwen3 mixture-of-experts models (`model_type` "qwen3_moe", e.g. Qwen3-30B-A3B). Reference:
//! mlx-lm `mlx_lm/models/qwen3_moe.py` and `switch_layers.py` (`SwitchGLU`).
//!
//! Qwen3 attention (q/k norms, explicit `head_dim`) with a sparse MLP on layer `i` when
//! `i ∉ mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0` (dense SwiGLU otherwise). The
//! sparse MLP routes each token: `softmax(gate(x))` over all experts, the `num_experts_per_tok`
//! most likely experts (renormalized when `norm_topk_prob`), each a SwiGLU of width
//! `moe_intermediate_size`, their outputs summed with the router weights. Experts are applied
//! per token through MLX's `gather_mm` / `gather_qmm` on weights stacked `[experts, out, in]`.
//!
//! Checkpoints come in two layouts: Hugging Face's per-expert keys
//! (`mlp.experts.E.{gate,up,down}_proj.weight`), stacked at load by [`sanitize`], and
//! mlx-community's already stacked `mlp.switch_mlp.{gate,up,down}_proj.*`.
//!
//! The router (and its hook points `mlp.hook_router_logits`, `hook_expert_ids`,
//! `hook_expert_weights`, `hook_expert_out`) is the shared [`super::moe::Router`].
//! `blocks.{i}.mlp.hook_post` on a sparse layer is `[batch, pos, k, moe_intermediate_size]`: the
//! chosen experts' activations (before the router weights), in the order of `hook_expert_ids`
//! (highest router logit first); `mlp.hook_pre` and `mlp.hook_pre_linear` are those experts'
//! gate and up projections, shaped the same.

use mlx_rs::{ops, Array};
use serde::Deserialize;

use super::layers::{
    attend, gated_mlp, Act, Heads, KvCache, Linear, Mask, RmsNorm, Rope, RopeScaling, Stack, Step,
    Tail,
};
use super::moe::{Router, Weighting};
use super::validate;
use super::weights::Weights;
use super::{Architecture, Dims};
use crate::error::{Error, Result};
use crate::hooks::HookName;

fn default_rope_theta() -> f32 {
    1_000_000.0
}
fn default_one() -> usize {
    1
}

/// config.json of a Qwen3-MoE checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    /// Width of the dense MLP layers (`mlp_only_layers`).
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub num_key_value_heads: Option<i32>,
    pub head_dim: Option<i32>,
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub num_experts: i32,
    pub num_experts_per_tok: i32,
    pub moe_intermediate_size: i32,
    #[serde(default = "default_one")]
    pub decoder_sparse_step: usize,
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
    #[serde(default)]
    pub norm_topk_prob: bool,
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

    /// Checks every number before anything is allocated ([`Qwen3Moe::load`] calls it).
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
        if self.num_experts > 0 {
            validate::count("num_experts", self.num_experts, validate::MAX_EXPERTS)?;
            validate::count(
                "num_experts_per_tok",
                self.num_experts_per_tok,
                self.num_experts.into(),
            )?;
            validate::count(
                "moe_intermediate_size",
                self.moe_intermediate_size,
                validate::MAX_DIM,
            )?;
        } else if self.num_experts < 0 {
            validate::count("num_experts", self.num_experts, validate::MAX_EXPERTS)?;
        }
        Ok(())
    }
    /// Whether layer `i` has the sparse (mixture-of-experts) MLP.
    pub fn is_sparse(&self, i: usize) -> bool {
        !self.mlp_only_layers.contains(&i)
            && self.num_experts > 0
            && (i + 1) % self.decoder_sparse_step.max(1) == 0
    }
}

/// Stack Hugging Face per-expert weights (`mlp.experts.E.{gate,up,down}_proj.*`) into the
/// `mlp.switch_mlp.*` tensors `[experts, ...]` that mlx-community checkpoints store.
fn sanitize(cfg: &Config, w: &mut Weights) -> Result<()> {
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}.mlp");
        if !w.contains(&format!("{p}.experts.0.up_proj.weight")) {
            continue;
        }
        for proj in ["gate_proj", "up_proj", "down_proj"] {
            for part in ["weight", "scales", "biases"] {
                if !w.contains(&format!("{p}.experts.0.{proj}.{part}")) {
                    continue;
                }
                let keys: Vec<String> = (0..cfg.num_experts)
                    .map(|e| format!("{p}.experts.{e}.{proj}.{part}"))
                    .collect();
                if let Some(k) = keys.iter().find(|k| !w.contains(k)) {
                    return Err(Error::Model(format!(
                        "missing tensor {k}: config.json says num_experts = {}, so experts \
                         0..{} of {p} must all be stored",
                        cfg.num_experts, cfg.num_experts
                    )));
                }
                let per_expert = keys
                    .iter()
                    .map(|k| w.take_raw(k))
                    .collect::<Result<Vec<_>>>()?;
                let first = per_expert[0].shape().to_vec();
                if let Some(e) = per_expert.iter().position(|a| a.shape() != first) {
                    return Err(Error::Model(format!(
                        "tensor {p}.experts.{e}.{proj}.{part} has shape {:?}, expert 0's is {first:?}",
                        per_expert[e].shape()
                    )));
                }
                w.insert(
                    &format!("{p}.switch_mlp.{proj}.{part}"),
                    ops::stack(&per_expert, 0)?,
                );
            }
        }
    }
    Ok(())
}

/// The sparse MLP: router and stacked experts.
struct Moe {
    router: Linear,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

enum Mlp {
    Dense {
        gate_proj: Linear,
        up_proj: Linear,
        down_proj: Linear,
    },
    Sparse(Moe),
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
    mlp: Mlp,
}

/// A loaded Qwen3-MoE model.
pub struct Qwen3Moe {
    pub cfg: Config,
    tail: Tail,
    layers: Stack<Block>,
    rope: Rope,
}

impl Qwen3Moe {
    pub fn load(cfg: Config, w: &mut Weights) -> Result<Qwen3Moe> {
        cfg.validate()?;
        w.check_layers(cfg.num_hidden_layers)?;
        let (d, h, kv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim(),
        );
        let eps = cfg.rms_norm_eps;
        sanitize(&cfg, w)?;
        let embed = w.embedding("model.embed_tokens", cfg.vocab_size, d)?;
        let layers = Stack::load(w, cfg.num_hidden_layers, |w, i| {
            let p = format!("model.layers.{i}");
            let mlp = if cfg.is_sparse(i) {
                let (e, ff) = (cfg.num_experts, cfg.moe_intermediate_size);
                Mlp::Sparse(Moe {
                    router: w.linear(&format!("{p}.mlp.gate"), d, e, false)?,
                    gate_proj: w.experts(&format!("{p}.mlp.switch_mlp.gate_proj"), e, d, ff)?,
                    up_proj: w.experts(&format!("{p}.mlp.switch_mlp.up_proj"), e, d, ff)?,
                    down_proj: w.experts(&format!("{p}.mlp.switch_mlp.down_proj"), e, ff, d)?,
                })
            } else {
                let ff = cfg.intermediate_size;
                Mlp::Dense {
                    gate_proj: w.linear(&format!("{p}.mlp.gate_proj"), d, ff, false)?,
                    up_proj: w.linear(&format!("{p}.mlp.up_proj"), d, ff, false)?,
                    down_proj: w.linear(&format!("{p}.mlp.down_proj"), ff, d, false)?,
                }
            };
            Ok(Block {
                input_norm: w.rms_norm(&format!("{p}.input_layernorm"), d, eps)?,
                q_proj: w.linear(&format!("{p}.self_attn.q_proj"), d, h * hd, false)?,
                k_proj: w.linear(&format!("{p}.self_attn.k_proj"), d, kv * hd, false)?,
                v_proj: w.linear(&format!("{p}.self_attn.v_proj"), d, kv * hd, false)?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), h * hd, d, false)?,
                q_norm: w.rms_norm(&format!("{p}.self_attn.q_norm"), hd, eps)?,
                k_norm: w.rms_norm(&format!("{p}.self_attn.k_norm"), hd, eps)?,
                post_attn_norm: w.rms_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
                mlp,
            })
        })?;
        let norm = w.rms_norm("model.norm", d, eps)?;
        let tail = Tail::load(w, embed, norm, cfg.tie_word_embeddings, (d, cfg.vocab_size))?;
        let rope = Rope::new(hd, cfg.rope_theta, false, cfg.rope_scaling.as_ref())?;
        Ok(Qwen3Moe {
            cfg,
            tail,
            layers,
            rope,
        })
    }

    /// The MLP of block `i` on normalized `x` `[B, T, d]`; returns its output `[B, T, d]`.
    fn mlp(&self, i: usize, mlp: &Mlp, x: &Array, step: &mut Step) -> Result<Array> {
        match mlp {
            Mlp::Dense {
                gate_proj,
                up_proj,
                down_proj,
            } => {
                let (gate, up) = (gate_proj.forward(x)?, up_proj.forward(x)?);
                let post = gated_mlp(i, gate, up, Act::Silu, step)?;
                down_proj.forward(&post)
            }
            Mlp::Sparse(moe) => {
                let router = self.router_of();
                let route = router.route(i, moe.router.forward(x)?, step)?;
                // [B, T, 1, 1, d] against experts `route.ids` [B, T, k] -> [B, T, k, 1, ff],
                // hooked as [B, T, k, ff].
                let xe = x.expand_dims_axes(&[-2, -3])?;
                let gate = moe.gate_proj.gather(&xe, &route.ids)?.squeeze_axes(&[-2])?;
                let up = moe.up_proj.gather(&xe, &route.ids)?.squeeze_axes(&[-2])?;
                let post = gated_mlp(i, gate, up, Act::Silu, step)?;
                let out = moe
                    .down_proj
                    .gather(&post.expand_dims(-2)?, &route.ids)?
                    .squeeze_axes(&[-2])?;
                router.mix(i, out, &route, step)
            }
        }
    }

    /// The router of every sparse layer: softmax over all experts, then the top k.
    fn router_of(&self) -> Router {
        Router {
            n_experts: self.cfg.num_experts,
            k: self.cfg.num_experts_per_tok,
            weighting: Weighting::SoftmaxAll {
                renormalize: self.cfg.norm_topk_prob,
            },
        }
    }
}

impl Architecture for Qwen3Moe {
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
        for (i, layer) in self.layers.upto(n) {
            let (b, t) = (h.shape()[0], h.shape()[1]);
            h = step.hook(HookName::ResidPre(i), h)?;
            let x = layer.input_norm.hooked(&h, HookName::ln1(i), step)?;
            let q = layer.q_proj.forward(&x)?.reshape(&[b, t, h_heads, hd])?;
            let k = layer.k_proj.forward(&x)?.reshape(&[b, t, kv_heads, hd])?;
            let v = layer.v_proj.forward(&x)?.reshape(&[b, t, kv_heads, hd])?;
            let q = layer.q_norm.forward(&q)?;
            let k = layer.k_norm.forward(&k)?;
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
            let mlp_out = self.mlp(i, &layer.mlp, &x, step)?;
            let mlp_out = step.hook(HookName::MlpOut(i), mlp_out)?;
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
    fn router(&self, layer: usize) -> Option<Router> {
        self.cfg.is_sparse(layer).then(|| self.router_of())
    }
    fn dims(&self) -> Dims {
        let c = &self.cfg;
        Dims {
            n_layers: self.layers.total(),
            d_model: c.hidden_size,
            heads: c.heads(),
            // The width of one expert (every layer is sparse in released Qwen3-MoE models).
            d_mlp: if c.is_sparse(0) {
                c.moe_intermediate_size
            } else {
                c.intermediate_size
            },
            vocab: c.vocab_size,
        }
    }
}
