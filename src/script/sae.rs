//! Sparse autoencoders: `load_sae`, `save_sae`, `sae_encode`, `sae_decode`, `sae_reconstruct`,
//! `sae_eval`, `sae_train`, and the `Sae` type's fields; values converted here, the work done
//! by [`crate::sae`]. The hook ops (`sae_splice`, `sae_ablate`, `sae_steer`) are parsed with the
//! other ops in `hooks.rs` ([`parse_sae_op`]).

use std::rc::Rc;

use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, Map, NativeCallContext, FLOAT, INT};

use super::capture::rows_of;
use super::hooks::with_call;
use super::model::ModelHandle;
use super::options::Options;
use super::progress::Progress;
use super::tensor::Tensor;
use super::{context, RhaiResult};
use crate::hooks::HookName;
use crate::interventions::{point_widths, Op};
use crate::model::Model;
use crate::sae::{Activation, Sae as Engine_, SaeEdit, TrainOptions};
use crate::{Error, Result};

/// A loaded or trained sparse autoencoder (shared: hooks hold it too).
#[derive(Clone)]
pub struct SaeHandle(pub Rc<Engine_>);

/// The hook point an SAE reads on `m`: `point` if given, else the SAE's own hook name; its
/// width checked against the SAE's `d_in`.
fn sae_point(m: &Model, sae: &Engine_, point: Option<&str>, verb: &str) -> Result<HookName> {
    let name = point.or(sae.hook.as_deref()).ok_or_else(|| {
        Error::Invalid(format!(
            "{verb}: the SAE names no hook point; give one with #{{point: \"blocks.N.hook_resid_post\"}}"
        ))
    })?;
    let p = HookName::parse(name, m.n_layers())?;
    m.check_point(&p)?;
    let widths = point_widths(&m.info, &p);
    if !widths.is_empty() && !widths.contains(&sae.d_in) {
        return Err(Error::Invalid(format!(
            "{verb}: the SAE reads {} dimensions (d_in) but {p} has {} on this model",
            sae.d_in, widths[0]
        )));
    }
    Ok(p)
}

/// A feature index or an array of them.
fn features_of(verb: &str, v: Option<&Dynamic>) -> Result<Option<Vec<i32>>> {
    let Some(v) = v.filter(|v| !v.is_unit()) else {
        return Ok(None);
    };
    let bad = || {
        Error::Invalid(format!(
            "{verb}: features must be an integer or an array of integers"
        ))
    };
    let one = |d: &Dynamic| -> Result<i32> {
        let i = d.as_int().map_err(|_| bad())?;
        i32::try_from(i).map_err(|_| Error::Invalid(format!("{verb}: feature {i} is out of range")))
    };
    if let Some(a) = v.read_lock::<RhaiArray>() {
        return a.iter().map(one).collect::<Result<Vec<_>>>().map(Some);
    }
    one(v).map(|f| Some(vec![f]))
}

/// The keys each SAE op takes.
pub fn sae_op_keys(op: &str) -> Option<&'static [&'static str]> {
    match op {
        "sae_splice" => Some(&["op", "sae", "keep_error", "window"]),
        "sae_ablate" => Some(&["op", "sae", "features", "keep_error", "window"]),
        "sae_steer" => Some(&["op", "sae", "features", "feature", "scale", "window"]),
        _ => None,
    }
}

/// An SAE op from its options (`o` parsed with [`sae_op_keys`]).
pub fn parse_sae_op(op: &str, verb: &str, o: &Options) -> Result<Op> {
    let sae = o
        .value::<SaeHandle>("sae", "an Sae")?
        .ok_or_else(|| Error::Invalid(format!("{verb}: needs 'sae' (from load_sae or sae_train)")))?
        .0;
    let edit = match op {
        "sae_splice" => SaeEdit::Splice {
            keep_error: o.bool("keep_error", false)?,
        },
        "sae_ablate" => SaeEdit::Ablate {
            features: features_of(verb, o.get("features"))?.ok_or_else(|| {
                Error::Invalid(format!("{verb}: needs 'features' (an index or an array)"))
            })?,
            keep_error: o.bool("keep_error", true)?,
        },
        _ => {
            let f = features_of(verb, o.get("features"))?.or(features_of(verb, o.get("feature"))?);
            SaeEdit::Steer {
                features: f
                    .ok_or_else(|| Error::Invalid(format!("{verb}: needs 'feature' (an index)")))?,
                scale: o.float("scale", 1.0)? as f32,
            }
        }
    };
    Ok(Op::Sae { sae, edit })
}

fn eval_map(e: &crate::sae::Evaluation) -> Map {
    let mut m = Map::new();
    let dead = e.density.iter().filter(|d| **d == 0.0).count();
    m.insert(
        "explained_variance".into(),
        (e.explained_variance as FLOAT).into(),
    );
    m.insert("mse".into(), (e.mse as FLOAT).into());
    m.insert("l0".into(), (e.l0 as FLOAT).into());
    m.insert("loss".into(), (e.loss as FLOAT).into());
    m.insert("loss_spliced".into(), (e.loss_spliced as FLOAT).into());
    m.insert(
        "loss_change".into(),
        ((e.loss_spliced - e.loss) as FLOAT).into(),
    );
    let n = e.density.len() as i32;
    m.insert(
        "density".into(),
        Dynamic::from(Tensor::new(mlx_rs::Array::from_slice(&e.density, &[n]))),
    );
    m.insert("dead".into(), (dead as INT).into());
    m.insert("tokens".into(), (e.tokens as INT).into());
    m.insert("predicted".into(), (e.predicted as INT).into());
    m
}

fn train_opts(o: &Options, d_in: i32) -> Result<TrainOptions> {
    let kind = o.choice("kind", &["topk", "relu"], "topk")?;
    let d_sae = o.int("d_sae", 4 * d_in as INT)?;
    let k = o.int("k", 32)?;
    let steps = o.int("steps", 2000)?;
    let batch = o.int("batch_size", 256)?;
    let in_range = |what: &str, v: INT, lo: INT, hi: INT| -> Result<()> {
        if v < lo || v > hi {
            return Err(Error::Invalid(format!(
                "sae_train: {what} must be from {lo} to {hi}, got {v}"
            )));
        }
        Ok(())
    };
    in_range("d_sae", d_sae, 1, 1 << 22)?;
    in_range("steps", steps, 0, 10_000_000)?;
    in_range("batch_size", batch, 1, 1 << 20)?;
    in_range("k", k, 1, d_sae)?;
    let lr = o.float("lr", 1e-3)?;
    let l1 = o.float("l1", 5.0)?;
    if !(lr.is_finite() && lr > 0.0 && l1.is_finite() && l1 >= 0.0) {
        return Err(Error::Invalid(
            "sae_train: lr must be a positive number and l1 a number >= 0".into(),
        ));
    }
    Ok(TrainOptions {
        d_sae: d_sae as i32,
        activation: if kind == "topk" {
            Activation::TopK(k as i32)
        } else {
            Activation::Relu
        },
        l1: l1 as f32,
        lr: lr as f32,
        steps: steps as usize,
        batch_size: batch as i32,
        seed: o.int("seed", 0)?.max(0) as u64,
    })
}

const TRAIN_KEYS: [&str; 13] = [
    "point",
    "kind",
    "d_sae",
    "k",
    "l1",
    "lr",
    "steps",
    "batch_size",
    "seed",
    "progress",
    "holdout",
    "skip_first",
    "max_tokens",
];

/// Trains on `x` `[n, d]`: a tenth (`holdout`) kept out and measured after training.
fn train_on(
    x: &mlx_rs::Array,
    o: &Options,
    hook: Option<String>,
    model_name: Option<String>,
) -> Result<Map> {
    use mlx_rs::ops::indexing::TryIndexOp;
    let d_in = x.shape()[1];
    let opts = train_opts(o, d_in)?;
    let holdout = o.float("holdout", 0.1)?;
    if !(0.0..0.9).contains(&holdout) {
        return Err(Error::Invalid(
            "sae_train: holdout must be from 0 to 0.9".into(),
        ));
    }
    let n = x.shape()[0];
    let n_test = ((n as f64) * holdout).round() as i32;
    if n - n_test < 2 {
        return Err(Error::Invalid(format!(
            "sae_train: {n} activations are too few to train on"
        )));
    }
    let (train_x, test_x) = if n_test > 0 {
        (x.try_index(..n - n_test)?, Some(x.try_index(n - n_test..)?))
    } else {
        (x.clone(), None)
    };
    let bar = o
        .bool("progress", true)?
        .then(|| Progress::new(opts.steps as u64, "sae_train"));
    let trained = crate::sae::train(&train_x, &opts, |_, loss| {
        if let Some(b) = &bar {
            b.inc(1);
            b.set_message(format!("loss {loss:.3}"));
        }
    });
    if let Some(b) = &bar {
        b.finish();
    }
    let (mut sae, report) = trained?;
    sae.hook = hook;
    sae.model_name = model_name;
    let measured = test_x.as_ref().unwrap_or(&train_x);
    let (ev, mse, l0, density) = crate::sae::reconstruction_stats(&sae, measured)?;
    let mut m = Map::new();
    m.insert("sae".into(), Dynamic::from(SaeHandle(Rc::new(sae))));
    m.insert("explained_variance".into(), (ev as FLOAT).into());
    m.insert("mse".into(), (mse as FLOAT).into());
    m.insert("l0".into(), (l0 as FLOAT).into());
    m.insert(
        "dead".into(),
        (density.iter().filter(|d| **d == 0.0).count() as INT).into(),
    );
    let losses: RhaiArray = report
        .losses
        .iter()
        .map(|l| Dynamic::from(*l as FLOAT))
        .collect();
    m.insert("losses".into(), losses.into());
    m.insert("tokens".into(), ((n - n_test) as INT).into());
    m.insert("heldout_tokens".into(), (n_test as INT).into());
    m.insert("seconds".into(), (report.seconds as FLOAT).into());
    m.insert("scale".into(), (report.scale as FLOAT).into());
    Ok(m)
}

#[export_module]
mod sae_functions {
    use super::*;

    pub type Sae = super::SaeHandle;
    pub type Model = super::ModelHandle;

    /// Loads a sparse autoencoder: a SAELens folder (`cfg.json` + `sae_weights.safetensors`;
    /// architectures standard, jumprelu, topk) or a Gemma Scope `params.npz` (or its folder).
    ///
    /// Example: `let s = load_sae("my-sae")`
    #[rhai_fn(return_raw)]
    pub fn load_sae(ctx: NativeCallContext, path: &str) -> RhaiResult<Sae> {
        let full = context(&ctx).read_path("load_sae", path)?;
        Ok(SaeHandle(Rc::new(Engine_::load(&full, None)?)))
    }

    /// `load_sae` with options: `hook` (the hook point, for files that name none or to
    /// override it).
    ///
    /// Example: `let s = load_sae("gemma-scope/layer_12/params.npz", #{hook: "blocks.12.hook_resid_post"})`
    #[rhai_fn(name = "load_sae", return_raw)]
    pub fn load_sae_with(ctx: NativeCallContext, path: &str, opts: Map) -> RhaiResult<Sae> {
        let o = Options::parse("load_sae", &opts, &["hook"])?;
        let full = context(&ctx).read_path("load_sae", path)?;
        let hook = o.string("hook")?;
        Ok(SaeHandle(Rc::new(Engine_::load(&full, hook.as_deref())?)))
    }

    /// Saves an SAE in SAELens's format into folder `dir` (`cfg.json`,
    /// `sae_weights.safetensors`, each written atomically).
    ///
    /// Example: `save_sae(s, "out/my-sae")`
    #[rhai_fn(return_raw)]
    pub fn save_sae(ctx: NativeCallContext, sae: Sae, dir: &str) -> RhaiResult<()> {
        let c = context(&ctx);
        let w = c.write_path("save_sae", &format!("{dir}/sae_weights.safetensors"))?;
        c.write_path("save_sae", &format!("{dir}/cfg.json"))?;
        let folder = w
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        Ok(sae.0.save(&folder)?)
    }

    /// Feature activations `[..., d_sae]` of activations `[..., d_in]`.
    ///
    /// Example: `let f = sae_encode(s, cache["blocks.15.hook_resid_post"])`
    #[rhai_fn(return_raw)]
    pub fn sae_encode(sae: Sae, x: Tensor) -> RhaiResult<Tensor> {
        Ok(Tensor::new(sae.0.encode(x.array())?))
    }

    /// The reconstruction `[..., d_in]` of features `[..., d_sae]`.
    ///
    /// Example: `let x_hat = sae_decode(s, f)`
    #[rhai_fn(return_raw)]
    pub fn sae_decode(sae: Sae, features: Tensor) -> RhaiResult<Tensor> {
        Ok(Tensor::new(sae.0.decode(features.array())?))
    }

    /// `sae_decode(sae, sae_encode(sae, x))`, also for SAEs that normalise their input.
    ///
    /// Example: `let x_hat = sae_reconstruct(s, x)`
    #[rhai_fn(return_raw)]
    pub fn sae_reconstruct(sae: Sae, x: Tensor) -> RhaiResult<Tensor> {
        Ok(Tensor::new(sae.0.reconstruct(x.array())?))
    }

    /// Reconstruction quality on `texts` at the SAE's hook point: `#{explained_variance, mse,
    /// l0, density, dead, loss, loss_spliced, loss_change, tokens, predicted}` (activations of
    /// each input's first token left out; loss: mean next-token cross-entropy without and with
    /// the reconstruction spliced in). opts: `point`.
    ///
    /// Example: `print(sae_eval(m, s, ["The cat sat on the mat."]).explained_variance)`
    #[rhai_fn(name = "sae_eval", return_raw)]
    pub fn sae_eval_with(
        ctx: NativeCallContext,
        m: &mut Model,
        sae: Sae,
        texts: Dynamic,
        opts: Map,
    ) -> RhaiResult<Map> {
        let o = Options::parse("sae_eval", &opts, &["point"])?;
        let point = o.string("point")?;
        let mut g = m.get()?;
        let p = sae_point(&g, &sae.0, point.as_deref(), "sae_eval")?;
        let rows = rows_of(&g, &texts, "sae_eval")?;
        let e = with_call(&ctx, || crate::sae::evaluate(&mut g, &sae.0, p, &rows))?;
        Ok(eval_map(&e))
    }

    /// `sae_eval` with no options.
    ///
    /// Example: `sae_eval(m, s, texts)`
    #[rhai_fn(name = "sae_eval", return_raw)]
    pub fn sae_eval(
        ctx: NativeCallContext,
        m: &mut Model,
        sae: Sae,
        texts: Dynamic,
    ) -> RhaiResult<Map> {
        sae_eval_with(ctx, m, sae, texts, Map::new())
    }

    /// Trains an SAE on the activations of `texts` at `point` (default: the middle block's
    /// `hook_resid_post`) with Adam, a progress bar, Ctrl-C to stop. opts: `kind` ("topk",
    /// default, or "relu" with an `l1` penalty), `d_sae` (4 d_model), `k` (32), `l1` (5.0),
    /// `lr` (0.001), `steps` (2000), `batch_size` (256), `seed` (0), `holdout` (0.1: the last
    /// tenth of the tokens measured, not trained on), `skip_first` (true: each input's first
    /// token left out), `max_tokens`, `progress` (true). Returns `#{sae, explained_variance,
    /// mse, l0, dead, losses, tokens, heldout_tokens, seconds, scale}`.
    ///
    /// Example: `let r = sae_train(m, texts, #{point: "blocks.15.hook_resid_post", steps: 500})`
    #[rhai_fn(name = "sae_train", return_raw)]
    pub fn sae_train_model(
        ctx: NativeCallContext,
        m: &mut Model,
        texts: Dynamic,
        opts: Map,
    ) -> RhaiResult<Map> {
        let o = Options::parse("sae_train", &opts, &TRAIN_KEYS)?;
        let mut g = m.get()?;
        let default_point = format!("blocks.{}.hook_resid_post", g.n_layers() / 2);
        let name = o.string("point")?.unwrap_or(default_point);
        let p = HookName::parse(&name, g.n_layers())?;
        g.check_point(&p)?;
        let rows = rows_of(&g, &texts, "sae_train")?;
        let skip = o.bool("skip_first", true)?;
        let progress = o.bool("progress", true)?;
        let x = with_call(&ctx, || {
            crate::sae::activations(&mut g, &rows, p, skip, progress)
        })?;
        let x = match o.opt_int("max_tokens")? {
            Some(t) if t >= 2 && (t as i32) < x.shape()[0] => {
                use mlx_rs::ops::indexing::TryIndexOp;
                x.try_index(..t as i32).map_err(Error::from)?
            }
            _ => x,
        };
        Ok(train_on(
            &x,
            &o,
            Some(p.to_string()),
            Some(g.info.name.clone()),
        )?)
    }

    /// Trains an SAE on activations `[tokens, d]` (a Tensor) you captured yourself; options as
    /// `sae_train(m, texts, opts)` without `point`, `skip_first`.
    ///
    /// Example: `let r = sae_train(acts, #{d_sae: 256, k: 16, steps: 300})`
    #[rhai_fn(name = "sae_train", return_raw)]
    pub fn sae_train_tensor(x: Tensor, opts: Map) -> RhaiResult<Map> {
        let o = Options::parse("sae_train", &opts, &TRAIN_KEYS)?;
        if x.ndim() != 2 {
            return Err(Error::Invalid(format!(
                "sae_train: activations must be [tokens, d], got {:?}",
                x.shape()
            ))
            .into());
        }
        let hook = o.string("point")?;
        Ok(train_on(x.array(), &o, hook, None)?)
    }

    /// Input width.
    ///
    /// Example: `s.d_in  // 576`
    #[rhai_fn(get = "d_in", pure)]
    pub fn d_in(s: &mut Sae) -> INT {
        s.0.d_in as INT
    }

    /// Number of features.
    ///
    /// Example: `s.d_sae`
    #[rhai_fn(get = "d_sae", pure)]
    pub fn d_sae(s: &mut Sae) -> INT {
        s.0.d_sae as INT
    }

    /// The hook point it reads (TransformerLens name), or `()`.
    ///
    /// Example: `hook(m, s.hook, #{op: "sae_splice", sae: s})`
    #[rhai_fn(get = "hook", pure)]
    pub fn hook(s: &mut Sae) -> Dynamic {
        s.0.hook.clone().map_or(Dynamic::UNIT, Dynamic::from)
    }

    /// "standard", "jumprelu" or "topk".
    ///
    /// Example: `s.architecture`
    #[rhai_fn(get = "architecture", pure)]
    pub fn architecture(s: &mut Sae) -> String {
        s.0.activation.architecture().to_string()
    }

    /// TopK's k, or `()`.
    ///
    /// Example: `s.k`
    #[rhai_fn(get = "k", pure)]
    pub fn k(s: &mut Sae) -> Dynamic {
        match s.0.activation {
            Activation::TopK(k) => Dynamic::from(k as INT),
            _ => Dynamic::UNIT,
        }
    }

    /// The encoder `[d_in, d_sae]`.
    ///
    /// Example: `s.W_enc.shape`
    #[rhai_fn(get = "W_enc", pure)]
    pub fn w_enc(s: &mut Sae) -> Tensor {
        Tensor::new(s.0.w_enc.clone())
    }

    /// The decoder `[d_sae, d_in]`: row i is feature i's direction.
    ///
    /// Example: `let v = s.W_dec[7]`
    #[rhai_fn(get = "W_dec", pure)]
    pub fn w_dec(s: &mut Sae) -> Tensor {
        Tensor::new(s.0.w_dec.clone())
    }

    /// The encoder bias `[d_sae]`.
    ///
    /// Example: `s.b_enc`
    #[rhai_fn(get = "b_enc", pure)]
    pub fn b_enc(s: &mut Sae) -> Tensor {
        Tensor::new(s.0.b_enc.clone())
    }

    /// The decoder bias `[d_in]`.
    ///
    /// Example: `s.b_dec`
    #[rhai_fn(get = "b_dec", pure)]
    pub fn b_dec(s: &mut Sae) -> Tensor {
        Tensor::new(s.0.b_dec.clone())
    }

    /// JumpReLU's thresholds `[d_sae]`, or `()`.
    ///
    /// Example: `s.threshold`
    #[rhai_fn(get = "threshold", pure)]
    pub fn threshold(s: &mut Sae) -> Dynamic {
        s.0.threshold
            .clone()
            .map_or(Dynamic::UNIT, |t| Dynamic::from(Tensor::new(t)))
    }

    /// A one-line description: format, kind, sizes, hook point.
    ///
    /// Example: `print(s)`
    #[rhai_fn(global, name = "to_string", pure)]
    pub fn to_string(s: &mut Sae) -> String {
        s.0.describe()
    }

    #[rhai_fn(global, name = "to_debug", pure)]
    pub fn to_debug(s: &mut Sae) -> String {
        s.0.describe()
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<SaeHandle>("Sae");
    engine.register_global_module(exported_module!(sae_functions).into());
}
