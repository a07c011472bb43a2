//! Sparse autoencoders (SAEs) on one hook point: SAELens's format (`cfg.json` +
//! `sae_weights.safetensors`) and Gemma Scope's `params.npz`, encoding and decoding as SAELens
//! does, training a small one on captured activations, and the measures researchers report
//! (explained variance, L0, the change in next-token loss when the SAE is spliced in).
//!
//! SAELens (`sae_lens/saes/{standard,jumprelu,topk}_sae.py`):
//! `x' = norm_in(x) - b_dec * apply_b_dec_to_input`, `pre = x' W_enc + b_enc`, features
//! `relu(pre)` (standard), `relu(pre) * (pre > threshold)` (JumpReLU), or the `k` largest of
//! `pre`, each through a ReLU, the rest 0 (TopK); the reconstruction is
//! `norm_out(f W_dec + b_dec)`. `W_enc` is `[d_in, d_sae]`, `W_dec` `[d_sae, d_in]`: row `i` of
//! `W_dec` is feature `i`'s direction.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use mlx_rs::ops::indexing::topk_axis;
use mlx_rs::{ops, Array, Dtype};
use serde_json::{json, Value};

use crate::arrays::{check_fits, read_safetensors, write_atomic, write_safetensors};
use crate::error::{Error, Result};
use crate::hooks::{Hook, HookName};

/// The largest `d_in` and `d_sae` a file may declare (before anything is allocated).
const MAX_D_IN: i64 = 1 << 16;
const MAX_D_SAE: i64 = 1 << 22;
/// The largest array a compressed `.npz` member may claim to hold (16 GiB).
const MAX_NPY_BYTES: u64 = 1 << 34;

/// How features are computed from the pre-activations.
#[derive(Debug, Clone, PartialEq)]
pub enum Activation {
    /// `relu(pre)` (SAELens "standard")
    Relu,
    /// `relu(pre) * (pre > threshold)`, a threshold per feature
    JumpRelu,
    /// the `k` largest pre-activations through a ReLU, the others 0
    TopK(i32),
}

impl Activation {
    /// SAELens's `architecture` name.
    pub fn architecture(&self) -> &'static str {
        match self {
            Activation::Relu => "standard",
            Activation::JumpRelu => "jumprelu",
            Activation::TopK(_) => "topk",
        }
    }
}

/// SAELens's run-time input normalisation (`normalize_activations`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Norm {
    None,
    /// `x * sqrt(d_in) / |x|` on the way in, undone on the way out.
    ConstantNormRescale,
    /// `(x - mean) / (std + 1e-5)` over the features, undone on the way out.
    LayerNorm,
}

impl Norm {
    fn name(self) -> &'static str {
        match self {
            Norm::None => "none",
            Norm::ConstantNormRescale => "constant_norm_rescale",
            Norm::LayerNorm => "layer_norm",
        }
    }
}

/// A sparse autoencoder, its weights float32.
#[derive(Debug, Clone)]
pub struct Sae {
    pub d_in: i32,
    pub d_sae: i32,
    pub activation: Activation,
    pub apply_b_dec_to_input: bool,
    pub norm: Norm,
    /// The TransformerLens hook name it reads (e.g. `blocks.15.hook_resid_post`), if known.
    pub hook: Option<String>,
    /// `[d_in, d_sae]`
    pub w_enc: Array,
    /// `[d_sae]`
    pub b_enc: Array,
    /// `[d_sae, d_in]`
    pub w_dec: Array,
    /// `[d_in]`
    pub b_dec: Array,
    /// `[d_sae]`, JumpReLU only
    pub threshold: Option<Array>,
    /// Where it came from: "SAELens", "Gemma Scope" or "trained".
    pub format: String,
    /// A note on the config (e.g. a normalisation treated as none), shown with the SAE.
    pub note: Option<String>,
    /// The model it was made for, if the config says (kept when saving).
    pub model_name: Option<String>,
}

/// The normalisation statistics of one input, to undo on the way out.
pub struct NormState(Option<(Array, Array)>);

/// SAELens's architectures (sae_lens 6.54, `saes/`), named in errors; any other value is not
/// quoted (a file's contents never end up in a message).
const SAELENS_ARCHITECTURES: &[&str] = &[
    "gated",
    "batchtopk",
    "matryoshka_batchtopk",
    "abstopk",
    "matching_pursuit",
    "temporal",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
];

/// `"value"` when it is one of `known`, else a phrase that does not quote it.
fn named(value: &str, known: &[&str]) -> String {
    if known.contains(&value) {
        format!("{value:?}")
    } else {
        "(a value SAELens does not define)".into()
    }
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Model(format!("{}: not a usable SAE: {why}", path.display()))
}

/// The value of a one-element array.
fn scalar(a: &Array) -> Result<f32> {
    Ok(crate::arrays::to_f32_vec(a)?
        .first()
        .copied()
        .unwrap_or(f32::NAN))
}

fn f32s(x: f32) -> Array {
    Array::from_f32(x)
}

impl Sae {
    /// Loads an SAE from a SAELens folder (`cfg.json`, `sae_weights.safetensors`), a Gemma
    /// Scope `params.npz` (or a folder holding one), checking every shape against the config.
    /// `hook` overrides the config's hook name (Gemma Scope files have none; a path component
    /// `layer_N` is read as `blocks.N.hook_resid_post`).
    pub fn load(path: &Path, hook: Option<&str>) -> Result<Sae> {
        let npz = if path.is_dir() {
            let p = path.join("params.npz");
            (!path.join("cfg.json").exists() && p.is_file()).then_some(p)
        } else if path.extension().is_some_and(|e| e == "npz") {
            Some(path.to_path_buf())
        } else {
            None
        };
        let mut sae = match npz {
            Some(p) => Sae::load_npz(&p)?,
            None => {
                let dir = if path.is_dir() {
                    path.to_path_buf()
                } else {
                    path.parent().map(Path::to_path_buf).unwrap_or_default()
                };
                Sae::load_saelens(&dir)?
            }
        };
        if let Some(h) = hook {
            sae.hook = Some(h.to_string());
        }
        Ok(sae)
    }

    fn load_saelens(dir: &Path) -> Result<Sae> {
        let cfg_path = dir.join("cfg.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: Value = serde_json::from_str(&text).map_err(|e| {
            bad(
                &cfg_path,
                format!(
                    "cfg.json is not JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let cfg = cfg
            .as_object()
            .ok_or_else(|| bad(&cfg_path, "cfg.json is not a JSON object"))?;
        let int = |key: &str, max: i64| -> Result<i32> {
            let v = cfg
                .get(key)
                .ok_or_else(|| bad(&cfg_path, format!("cfg.json has no '{key}'")))?;
            match v.as_i64() {
                Some(n) if (1..=max).contains(&n) => Ok(n as i32),
                _ => Err(bad(
                    &cfg_path,
                    format!("'{key}' must be an integer from 1 to {max}"),
                )),
            }
        };
        let d_in = int("d_in", MAX_D_IN)?;
        let d_sae = int("d_sae", MAX_D_SAE)?;
        let text_of = |key: &str| cfg.get(key).and_then(Value::as_str);
        let kwargs_k = cfg
            .get("activation_fn_kwargs")
            .and_then(|k| k.get("k"))
            .and_then(Value::as_i64);
        let k = cfg.get("k").and_then(Value::as_i64).or(kwargs_k);
        let arch = match (text_of("architecture"), text_of("activation_fn_str")) {
            (Some(a), _) => a.to_string(),
            (None, Some("topk")) => "topk".into(),
            (None, _) => "standard".into(),
        };
        let activation = match arch.as_str() {
            "standard" => Activation::Relu,
            "jumprelu" => Activation::JumpRelu,
            "topk" => match k {
                Some(k) if k >= 1 && k <= d_sae as i64 => Activation::TopK(k as i32),
                _ => {
                    return Err(bad(
                        &cfg_path,
                        format!("a topk SAE needs 'k' (or activation_fn_kwargs.k) from 1 to d_sae = {d_sae}"),
                    ))
                }
            },
            other => {
                return Err(bad(
                    &cfg_path,
                    format!(
                        "architecture {} is not supported (supported: standard, jumprelu, topk)",
                        named(other, SAELENS_ARCHITECTURES)
                    ),
                ))
            }
        };
        if cfg
            .get("rescale_acts_by_decoder_norm")
            .and_then(Value::as_bool)
            == Some(true)
        {
            return Err(bad(
                &cfg_path,
                "rescale_acts_by_decoder_norm = true is not supported",
            ));
        }
        if let Some(r) = text_of("reshape_activations").filter(|r| *r != "none") {
            return Err(bad(
                &cfg_path,
                format!(
                    "reshape_activations {} is not supported (none only)",
                    named(r, &["hook_z"])
                ),
            ));
        }
        let mut note = None;
        let norm = match text_of("normalize_activations").unwrap_or("none") {
            "none" => Norm::None,
            "constant_norm_rescale" => Norm::ConstantNormRescale,
            "layer_norm" => Norm::LayerNorm,
            "expected_average_only_in" => {
                note = Some(
                    "normalize_activations \"expected_average_only_in\" without a folded scaling \
                     factor: treated as none, as SAELens does"
                        .to_string(),
                );
                Norm::None
            }
            other => {
                return Err(bad(
                    &cfg_path,
                    format!(
                        "normalize_activations {} is not supported (none, \
                         expected_average_only_in, constant_norm_rescale, layer_norm)",
                        named(other, &["covariance_whitening"])
                    ),
                ))
            }
        };
        let apply_b_dec_to_input = match cfg.get("apply_b_dec_to_input") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(bad(
                    &cfg_path,
                    "'apply_b_dec_to_input' must be true or false",
                ))
            }
        };
        let meta = cfg.get("metadata");
        let hook = meta
            .and_then(|m| m.get("hook_name"))
            .and_then(Value::as_str)
            .or(text_of("hook_name"))
            .map(str::to_string);
        let model_name = meta
            .and_then(|m| m.get("model_name"))
            .and_then(Value::as_str)
            .or(text_of("model_name"))
            .map(str::to_string);

        let wpath = dir.join("sae_weights.safetensors");
        let size = std::fs::metadata(&wpath)
            .map_err(|e| Error::io(&wpath, e))?
            .len();
        // float32 weights plus a header: anything much larger is not this SAE.
        let expected = 4 * (2 * d_in as u64 * d_sae as u64 + 2 * d_sae as u64 + d_in as u64);
        if size > expected + (1 << 20) {
            return Err(bad(
                &wpath,
                format!(
                    "the file holds {size} bytes, more than d_in = {d_in}, d_sae = {d_sae} \
                     need ({expected} as float32)"
                ),
            ));
        }
        let (tensors, _) = read_safetensors(&wpath)?;
        let mut map: HashMap<String, Array> = tensors.into_iter().collect();
        let jump = activation == Activation::JumpRelu;
        let mut sae = Sae::from_tensors(
            &wpath,
            &mut map,
            d_in,
            d_sae,
            activation,
            &[("log_threshold", jump)],
        )?;
        sae.apply_b_dec_to_input = apply_b_dec_to_input;
        sae.norm = norm;
        sae.hook = hook;
        sae.note = note;
        sae.model_name = model_name;
        Ok(sae)
    }

    /// The weights from `map` (which must hold exactly the keys this activation uses), shapes
    /// checked against `d_in` and `d_sae`.
    fn from_tensors(
        path: &Path,
        map: &mut HashMap<String, Array>,
        d_in: i32,
        d_sae: i32,
        activation: Activation,
        alternatives: &[(&str, bool)],
    ) -> Result<Sae> {
        let jump = activation == Activation::JumpRelu;
        let take = |map: &mut HashMap<String, Array>, key: &str, shape: &[i32]| -> Result<Array> {
            let a = map
                .remove(key)
                .ok_or_else(|| bad(path, format!("the weights have no {key:?}")))?;
            if a.shape() != shape {
                return Err(bad(
                    path,
                    format!(
                        "{key} has shape {:?}, expected {shape:?} (d_in = {d_in}, d_sae = {d_sae})",
                        a.shape()
                    ),
                ));
            }
            if !matches!(
                a.dtype(),
                Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float64
            ) {
                return Err(bad(
                    path,
                    format!("{key} is {:?}, not a float tensor", a.dtype()),
                ));
            }
            Ok(a.as_dtype(Dtype::Float32)?)
        };
        let w_enc = take(map, "W_enc", &[d_in, d_sae])?;
        let b_enc = take(map, "b_enc", &[d_sae])?;
        let w_dec = take(map, "W_dec", &[d_sae, d_in])?;
        let b_dec = take(map, "b_dec", &[d_in])?;
        let threshold = if !jump {
            None
        } else if map.contains_key("threshold") {
            Some(take(map, "threshold", &[d_sae])?)
        } else if alternatives.iter().any(|(k, _)| map.contains_key(*k)) {
            Some(take(map, "log_threshold", &[d_sae])?.exp()?)
        } else {
            return Err(bad(path, "a jumprelu SAE needs \"threshold\" [d_sae]"));
        };
        if !map.is_empty() {
            let mut left: Vec<&str> = map.keys().map(String::as_str).collect();
            left.sort();
            let shown: Vec<String> = left
                .iter()
                .take(8)
                .map(|k| format!("{:?}", k.chars().take(40).collect::<String>()))
                .collect();
            return Err(bad(
                path,
                format!(
                    "unexpected tensors for a {} SAE: {}",
                    activation.architecture(),
                    shown.join(", ")
                ),
            ));
        }
        Ok(Sae {
            d_in,
            d_sae,
            activation,
            apply_b_dec_to_input: true,
            norm: Norm::None,
            hook: None,
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            threshold,
            format: "SAELens".into(),
            note: None,
            model_name: None,
        })
    }

    /// A Gemma Scope `params.npz`: JumpReLU, `b_dec` not subtracted from the input.
    fn load_npz(path: &Path) -> Result<Sae> {
        let arrays = read_npz(path)?;
        let mut map: HashMap<String, Array> = arrays.into_iter().collect();
        let w = map
            .get("W_enc")
            .ok_or_else(|| bad(path, "the archive has no W_enc.npy"))?;
        if w.ndim() != 2 {
            return Err(bad(
                path,
                format!("W_enc has shape {:?}, expected 2 axes", w.shape()),
            ));
        }
        let (d_in, d_sae) = (w.shape()[0], w.shape()[1]);
        let mut sae = Sae::from_tensors(path, &mut map, d_in, d_sae, Activation::JumpRelu, &[])?;
        sae.apply_b_dec_to_input = false;
        sae.format = "Gemma Scope".into();
        sae.hook = path.ancestors().find_map(|p| {
            let name = p.file_name()?.to_str()?;
            let n: usize = name.strip_prefix("layer_")?.parse().ok()?;
            Some(format!("blocks.{n}.hook_resid_post"))
        });
        Ok(sae)
    }

    /// Writes the SAE in SAELens's format into folder `dir` (`cfg.json`,
    /// `sae_weights.safetensors`), each file atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors: Vec<(&str, &Array)> = vec![
            ("W_enc", &self.w_enc),
            ("b_enc", &self.b_enc),
            ("W_dec", &self.w_dec),
            ("b_dec", &self.b_dec),
        ];
        if let Some(t) = &self.threshold {
            tensors.push(("threshold", t));
        }
        write_safetensors(&dir.join("sae_weights.safetensors"), &tensors, None)?;
        let mut cfg = json!({
            "architecture": self.activation.architecture(),
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.norm.name(),
            "reshape_activations": "none",
            "activation_fn_str": if matches!(self.activation, Activation::TopK(_)) { "topk" } else { "relu" },
            "hook_name": self.hook,
            "metadata": {"hook_name": self.hook, "model_name": self.model_name},
        });
        if let Activation::TopK(k) = self.activation {
            cfg["k"] = json!(k);
            cfg["activation_fn_kwargs"] = json!({ "k": k });
        }
        let text = serde_json::to_string_pretty(&cfg)
            .map_err(|e| Error::Invalid(format!("save_sae: {e}")))?;
        write_atomic(&dir.join("cfg.json"), text.as_bytes())
    }

    /// A short description: `topk SAE (k=32), 576 -> 2304 features at blocks.15.hook_resid_post`.
    pub fn describe(&self) -> String {
        let act = match self.activation {
            Activation::TopK(k) => format!("topk (k={k})"),
            ref a => a.architecture().to_string(),
        };
        let at = self.hook.as_deref().unwrap_or("an unknown hook point");
        let mut s = format!(
            "{} {act} SAE, {} -> {} features at {at}",
            self.format, self.d_in, self.d_sae
        );
        if self.norm != Norm::None {
            s += &format!(", normalize_activations {}", self.norm.name());
        }
        if let Some(n) = &self.note {
            s += &format!(" ({n})");
        }
        s
    }

    /// `x` `[..., d_in]` as float32, its normalisation state.
    fn normalize_in(&self, x: &Array) -> Result<(Array, NormState)> {
        let x = x.as_dtype(Dtype::Float32)?;
        match self.norm {
            Norm::None => Ok((x, NormState(None))),
            Norm::ConstantNormRescale => {
                let n = x.square()?.sum_axis(-1, true)?.sqrt()?;
                let c = f32s((self.d_in as f32).sqrt()).divide(&n)?;
                Ok((x.multiply(&c)?, NormState(Some((c, f32s(0.0))))))
            }
            Norm::LayerNorm => {
                let mu = x.mean_axis(-1, true)?;
                let xc = x.subtract(&mu)?;
                // torch's std: the unbiased estimate.
                let n = self.d_in as f32;
                let std = xc
                    .square()?
                    .sum_axis(-1, true)?
                    .divide(f32s((n - 1.0).max(1.0)))?
                    .sqrt()?;
                let y = xc.divide(std.add(f32s(1e-5))?)?;
                Ok((y, NormState(Some((std, mu)))))
            }
        }
    }

    fn check_width(&self, what: &str, a: &Array, width: i32) -> Result<()> {
        if a.ndim() == 0 || a.shape()[a.ndim() - 1] != width {
            return Err(Error::Invalid(format!(
                "{what}: the tensor has shape {:?}; this SAE takes a last axis of {width}",
                a.shape()
            )));
        }
        Ok(())
    }

    /// Pre-activations `[..., d_sae]` of a normalised input.
    fn pre(&self, xn: &Array) -> Result<Array> {
        let x = if self.apply_b_dec_to_input {
            xn.subtract(&self.b_dec)?
        } else {
            xn.clone()
        };
        Ok(x.matmul(&self.w_enc)?.add(&self.b_enc)?)
    }

    fn activate(&self, pre: &Array) -> Result<Array> {
        let relu = ops::maximum(pre, f32s(0.0))?;
        Ok(match &self.activation {
            Activation::Relu => relu,
            Activation::JumpRelu => {
                let t = self
                    .threshold
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("a jumprelu SAE without a threshold".into()))?;
                relu.multiply(pre.gt(t)?.as_dtype(Dtype::Float32)?)?
            }
            Activation::TopK(k) => relu.multiply(topk_mask(pre, *k)?)?,
        })
    }

    /// Feature activations `[..., d_sae]` of activations `x` `[..., d_in]`.
    pub fn encode(&self, x: &Array) -> Result<Array> {
        self.check_width("sae_encode", x, self.d_in)?;
        let (xn, _) = self.normalize_in(x)?;
        self.activate(&self.pre(&xn)?)
    }

    /// Features and the normalisation state of `x`, for [`Sae::decode_with`].
    fn encode_with(&self, x: &Array) -> Result<(Array, NormState)> {
        let (xn, st) = self.normalize_in(x)?;
        Ok((self.activate(&self.pre(&xn)?)?, st))
    }

    fn decode_with(&self, f: &Array, st: &NormState) -> Result<Array> {
        let y = f.matmul(&self.w_dec)?.add(&self.b_dec)?;
        Ok(match (&st.0, self.norm) {
            (None, _) | (_, Norm::None) => y,
            (Some((c, _)), Norm::ConstantNormRescale) => y.divide(c)?,
            (Some((std, mu)), Norm::LayerNorm) => y.multiply(std)?.add(mu)?,
        })
    }

    /// The reconstruction `[..., d_in]` of features `f` `[..., d_sae]`. An SAE that normalises
    /// its input needs the input to undo it: use [`Sae::reconstruct`].
    pub fn decode(&self, f: &Array) -> Result<Array> {
        self.check_width("sae_decode", f, self.d_sae)?;
        if self.norm != Norm::None {
            return Err(Error::Invalid(format!(
                "sae_decode: this SAE normalises its input ({}), so decoding needs the input: \
                 use sae_reconstruct(sae, x)",
                self.norm.name()
            )));
        }
        self.decode_with(&f.as_dtype(Dtype::Float32)?, &NormState(None))
    }

    /// `decode(encode(x))`, float32.
    pub fn reconstruct(&self, x: &Array) -> Result<Array> {
        self.check_width("sae_reconstruct", x, self.d_in)?;
        let (f, st) = self.encode_with(x)?;
        self.decode_with(&f, &st)
    }

    /// Checks feature indices, for the hook ops.
    pub fn check_features(&self, what: &str, features: &[i32]) -> Result<()> {
        if features.is_empty() {
            return Err(Error::Invalid(format!("{what}: no features given")));
        }
        if let Some(f) = features.iter().find(|f| **f < 0 || **f >= self.d_sae) {
            return Err(Error::Invalid(format!(
                "{what}: feature {f} is out of range; this SAE has features 0..{}",
                self.d_sae - 1
            )));
        }
        Ok(())
    }

    /// Applies `edit` to activations `x` `[batch, pos, ..., d]` (the axes after the position
    /// flattened when they make `d_in`), in `x`'s dtype.
    pub fn apply(&self, x: &Array, edit: &SaeEdit) -> Result<Array> {
        let shape = x.shape().to_vec();
        let flat: i32 = shape[2.min(shape.len())..].iter().product();
        let xf = if shape.len() > 3 && flat == self.d_in {
            x.reshape(&[shape[0], shape[1], flat])?
        } else {
            x.clone()
        };
        self.check_width("sae hook", &xf, self.d_in)?;
        let x32 = xf.as_dtype(Dtype::Float32)?;
        let y = match edit {
            SaeEdit::Splice { keep_error } => {
                if *keep_error {
                    x32
                } else {
                    self.reconstruct(&x32)?
                }
            }
            SaeEdit::Ablate {
                features,
                keep_error,
            } => {
                let (f, st) = self.encode_with(&x32)?;
                let mut keep = vec![1.0f32; self.d_sae as usize];
                for &i in features {
                    keep[i as usize] = 0.0;
                }
                let f2 = f.multiply(Array::from_slice(&keep, &[self.d_sae]))?;
                let r2 = self.decode_with(&f2, &st)?;
                if *keep_error {
                    let r = self.decode_with(&f, &st)?;
                    x32.add(r2.subtract(r)?)?
                } else {
                    r2
                }
            }
            SaeEdit::Steer { features, scale } => {
                let idx = Array::from_slice(features, &[features.len() as i32]);
                let v = self.w_dec.take_axis(&idx, 0)?.sum_axis(0, false)?;
                x32.add(v.multiply(f32s(*scale))?)?
            }
        };
        Ok(y.as_dtype(x.dtype())?.reshape(&shape)?)
    }
}

/// `[..., d_sae]` float mask of the `k` largest entries of each row (ties at the k-th value
/// all kept).
fn topk_mask(pre: &Array, k: i32) -> Result<Array> {
    let kth = topk_axis(pre, k, -1)?.min_axis(-1, true)?;
    Ok(mlx_rs::stop_gradient(
        pre.ge(&kth)?.as_dtype(Dtype::Float32)?,
    )?)
}

/// What an SAE hook does to the activation.
#[derive(Debug, Clone, PartialEq)]
pub enum SaeEdit {
    /// The reconstruction replaces the activation (with `keep_error` the error term is added
    /// back, which leaves the activation as it was: a baseline for the other edits).
    Splice { keep_error: bool },
    /// The reconstruction with these features set to 0; with `keep_error` (the default) the
    /// error term is added back, so only the features' contribution is removed.
    Ablate {
        features: Vec<i32>,
        keep_error: bool,
    },
    /// `x + scale * sum of these features' decoder rows`.
    Steer { features: Vec<i32>, scale: f32 },
}

impl SaeEdit {
    /// The op name scripts write.
    pub fn name(&self) -> &'static str {
        match self {
            SaeEdit::Splice { .. } => "sae_splice",
            SaeEdit::Ablate { .. } => "sae_ablate",
            SaeEdit::Steer { .. } => "sae_steer",
        }
    }
}

/// One `.npy` member: `(name, array)`; checks the header's dtype, order and shape against the
/// member's size before allocating.
fn read_npy(name: &str, bytes: &[u8], path: &Path) -> Result<Array> {
    let what = |why: &str| bad(path, format!("{name}.npy: {why}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(what("not a .npy array"));
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(what("unsupported .npy version")),
    };
    let header = bytes
        .get(start..start.saturating_add(hlen))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| what("the header does not fit the file"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[i..].trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| what("the header has no dtype"))?;
    let item = match descr {
        "<f4" => 4,
        "<f8" => 8,
        "<f2" => 2,
        _ => {
            return Err(what(
                "only little-endian float16/32/64 arrays are supported",
            ))
        }
    };
    if field("fortran_order").is_none_or(|s| !s.starts_with("False")) {
        return Err(what("only C-order arrays are supported"));
    }
    let dims = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| what("the header has no shape"))?;
    let mut shape = Vec::new();
    for d in dims.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let n: i64 = d
            .parse()
            .map_err(|_| what("the shape is not a list of sizes"))?;
        if !(0..=i32::MAX as i64).contains(&n) || shape.len() >= 4 {
            return Err(what("the shape is out of range"));
        }
        shape.push(n as i32);
    }
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d as usize));
    let data = &bytes[start + hlen..];
    if count.and_then(|c| c.checked_mul(item)) != Some(data.len()) {
        return Err(what("the data size does not match the shape"));
    }
    check_fits(&shape, Dtype::Float32)?;
    Ok(match item {
        4 => {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Array::from_slice(&v, &shape)
        }
        8 => {
            let v: Vec<f32> = data
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b) as f32
                })
                .collect();
            Array::from_slice(&v, &shape)
        }
        _ => {
            let v: Vec<f32> = data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            Array::from_slice(&v, &shape)
        }
    })
}

/// The `.npy` members of a `.npz` archive, each checked before it is read.
fn read_npz(path: &Path) -> Result<Vec<(String, Array)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(file).map_err(|_| bad(path, "not a .npz (zip) archive"))?;
    if zip.len() > 16 {
        return Err(bad(
            path,
            format!("{} members, more than an SAE has", zip.len()),
        ));
    }
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut member = zip
            .by_index(i)
            .map_err(|_| bad(path, format!("member {i} cannot be read")))?;
        let name = member.name().to_string();
        let Some(key) = name.strip_suffix(".npy") else {
            return Err(bad(path, format!("member {i} is not a .npy array")));
        };
        let key: String = key.chars().take(40).collect();
        // A stored member is at most the archive's size; a compressed one may not claim more
        // than the largest SAE's weights.
        let limit = MAX_NPY_BYTES.max(size);
        if member.size() > limit {
            return Err(bad(path, format!("{key}.npy is too large")));
        }
        check_fits(
            &[(member.size() / 4).min(i32::MAX as u64) as i32],
            Dtype::Float32,
        )?;
        let mut bytes = Vec::with_capacity(member.size().min(1 << 26) as usize);
        member
            .by_ref()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|_| bad(path, format!("{key}.npy cannot be read")))?;
        out.push((key.clone(), read_npy(&key, &bytes, path)?));
    }
    Ok(out)
}

/// Next-token cross-entropy (summed over the predicted positions of real tokens, and their
/// count) of `rows` through `model` as it is hooked now, 8 rows per forward.
fn next_token_loss(model: &mut crate::model::Model, rows: &[Vec<u32>]) -> Result<(f64, usize)> {
    let mut total = 0.0f64;
    let mut count = 0usize;
    for chunk in rows.chunks(8) {
        crate::interrupt::check()?;
        let len = chunk.iter().map(Vec::len).max().unwrap_or(0);
        if len < 2 {
            continue;
        }
        let logits = model.forward_ids(chunk)?;
        let (b, l) = (chunk.len() as i32, len as i32);
        // Left-padded: row r's tokens sit at the end; position j predicts position j + 1.
        let mut next = vec![0i32; chunk.len() * (len - 1)];
        let mut mask = vec![0f32; chunk.len() * (len - 1)];
        for (r, row) in chunk.iter().enumerate() {
            let pad = len - row.len();
            for (i, &t) in row.iter().enumerate().skip(1) {
                let j = pad + i - 1;
                next[r * (len - 1) + j] = t as i32;
                mask[r * (len - 1) + j] = 1.0;
                count += 1;
            }
        }
        use mlx_rs::ops::indexing::TryIndexOp;
        let lp = logits.try_index((.., 0..l - 1))?;
        let lse = lp.logsumexp_axis(-1, false)?;
        let idx = Array::from_slice(&next, &[b, l - 1, 1]);
        let picked = mlx_rs::ops::indexing::take_along_axis(&lp, &idx, -1)?.reshape(&[b, l - 1])?;
        let nll = lse
            .subtract(&picked)?
            .multiply(Array::from_slice(&mask, &[b, l - 1]))?
            .sum(None)?;
        total += scalar(&nll)? as f64;
    }
    Ok((total, count))
}

trait RowSlice {
    fn index_rows(&self, start: i32, end: i32) -> Result<Array>;
}

impl RowSlice for Array {
    fn index_rows(&self, start: i32, end: i32) -> Result<Array> {
        use mlx_rs::ops::indexing::TryIndexOp;
        Ok(self.try_index(start..end)?)
    }
}

/// What [`evaluate`] measures.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// `1 - sum |x - x̂|² / sum |x - mean x|²` over the tokens (first token of each input left
    /// out: its activation is an outlier in most models).
    pub explained_variance: f64,
    /// Mean squared error per element.
    pub mse: f64,
    /// Mean number of active features per token.
    pub l0: f64,
    /// Per feature, the fraction of tokens on which it is active.
    pub density: Vec<f32>,
    /// Next-token loss without and with the reconstruction spliced in, per predicted token.
    pub loss: f64,
    pub loss_spliced: f64,
    /// Number of tokens measured (activations) and predicted (loss).
    pub tokens: usize,
    pub predicted: usize,
}

/// Activations at `point` `[tokens, d]` of `rows` (each input's first token left out when
/// `skip_first`), float32, via the model's capture.
pub fn activations(
    model: &mut crate::model::Model,
    rows: &[Vec<u32>],
    point: HookName,
    skip_first: bool,
    progress: bool,
) -> Result<Array> {
    let cache = crate::capture::capture(
        model,
        rows,
        &[point],
        crate::capture::Positions::All,
        8,
        progress,
    )?;
    let per_input = match cache.entries.get(&point) {
        Some(crate::capture::Captured::PerInput(rows)) => rows.clone(),
        _ => {
            return Err(Error::Invalid(format!(
                "no activations captured at {point}"
            )))
        }
    };
    let mut parts = Vec::new();
    for a in per_input {
        let l = a.shape()[0];
        let d: i32 = a.shape()[1..].iter().product();
        let a = a.reshape(&[l, d])?;
        let start = if skip_first { 1 } else { 0 };
        if l > start {
            parts.push(a.index_rows(start, l)?.as_dtype(Dtype::Float32)?);
        }
    }
    if parts.is_empty() {
        return Err(Error::Invalid(
            "the inputs have no tokens to measure (each input's first token is left out)".into(),
        ));
    }
    Ok(ops::concatenate(&parts, 0)?)
}

/// Explained variance, MSE, L0 and feature density of the SAE on activations `x` `[n, d_in]`.
pub fn reconstruction_stats(sae: &Sae, x: &Array) -> Result<(f64, f64, f64, Vec<f32>)> {
    let (f, st) = sae.encode_with(x)?;
    let xh = sae.decode_with(&f, &st)?;
    let x = x.as_dtype(Dtype::Float32)?;
    let resid = x.subtract(&xh)?.square()?.sum(None)?;
    let centred = x.subtract(x.mean_axis(0, true)?)?.square()?.sum(None)?;
    let active = f.gt(f32s(0.0))?.as_dtype(Dtype::Float32)?;
    let l0 = active.sum_axis(-1, false)?.mean(None)?;
    let density = active.mean_axis(0, false)?;
    mlx_rs::transforms::eval([&resid, &centred, &l0, &density])?;
    let (r, c) = (scalar(&resid)? as f64, scalar(&centred)? as f64);
    let n = x.size() as f64;
    Ok((
        1.0 - r / c.max(f64::MIN_POSITIVE),
        r / n,
        scalar(&l0)? as f64,
        density.as_slice::<f32>().to_vec(),
    ))
}

/// Measures `sae` at `point` on `rows`: reconstruction (explained variance, MSE, L0, density)
/// and the next-token loss with and without the reconstruction spliced in at every position
/// but each input's first (whose activation is an outlier in most models, left out of the
/// statistics too). Hooks already on
/// the model stay on in both runs.
pub fn evaluate(
    model: &mut crate::model::Model,
    sae: &std::rc::Rc<Sae>,
    point: HookName,
    rows: &[Vec<u32>],
) -> Result<Evaluation> {
    let x = activations(model, rows, point, true, false)?;
    let (ev, mse, l0, density) = reconstruction_stats(sae, &x)?;
    let (loss, predicted) = next_token_loss(model, rows)?;
    let max_len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let iv = crate::interventions::Intervention {
        point,
        op: crate::interventions::Op::Sae {
            sae: sae.clone(),
            edit: SaeEdit::Splice { keep_error: false },
        },
        // Each input's first token keeps its activation (an outlier the SAE is not trained on).
        window: crate::interventions::Window::Positions((1..max_len as i64).collect()),
    };
    let id = model.hooks.attach(Hook {
        name: point,
        label: iv.label(),
        steering: false,
        func: iv.into_hook(),
    });
    let spliced = next_token_loss(model, rows);
    model.hooks.detach(&[id]);
    let (loss_spliced, _) = spliced?;
    let p = predicted.max(1) as f64;
    Ok(Evaluation {
        explained_variance: ev,
        mse,
        l0,
        density,
        loss: loss / p,
        loss_spliced: loss_spliced / p,
        tokens: x.shape()[0] as usize,
        predicted,
    })
}

/// How to train an SAE.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub d_sae: i32,
    /// `Relu` (L1 penalty) or `TopK(k)`.
    pub activation: Activation,
    /// L1 coefficient (relu only), on features weighted by their decoder rows' norms.
    pub l1: f32,
    pub lr: f32,
    pub steps: usize,
    pub batch_size: i32,
    pub seed: u64,
}

/// What training gives besides the SAE.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The loss every step (on the scaled activations).
    pub losses: Vec<f32>,
    /// `sqrt(d_in) / mean |x|`, the scale the SAE was trained at (folded into the weights).
    pub scale: f32,
    pub seconds: f64,
}

/// Trains an SAE on activations `x` `[n, d_in]` with Adam, SAELens's way: the activations
/// scaled to mean norm `sqrt(d_in)` during training (the factor folded into the saved
/// weights), `b_dec` started at their mean, `W_enc` at `W_dec`ᵀ; TopK's decoder rows kept at
/// unit norm. `tick(step, loss)` is called every step (a progress bar); Ctrl-C stops it.
pub fn train(
    x: &Array,
    opts: &TrainOptions,
    mut tick: impl FnMut(usize, f32),
) -> Result<(Sae, TrainReport)> {
    use mlx_rs::optimizers::Optimizer;
    use rand::{Rng, SeedableRng};
    let start = std::time::Instant::now();
    if x.ndim() != 2 || x.shape()[0] < 2 {
        return Err(Error::Invalid(format!(
            "sae_train: the activations must be [tokens, d] with at least 2 tokens, got {:?}",
            x.shape()
        )));
    }
    let (n, d_in) = (x.shape()[0], x.shape()[1]);
    let d_sae = opts.d_sae;
    if !(1..=MAX_D_SAE as i32).contains(&d_sae) {
        return Err(Error::Invalid(format!(
            "sae_train: d_sae must be from 1 to {MAX_D_SAE}, got {d_sae}"
        )));
    }
    if let Activation::TopK(k) = opts.activation {
        if k < 1 || k > d_sae {
            return Err(Error::Invalid(format!(
                "sae_train: k must be from 1 to d_sae = {d_sae}, got {k}"
            )));
        }
    }
    if opts.activation == Activation::JumpRelu {
        return Err(Error::Invalid(
            "sae_train: trains \"relu\" and \"topk\" SAEs".into(),
        ));
    }
    check_fits(&[d_in, d_sae], Dtype::Float32)?;
    let x = x.as_dtype(Dtype::Float32)?;
    let mean_norm = x.square()?.sum_axis(-1, false)?.sqrt()?.mean(None)?;
    mean_norm.eval()?;
    let scale = (d_in as f32).sqrt() / scalar(&mean_norm)?.max(1e-12);
    let xs = x.multiply(f32s(scale))?;
    let key = mlx_rs::random::key(opts.seed)?;
    let w = mlx_rs::random::normal::<f32>(&[d_sae, d_in][..], None, None, &key)?;
    let row_norm = |w: &Array| -> Result<Array> {
        Ok(w.square()?.sum_axis(-1, true)?.sqrt()?.add(f32s(1e-8))?)
    };
    let init_norm = if matches!(opts.activation, Activation::TopK(_)) {
        1.0
    } else {
        0.1
    };
    let w_dec = w.divide(row_norm(&w)?)?.multiply(f32s(init_norm))?;
    let mut params = vec![
        w_dec.transpose()?,
        ops::zeros::<f32>(&[d_sae])?,
        w_dec,
        xs.mean_axis(0, false)?,
    ];
    mlx_rs::transforms::eval(params.iter())?;
    let mut adam = mlx_rs::optimizers::Adam::new(opts.lr);
    let keys: Vec<std::rc::Rc<str>> = ["W_enc", "b_enc", "W_dec", "b_dec"]
        .iter()
        .map(|k| std::rc::Rc::from(*k))
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let batch = opts.batch_size.clamp(1, n);
    let mut losses = Vec::with_capacity(opts.steps);
    let activation = opts.activation.clone();
    let l1 = opts.l1;
    for step in 0..opts.steps {
        crate::interrupt::check()?;
        let idx: Vec<i32> = (0..batch).map(|_| rng.random_range(0..n)).collect();
        let xb = xs.take_axis(Array::from_slice(&idx, &[batch]), 0)?;
        let act = activation.clone();
        let loss_fn = move |p: &[Array]| -> mlx_rs::error::Result<Vec<Array>> {
            let (w_enc, b_enc, w_dec, b_dec) = (&p[0], &p[1], &p[2], &p[3]);
            let pre = xb.subtract(b_dec)?.matmul(w_enc)?.add(b_enc)?;
            let relu = ops::maximum(&pre, Array::from_f32(0.0))?;
            let f = match act {
                Activation::TopK(k) => {
                    let kth = topk_axis(&pre, k, -1)?.min_axis(-1, true)?;
                    let mask = mlx_rs::stop_gradient(pre.ge(&kth)?.as_dtype(Dtype::Float32)?)?;
                    relu.multiply(&mask)?
                }
                _ => relu,
            };
            let xh = f.matmul(w_dec)?.add(b_dec)?;
            let mse = xh
                .subtract(&xb)?
                .square()?
                .sum_axis(-1, false)?
                .mean(None)?;
            let loss = match act {
                Activation::TopK(_) => mse,
                _ => {
                    let dn = w_dec.square()?.sum_axis(-1, false)?.sqrt()?;
                    let sparsity = f.multiply(&dn)?.sum_axis(-1, false)?.mean(None)?;
                    mse.add(sparsity.multiply(Array::from_f32(l1))?)?
                }
            };
            Ok(vec![loss])
        };
        let mut vg = mlx_rs::transforms::value_and_grad_with_argnums(loss_fn, &[0, 1, 2, 3][..]);
        let (value, grads) = vg(&params)?;
        for (i, g) in grads.iter().enumerate() {
            adam.update_single(&keys[i], g, &mut params[i])?;
        }
        if matches!(activation, Activation::TopK(_)) {
            params[2] = params[2].divide(row_norm(&params[2])?)?;
        }
        let mut to_eval: Vec<&Array> = params.iter().collect();
        to_eval.push(&value[0]);
        mlx_rs::transforms::eval(to_eval)?;
        let l = scalar(&value[0])?;
        losses.push(l);
        tick(step, l);
    }
    let mut it = params.into_iter();
    let (w_enc, b_enc, w_dec, b_dec) = match (it.next(), it.next(), it.next(), it.next()) {
        (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
        _ => return Err(Error::Invalid("sae_train: lost a parameter".into())),
    };
    // Fold the scale: (s x - b) W + c = (x - b/s)(s W) + c; output / s.
    let s = f32s(scale);
    let sae = Sae {
        d_in,
        d_sae,
        activation: opts.activation.clone(),
        apply_b_dec_to_input: true,
        norm: Norm::None,
        hook: None,
        w_enc: w_enc.multiply(&s)?,
        b_enc,
        w_dec: w_dec.divide(&s)?,
        b_dec: b_dec.divide(&s)?,
        threshold: None,
        format: "trained".into(),
        note: None,
        model_name: None,
    };
    mlx_rs::transforms::eval([&sae.w_enc, &sae.w_dec, &sae.b_dec, &sae.b_enc])?;
    Ok((
        sae,
        TrainReport {
            losses,
            scale,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}
