//! Strict weight loading. Tensors are looked up by their checkpoint names; a missing tensor, a
//! wrong shape or a leftover key is an error that lists the keys. A layer is quantized when its
//! `.scales` tensor exists; bits and group size are read off the shapes and checked against
//! config.json's `quantization` (including per-layer overrides).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use mlx_rs::{Array, Dtype};

use super::anatomy::{ParamInfo, ParamValue};
use super::layers::{Embedding, Linear, RmsNorm};
use super::quant::{self, QuantMode};
use crate::arrays::dtype_name;
use crate::error::{Error, Result};

/// `quantization` (or `quantization_config`) from an mlx-community config.json.
#[derive(Debug, Clone)]
pub struct QuantConfig {
    pub group_size: i32,
    pub bits: i32,
    pub mode: QuantMode,
    /// Per-layer settings `(group_size, bits, mode)` by module path
    /// (`model.layers.0.mlp.down_proj`); a missing `mode` is affine, as in mlx-lm.
    pub overrides: HashMap<String, (i32, i32, QuantMode)>,
}

impl QuantConfig {
    /// Read a config.json `quantization` object (or OpenAI's `quantization_config`
    /// `{"quant_method": "mxfp4"}`, which means MXFP4, 4-bit group 32, where stored).
    pub fn from_json(v: &serde_json::Value) -> Result<Option<QuantConfig>> {
        let Some(obj) = v.as_object() else {
            return Ok(None);
        };
        let mode = |o: &serde_json::Map<String, serde_json::Value>| {
            o.get("mode")
                .and_then(|m| m.as_str())
                .map_or(Ok(QuantMode::Affine), QuantMode::parse)
        };
        let top_mode = mode(obj)?;
        let int = |o: &serde_json::Map<String, serde_json::Value>, k: &str| {
            o.get(k).and_then(|x| x.as_i64()).map(|x| x as i32)
        };
        let (group_size, bits) = match (int(obj, "group_size"), int(obj, "bits")) {
            (Some(g), Some(b)) => (g, b),
            _ if obj.get("quant_method").and_then(|m| m.as_str()) == Some("mxfp4") => {
                return Ok(Some(QuantConfig {
                    group_size: 32,
                    bits: 4,
                    mode: QuantMode::Mxfp4,
                    overrides: HashMap::new(),
                }))
            }
            _ => return Ok(None),
        };
        let mut overrides = HashMap::new();
        for (k, val) in obj {
            if let Some(o) = val.as_object() {
                let g = int(o, "group_size").unwrap_or(group_size);
                let b = int(o, "bits").unwrap_or(bits);
                overrides.insert(k.clone(), (g, b, mode(o)?));
            }
        }
        Ok(Some(QuantConfig {
            group_size,
            bits,
            mode: top_mode,
            overrides,
        }))
    }

    fn for_module(&self, module: &str) -> (i32, i32, QuantMode) {
        self.overrides
            .get(module)
            .copied()
            .unwrap_or((self.group_size, self.bits, self.mode))
    }
}

/// The tensors of a checkpoint, consumed as the model is built.
pub struct Weights {
    map: BTreeMap<String, Array>,
    quant: Option<QuantConfig>,
    /// Dequantize quantized layers at load (the fast path on MLX's CPU backend).
    pub dequantize: bool,
    /// The float type for parameters.
    pub dtype: Dtype,
    /// How many layers were stored at each `(bits, group_size)`.
    quant_seen: BTreeMap<(i32, i32), usize>,
    /// Parameters taken so far (quantized weights counted unpacked).
    pub params: u64,
    /// Every array handed out, so loading can evaluate them all at once.
    loaded: Vec<Array>,
    /// Every parameter tensor handed out, for `weights(m)`.
    pub parameters: Vec<ParamInfo>,
    /// The file each tensor came from, for error messages (empty when unknown).
    origins: HashMap<String, PathBuf>,
    /// Pipeline sharding: the blocks this process builds, and how many the checkpoint holds
    /// (the other blocks' tensors were dropped unread).
    shard: Option<(std::ops::Range<usize>, usize)>,
}

/// The block index of a checkpoint key `model.layers.N.*`, if it is one.
pub fn layer_of(key: &str) -> Option<usize> {
    key.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse::<usize>()
        .ok()
}

/// True for the float dtypes a parameter may be stored in.
fn is_float(d: Dtype) -> bool {
    matches!(
        d,
        Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float32 | Dtype::Float64
    )
}

impl Weights {
    pub fn new(
        map: HashMap<String, Array>,
        quant: Option<QuantConfig>,
        dequantize: bool,
        dtype: Dtype,
    ) -> Weights {
        Weights {
            map: map.into_iter().collect(),
            quant,
            dequantize,
            dtype,
            quant_seen: BTreeMap::new(),
            params: 0,
            loaded: Vec::new(),
            parameters: Vec::new(),
            origins: HashMap::new(),
            shard: None,
        }
    }

    /// Keep only blocks `range` (pipeline sharding): the other blocks' tensors are dropped
    /// before anything reads them. `present` is how many blocks the checkpoint holds; `None`
    /// counts them from the tensors still here (which must then be all of them).
    pub fn shard(&mut self, range: std::ops::Range<usize>, present: Option<usize>) {
        let present = present.unwrap_or_else(|| self.layers_present());
        self.map
            .retain(|k, _| layer_of(k).is_none_or(|i| range.contains(&i)));
        self.shard = Some((range, present));
    }

    /// The blocks to build out of `n`: all of them, or this process's share when sharded.
    pub fn layer_range(&self, n: usize) -> std::ops::Range<usize> {
        match &self.shard {
            Some((r, _)) => r.start.min(n)..r.end.min(n),
            None => 0..n,
        }
    }

    /// Records the file each tensor came from, so errors about a tensor name its file.
    pub fn set_origins(&mut self, origins: HashMap<String, PathBuf>) {
        self.origins = origins;
    }

    /// `FILE: ` for a tensor whose file is known, else nothing.
    fn origin(&self, key: &str) -> String {
        self.origins
            .get(key)
            .map(|p| format!("{}: ", p.display()))
            .unwrap_or_default()
    }

    /// How many numbered layers the checkpoint holds: the highest `N` in `model.layers.N.*`,
    /// plus one.
    pub fn layers_present(&self) -> usize {
        if let Some((_, present)) = &self.shard {
            return *present;
        }
        self.map
            .keys()
            .filter_map(|k| layer_of(k))
            .max()
            .map_or(0, |n| n + 1)
    }

    /// Checks `num_hidden_layers` against the layers the checkpoint holds, before any layer is
    /// built (a config asking for more layers than exist fails here, not after allocating
    /// them; fewer than exist is a leftover-tensor error at [`Weights::finish`]).
    pub fn check_layers(&self, n: usize) -> Result<()> {
        let have = self.layers_present();
        if n > have {
            return Err(Error::Config {
                key: "num_hidden_layers".into(),
                value: n.to_string(),
                why: format!("the checkpoint holds {have} layer(s)"),
            });
        }
        Ok(())
    }

    /// A float tensor, or an error naming its key, file and stored type.
    fn expect_float(&self, key: &str, a: &Array) -> Result<()> {
        if is_float(a.dtype()) {
            return Ok(());
        }
        Err(Error::Model(format!(
            "{}tensor {key} is stored as {}, but a float type is expected",
            self.origin(key),
            dtype_name(a.dtype())
        )))
    }

    /// The quantization most layers were stored with, `(bits, group_size)`, if any.
    pub fn stored_quantization(&self) -> Option<(i32, i32)> {
        self.quant_seen
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(q, _)| *q)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Drop a tensor the architecture does not use (e.g. rotary caches).
    pub fn discard(&mut self, key: &str) {
        self.map.remove(key);
    }

    /// Drop every tensor whose key matches `pred`.
    pub fn discard_matching(&mut self, pred: impl Fn(&str) -> bool) {
        self.map.retain(|k, _| !pred(k));
    }

    /// Rename a tensor (per-architecture key fixes in `sanitize`).
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(v) = self.map.remove(from) {
            self.map.insert(to.to_string(), v);
        }
    }

    /// Insert a tensor (e.g. one derived in `sanitize`).
    pub fn insert(&mut self, key: &str, value: Array) {
        self.map.insert(key.to_string(), value);
    }

    fn missing(&self, key: &str) -> Error {
        let stem = key.rsplit_once('.').map_or(key, |(s, _)| s);
        let stem = stem.rsplit_once('.').map_or(stem, |(s, _)| s);
        let mut near: Vec<&str> = self
            .map
            .keys()
            .filter(|k| k.starts_with(stem))
            .map(String::as_str)
            .take(8)
            .collect();
        if near.is_empty() {
            near = self.map.keys().map(String::as_str).take(8).collect();
        }
        Error::Model(format!(
            "missing tensor {key}; the checkpoint has e.g. {}",
            near.join(", ")
        ))
    }

    /// Take a tensor as stored.
    pub fn take_raw(&mut self, key: &str) -> Result<Array> {
        self.map.remove(key).ok_or_else(|| self.missing(key))
    }

    /// Take a float tensor of exactly `shape`, converted to the model's dtype.
    pub fn take(&mut self, key: &str, shape: &[i32]) -> Result<Array> {
        let a = self.take_raw(key)?;
        if a.shape() != shape {
            return Err(Error::Model(format!(
                "{}tensor {key} has shape {:?}, expected {shape:?}",
                self.origin(key),
                a.shape()
            )));
        }
        self.expect_float(key, &a)?;
        self.params += a.size() as u64;
        let stored = dtype_name(a.dtype()).to_string();
        let a = self.keep(a.as_dtype(self.dtype)?);
        self.parameters.push(ParamInfo {
            name: key.to_string(),
            shape: shape.to_vec(),
            params: a.size() as u64,
            stored,
            dtype: dtype_name(self.dtype).to_string(),
            bytes: a.nbytes() as u64,
            value: ParamValue::Dense(a.clone()),
        });
        Ok(a)
    }

    /// An RMSNorm scale vector of length `d`.
    pub fn rms_norm(&mut self, prefix: &str, d: i32, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.take(&format!("{prefix}.weight"), &[d])?,
            eps,
        })
    }

    /// A linear layer `in_dim -> out_dim` at `prefix` (`prefix.weight`, optional `prefix.bias`,
    /// and `prefix.scales`/`prefix.biases` when quantized).
    pub fn linear(
        &mut self,
        prefix: &str,
        in_dim: i32,
        out_dim: i32,
        bias: bool,
    ) -> Result<Linear> {
        self.stacked_linear(prefix, &[], in_dim, out_dim, bias)
    }

    /// `n` linear layers `in_dim -> out_dim` stacked on a leading axis (mixture-of-experts
    /// weights `[n, out, in]`, as mlx-lm's `SwitchLinear` stores them), plain or quantized.
    pub fn experts(&mut self, prefix: &str, n: i32, in_dim: i32, out_dim: i32) -> Result<Linear> {
        self.stacked_linear(prefix, &[n], in_dim, out_dim, false)
    }

    /// [`Weights::experts`] with a per-expert bias `prefix.bias` `[n, out]` (gpt-oss).
    pub fn experts_with_bias(
        &mut self,
        prefix: &str,
        n: i32,
        in_dim: i32,
        out_dim: i32,
    ) -> Result<Linear> {
        self.stacked_linear(prefix, &[n], in_dim, out_dim, true)
    }

    fn stacked_linear(
        &mut self,
        prefix: &str,
        lead: &[i32],
        in_dim: i32,
        out_dim: i32,
        bias: bool,
    ) -> Result<Linear> {
        let shape = |tail: &[i32]| [lead, tail].concat();
        let bias = if bias {
            Some(self.take(&format!("{prefix}.bias"), &shape(&[out_dim]))?)
        } else {
            None
        };
        let wkey = format!("{prefix}.weight");
        let skey = format!("{prefix}.scales");
        if !self.contains(&skey) {
            let weight = self.take(&wkey, &shape(&[out_dim, in_dim]))?;
            return Ok(Linear::Dense { weight, bias });
        }
        let weight = self.take_raw(&wkey)?;
        let scales = self.take_raw(&skey)?;
        let bkey = format!("{prefix}.biases");
        // mlx-lm's rule: float scales are the affine mode (which has offsets); uint8 scales one
        // of the fixed formats, told apart by bits and group size.
        let affine = scales.dtype() != Dtype::Uint8;
        let biases = if affine || self.contains(&bkey) {
            Some(self.take_raw(&bkey)?)
        } else {
            None
        };
        let (ws, ss) = (weight.shape().to_vec(), scales.shape().to_vec());
        let bad = |why: &str| {
            Error::Model(format!(
                "quantized layer {prefix}: {why} (weight {ws:?} {:?}, scales {ss:?}, expected \
                 {:?})",
                weight.dtype(),
                shape(&[out_dim, in_dim])
            ))
        };
        let n = lead.len();
        if weight.dtype() != Dtype::Uint32
            || ws.len() != n + 2
            || ss.len() != n + 2
            || ws[..n] != *lead
            || ss[..n] != *lead
            || ws[n] != out_dim
        {
            return Err(bad("unexpected packed weight"));
        }
        let (wcols, scols) = (ws[n + 1], ss[n + 1]);
        let packed_bits = i64::from(wcols) * 32;
        if ss[n] != out_dim
            || scols <= 0
            || in_dim <= 0
            || in_dim % scols != 0
            || packed_bits % i64::from(in_dim) != 0
            || !(1..=8).contains(&(packed_bits / i64::from(in_dim)))
        {
            return Err(bad("shapes do not match the layer"));
        }
        let group_size = in_dim / scols;
        let bits = (packed_bits / i64::from(in_dim)) as i32;
        let mode = if affine {
            QuantMode::Affine
        } else if QuantMode::Mxfp4.fixed_format() == Some((bits, group_size)) {
            QuantMode::Mxfp4
        } else {
            return Err(bad(&format!(
                "uint8 scales with {bits}-bit group {group_size} is no quantization mode mlxi \
                 supports (mxfp4 is 4-bit group 32)"
            )));
        };
        if let Some(q) = &self.quant {
            let (g, b, m) = q.for_module(prefix);
            if (g, b, m) != (group_size, bits, mode) {
                return Err(bad(&format!(
                    "config.json says {b}-bit group {g} {}, the tensors are {bits}-bit group \
                     {group_size} {}",
                    m.name(),
                    mode.name()
                )));
            }
        }
        match &biases {
            Some(_) if !affine => return Err(bad("mxfp4 has no .biases, but the file has them")),
            Some(b) if b.shape() != scales.shape() => {
                return Err(bad("biases and scales differ in shape"))
            }
            _ => {}
        }
        if affine {
            self.expect_float(&skey, &scales)?;
        }
        if let Some(b) = &biases {
            self.expect_float(&bkey, b)?;
        }
        *self.quant_seen.entry((bits, group_size)).or_default() += 1;
        let params = scales.size() as u64 * group_size as u64;
        self.params += params;
        // mxfp4 scales stay uint8 (e8m0 exponents); affine ones take the model's float type.
        let scales = if affine {
            scales.as_dtype(self.dtype)?
        } else {
            scales
        };
        let biases = biases.map(|b| b.as_dtype(self.dtype)).transpose()?;
        let quantized = match mode {
            QuantMode::Affine => format!("{bits}-bit group {group_size}"),
            QuantMode::Mxfp4 => "mxfp4".to_string(),
        };
        let mut info = ParamInfo {
            name: wkey,
            shape: shape(&[out_dim, in_dim]),
            params,
            stored: quantized.clone(),
            dtype: quantized,
            bytes: 0,
            value: ParamValue::Dense(weight.clone()),
        };
        if self.dequantize {
            let weight =
                quant::dequantize(&weight, &scales, biases.as_ref(), group_size, bits, mode)?
                    .as_dtype(self.dtype)?;
            let weight = self.keep(weight);
            info.dtype = dtype_name(self.dtype).to_string();
            info.bytes = weight.nbytes() as u64;
            info.value = ParamValue::Dense(weight.clone());
            self.parameters.push(info);
            return Ok(Linear::Dense { weight, bias });
        }
        let (weight, scales) = (self.keep(weight), self.keep(scales));
        let biases = biases.map(|b| self.keep(b));
        info.bytes =
            (weight.nbytes() + scales.nbytes() + biases.as_ref().map_or(0, |b| b.nbytes())) as u64;
        info.value = ParamValue::Quantized {
            weight: weight.clone(),
            scales: scales.clone(),
            biases: biases.clone(),
            group_size,
            bits,
            mode,
        };
        self.parameters.push(info);
        Ok(Linear::Quantized {
            weight,
            scales,
            biases,
            bias,
            group_size,
            bits,
            mode,
        })
    }

    /// A `vocab x d` embedding table at `prefix`.
    pub fn embedding(&mut self, prefix: &str, vocab: i32, d: i32) -> Result<Embedding> {
        Ok(Embedding {
            table: self.linear(prefix, d, vocab, false)?,
        })
    }

    /// Bytes of every parameter handed out so far, as the model will hold them.
    pub fn param_bytes(&self) -> u64 {
        self.loaded.iter().map(|a| a.nbytes() as u64).sum()
    }

    fn keep(&mut self, a: Array) -> Array {
        self.loaded.push(a.clone());
        a
    }

    /// Finish loading: any tensor left over is an error; otherwise every parameter is read
    /// (and dequantized) now, so a load costs what it costs up front and a damaged file fails
    /// here rather than in the first forward.
    pub fn finish(self) -> Result<()> {
        if self.map.is_empty() {
            // In small groups, so each group's sources and temporaries are freed before the next.
            for group in self.loaded.chunks(8) {
                mlx_rs::transforms::eval(group.iter())?;
            }
            return Ok(());
        }
        let keys: Vec<&str> = self.map.keys().map(String::as_str).collect();
        let shown = keys.iter().take(12).copied().collect::<Vec<_>>().join(", ");
        Err(Error::Model(format!(
            "{} unexpected tensor(s) in the checkpoint: {shown}{}",
            keys.len(),
            if keys.len() > 12 { ", ..." } else { "" }
        )))
    }
}
