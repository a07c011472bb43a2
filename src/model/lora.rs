//! LoRA adapters on a loaded model, from the two folder layouts researchers have:
//!
//! - mlx-lm (`mlx_lm.lora`): `adapters.safetensors` with `model.layers.N.<module>.lora_a`
//!   `[in, r]` and `.lora_b` `[r, out]`, and `adapter_config.json` with `num_layers` (the last
//!   N blocks; 0 or negative: all) and `lora_parameters` `{rank, scale, dropout, keys}` (`keys`
//!   absent: every linear layer of a block). The update is `scale * (x A) B`. Reference:
//!   mlx-lm `mlx_lm/tuner/lora.py` (`LoRALinear`) and `tuner/utils.py` (`load_adapters`).
//! - PEFT: `adapter_model.safetensors` with
//!   `base_model.model.model.layers.N.<module>.lora_A.weight` `[r, in]` and `lora_B.weight`
//!   `[out, r]`, and `adapter_config.json` with `r`, `lora_alpha`, `target_modules`,
//!   `rank_pattern`, `alpha_pattern`, `use_rslora`. The update is `alpha / r * B (A x)`
//!   (`alpha / sqrt(r)` with rsLoRA). Reference: PEFT `peft/tuners/lora/layer.py`.
//!
//! Both load into one [`Adapter`]: per `(block, target)` the matrices `A` `[in, r]` and `B`
//! `[r, out]` (float32) and the scale. Everything in the folder is checked against the config
//! and the base model before the model is touched: an unknown key, a module the config does not
//! name (or names and the file lacks), a rank or width that does not fit, a non-finite scale,
//! or a setting mlxi does not implement (DoRA, biases, `fan_in_fan_out`, ...) is an error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};
use serde::Deserialize;

use super::source;
use crate::error::{Error, Result};

/// A linear layer of a block that an adapter can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    /// This target's layer among a block's seven, given in the order of [`Target::ALL`]
    /// (q, k, v, o, gate, up, down): what an architecture's `projection_mut` returns.
    pub fn pick<T>(self, [q, k, v, o, gate, up, down]: [T; 7]) -> T {
        match self {
            Target::Q => q,
            Target::K => k,
            Target::V => v,
            Target::O => o,
            Target::Gate => gate,
            Target::Up => up,
            Target::Down => down,
        }
    }

    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The module's path inside a block, as checkpoints name it (`self_attn.q_proj`).
    pub fn module(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// The short name in hook points (`hook_lora_q`).
    pub fn short(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// True for the attention's projections (hook points under `attn.`), false for the MLP's.
    pub fn is_attention(self) -> bool {
        matches!(self, Target::Q | Target::K | Target::V | Target::O)
    }

    /// The target whose module path is `module` (`self_attn.q_proj`).
    pub fn from_module(module: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.module() == module)
    }

    /// The target of a hook point's last part (`hook_lora_q`), under `attn` or `mlp`.
    pub fn from_hook(group: &str, point: &str) -> Option<Target> {
        let short = point.strip_prefix("hook_lora_")?;
        Target::ALL
            .into_iter()
            .find(|t| t.short() == short && t.is_attention() == (group == "attn"))
    }
}

/// One adapted linear layer: `update(x) = scale * (x A) B`.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// `[in, r]`, float32.
    pub a: Array,
    /// `[r, out]`, float32.
    pub b: Array,
    pub scale: f32,
    pub rank: i32,
}

impl LoraModule {
    /// The low-rank update of the layer's output for input `x` `[..., in]`, in `x`'s dtype.
    pub fn update(&self, x: &Array) -> Result<Array> {
        let z = x
            .as_dtype(Dtype::Float32)?
            .matmul(&self.a)?
            .matmul(&self.b)?;
        Ok(z.multiply(Array::from_f32(self.scale))?
            .as_dtype(x.dtype())?)
    }

    /// The update as a weight difference, `scale * (A B)^T` `[out, in]` (float32).
    pub fn delta(&self) -> Result<Array> {
        Ok(self
            .b
            .t()
            .matmul(self.a.t())?
            .multiply(Array::from_f32(self.scale))?)
    }
}

/// Which tool wrote the adapter folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    MlxLm,
    Peft,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::MlxLm => "mlx-lm",
            Format::Peft => "peft",
        }
    }
}

/// A LoRA adapter attached to a model: kept separate (switchable) or fused into the weights.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub path: PathBuf,
    pub format: Format,
    /// The adapted layers (empty once fused: the updates are in the weights).
    pub modules: BTreeMap<(usize, Target), LoraModule>,
    /// Whether the updates are applied (always true when fused).
    pub enabled: bool,
    pub fused: bool,
    /// What was adapted, for `m.info()` (kept when fused).
    pub summary: String,
}

impl Adapter {
    /// The adapted layer at `(layer, target)`, when the adapter is on and not fused.
    pub fn module(&self, layer: usize, target: Target) -> Option<&LoraModule> {
        if !self.enabled || self.fused {
            return None;
        }
        self.modules.get(&(layer, target))
    }

    /// The layers adapted, `(block, target)`, in forward order.
    pub fn targets(&self) -> Vec<(usize, Target)> {
        self.modules.keys().copied().collect()
    }

    /// One line for `m.info().adapter` and printing: format, layers, ranks, state.
    pub fn describe(&self) -> String {
        let state = if self.fused {
            "fused"
        } else if self.enabled {
            "on"
        } else {
            "off"
        };
        format!("{} ({state}; {})", self.summary, self.path.display())
    }

    /// Reads and checks the adapter folder `dir` for a model with `n_layers` blocks whose
    /// layer `(block, target)` maps `in` to `out` features (`dims` gives `(in, out)`, or `None`
    /// when the architecture has no such layer).
    pub fn load(
        dir: &Path,
        n_layers: usize,
        dims: &dyn Fn(usize, Target) -> Option<(i32, i32)>,
    ) -> Result<Adapter> {
        if !dir.is_dir() {
            return Err(Error::Model(format!(
                "{}: an adapter is a folder (adapter_config.json with adapters.safetensors \
                 from mlx-lm, or adapter_model.safetensors from PEFT)",
                dir.display()
            )));
        }
        let config_path = dir.join("adapter_config.json");
        let config = read_json(&config_path)?;
        let mlx = dir.join("adapters.safetensors");
        let peft = dir.join("adapter_model.safetensors");
        let (format, file) = if mlx.is_file() {
            (Format::MlxLm, mlx)
        } else if peft.is_file() {
            (Format::Peft, peft)
        } else if dir.join("adapter_model.bin").exists() {
            return Err(Error::Model(format!(
                "{}: adapter_model.bin (a pickle) is not read; save the PEFT adapter with \
                 safe_serialization=True (adapter_model.safetensors)",
                dir.display()
            )));
        } else {
            return Err(Error::Model(format!(
                "{}: no adapters.safetensors (mlx-lm) or adapter_model.safetensors (PEFT)",
                dir.display()
            )));
        };
        let bad = |why: String| Error::Model(format!("{}: {why}", config_path.display()));
        let plan = match format {
            Format::MlxLm => mlx_plan(&config, n_layers, dims).map_err(bad)?,
            Format::Peft => peft_plan(&config, n_layers, dims).map_err(bad)?,
        };
        let tensors = read_tensors(&file, format)?;
        let modules = assemble(&file, format, tensors, &plan, dims)?;
        let ranks: BTreeSet<i32> = modules.values().map(|m| m.rank).collect();
        let targets: BTreeSet<&str> = modules.keys().map(|(_, t)| t.short()).collect();
        let layers: BTreeSet<usize> = modules.keys().map(|(l, _)| *l).collect();
        let ranks: Vec<String> = ranks.iter().map(i32::to_string).collect();
        let summary = format!(
            "{} LoRA, rank {}, {} on {} of {} blocks",
            format.name(),
            ranks.join("/"),
            targets.into_iter().collect::<Vec<_>>().join(","),
            layers.len(),
            n_layers
        );
        Ok(Adapter {
            path: dir.to_path_buf(),
            format,
            modules,
            enabled: true,
            fused: false,
            summary,
        })
    }
}

/// What the config says the file must hold: per adapted layer, its rank and scale.
type Plan = BTreeMap<(usize, Target), (i32, f32)>;

/// A config file, read with a size limit (configs are a few hundred bytes).
fn read_json(path: &Path) -> Result<serde_json::Value> {
    const MAX: u64 = 1 << 20;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX {
        return Err(Error::Model(format!(
            "{}: {} bytes is too large for an adapter config",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: e,
    })
}

const MAX_RANK: i64 = 1 << 16;

fn check_rank(what: &str, r: i64) -> Result<i32, String> {
    if (1..=MAX_RANK).contains(&r) {
        Ok(r as i32)
    } else {
        Err(format!("{what} = {r} must be between 1 and {MAX_RANK}"))
    }
}

fn check_scale(what: &str, s: f64) -> Result<f32, String> {
    let s32 = s as f32;
    if s32.is_finite() {
        Ok(s32)
    } else {
        Err(format!("{what} gives the non-finite scale {s}"))
    }
}

/// A layer's name as PEFT matches it against `target_modules` and the patterns.
fn module_name(layer: usize, t: Target) -> String {
    format!("model.layers.{layer}.{}", t.module())
}

/// The targets the architecture has in every block (those of block 0).
fn arch_targets(dims: &dyn Fn(usize, Target) -> Option<(i32, i32)>) -> Vec<Target> {
    Target::ALL
        .into_iter()
        .filter(|t| dims(0, *t).is_some())
        .collect()
}

fn valid_modules(targets: &[Target]) -> String {
    targets
        .iter()
        .map(|t| t.module())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value from a file for an error message: at most 60 characters, escaped.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(60).collect();
    if cut.len() < s.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

#[derive(Deserialize)]
struct MlxConfig {
    #[serde(default)]
    fine_tune_type: Option<String>,
    num_layers: i64,
    lora_parameters: MlxLoraParameters,
}

#[derive(Deserialize)]
struct MlxLoraParameters {
    rank: i64,
    scale: f64,
    #[serde(default)]
    dropout: Option<f64>,
    #[serde(default)]
    keys: Option<Vec<String>>,
}

/// mlx-lm: `keys` (default: every linear layer) on the last `num_layers` blocks, all with one
/// rank and scale.
fn mlx_plan(
    config: &serde_json::Value,
    n_layers: usize,
    dims: &dyn Fn(usize, Target) -> Option<(i32, i32)>,
) -> Result<Plan, String> {
    let c =
        MlxConfig::deserialize(config).map_err(|e| format!("not an mlx-lm adapter config: {e}"))?;
    match c.fine_tune_type.as_deref().unwrap_or("lora") {
        "lora" => {}
        other => {
            return Err(format!(
                "fine_tune_type {} is not supported (mlxi reads LoRA adapters)",
                shown(other)
            ))
        }
    }
    let p = c.lora_parameters;
    let rank = check_rank("lora_parameters.rank", p.rank)?;
    let scale = check_scale("lora_parameters.scale", p.scale)?;
    if let Some(d) = p.dropout {
        if !(0.0..=1.0).contains(&d) {
            return Err(format!(
                "lora_parameters.dropout = {d} is not a probability"
            ));
        }
    }
    let have = arch_targets(dims);
    let targets = match p.keys {
        None => have.clone(),
        Some(keys) => {
            if keys.is_empty() {
                return Err("lora_parameters.keys is empty".into());
            }
            keys.iter()
                .map(|k| {
                    Target::from_module(k)
                        .filter(|t| have.contains(t))
                        .ok_or_else(|| {
                            format!(
                                "lora_parameters.keys: {} is not a linear layer of this \
                                 model's blocks (valid: {})",
                                shown(k),
                                valid_modules(&have)
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    // mlx-lm adapts `model.layers[-max(num_layers, 0):]`: 0 or less means every block.
    let first = if c.num_layers <= 0 {
        0
    } else {
        n_layers.saturating_sub(c.num_layers.min(n_layers as i64) as usize)
    };
    Ok((first..n_layers)
        .flat_map(|l| targets.iter().map(move |t| ((l, *t), (rank, scale))))
        .collect())
}

#[derive(Deserialize)]
struct PeftConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: i64,
    lora_alpha: f64,
    #[serde(default)]
    target_modules: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    lora_bias: bool,
    #[serde(default)]
    modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    exclude_modules: Option<serde_json::Value>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    target_parameters: Option<serde_json::Value>,
    #[serde(default)]
    trainable_token_indices: Option<serde_json::Value>,
    #[serde(default)]
    layer_replication: Option<serde_json::Value>,
    #[serde(default)]
    use_qalora: bool,
    #[serde(default)]
    use_bdlora: Option<serde_json::Value>,
    #[serde(default)]
    alora_invocation_tokens: Option<serde_json::Value>,
    #[serde(default)]
    arrow_config: Option<serde_json::Value>,
    #[serde(default)]
    kasa_config: Option<serde_json::Value>,
    #[serde(default)]
    monteclora_config: Option<serde_json::Value>,
}

/// True for `null`, `[]`, `{}` and `""`: an optional PEFT setting left unset.
fn unset(v: &Option<serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Array(a)) => a.is_empty(),
        Some(serde_json::Value::Object(o)) => o.is_empty(),
        Some(serde_json::Value::String(s)) => s.is_empty(),
        Some(_) => false,
    }
}

/// A regular expression from a config, with a size limit.
fn regex(pattern: &str, what: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|_| {
            format!(
                "{what}: {} is not a regular expression mlxi can use",
                shown(pattern)
            )
        })
}

/// The value of the pattern that matches `name` as PEFT's `get_pattern_key` matches
/// (`(.*\.)?(KEY)$` from the start); two matching patterns with different values are an
/// error rather than an order-dependent choice.
fn pattern_value(
    patterns: &[(regex::Regex, f64)],
    name: &str,
    what: &str,
) -> Result<Option<f64>, String> {
    let mut found: Option<f64> = None;
    for (re, v) in patterns {
        if re.is_match(name) {
            match found {
                Some(f) if f != *v => {
                    return Err(format!(
                        "{what}: two patterns match {name} with different values"
                    ))
                }
                _ => found = Some(*v),
            }
        }
    }
    Ok(found)
}

fn patterns(
    map: &Option<serde_json::Map<String, serde_json::Value>>,
    what: &str,
) -> Result<Vec<(regex::Regex, f64)>, String> {
    let Some(map) = map else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(k, v)| {
            let v = v
                .as_f64()
                .ok_or_else(|| format!("{what}: the value for {} is not a number", shown(k)))?;
            Ok((regex(&format!(r"^(?:.*\.)?(?:{k})$"), what)?, v))
        })
        .collect()
}

/// PEFT: the layers `target_modules` (and `layers_to_transform`) select, each with its rank
/// and alpha (from the patterns, else `r` and `lora_alpha`).
fn peft_plan(
    config: &serde_json::Value,
    n_layers: usize,
    dims: &dyn Fn(usize, Target) -> Option<(i32, i32)>,
) -> Result<Plan, String> {
    let c = PeftConfig::deserialize(config).map_err(|e| format!("not a PEFT LoRA config: {e}"))?;
    if let Some(t) = &c.peft_type {
        if t != "LORA" {
            return Err(format!(
                "peft_type {} is not supported (mlxi reads LORA)",
                shown(t)
            ));
        }
    }
    let unsupported = [
        ("use_dora", c.use_dora),
        ("fan_in_fan_out", c.fan_in_fan_out),
        ("lora_bias", c.lora_bias),
        ("bias", c.bias.as_deref().is_some_and(|b| b != "none")),
        ("modules_to_save", !unset(&c.modules_to_save)),
        ("target_parameters", !unset(&c.target_parameters)),
        (
            "trainable_token_indices",
            !unset(&c.trainable_token_indices),
        ),
        ("layer_replication", !unset(&c.layer_replication)),
        ("use_qalora", c.use_qalora),
        (
            "use_bdlora",
            !unset(&c.use_bdlora) && c.use_bdlora != Some(false.into()),
        ),
        (
            "alora_invocation_tokens",
            !unset(&c.alora_invocation_tokens),
        ),
        ("arrow_config", !unset(&c.arrow_config)),
        ("kasa_config", !unset(&c.kasa_config)),
        ("monteclora_config", !unset(&c.monteclora_config)),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(format!("{name} is set; mlxi does not implement it"));
    }
    let r = check_rank("r", c.r)?;
    let have = arch_targets(dims);
    // Which layers the config selects, as PEFT's `check_target_module_exists` decides.
    let selects: Box<dyn Fn(&str) -> bool> = match &c.target_modules {
        Some(serde_json::Value::String(s)) if s == "all-linear" => Box::new(|_| true),
        Some(serde_json::Value::String(s)) => {
            let re = regex(&format!("^(?:{s})$"), "target_modules")?;
            Box::new(move |name| re.is_match(name))
        }
        Some(serde_json::Value::Array(list)) if !list.is_empty() => {
            let names: Vec<String> = list
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or("target_modules holds something other than names".to_string())
                })
                .collect::<Result<_, _>>()?;
            for n in &names {
                let found = have.iter().any(|t| {
                    let m = format!(".{}", t.module());
                    m.ends_with(&format!(".{n}"))
                });
                if !found {
                    return Err(format!(
                        "target_modules: this model's blocks have no layer {} (mlxi adapts {})",
                        shown(n),
                        valid_modules(&have)
                    ));
                }
            }
            Box::new(move |name| {
                names
                    .iter()
                    .any(|n| name == n || name.ends_with(&format!(".{n}")))
            })
        }
        _ => return Err("target_modules is missing or empty".into()),
    };
    if !unset(&c.exclude_modules) {
        return Err("exclude_modules is set; mlxi does not implement it".into());
    }
    let layers: Option<BTreeSet<usize>> = match &c.layers_to_transform {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => {
            Some(n.as_u64().map(|n| n as usize).into_iter().collect())
        }
        Some(serde_json::Value::Array(a)) => Some(
            a.iter()
                .map(|v| v.as_u64().map(|n| n as usize))
                .collect::<Option<_>>()
                .ok_or("layers_to_transform holds something other than block numbers")?,
        ),
        Some(_) => return Err("layers_to_transform is not a block number or a list".into()),
    };
    if let Some(bad) = layers
        .as_ref()
        .and_then(|l| l.iter().find(|&&i| i >= n_layers))
    {
        return Err(format!(
            "layers_to_transform names block {bad}; the model has {n_layers}"
        ));
    }
    let ranks = patterns(&c.rank_pattern, "rank_pattern")?;
    let alphas = patterns(&c.alpha_pattern, "alpha_pattern")?;
    let mut plan = Plan::new();
    for l in 0..n_layers {
        if layers.as_ref().is_some_and(|s| !s.contains(&l)) {
            continue;
        }
        for t in &have {
            let name = module_name(l, *t);
            if !selects(&name) {
                continue;
            }
            let rank = match pattern_value(&ranks, &name, "rank_pattern")? {
                Some(v) if v.fract() == 0.0 => {
                    check_rank(&format!("rank_pattern for {name}"), v as i64)?
                }
                Some(v) => return Err(format!("rank_pattern gives {name} the rank {v}")),
                None => r,
            };
            let alpha = pattern_value(&alphas, &name, "alpha_pattern")?.unwrap_or(c.lora_alpha);
            let scale = if c.use_rslora {
                alpha / (rank as f64).sqrt()
            } else {
                alpha / rank as f64
            };
            let scale = check_scale(
                &format!("lora_alpha {alpha} over rank {rank} for {name}"),
                scale,
            )?;
            plan.insert((l, *t), (rank, scale));
        }
    }
    if plan.is_empty() {
        return Err("target_modules selects no layer of this model".into());
    }
    Ok(plan)
}

/// Which matrix of a layer a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    A,
    B,
}

/// The layer and matrix a tensor key names, in `format`'s naming.
fn parse_key(key: &str, format: Format) -> Option<(usize, Target, Part)> {
    let (rest, part) = match format {
        Format::MlxLm => {
            let rest = key.strip_prefix("model.layers.")?;
            if let Some(r) = rest.strip_suffix(".lora_a") {
                (r, Part::A)
            } else {
                (rest.strip_suffix(".lora_b")?, Part::B)
            }
        }
        Format::Peft => {
            let rest = key.strip_prefix("base_model.model.model.layers.")?;
            if let Some(r) = rest.strip_suffix(".lora_A.weight") {
                (r, Part::A)
            } else {
                (rest.strip_suffix(".lora_B.weight")?, Part::B)
            }
        }
    };
    let (layer, module) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) || layer.len() > 6 {
        return None;
    }
    Some((layer.parse().ok()?, Target::from_module(module)?, part))
}

/// The tensors of an adapter file, checked (header, sizes) before MLX reads it.
fn read_tensors(file: &Path, format: Format) -> Result<HashMap<(usize, Target, Part), Array>> {
    let names = source::check_safetensors(file)?;
    let mut keys = HashMap::new();
    for n in &names {
        let Some(k) = parse_key(n, format) else {
            let expected = match format {
                Format::MlxLm => "model.layers.N.<module>.lora_a|lora_b",
                Format::Peft => "base_model.model.model.layers.N.<module>.lora_A|lora_B.weight",
            };
            return Err(Error::Model(format!(
                "{}: tensor {} is not a LoRA matrix (expected {expected}, <module> one of {})",
                file.display(),
                shown(n),
                valid_modules(&Target::ALL)
            )));
        };
        keys.insert(n.clone(), k);
    }
    let tensors = Array::load_safetensors(file)
        .map_err(|e| Error::Model(format!("{}: {e}", file.display())))?;
    let mut out = HashMap::new();
    for (name, a) in tensors {
        let Some(k) = keys.get(&name) else {
            return Err(Error::Model(format!(
                "{}: MLX read a tensor the header does not list",
                file.display()
            )));
        };
        out.insert(*k, a);
    }
    Ok(out)
}

/// Matches the file's tensors to the plan: every planned layer has both matrices of its rank
/// and the base layer's widths, and nothing else is in the file.
fn assemble(
    file: &Path,
    format: Format,
    mut tensors: HashMap<(usize, Target, Part), Array>,
    plan: &Plan,
    dims: &dyn Fn(usize, Target) -> Option<(i32, i32)>,
) -> Result<BTreeMap<(usize, Target), LoraModule>> {
    let bad = |why: String| Error::Model(format!("{}: {why}", file.display()));
    let mut extra: Vec<String> = tensors
        .keys()
        .filter(|(l, t, _)| !plan.contains_key(&(*l, *t)))
        .map(|(l, t, _)| module_name(*l, *t))
        .collect();
    if !extra.is_empty() {
        extra.sort();
        extra.dedup();
        let n = extra.len();
        extra.truncate(4);
        return Err(bad(format!(
            "{n} layer(s) the adapter config does not select (or the model lacks): {}",
            extra.join(", ")
        )));
    }
    let mut modules = BTreeMap::new();
    for (&(l, t), &(rank, scale)) in plan {
        let name = module_name(l, t);
        let (Some(a), Some(b)) = (
            tensors.remove(&(l, t, Part::A)),
            tensors.remove(&(l, t, Part::B)),
        ) else {
            return Err(bad(format!(
                "the config selects {name}, but the file lacks its lora_a/lora_b pair"
            )));
        };
        let (d_in, d_out) =
            dims(l, t).ok_or_else(|| bad(format!("the model has no layer {name}")))?;
        for (m, what) in [(&a, "A"), (&b, "B")] {
            if !matches!(m.dtype(), Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16) {
                return Err(bad(format!("{name}: matrix {what} is not a float tensor")));
            }
        }
        // mlx-lm stores A `[in, r]` and B `[r, out]`; PEFT stores them transposed.
        let (a, b) = match (format, a.shape(), b.shape()) {
            (Format::MlxLm, [i, r1], [r2, o])
                if (*i, *r1, *r2, *o) == (d_in, rank, rank, d_out) =>
            {
                (a, b)
            }
            (Format::Peft, [r1, i], [o, r2]) if (*i, *r1, *r2, *o) == (d_in, rank, rank, d_out) => {
                (a.t(), b.t())
            }
            (_, sa, sb) => {
                return Err(bad(format!(
                    "{name}: matrices of shapes {sa:?} and {sb:?} do not fit a rank-{rank} \
                     update of a layer from {d_in} to {d_out} features"
                )))
            }
        };
        let a = a.as_dtype(Dtype::Float32)?;
        let b = b.as_dtype(Dtype::Float32)?;
        modules.insert((l, t), LoraModule { a, b, scale, rank });
    }
    Ok(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_both_formats_parse_and_others_do_not() {
        assert_eq!(
            parse_key("model.layers.3.self_attn.q_proj.lora_a", Format::MlxLm),
            Some((3, Target::Q, Part::A))
        );
        assert_eq!(
            parse_key(
                "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
                Format::Peft
            ),
            Some((0, Target::Down, Part::B))
        );
        for k in [
            "model.layers.x.self_attn.q_proj.lora_a",
            "model.layers.0.self_attn.q_proj.lora_c",
            "model.layers.0.self_attn.qkv_proj.lora_a",
            "model.layers.-1.self_attn.q_proj.lora_a",
            "model.layers.99999999999.self_attn.q_proj.lora_a",
        ] {
            assert_eq!(parse_key(k, Format::MlxLm), None, "{k}");
        }
    }

    fn llama_dims(_: usize, t: Target) -> Option<(i32, i32)> {
        Some(match t {
            Target::Gate | Target::Up => (8, 16),
            Target::Down => (16, 8),
            _ => (8, 8),
        })
    }

    #[test]
    fn mlx_lm_counts_layers_from_the_end() {
        let c = serde_json::json!({"num_layers": 2, "lora_parameters":
            {"rank": 4, "scale": 10.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}});
        let plan = mlx_plan(&c, 4, &llama_dims).unwrap();
        assert_eq!(
            plan.keys().copied().collect::<Vec<_>>(),
            [(2, Target::Q), (3, Target::Q)]
        );
        let all = serde_json::json!({"num_layers": -1, "lora_parameters":
            {"rank": 4, "scale": 10.0}});
        assert_eq!(mlx_plan(&all, 4, &llama_dims).unwrap().len(), 28);
        let bad = serde_json::json!({"num_layers": 2, "lora_parameters":
            {"rank": 4, "scale": 1e40, "keys": ["self_attn.q_proj"]}});
        assert!(mlx_plan(&bad, 4, &llama_dims)
            .unwrap_err()
            .contains("non-finite"));
        let lacks = serde_json::json!({"num_layers": 2, "lora_parameters":
            {"rank": 4, "scale": 1.0, "keys": ["self_attn.qkv_proj"]}});
        assert!(mlx_plan(&lacks, 4, &llama_dims)
            .unwrap_err()
            .contains("qkv_proj"));
    }

    #[test]
    fn peft_patterns_set_rank_and_alpha() {
        let c = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
            "target_modules": ["q_proj", "v_proj"], "rank_pattern": {"layers.1.self_attn.v_proj": 2},
            "alpha_pattern": {"q_proj": 16}, "use_rslora": false});
        let plan = peft_plan(&c, 2, &llama_dims).unwrap();
        assert_eq!(plan[&(0, Target::V)], (4, 2.0));
        assert_eq!(plan[&(1, Target::V)], (2, 4.0));
        assert_eq!(plan[&(1, Target::Q)], (4, 4.0));
        assert!(!plan.contains_key(&(0, Target::K)));
        let rs = serde_json::json!({"r": 4, "lora_alpha": 8, "target_modules": "all-linear",
            "use_rslora": true});
        assert_eq!(
            peft_plan(&rs, 1, &llama_dims).unwrap()[&(0, Target::Up)],
            (4, 4.0)
        );
        let dora = serde_json::json!({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
            "use_dora": true});
        assert!(peft_plan(&dora, 1, &llama_dims)
            .unwrap_err()
            .contains("use_dora"));
        let missing = serde_json::json!({"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]});
        assert!(peft_plan(&missing, 1, &llama_dims)
            .unwrap_err()
            .contains("c_attn"));
    }
}
