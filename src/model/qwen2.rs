//! Qwen2 / Qwen2.5 (`model_type` "qwen2"). Reference: mlx-lm `mlx_lm/models/qwen2.py`.
//!
//! A Llama decoder with biases on the q/k/v projections (always; there is no config flag) and
//! `head_dim = hidden_size / num_attention_heads`. Like mlx-lm, `sliding_window` is ignored
//! (`use_sliding_window` is false in every released checkpoint). This file only reads the
//! config; the network is [`llama::Llama`].

use serde::Deserialize;

use super::layers::RopeScaling;
use super::llama;

fn default_rope_theta() -> f32 {
    1_000_000.0
}
fn default_true() -> bool {
    true
}

/// config.json of a Qwen2 checkpoint.
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
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

impl From<Config> for llama::Config {
    fn from(c: Config) -> llama::Config {
        llama::Config {
            hidden_size: c.hidden_size,
            num_hidden_layers: c.num_hidden_layers,
            intermediate_size: c.intermediate_size,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads,
            head_dim: None,
            rms_norm_eps: c.rms_norm_eps,
            vocab_size: c.vocab_size,
            rope_theta: c.rope_theta,
            rope_traditional: c.rope_traditional,
            rope_scaling: c.rope_scaling,
            tie_word_embeddings: c.tie_word_embeddings,
            attention_bias: false,
            mlp_bias: false,
            sliding_window: None,
            layer_types: None,
            qk_norm: false,
            qkv_bias: true,
        }
    }
}
