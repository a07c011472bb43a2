//! Qwen3 dense models (`model_type` "qwen3"). Reference: mlx-lm `mlx_lm/models/qwen3.py`.
//!
//! A Llama decoder with RMSNorm over each head's queries and keys before RoPE (`q_norm`,
//! `k_norm`), an explicit `head_dim` (often not `hidden_size / heads`) and no biases. Like
//! mlx-lm, `sliding_window` is ignored. This file only reads the config; the network is
//! [`llama::Llama`].

use serde::Deserialize;

use super::layers::RopeScaling;
use super::llama;

fn default_true() -> bool {
    true
}

/// transformers >= 5 nests `rope_theta` and the scaling under `rope_parameters`.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    pub rope_theta: Option<f32>,
    #[serde(flatten)]
    pub scaling: RopeScaling,
}

/// config.json of a Qwen3 checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub num_key_value_heads: Option<i32>,
    pub head_dim: i32,
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    pub rope_theta: Option<f32>,
    pub rope_scaling: Option<RopeScaling>,
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

impl Config {
    /// `rope_theta`, from the top level or from `rope_parameters`; 1e6 (Qwen3's) if neither.
    pub fn rope_theta(&self) -> f32 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref().and_then(|p| p.rope_theta))
            .unwrap_or(1_000_000.0)
    }
}

impl From<Config> for llama::Config {
    fn from(c: Config) -> llama::Config {
        llama::Config {
            rope_theta: c.rope_theta(),
            hidden_size: c.hidden_size,
            num_hidden_layers: c.num_hidden_layers,
            intermediate_size: c.intermediate_size,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads,
            head_dim: Some(c.head_dim),
            rms_norm_eps: c.rms_norm_eps,
            vocab_size: c.vocab_size,
            rope_traditional: false,
            rope_scaling: c.rope_scaling.or(c.rope_parameters.map(|p| p.scaling)),
            tie_word_embeddings: c.tie_word_embeddings,
            attention_bias: false,
            mlp_bias: false,
            sliding_window: None,
            layer_types: None,
            qk_norm: true,
            qkv_bias: false,
        }
    }
}
