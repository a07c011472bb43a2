//! Models: loading from a folder, a `.gguf` file or a Hugging Face repo id; one registry that
//! maps `model_type` to an architecture; the forward pass with hooks, padding and a KV cache.

pub mod anatomy;
pub mod fastmath;
pub mod gemma2;
pub mod gemma3_text;
pub mod gguf;
pub mod gpt_oss;
pub mod layers;
pub mod llama;
pub mod lora;
pub mod moe;
pub mod phi3;
pub mod pipeline;
pub mod quant;
pub mod qwen2;
pub mod qwen3;
pub mod qwen3_moe;
pub mod source;
pub mod validate;
pub mod weights;

use std::collections::HashMap;
use std::path::Path;

use mlx_rs::ops::indexing::TryIndexOp;
use mlx_rs::{Array, Dtype};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::hooks::{HookName, Hooks};
use crate::tokenizer::Tokenizer;
use layers::{Heads, KvCache, Linear, Step, Tail};
use lora::{Adapter, Target};
use pipeline::Pipeline;
use weights::{layer_of, QuantConfig, Weights};

/// Positions a long prompt is run through at a time when generating (see [`Model::prefill`]).
pub const PREFILL_CHUNK: i32 = 256;

/// The architectures mlxi implements, by config.json `model_type`.
pub const SUPPORTED: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt_oss",
];

/// Aliases: model types that run on another type's implementation unchanged.
fn canonical(model_type: &str) -> &str {
    match model_type {
        "mistral" => "llama",
        other => other,
    }
}

/// The `model_type` of a config.json that has only `architectures` (e.g. `Qwen3MoeForCausalLM`).
fn model_type_of_architecture(arch: &str) -> String {
    match arch {
        "Qwen3MoeForCausalLM" => "qwen3_moe".into(),
        "Gemma3ForCausalLM" => "gemma3_text".into(),
        "GptOssForCausalLM" => "gpt_oss".into(),
        other => other.trim_end_matches("ForCausalLM").to_lowercase(),
    }
}

/// A network of one of the supported architectures (Llama also runs Mistral, Qwen2 and Qwen3).
pub enum Net {
    Llama(llama::Llama),
    Gemma2(gemma2::Gemma2),
    Gemma3Text(gemma3_text::Gemma3Text),
    Phi3(phi3::Phi3),
    Qwen3Moe(qwen3_moe::Qwen3Moe),
    GptOss(gpt_oss::GptOss),
}

/// What the model asks of each architecture. The block loop is the architecture's own; the
/// embedding, final norm and unembedding are the shared [`Tail`].
pub trait Architecture {
    /// Run blocks `0..n` (all of them when `n` is None) over the residual stream `h`.
    fn blocks(
        &self,
        h: Array,
        cache: Option<&mut KvCache>,
        step: &mut Step,
        n: Option<usize>,
    ) -> Result<Array>;
    /// The embedding, final norm and unembedding.
    fn tail(&self) -> &Tail;
    /// Quantization of the first block's projections, if any: `(bits, group_size)`.
    fn quantization(&self) -> Option<(i32, i32)>;
    /// The sizes `m.info()` reports.
    fn dims(&self) -> Dims;
    /// Block `layer`'s linear layer `target`, for LoRA adapters; `None` when the architecture
    /// does not have it (or mlxi does not adapt it), which makes an adapter on it an error.
    fn projection_mut(&mut self, _layer: usize, _target: Target) -> Option<&mut Linear> {
        None
    }
    /// Each layer's sliding window (`None`: full attention); empty when no layer has one.
    fn windows(&self) -> Vec<Option<i32>> {
        Vec::new()
    }
    /// The mixture-of-experts router of block `layer`, if that block has one (see [`moe`]).
    fn router(&self, _layer: usize) -> Option<moe::Router> {
        None
    }
}

/// A model's sizes, as `m.info()` reports them.
pub struct Dims {
    pub n_layers: usize,
    pub d_model: i32,
    pub heads: Heads,
    /// The MLP width (of one expert, for mixture-of-experts models).
    pub d_mlp: i32,
    pub vocab: i32,
}

impl Net {
    /// The architecture behind the enum.
    fn arch(&self) -> &dyn Architecture {
        match self {
            Net::Llama(m) => m,
            Net::Gemma2(m) => m,
            Net::Gemma3Text(m) => m,
            Net::Phi3(m) => m,
            Net::Qwen3Moe(m) => m,
            Net::GptOss(m) => m,
        }
    }
    fn arch_mut(&mut self) -> &mut dyn Architecture {
        match self {
            Net::Llama(m) => m,
            Net::Gemma2(m) => m,
            Net::Gemma3Text(m) => m,
            Net::Phi3(m) => m,
            Net::Qwen3Moe(m) => m,
            Net::GptOss(m) => m,
        }
    }
    fn embed(&self, ids: &Array, step: &mut Step) -> Result<Array> {
        self.arch().tail().embed(ids, step)
    }
    fn blocks(
        &self,
        h: Array,
        cache: Option<&mut KvCache>,
        step: &mut Step,
        n: Option<usize>,
    ) -> Result<Array> {
        self.arch().blocks(h, cache, step, n)
    }
    fn final_norm(&self, h: &Array, step: &mut Step) -> Result<Array> {
        self.arch().tail().final_norm(h, step)
    }
    fn unembed(&self, x: &Array) -> Result<Array> {
        self.arch().tail().unembed(x)
    }
    fn n_layers(&self) -> usize {
        self.arch().dims().n_layers
    }
}

/// A config.json read for its architecture and validated: what loading a folder checks before
/// it reads any weights (the fuzz harness drives the same function).
pub enum ArchConfig {
    /// Llama, Mistral, Qwen2 and Qwen3 (converted to the Llama config).
    Llama(llama::Config),
    Gemma2(gemma2::Config),
    Gemma3Text(gemma3_text::Config),
    Phi3(phi3::Config),
    Qwen3Moe(qwen3_moe::Config),
    GptOss(gpt_oss::Config),
}

impl ArchConfig {
    /// The `model_type` (or the type of `architectures[0]`) and its validated config, from the
    /// config.json at `path` (named in errors).
    pub fn from_json(config: &serde_json::Value, path: &Path) -> Result<(String, ArchConfig)> {
        let model_type = config
            .get("model_type")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .or_else(|| {
                config
                    .get("architectures")
                    .and_then(|a| a.get(0))
                    .and_then(|v| v.as_str())
                    .map(model_type_of_architecture)
            })
            .ok_or_else(|| Error::Model(format!("{}: no model_type", path.display())))?;
        let de = |e: serde_json::Error| Error::Json {
            path: path.to_path_buf(),
            source: e,
        };
        let arch = match canonical(&model_type) {
            "llama" => ArchConfig::Llama(parse(config).map_err(de)?),
            "qwen2" => ArchConfig::Llama(parse::<qwen2::Config>(config).map_err(de)?.into()),
            "qwen3" => ArchConfig::Llama(parse::<qwen3::Config>(config).map_err(de)?.into()),
            "qwen3_moe" => ArchConfig::Qwen3Moe(parse(config).map_err(de)?),
            "gemma2" => ArchConfig::Gemma2(parse(config).map_err(de)?),
            "gemma3_text" => ArchConfig::Gemma3Text(parse(config).map_err(de)?),
            "phi3" => ArchConfig::Phi3(parse(config).map_err(de)?),
            "gpt_oss" => ArchConfig::GptOss(parse(config).map_err(de)?),
            other => {
                return Err(Error::Model(format!(
                    "{}: model_type {other:?} is not supported (supported: {})",
                    path.display(),
                    SUPPORTED.join(", ")
                )))
            }
        };
        arch.validate().map_err(|e| e.in_file(path))?;
        Ok((model_type, arch))
    }

    /// The architecture's own checks ([`llama::Config::validate`] and the others).
    /// The number of blocks the config asks for.
    pub fn n_layers(&self) -> usize {
        match self {
            ArchConfig::Llama(c) => c.num_hidden_layers,
            ArchConfig::Gemma2(c) => c.num_hidden_layers,
            ArchConfig::Gemma3Text(c) => c.num_hidden_layers,
            ArchConfig::Phi3(c) => c.num_hidden_layers,
            ArchConfig::Qwen3Moe(c) => c.num_hidden_layers,
            ArchConfig::GptOss(c) => c.num_hidden_layers,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            ArchConfig::Llama(c) => c.validate(),
            ArchConfig::Gemma2(c) => c.validate(),
            ArchConfig::Gemma3Text(c) => c.validate(),
            ArchConfig::Phi3(c) => c.validate(),
            ArchConfig::Qwen3Moe(c) => c.validate(),
            ArchConfig::GptOss(c) => c.validate(),
        }
    }
}

/// How to load a model (`load(source, opts)`).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Parameter and activation dtype; default: float32 on the CPU backend, the checkpoint's
    /// own float type on a GPU.
    pub dtype: Option<Dtype>,
    /// Dequantize quantized weights at load; default: true on the CPU backend (MLX's CPU
    /// quantized kernels are ~10x slower), false on a GPU.
    pub dequantize: Option<bool>,
    /// A LoRA adapter folder (mlx-lm or PEFT layout) to attach after loading.
    pub adapter: Option<std::path::PathBuf>,
    /// Merge the adapter into the weights (it can then not be switched off).
    pub fuse: bool,
    /// Pipeline sharding: when this process is one rank of a group of several, load only this
    /// rank's share of the blocks (see [`pipeline`]). Alone, the whole model loads as usual.
    pub pipeline: bool,
}

/// `m.info()`: what a researcher wants to know about a loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub arch: String,
    pub n_layers: usize,
    pub d_model: i32,
    pub n_heads: i32,
    pub n_kv_heads: i32,
    pub d_head: i32,
    pub d_mlp: i32,
    pub vocab: i32,
    /// Experts per mixture-of-experts layer (0 for a dense model).
    pub n_experts: i32,
    /// Experts chosen per token in a mixture-of-experts layer (0 for a dense model).
    pub experts_per_token: i32,
    pub params: u64,
    pub dtype: String,
    /// e.g. "4-bit group 32 (dequantized at load)", or "none".
    pub quantization: String,
    pub bytes: u64,
    pub device: String,
    pub path: String,
    /// The LoRA adapter: "none", or its format, rank, layers, state (on, off, fused) and folder.
    pub adapter: String,
    /// Pipeline sharding: "none", or this rank's stage (`rank 0 of 2: blocks 0-14`).
    pub pipeline: String,
}

/// How the weights were loaded: the parameter dtype, whether quantized layers were
/// dequantized, and the quantization most layers were stored with.
struct LoadedAs {
    dtype: Dtype,
    dequantized: bool,
    stored: Option<(i32, i32)>,
    params: u64,
    bytes: u64,
    parameters: Vec<anatomy::ParamInfo>,
    /// This rank's stage when the model is pipeline-sharded.
    stage: Option<Pipeline>,
}

/// A loaded model: network, hooks, and what it was loaded from.
pub struct Model {
    pub net: Net,
    pub tokenizer: Tokenizer,
    pub hooks: Hooks,
    pub info: ModelInfo,
    /// Quantization of the checkpoint as stored: `(bits, group_size)`.
    pub stored_quantization: Option<(i32, i32)>,
    /// Every parameter tensor, in load order (`weights(m)`).
    pub parameters: Vec<anatomy::ParamInfo>,
    /// The LoRA adapter attached, if any.
    pub adapter: Option<Adapter>,
    /// This rank's stage when the model is pipeline-sharded over several processes.
    pub pipeline: Option<Pipeline>,
    /// Each layer's sliding window, read once at load (see [`Model::windows`]).
    windows: Vec<Option<i32>>,
}

/// True when MLX's default device is a GPU (Metal or CUDA), asked of the device itself.
pub fn gpu_available() -> bool {
    matches!(
        mlx_rs::Device::try_default().and_then(|d| d.get_type()),
        Ok(mlx_rs::DeviceType::Gpu)
    )
}

/// The float dtype a checkpoint was saved in, read from a known matrix: the first layer's query
/// projection (its `.scales` when quantized), else the token embedding, else the float tensor
/// whose name sorts first. `None` when nothing is a float.
fn stored_dtype(tensors: &HashMap<String, Array>) -> Option<Dtype> {
    let float = |d: Dtype| matches!(d, Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float32);
    let known = [
        "model.layers.0.self_attn.q_proj.scales",
        "model.layers.0.self_attn.q_proj.weight",
        "model.embed_tokens.scales",
        "model.embed_tokens.weight",
    ];
    known
        .iter()
        .filter_map(|k| tensors.get(*k))
        .map(|a| a.dtype())
        .find(|d| float(*d))
        .or_else(|| {
            let mut names: Vec<&String> = tensors.keys().collect();
            names.sort();
            names
                .into_iter()
                .map(|k| tensors[k].dtype())
                .find(|d| float(*d))
        })
}

/// An architecture's config from the config.json object.
fn parse<T: serde::de::DeserializeOwned>(config: &serde_json::Value) -> serde_json::Result<T> {
    T::deserialize(config)
}

/// Parse a user's dtype name.
pub fn parse_dtype(s: &str) -> Result<Dtype> {
    match s {
        "f32" | "float32" => Ok(Dtype::Float32),
        "f16" | "float16" => Ok(Dtype::Float16),
        "bf16" | "bfloat16" => Ok(Dtype::Bfloat16),
        _ => Err(Error::Invalid(format!(
            "unknown dtype {s:?} (valid: \"f32\", \"f16\", \"bf16\")"
        ))),
    }
}

impl Model {
    /// Load from a folder, a `.gguf` file or a Hugging Face repo id (and attach the adapter
    /// `opts` names).
    pub fn load(source: &str, opts: &LoadOptions) -> Result<Model> {
        let resolved = source::resolve(source)?;
        let m = if resolved.is_file() {
            Model::load_gguf(&resolved, opts)?
        } else {
            Model::load_dir(&resolved, opts)?
        };
        m.with_adapter(opts)
    }

    /// The default model (SmolLM2-135M-Instruct, fetched by `./setup`).
    pub fn load_default(opts: &LoadOptions) -> Result<Model> {
        Model::load_gguf(&source::default_model_path()?, opts)?.with_adapter(opts)
    }

    fn with_adapter(mut self, opts: &LoadOptions) -> Result<Model> {
        if let Some(dir) = &opts.adapter {
            self.attach_adapter(dir, opts.fuse)?;
        } else if opts.fuse {
            return Err(Error::Invalid(
                "fuse: true needs an adapter to fuse (#{adapter: DIR, fuse: true})".into(),
            ));
        }
        Ok(self)
    }

    /// Reads the LoRA adapter folder `dir` (mlx-lm or PEFT layout), checks it against this
    /// model, and attaches it: switchable ([`Model::set_adapter`]) or, with `fuse`, merged
    /// into the weights (`W + scale * (A B)^T`; a quantized layer becomes a dequantized one).
    /// Nothing changes unless every check passes.
    pub fn attach_adapter(&mut self, dir: &Path, fuse: bool) -> Result<()> {
        if self.adapter.is_some() {
            return Err(Error::Invalid(
                "this model already has an adapter; load the base again for another".into(),
            ));
        }
        let n = self.n_layers();
        let held = self.pipeline.as_ref().map_or(0..n, |p| p.held());
        let arch = self.net.arch_mut();
        let mut dims = HashMap::new();
        for l in held.clone() {
            for t in Target::ALL {
                if let Some(p) = arch.projection_mut(l, t) {
                    dims.insert((l, t), p.dims());
                }
            }
        }
        // A pipeline stage holds some blocks only; the architectures that take adapters have
        // the same projections in every block, so the others' are the first held block's.
        if held != (0..n) {
            for l in (0..n).filter(|l| !held.contains(l)) {
                for t in Target::ALL {
                    if let Some(&d) = dims.get(&(held.start, t)) {
                        dims.insert((l, t), d);
                    }
                }
            }
        }
        if dims.is_empty() {
            return Err(Error::Model(format!(
                "adapters are not supported on {} models yet (supported: llama, mistral, \
                 qwen2, qwen3, gemma2, gemma3_text)",
                self.info.arch
            )));
        }
        let mut adapter = Adapter::load(dir, n, &|l, t| dims.get(&(l, t)).copied())?;
        // Checked whole; this stage keeps its own blocks' updates.
        adapter.modules.retain(|(l, _), _| held.contains(l));
        if fuse {
            self.fuse(&mut adapter)?;
        }
        self.info.adapter = adapter.describe();
        self.adapter = Some(adapter);
        Ok(())
    }

    /// Merges `adapter` into the weights; computes every new weight before replacing any.
    fn fuse(&mut self, adapter: &mut Adapter) -> Result<()> {
        let arch = self.net.arch_mut();
        let mut fused = Vec::new();
        for (&(l, t), m) in &adapter.modules {
            let Some(p) = arch.projection_mut(l, t) else {
                return Err(Error::Model(format!(
                    "the model has no layer {l} {}",
                    t.module()
                )));
            };
            let w = p.dense_weight()?;
            let weight = w.add(m.delta()?.as_dtype(w.dtype())?)?;
            weight.eval()?;
            let bias = p.bias().cloned();
            fused.push(((l, t), Linear::Dense { weight, bias }));
        }
        for ((l, t), linear) in fused {
            let name = format!("model.layers.{l}.{}.weight", t.module());
            if let Some(info) = self.parameters.iter_mut().find(|p| p.name == name) {
                if let Linear::Dense { weight, .. } = &linear {
                    info.dtype = crate::arrays::dtype_name(weight.dtype()).into();
                    info.bytes = weight.nbytes() as u64;
                    info.value = anatomy::ParamValue::Dense(weight.clone());
                }
            }
            if let Some(p) = self.net.arch_mut().projection_mut(l, t) {
                *p = linear;
            }
        }
        adapter.modules.clear();
        adapter.fused = true;
        Ok(())
    }

    /// Switches the (unfused) adapter on or off. Errors when there is none or it is fused.
    pub fn set_adapter(&mut self, on: bool) -> Result<()> {
        match &mut self.adapter {
            None => Err(Error::Invalid(
                "adapter: this model has no adapter (load(base, #{adapter: DIR}))".into(),
            )),
            Some(a) if a.fused => Err(Error::Invalid(
                "adapter: this adapter is fused into the weights and cannot be switched off; \
                 load without fuse: true to switch it"
                    .into(),
            )),
            Some(a) => {
                a.enabled = on;
                self.info.adapter = a.describe();
                Ok(())
            }
        }
    }

    /// This rank's stage for a model of `n_layers` blocks, when `opts` asks for pipeline
    /// sharding and this process is one rank of a group of several.
    fn stage(opts: &LoadOptions, n_layers: usize) -> Result<Option<Pipeline>> {
        if !opts.pipeline || !crate::distributed::launched() {
            return Ok(None);
        }
        let world = crate::distributed::world()?;
        if world.size() < 2 {
            return Ok(None);
        }
        Ok(Some(Pipeline {
            rank: world.rank(),
            size: world.size(),
            ranges: pipeline::plan(n_layers, &world)?,
            // Set once the weights are loaded (see `assemble`).
            dtype: Dtype::Float32,
            d_model: 0,
        }))
    }

    fn resolve_opts(opts: &LoadOptions, stored: Option<Dtype>) -> (Dtype, bool) {
        let gpu = gpu_available();
        let dtype = opts.dtype.unwrap_or(match (gpu, stored) {
            (true, Some(d)) => d,
            _ => Dtype::Float32,
        });
        (dtype, opts.dequantize.unwrap_or(!gpu))
    }

    fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Model> {
        let g = gguf::Gguf::open(path)?;
        let supported = ["llama", "qwen2", "qwen3", "mistral"];
        if !supported.contains(&g.arch.as_str()) {
            return Err(Error::Model(format!(
                "{}: GGUF architecture {:?} is not supported (supported: {})",
                path.display(),
                g.arch,
                supported.join(", ")
            )));
        }
        let heads = g.head_counts()?;
        let stage = Model::stage(opts, g.block_count()?)?;
        let tensors = match &stage {
            Some(s) => {
                let held = s.held();
                g.tensors_where(Some(heads), &|k| {
                    layer_of(k).is_none_or(|i| held.contains(&i))
                })?
            }
            None => g.tensors(Some(heads))?,
        };
        let cfg = g.llama_config(&tensors)?;
        // Quantized layers: their scales' dtype; F16/BF16 files: the matrices' own dtype.
        let stored = stored_dtype(&tensors);
        let (dtype, dequantize) = Model::resolve_opts(opts, stored);
        let mut w = Weights::new(tensors, None, dequantize, dtype);
        if let Some(s) = &stage {
            w.shard(s.held(), Some(g.blocks_present()));
        }
        let net = Net::Llama(llama::Llama::load(cfg, &mut w).map_err(|e| e.in_file(path))?);
        let (stored, params, bytes) = (w.stored_quantization(), w.params, w.param_bytes());
        let parameters = std::mem::take(&mut w.parameters);
        let tokenizer = Tokenizer::from_gguf(&g.file)?;
        let arch = g.arch.clone();
        // Release the file's own copy of the tensors before the weights are materialized.
        drop(g);
        w.finish()?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Model::assemble(
            net,
            tokenizer,
            name,
            arch,
            path,
            LoadedAs {
                dtype,
                dequantized: dequantize,
                stored,
                params,
                bytes,
                parameters,
                stage,
            },
        )
    }

    fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Model> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: config_path.clone(),
            source: e,
        })?;
        let (model_type, arch) = ArchConfig::from_json(&config, &config_path)?;
        let quant = match config
            .get("quantization")
            .or_else(|| config.get("quantization_config"))
        {
            Some(q) => QuantConfig::from_json(q).map_err(|e| e.in_file(&config_path))?,
            None => None,
        };
        let (tensors, origins) = source::load_safetensors_dir(dir)?;
        let stored = stored_dtype(&tensors);
        let (dtype, dequantize) = Model::resolve_opts(opts, stored);
        let mut w = Weights::new(tensors, quant, dequantize, dtype);
        w.set_origins(origins);
        let stage = Model::stage(opts, arch.n_layers())?;
        if let Some(s) = &stage {
            w.shard(s.held(), None);
        }
        let net = match arch {
            ArchConfig::Llama(c) => llama::Llama::load(c, &mut w).map(Net::Llama),
            ArchConfig::Gemma2(c) => gemma2::Gemma2::load(c, &mut w).map(Net::Gemma2),
            ArchConfig::Gemma3Text(c) => {
                gemma3_text::Gemma3Text::load(c, &mut w).map(Net::Gemma3Text)
            }
            ArchConfig::Phi3(c) => phi3::Phi3::load(c, &mut w).map(Net::Phi3),
            ArchConfig::Qwen3Moe(c) => qwen3_moe::Qwen3Moe::load(c, &mut w).map(Net::Qwen3Moe),
            ArchConfig::GptOss(c) => gpt_oss::GptOss::load(c, &mut w).map(Net::GptOss),
        }
        .map_err(|e| e.in_file(&config_path))?;
        let (stored, params, bytes) = (w.stored_quantization(), w.params, w.param_bytes());
        let parameters = std::mem::take(&mut w.parameters);
        w.finish()?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Model::assemble(
            net,
            tokenizer,
            name,
            model_type,
            dir,
            LoadedAs {
                dtype,
                dequantized: dequantize,
                stored,
                params,
                bytes,
                parameters,
                stage,
            },
        )
    }

    fn assemble(
        net: Net,
        tokenizer: Tokenizer,
        name: String,
        arch: String,
        path: &Path,
        how: LoadedAs,
    ) -> Result<Model> {
        let LoadedAs {
            dtype,
            dequantized,
            stored,
            params,
            bytes,
            parameters,
            stage,
        } = how;
        let stored_quantization = stored.or_else(|| net.arch().quantization());
        let Dims {
            n_layers,
            d_model,
            heads,
            d_mlp,
            vocab,
        } = net.arch().dims();
        let router = (0..n_layers).find_map(|i| net.arch().router(i));
        let info = ModelInfo {
            name,
            arch,
            n_layers,
            d_model,
            n_heads: heads.n,
            n_kv_heads: heads.kv,
            d_head: heads.d,
            d_mlp,
            vocab,
            n_experts: router.map_or(0, |r| r.n_experts),
            experts_per_token: router.map_or(0, |r| r.k),
            params,
            dtype: crate::arrays::dtype_name(dtype).into(),
            quantization: String::new(),
            bytes,
            device: if gpu_available() { "gpu" } else { "cpu" }.into(),
            path: path.display().to_string(),
            adapter: "none".into(),
            pipeline: "none".into(),
        };
        let pipeline = stage.map(|mut p| {
            p.dtype = dtype;
            p.d_model = d_model;
            p
        });
        let mut info = info;
        if let Some(p) = &pipeline {
            info.pipeline = p.describe();
        }
        info.quantization = match stored_quantization {
            None => "none".into(),
            Some((bits, group)) if dequantized => {
                format!("{bits}-bit group {group} (dequantized at load)")
            }
            Some((bits, group)) => format!("{bits}-bit group {group}"),
        };
        Ok(Model {
            tokenizer,
            hooks: Hooks::default(),
            info,
            stored_quantization,
            parameters,
            adapter: None,
            pipeline,
            windows: net.arch().windows(),
            net,
        })
    }

    pub fn n_layers(&self) -> usize {
        self.net.n_layers()
    }

    /// Each layer's sliding window (`None`: full attention); empty when no layer has one.
    pub fn windows(&self) -> &[Option<i32>] {
        &self.windows
    }

    /// The mixture-of-experts router of block `layer`, if it has one.
    pub fn router(&self, layer: usize) -> Option<moe::Router> {
        self.net.arch().router(layer)
    }

    /// True when this model has hook point `point` (router points exist only on layers with a
    /// router).
    pub fn has_point(&self, point: &HookName) -> bool {
        match (point.is_router(), point.layer()) {
            (true, Some(i)) => self.router(i).is_some(),
            _ => true,
        }
    }

    /// `Ok` when this model has `point`, else an error that says why.
    pub fn check_point(&self, point: &HookName) -> Result<()> {
        if self.has_point(point) {
            return Ok(());
        }
        let moe: Vec<String> = (0..self.n_layers())
            .filter(|&i| self.router(i).is_some())
            .map(|i| i.to_string())
            .collect();
        Err(Error::Invalid(format!(
            "hook point {point}: block {} of this model has no mixture-of-experts router ({})",
            point.layer().unwrap_or(0),
            if moe.is_empty() {
                "it has none; router points exist on MoE models such as qwen3_moe".to_string()
            } else {
                format!("blocks with one: {}", moe.join(", "))
            }
        )))
    }

    /// Expands point patterns as [`crate::capture::expand_points`] does, for this model: a
    /// pattern with `*` skips the layers that lack the point (router points on dense layers),
    /// an exact name this model lacks is an error.
    pub fn expand_points(&self, patterns: &[String]) -> Result<Vec<HookName>> {
        let n = self.n_layers();
        let mut out = Vec::new();
        for p in patterns {
            let pts = crate::capture::expand_points(std::slice::from_ref(p), n)?;
            if p.contains('*') {
                let kept: Vec<HookName> =
                    pts.iter().copied().filter(|h| self.has_point(h)).collect();
                if kept.is_empty() {
                    self.check_point(&pts[0])?;
                }
                out.extend(kept);
            } else {
                for h in &pts {
                    self.check_point(h)?;
                }
                out.extend(pts);
            }
        }
        let order = HookName::all(n);
        out.sort_by_key(|h| order.iter().position(|o| o == h));
        out.dedup();
        Ok(out)
    }

    /// Every hook point of this model, in forward order.
    pub fn hook_points(&self) -> Vec<HookName> {
        HookName::all(self.n_layers())
            .into_iter()
            .filter(|p| self.has_point(p))
            .collect()
    }

    /// Token ids for `text`; `special` adds BOS etc. as the model's tokenizer does by default.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, special)
    }

    /// The id used to fill left padding.
    pub fn pad_id(&self) -> u32 {
        self.tokenizer
            .pad_id()
            .or_else(|| self.tokenizer.eos_ids().first().copied())
            .unwrap_or(0)
    }

    /// The `k` most likely next tokens after `ids`: `(id, token text, probability, logit)`.
    pub fn top_k(&mut self, ids: &[u32], k: usize) -> Result<Vec<(u32, String, f32, f32)>> {
        let (input, pads) = pad_left(&[ids.to_vec()], 0)?;
        let logits = self
            .run(&input, &pads, None, true)?
            .as_dtype(Dtype::Float32)?;
        let row = logits.as_slice::<f32>();
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = row.iter().map(|x| (x - max).exp()).sum();
        let mut order: Vec<usize> = (0..row.len()).collect();
        let k = k.min(row.len());
        order.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| row[b].total_cmp(&row[a]));
        order.truncate(k);
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        order
            .into_iter()
            .map(|i| {
                let text = self.tokenizer.decode(&[i as u32], false)?;
                Ok((i as u32, text, (row[i] - max).exp() / z, row[i]))
            })
            .collect()
    }

    /// Run `ids` `[batch, pos]` (rows left-padded by `pads`) through the model, continuing
    /// from `cache` if given. Returns logits `[batch, pos, vocab]`, or `[batch, 1, vocab]`
    /// for the last position only when `last_only`.
    pub fn run(
        &mut self,
        ids: &Array,
        pads: &[i32],
        cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<Array> {
        let len = ids.shape()[1];
        let offset = cache.as_ref().map_or(0, |c| c.offset);
        if offset == 0 {
            self.hooks.prompt_len = len;
        }
        self.step(ids, pads, cache, last_only)
    }

    /// Run a prompt `ids` `[batch, pos]` into an empty `cache`, [`PREFILL_CHUNK`] positions at a
    /// time (each chunk's keys and values evaluated before the next is queued), and return the
    /// last position's logits `[batch, 1, vocab]`. The same as one [`Model::run`] of the whole
    /// prompt within float rounding, but attention's scores are at most `[heads, chunk, pos]`
    /// instead of `[heads, pos, pos]`, and keys after a chunk are not scored at all. Hooks see
    /// each chunk as one call (its `offset` and `len`); the whole prompt counts as the prompt.
    pub fn prefill(&mut self, ids: &Array, pads: &[i32], cache: &mut KvCache) -> Result<Array> {
        let len = ids.shape()[1];
        if cache.offset != 0 {
            return Err(Error::Invalid(
                "prefill: the cache already holds positions".into(),
            ));
        }
        self.hooks.prompt_len = len;
        let mut start = 0;
        while len - start > PREFILL_CHUNK {
            crate::interrupt::check()?;
            let chunk = ids.try_index((.., start..start + PREFILL_CHUNK))?;
            self.step(&chunk, pads, Some(cache), true)?;
            mlx_rs::transforms::eval(cache.arrays())?;
            start += PREFILL_CHUNK;
        }
        let rest = if start == 0 {
            ids.clone()
        } else {
            ids.try_index((.., start..))?
        };
        self.step(&rest, pads, Some(cache), true)
    }

    /// One forward call from `cache`'s offset; `hooks.prompt_len` is already set.
    fn step(
        &mut self,
        ids: &Array,
        pads: &[i32],
        cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<Array> {
        let len = ids.shape()[1];
        let offset = cache.as_ref().map_or(0, |c| c.offset);
        let mut cache = cache;
        let window_start = match cache.as_deref_mut() {
            Some(c) => {
                c.trim_windows(&self.windows)?;
                c.window_start
            }
            None => 0,
        };
        let before = self.captures_before();
        let mut step = Step {
            len,
            offset,
            window_start,
            pads,
            hooks: &mut self.hooks,
            lora: self.adapter.as_ref(),
        };
        let h = trunk(
            &self.net,
            self.pipeline.as_ref(),
            ids,
            cache.as_deref_mut(),
            &mut step,
            None,
        )?;
        let whole_final_norm = [HookName::LnFinalScale, HookName::LnFinal]
            .iter()
            .any(|p| step.hooks.is_active(p));
        let h = if last_only && !whole_final_norm {
            layers::last_position(&h)?
        } else {
            h
        };
        let x = self.net.final_norm(&h, &mut step)?;
        let x = if last_only {
            layers::last_position(&x)?
        } else {
            x
        };
        let logits = self.net.unembed(&x)?;
        if let Some(c) = cache {
            c.offset += len;
        }
        self.share_captures(&before)?;
        Ok(logits)
    }

    /// Run `ids` (rows left-padded by `pads`) through the first `n_blocks` blocks only, for
    /// reading activations: no logits. `None` runs every block and the final norm. Returns the
    /// last hidden state computed.
    pub fn run_hidden(
        &mut self,
        ids: &Array,
        pads: &[i32],
        n_blocks: Option<usize>,
    ) -> Result<Array> {
        let len = ids.shape()[1];
        self.hooks.prompt_len = len;
        let before = self.captures_before();
        let mut step = Step {
            len,
            offset: 0,
            window_start: 0,
            pads,
            hooks: &mut self.hooks,
            lora: self.adapter.as_ref(),
        };
        let pipe = self.pipeline.as_ref();
        let h = match n_blocks {
            Some(0) if pipe.is_none() => self.net.embed(ids, &mut step)?,
            Some(n) => trunk(&self.net, pipe, ids, None, &mut step, Some(n))?,
            None => {
                let h = trunk(&self.net, pipe, ids, None, &mut step, None)?;
                self.net.final_norm(&h, &mut step)?
            }
        };
        self.share_captures(&before)?;
        Ok(h)
    }

    /// With pipeline sharding: each captured point's count before a forward (see
    /// [`Pipeline::share_captures`]); nothing otherwise.
    fn captures_before(&self) -> Vec<(HookName, usize)> {
        match &self.pipeline {
            Some(_) => self.hooks.capture_counts(),
            None => Vec::new(),
        }
    }

    /// With pipeline sharding: hands what each stage captured in the last forward to every
    /// rank.
    fn share_captures(&mut self, before: &[(HookName, usize)]) -> Result<()> {
        match &self.pipeline {
            Some(p) => p.share_captures(&mut self.hooks, before),
            None => Ok(()),
        }
    }

    /// The group a data-parallel verb (capture, batched generation, ...) splits its inputs
    /// over: none for a pipeline-sharded model, whose ranks all run every input together.
    pub fn data_parallel(&self) -> Result<Option<std::rc::Rc<crate::distributed::World>>> {
        if self.pipeline.is_some() {
            return Ok(None);
        }
        crate::distributed::data_parallel()
    }

    /// The seed every rank uses for an unseeded generation: rank 0's `seed`, when this model's
    /// forwards or a data-parallel split involve the other ranks (so that sampling picks the same
    /// tokens as one process would); `seed` itself otherwise.
    pub fn agree_seed(&self, seed: u64) -> Result<u64> {
        let world = match &self.pipeline {
            Some(_) => Some(crate::distributed::world()?),
            None => self.data_parallel()?,
        };
        let Some(world) = world else {
            return Ok(seed);
        };
        let words = Array::from_slice(&[seed as u32, (seed >> 32) as u32], &[2]);
        let got = world.broadcast_same(&words, 0)?;
        let w = got.as_slice::<u32>();
        Ok(u64::from(w[0]) | (u64::from(w[1]) << 32))
    }

    /// An error for verbs that cannot run on a pipeline-sharded model.
    pub fn refuse_pipeline(&self, verb: &str) -> Result<()> {
        match &self.pipeline {
            Some(_) => Err(Error::Invalid(format!(
                "{verb}: not supported on a pipeline-sharded model (load it without \
                 pipeline: true)"
            ))),
            None => Ok(()),
        }
    }

    /// Logits `[batch, pos, vocab]` (float32) for rows of token ids, left-padded to one length.
    pub fn forward_ids(&mut self, rows: &[Vec<u32>]) -> Result<Array> {
        let (ids, pads) = pad_left(rows, 0)?;
        let logits = self.run(&ids, &pads, None, false)?;
        Ok(logits.as_dtype(Dtype::Float32)?)
    }

    /// Unembed residual-stream vectors through the final norm and head (logit lens).
    pub fn lens(&mut self, h: &Array) -> Result<Array> {
        let mut step = Step {
            len: h.shape().get(1).copied().unwrap_or(1),
            offset: 0,
            window_start: 0,
            pads: &[],
            hooks: &mut Hooks::default(),
            lora: None,
        };
        let x = self.net.final_norm(h, &mut step)?;
        self.net.unembed(&x)
    }
}

/// The embedding and the blocks (`0..n`, all when `None`) over `ids`: on this process alone,
/// or, pipeline-sharded, as this rank's stage of the whole (every rank gets the last stage's
/// output).
fn trunk(
    net: &Net,
    pipe: Option<&Pipeline>,
    ids: &Array,
    cache: Option<&mut KvCache>,
    step: &mut Step,
    n: Option<usize>,
) -> Result<Array> {
    let Some(p) = pipe else {
        let h = net.embed(ids, step)?;
        return net.blocks(h, cache, step, n);
    };
    let (batch, len) = (ids.shape()[0], ids.shape()[1]);
    let h = match p.receive(batch, len)? {
        Some(h) => h,
        None => net.embed(ids, step)?,
    };
    let h = net.blocks(h, cache, step, n)?;
    p.pass_on(h, batch, len)
}

/// Left-pad rows of ids with `pad_id` into `[batch, max_len]`; returns the pad length per row.
pub fn pad_left(rows: &[Vec<u32>], pad_id: u32) -> Result<(Array, Vec<i32>)> {
    if rows.is_empty() || rows.iter().any(|r| r.is_empty()) {
        return Err(Error::Invalid("cannot run an empty input".into()));
    }
    let t = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut flat = Vec::with_capacity(rows.len() * t);
    let mut pads = Vec::with_capacity(rows.len());
    for r in rows {
        let p = t - r.len();
        pads.push(p as i32);
        flat.extend(std::iter::repeat_n(pad_id as i32, p));
        flat.extend(r.iter().map(|&x| x as i32));
    }
    let pads = if pads.iter().all(|&p| p == 0) {
        Vec::new()
    } else {
        pads
    };
    Ok((
        Array::from_slice(&flat, &[rows.len() as i32, t as i32]),
        pads,
    ))
}
