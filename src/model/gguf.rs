//! GGUF checkpoints (llama.cpp's format): tensors through MLX's GGUF reader (Q4_0, Q4_1 and Q8_0
//! arrive as MLX affine triplets; F16/F32 as plain arrays), renamed to Hugging Face keys, and a
//! config built from the metadata, so the same architecture code runs them.

use std::collections::HashMap;
use std::path::Path;

use mlx_rs::io::{GgufFile, GgufMetadataValue};
use mlx_rs::Array;

use super::layers::RopeScaling;
use super::llama;
use crate::error::{Error, Result};

/// An opened GGUF file: its tensors (with Hugging Face names) and metadata access.
pub struct Gguf {
    pub file: GgufFile,
    pub arch: String,
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf> {
        check_header(path)?;
        let file = GgufFile::load(path)
            .map_err(|e| Error::Model(format!("{}: cannot read GGUF: {e}", path.display())))?;
        let arch = string(&file, "general.architecture")?
            .ok_or_else(|| Error::Model(format!("{}: no general.architecture", path.display())))?;
        Ok(Gguf { file, arch })
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    /// A numeric metadata value.
    pub fn number(&self, key: &str) -> Result<Option<f64>> {
        number(&self.file, key)
    }

    fn required(&self, suffix: &str) -> Result<f64> {
        let key = self.key(suffix);
        self.number(&key)?
            .ok_or_else(|| Error::Model(format!("GGUF metadata lacks {key}")))
    }

    /// A Llama-family config from the metadata (llama, qwen2, qwen3 and mistral GGUFs).
    pub fn llama_config(&self, tensors: &HashMap<String, Array>) -> Result<llama::Config> {
        let heads = self.required("attention.head_count")? as i32;
        let hidden = self.required("embedding_length")? as i32;
        let vocab = match self.number(&self.key("vocab_size"))? {
            Some(v) => v as i32,
            None => tensors
                .get("model.embed_tokens.weight")
                .map(|t| t.shape()[0])
                .ok_or_else(|| Error::Model("GGUF has no token embedding".into()))?,
        };
        let head_dim = self
            .number(&self.key("attention.key_length"))?
            .map(|v| v as i32);
        Ok(llama::Config {
            hidden_size: hidden,
            num_hidden_layers: self.required("block_count")? as usize,
            intermediate_size: self.required("feed_forward_length")? as i32,
            num_attention_heads: heads,
            num_key_value_heads: self
                .number(&self.key("attention.head_count_kv"))?
                .map(|v| v as i32),
            head_dim,
            rms_norm_eps: self.required("attention.layer_norm_rms_epsilon")? as f32,
            vocab_size: vocab,
            rope_theta: self.number(&self.key("rope.freq_base"))?.unwrap_or(10000.0) as f32,
            rope_traditional: false,
            rope_scaling: None::<RopeScaling>,
            tie_word_embeddings: !tensors.contains_key("lm_head.weight"),
            attention_bias: tensors.contains_key("model.layers.0.self_attn.o_proj.bias"),
            mlp_bias: false,
            sliding_window: None,
            layer_types: None,
            qk_norm: tensors.contains_key("model.layers.0.self_attn.q_norm.weight"),
            qkv_bias: tensors.contains_key("model.layers.0.self_attn.q_proj.bias"),
        })
    }

    /// All tensors, renamed to Hugging Face keys. For llama-architecture files, the Q and K
    /// projections are un-permuted (llama.cpp stores them interleaved for its RoPE).
    pub fn tensors(&self, cfg_heads: Option<(i32, i32)>) -> Result<HashMap<String, Array>> {
        let raw = self
            .file
            .arrays()
            .map_err(|e| Error::Model(format!("cannot read GGUF tensors: {e}")))?;
        let mut out = HashMap::with_capacity(raw.len());
        for (name, array) in raw {
            let Some(hf) = hf_name(&name) else {
                return Err(Error::Model(format!(
                    "unsupported GGUF tensor {name:?} (architecture {})",
                    self.arch
                )));
            };
            out.insert(hf, array);
        }
        if self.arch == "llama" {
            let (heads, kv_heads) = cfg_heads.ok_or_else(|| {
                Error::Model("llama GGUF: head counts needed to un-permute Q/K".into())
            })?;
            let keys: Vec<String> = out.keys().cloned().collect();
            for key in keys {
                let n = if key.contains(".self_attn.q_proj.") {
                    heads
                } else if key.contains(".self_attn.k_proj.") {
                    kv_heads
                } else {
                    continue;
                };
                let a = out.remove(&key).expect("key listed above");
                out.insert(key, unpermute_rows(&a, n)?);
            }
        }
        Ok(out)
    }

    /// Head counts `(heads, kv_heads)` from the metadata.
    pub fn head_counts(&self) -> Result<(i32, i32)> {
        let heads = self.required("attention.head_count")? as i32;
        let kv = self
            .number(&self.key("attention.head_count_kv"))?
            .map_or(heads, |v| v as i32);
        Ok((heads, kv))
    }
}

/// Undo llama.cpp's Q/K row order: rows viewed as `(n_heads, head_dim/2, 2, ...)`, axes 1 and 2
/// swapped, and reshaped back. Rows are independent, so packed weights, scales and biases permute alike.
fn unpermute_rows(a: &Array, n_heads: i32) -> Result<Array> {
    let shape = a.shape().to_vec();
    let rows = shape[0];
    if rows % (2 * n_heads) != 0 {
        return Err(Error::Model(format!(
            "cannot un-permute a tensor of shape {shape:?} for {n_heads} heads"
        )));
    }
    let rest: Vec<i32> = shape[1..].to_vec();
    let mut view = vec![n_heads, rows / n_heads / 2, 2];
    view.extend(&rest);
    let mut axes: Vec<i32> = vec![0, 2, 1];
    axes.extend((3..view.len() as i32).collect::<Vec<_>>());
    Ok(a.reshape(&view)?.transpose_axes(&axes)?.reshape(&shape)?)
}

/// GGUF tensor name -> Hugging Face name.
fn hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (i, part) = rest.split_once('.')?;
            let i: usize = i.parse().ok()?;
            let local = match part {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{i}.{local}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

/// A cheap check before handing the file to MLX: magic, version, and a size that can hold the
/// header, so a wrong or truncated file gets a clear message.
fn check_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = [0u8; 8];
    if len < 24 || f.read_exact(&mut head).is_err() {
        return Err(Error::Model(format!(
            "{}: not a GGUF file (only {len} bytes)",
            path.display()
        )));
    }
    if &head[..4] != b"GGUF" {
        return Err(Error::Model(format!(
            "{}: not a GGUF file (bad magic {:?})",
            path.display(),
            String::from_utf8_lossy(&head[..4])
        )));
    }
    let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(2..=3).contains(&version) {
        return Err(Error::Model(format!(
            "{}: unsupported GGUF version {version} (supported: 2, 3)",
            path.display()
        )));
    }
    Ok(())
}

/// A string metadata value.
pub fn string(file: &GgufFile, key: &str) -> Result<Option<String>> {
    match file.get_metadata(key) {
        Ok(Some(GgufMetadataValue::String(s))) => Ok(Some(s)),
        Ok(Some(_)) => Err(Error::Model(format!("GGUF metadata {key} is not a string"))),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::Model(format!("GGUF metadata {key}: {e}"))),
    }
}

/// A scalar numeric metadata value.
pub fn number(file: &GgufFile, key: &str) -> Result<Option<f64>> {
    match file.get_metadata(key) {
        Ok(Some(GgufMetadataValue::Array(a))) if a.size() == 1 => {
            let v = a.as_dtype(mlx_rs::Dtype::Float32)?;
            Ok(Some(v.as_slice::<f32>()[0] as f64))
        }
        Ok(Some(_)) => Err(Error::Model(format!("GGUF metadata {key} is not a number"))),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::Model(format!("GGUF metadata {key}: {e}"))),
    }
}
