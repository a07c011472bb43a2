//! OpenAI's gpt-oss models (`model_type` "gpt_oss", gpt-oss-20b and -120b). Reference: mlx-lm
//! `mlx_lm/models/gpt_oss.py`, `switch_layers.py` (`SwitchGLU`), `activations.py`
//! (`SwigluOAI`) and `rope_utils.py` (`YarnRoPE`).
//!
//! Pre-norm blocks with biased q/k/v/o projections, YaRN rotary embeddings, layers alternating
//! between a sliding window and full attention (`layer_types`), and per-head attention sinks:
//! a learned logit per query head that joins every softmax as a key with no value. Every MLP is
//! a mixture of experts: a biased router picks the `num_experts_per_tok` experts with the
//! highest logits and weighs them by the softmax of those logits; each expert is a biased
//! SwiGLU variant (`(clip(up, ±limit) + 1) * g * sigmoid(1.702 g)`, `g = min(gate, limit)`).
//!
//! Checkpoints come in three layouts, all stored with the experts' weights `[experts, out, in]`:
//! - mlx-lm's own names, what `mlx_lm.convert` saves (mlx-community's float and
//!   `MXFP4-Q8`-style folders): `mlp.experts.{gate,up,down}_proj.{weight,bias}` (plus `.scales`
//!   when quantized; MXFP4 experts have uint8 scales and no `.biases`);
//! - OpenAI's (openai/gpt-oss-*): MXFP4 experts as `mlp.experts.gate_up_proj_blocks` (uint8
//!   `[experts, 2 ff, in / 32, 16]`), `_scales` (uint8 `[experts, 2 ff, in / 32]`) and
//!   `gate_up_proj_bias`, gate and up interleaved by row (gate `j` is row `2j`), and
//!   `down_proj_{blocks,scales,bias}`; [`sanitize`] turns them into mlx-lm's names.
//!
//! `blocks.{i}.mlp.hook_post` is `[batch, pos, k, intermediate_size]`: the chosen experts'
//! activations (before the router weights), highest router weight first; `mlp.hook_pre` and
//! `mlp.hook_pre_linear` are those experts' gate and up projections before clamping.
//! `hook_pattern` leaves out the sink: its rows sum to one minus the sink's share. The router
//! is the shared one of [`super::moe`], with its hook points and routing interventions.

use mlx_rs::{Array, Dtype};
use serde::Deserialize;

use super::layers::{
    attend_with_sinks, gated_mlp, Act, Heads, KvCache, Linear, Masks, RmsNorm, Rope, RopeScaling,
    Stack, Step, Tail,
};
use super::moe::{Router, Weighting};
use super::validate;
use super::weights::Weights;
use super::{Architecture, Dims};
use crate::arrays::dtype_name;
use crate::error::{Error, Result};
use crate::hooks::HookName;

fn default_rope_theta() -> f32 {
    150_000.0
}
fn default_eps() -> f32 {
    1e-5
}
fn default_head_dim() -> i32 {
    64
}
fn default_window() -> i32 {
    128
}
fn default_limit() -> f32 {
    7.0
}

/// SwiGLU-OAI's `alpha` (fixed in mlx-lm and in OpenAI's code).
const SWIGLU_ALPHA: f32 = 1.702;

/// config.json of a gpt-oss checkpoint. Defaults are mlx-lm's `ModelArgs` defaults where it
/// has one for a field that does not size a tensor.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    /// The width of one expert.
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub num_key_value_heads: Option<i32>,
    /// mlx-lm's default is 64 (not hidden / heads).
    #[serde(default = "default_head_dim")]
    pub head_dim: i32,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub num_local_experts: i32,
    pub num_experts_per_tok: i32,
    #[serde(default = "default_window")]
    pub sliding_window: i32,
    /// `sliding_attention` or `full_attention` per layer; default: even layers sliding.
    pub layer_types: Option<Vec<String>>,
    /// The clamp of SwiGLU-OAI (mlx-lm hard-codes 7.0, the value every release ships).
    #[serde(default = "default_limit")]
    pub swiglu_limit: f32,
}

impl Config {
    /// The attention geometry: heads, head width, score scale.
    pub fn heads(&self) -> Heads {
        Heads {
            n: self.num_attention_heads,
            kv: self.n_kv_heads(),
            d: self.head_dim,
            scale: (self.head_dim as f32).powf(-0.5),
            softcap: None,
        }
    }

    pub fn n_kv_heads(&self) -> i32 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Checks every number before anything is allocated ([`GptOss::load`] calls it).
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
        validate::rope_scaling(self.rope_scaling.as_ref())?;
        validate::count(
            "num_local_experts",
            self.num_local_experts,
            validate::MAX_EXPERTS,
        )?;
        validate::count(
            "num_experts_per_tok",
            self.num_experts_per_tok,
            self.num_local_experts.into(),
        )?;
        validate::count("sliding_window", self.sliding_window, i32::MAX.into())?;
        validate::positive("swiglu_limit", self.swiglu_limit)?;
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(Error::Config {
                    key: "layer_types".into(),
                    value: format!("{} entries", types.len()),
                    why: format!("must have one per layer ({})", self.num_hidden_layers),
                });
            }
            if let Some(bad) = types
                .iter()
                .find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention"))
            {
                return Err(Error::Config {
                    key: "layer_types".into(),
                    value: format!("{bad:?}"),
                    why: "must be \"sliding_attention\" or \"full_attention\"".into(),
                });
            }
        }
        Ok(())
    }

    /// Whether layer `i` attends through the sliding window.
    pub fn is_sliding(&self, i: usize) -> bool {
        match &self.layer_types {
            Some(types) => types[i] == "sliding_attention",
            None => i % 2 == 0,
        }
    }
}

/// One MXFP4 tensor of OpenAI's layout: `blocks` uint8 `[experts, rows, in / 32, 16]` and
/// `scales` uint8 `[experts, rows, in / 32]`, checked against the layer's sizes, with the
/// blocks viewed as MLX's packed words `[experts, rows, in / 8]`.
fn openai_mxfp4(
    w: &mut Weights,
    stem: &str,
    (experts, rows, in_dim): (i32, i32, i32),
) -> Result<(Array, Array)> {
    let blocks = w.take_raw(&format!("{stem}_blocks"))?;
    let scales = w.take_raw(&format!("{stem}_scales"))?;
    let groups = in_dim / 32;
    let (want_b, want_s) = ([experts, rows, groups, 16], [experts, rows, groups]);
    if in_dim % 32 != 0
        || blocks.dtype() != Dtype::Uint8
        || scales.dtype() != Dtype::Uint8
        || blocks.shape() != want_b
        || scales.shape() != want_s
    {
        return Err(Error::Model(format!(
            "MXFP4 tensors {stem}_blocks ({} {:?}) and {stem}_scales ({} {:?}) do not fit the \
             layer: expected uint8 {want_b:?} and uint8 {want_s:?}",
            dtype_name(blocks.dtype()),
            blocks.shape(),
            dtype_name(scales.dtype()),
            scales.shape()
        )));
    }
    let words = blocks
        .view_dtype(Dtype::Uint32)?
        .reshape(&[experts, rows, in_dim / 8])?;
    Ok((words, scales))
}

/// Rows `0, 2, 4, ...` and `1, 3, 5, ...` of `a` `[experts, 2 n, ...]` (gate and up of a fused
/// interleaved `gate_up_proj`), each `[experts, n, ...]`.
fn deinterleave(a: &Array) -> Result<(Array, Array)> {
    let shape = a.shape().to_vec();
    let mut split = vec![shape[0], shape[1] / 2, 2];
    split.extend_from_slice(&shape[2..]);
    let pairs = a.reshape(&split)?;
    let pick =
        |j: i32| -> Result<Array> { Ok(pairs.take_axis(Array::from_int(j), 2)?.contiguous()?) };
    Ok((pick(0)?, pick(1)?))
}

/// OpenAI's expert tensors (`gate_up_proj_{blocks,scales,bias}`, `down_proj_{blocks,scales,
/// bias}`) under mlx-lm's names, gate and up split from their interleaved rows. Folders
/// already in mlx-lm's layout pass through unchanged.
fn sanitize(cfg: &Config, w: &mut Weights) -> Result<()> {
    let (e, d, ff) = (
        cfg.num_local_experts,
        cfg.hidden_size,
        cfg.intermediate_size,
    );
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}.mlp.experts");
        if !w.contains(&format!("{p}.gate_up_proj_blocks")) {
            continue;
        }
        let (words, scales) = openai_mxfp4(w, &format!("{p}.gate_up_proj"), (e, 2 * ff, d))?;
        let bkey = format!("{p}.gate_up_proj_bias");
        let bias = w.take_raw(&bkey)?;
        if bias.shape() != [e, 2 * ff] {
            return Err(Error::Model(format!(
                "tensor {bkey} has shape {:?}, expected {:?}",
                bias.shape(),
                [e, 2 * ff]
            )));
        }
        for (part, (gate, up)) in [
            ("weight", deinterleave(&words)?),
            ("scales", deinterleave(&scales)?),
            ("bias", deinterleave(&bias)?),
        ] {
            w.insert(&format!("{p}.gate_proj.{part}"), gate);
            w.insert(&format!("{p}.up_proj.{part}"), up);
        }
        let (words, scales) = openai_mxfp4(w, &format!("{p}.down_proj"), (e, d, ff))?;
        w.insert(&format!("{p}.down_proj.weight"), words);
        w.insert(&format!("{p}.down_proj.scales"), scales);
        w.rename(
            &format!("{p}.down_proj_bias"),
            &format!("{p}.down_proj.bias"),
        );
    }
    Ok(())
}

/// The mixture-of-experts MLP: router and stacked experts (each with a bias).
struct Moe {
    router: Linear,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct Block {
    input_norm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Per-head sink logits `[heads]`.
    sinks: Array,
    post_attn_norm: RmsNorm,
    mlp: Moe,
    /// The sliding window, on sliding layers.
    window: Option<i32>,
}

/// A loaded gpt-oss model.
pub struct GptOss {
    pub cfg: Config,
    tail: Tail,
    layers: Stack<Block>,
    rope: Rope,
}

impl GptOss {
    pub fn load(cfg: Config, w: &mut Weights) -> Result<GptOss> {
        cfg.validate()?;
        w.check_layers(cfg.num_hidden_layers)?;
        let (d, h, kv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.n_kv_heads(),
            cfg.head_dim,
        );
        let (e, ff, eps) = (
            cfg.num_local_experts,
            cfg.intermediate_size,
            cfg.rms_norm_eps,
        );
        sanitize(&cfg, w)?;
        let embed = w.embedding("model.embed_tokens", cfg.vocab_size, d)?;
        let layers = Stack::load(w, cfg.num_hidden_layers, |w, i| {
            let p = format!("model.layers.{i}");
            let x = format!("{p}.mlp.experts");
            Ok(Block {
                input_norm: w.rms_norm(&format!("{p}.input_layernorm"), d, eps)?,
                q_proj: w.linear(&format!("{p}.self_attn.q_proj"), d, h * hd, true)?,
                k_proj: w.linear(&format!("{p}.self_attn.k_proj"), d, kv * hd, true)?,
                v_proj: w.linear(&format!("{p}.self_attn.v_proj"), d, kv * hd, true)?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), h * hd, d, true)?,
                sinks: w.take(&format!("{p}.self_attn.sinks"), &[h])?,
                post_attn_norm: w.rms_norm(&format!("{p}.post_attention_layernorm"), d, eps)?,
                mlp: Moe {
                    router: w.linear(&format!("{p}.mlp.router"), d, e, true)?,
                    gate_proj: w.experts_with_bias(&format!("{x}.gate_proj"), e, d, ff)?,
                    up_proj: w.experts_with_bias(&format!("{x}.up_proj"), e, d, ff)?,
                    down_proj: w.experts_with_bias(&format!("{x}.down_proj"), e, ff, d)?,
                },
                window: cfg.is_sliding(i).then_some(cfg.sliding_window),
            })
        })?;
        let norm = w.rms_norm("model.norm", d, eps)?;
        // gpt-oss never ties its embeddings (mlx-lm always builds an `lm_head`).
        let tail = Tail::load(w, embed, norm, false, (d, cfg.vocab_size))?;
        let rope = Rope::new(hd, cfg.rope_theta, false, cfg.rope_scaling.as_ref())?;
        Ok(GptOss {
            cfg,
            tail,
            layers,
            rope,
        })
    }

    /// The MLP of block `i` on normalized `x` `[B, T, d]`; returns its output `[B, T, d]`.
    fn mlp(&self, i: usize, moe: &Moe, x: &Array, step: &mut Step) -> Result<Array> {
        // The shared router (src/model/moe.rs): the `k` experts with the highest logits, their
        // weights the softmax over those `k` logits (mlx-lm's), with the router hook points.
        let router = self.router_of();
        let route = router.route(i, moe.router.forward(x)?, step)?;
        let chosen = &route.ids;
        // [B, T, 1, 1, d] against experts `chosen` [B, T, k] -> [B, T, k, 1, ff], hooked as
        // [B, T, k, ff].
        let xe = x.expand_dims_axes(&[-2, -3])?;
        let gate = moe.gate_proj.gather(&xe, chosen)?.squeeze_axes(&[-2])?;
        let up = moe.up_proj.gather(&xe, chosen)?.squeeze_axes(&[-2])?;
        let act = Act::SwigluOai {
            alpha: SWIGLU_ALPHA,
            limit: self.cfg.swiglu_limit,
        };
        let post = gated_mlp(i, gate, up, act, step)?;
        let out = moe
            .down_proj
            .gather(&post.expand_dims(-2)?, chosen)?
            .squeeze_axes(&[-2])?;
        router.mix(i, out, &route, step)
    }

    /// Every layer's router: the top `k` logits, softmax over those.
    fn router_of(&self) -> Router {
        Router {
            n_experts: self.cfg.num_local_experts,
            k: self.cfg.num_experts_per_tok,
            weighting: Weighting::SoftmaxChosen,
        }
    }
}

impl Architecture for GptOss {
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
            let q = layer.q_proj.forward(&x)?.reshape(&[b, t, h_heads, hd])?;
            let k = layer.k_proj.forward(&x)?.reshape(&[b, t, kv_heads, hd])?;
            let v = layer.v_proj.forward(&x)?.reshape(&[b, t, kv_heads, hd])?;
            let attn_out = attend_with_sinks(
                i,
                q,
                k,
                v,
                &self.rope,
                cache.as_deref_mut(),
                masks.for_layer(layer.window),
                &heads,
                Some(&layer.sinks),
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
    fn router(&self, _layer: usize) -> Option<Router> {
        Some(self.router_of())
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
