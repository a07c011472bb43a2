//! Hook verbs: `hook(m, name, fn)` with a script function, `hook(m, name, #{op: ...})` with a
//! built-in intervention, `clear_hooks(m)` and `hooks(m)`.
//!
//! A script function attached as a hook runs later, inside some other verb's forward pass
//! (`forward`, `generate`, `capture`, ...). Every verb that runs a model does so inside
//! [`with_call`], which makes its [`NativeCallContext`] (the engine, the script's functions and
//! imports) available to the hooks for the length of the call. A hook function that calls a
//! verb on the model it is hooked into gets a "model is busy" error: the model is borrowed by
//! the running verb.

use std::cell::Cell;
use std::ptr::NonNull;

use mlx_rs::Array;
use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, FnPtr, Map, NativeCallContext};

use super::capture::Cache;
use super::model::ModelHandle;
use super::options::Options;
use super::steer::Direction;
use super::tensor::Tensor;
use super::RhaiResult;
use crate::capture::{Captured, Positions};
use crate::hooks::{Hook, HookFn, HookName};
use crate::interventions::{point_widths, Intervention, Op, PatchSource, Window};
use crate::model::Model;
use crate::{Error, Result};

thread_local! {
    /// The context of the verb call now running the model, for script-function hooks.
    static CALL: Cell<Option<NonNull<NativeCallContext<'static>>>> = const { Cell::new(None) };
}

/// Runs `f` (a verb's model work) with `ctx` available to script-function hooks.
pub fn with_call<R>(ctx: &NativeCallContext, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<NonNull<NativeCallContext<'static>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CALL.with(|c| c.set(self.0));
        }
    }
    let ptr = NonNull::from(ctx).cast::<NativeCallContext<'static>>();
    let _restore = Restore(CALL.with(|c| c.replace(Some(ptr))));
    f()
}

/// Calls a script function with `args` in the context of the verb now running.
pub(super) fn call_script(f: &FnPtr, args: Vec<Dynamic>) -> std::result::Result<Dynamic, String> {
    let Some(ptr) = CALL.with(|c| c.get()) else {
        return Err("a script hook ran outside a script call".into());
    };
    // SAFETY: `ptr` was set by `with_call` from a context borrowed for the whole of its `f()`;
    // hooks only run synchronously inside that `f()`, and the pointer is restored to the
    // previous one when `f()` returns or unwinds. The context is only used for this call.
    let ctx: &NativeCallContext = unsafe { ptr.as_ref() };
    let mut args = args;
    f.call_raw(ctx, None, &mut args).map_err(|e| match *e {
        EvalAltResult::ErrorTerminated(..) => "interrupted".to_string(),
        e => e.to_string(),
    })
}

/// A script function as a hook: called with the activation (a Tensor); a returned Tensor
/// replaces it, `()` keeps it.
fn script_hook(name: HookName, f: FnPtr) -> HookFn {
    Box::new(move |x: &Array, _ctx| {
        let args = vec![Dynamic::from(Tensor::new(x.clone()))];
        let out = call_script(&f, args).map_err(|e| {
            if e == "interrupted" {
                Error::Interrupted
            } else {
                Error::Invalid(format!("in the hook function at {name}: {e}"))
            }
        })?;
        if out.is_unit() {
            return Ok(None);
        }
        match out.try_cast::<Tensor>() {
            Some(t) => Ok(Some(t.into_array().as_dtype(x.dtype())?)),
            None => Err(Error::Invalid(format!(
                "the hook function at {name} must return a Tensor or (), not something else"
            ))),
        }
    })
}

/// A vector argument: a Tensor or a Direction's vector.
pub fn vector_of(v: &Dynamic) -> Option<Array> {
    if let Some(t) = v.read_lock::<Tensor>() {
        return Some(t.array().clone());
    }
    v.read_lock::<Direction>().map(|d| d.vector.clone())
}

/// `window`: "all", "prompt", "generated", or an array of positions.
pub fn parse_window(verb: &str, v: Option<&Dynamic>) -> Result<Window> {
    let Some(v) = v.filter(|v| !v.is_unit()) else {
        return Ok(Window::All);
    };
    if let Ok(s) = v.clone().into_immutable_string() {
        return match s.as_str() {
            "all" => Ok(Window::All),
            "prompt" => Ok(Window::Prompt),
            "generated" => Ok(Window::Generated),
            other => Err(Error::Invalid(format!(
                "{verb}: window must be \"all\", \"prompt\", \"generated\" or an array of \
                 positions, got {other:?}"
            ))),
        };
    }
    if let Some(a) = v.read_lock::<RhaiArray>() {
        let ps = a
            .iter()
            .map(|p| p.as_int())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::Invalid(format!("{verb}: window positions must be integers")))?;
        return Ok(Window::Positions(ps));
    }
    Err(Error::Invalid(format!(
        "{verb}: window must be \"all\", \"prompt\", \"generated\" or an array of positions, \
         got {}",
        super::display::type_name(v)
    )))
}

const OPS: [&str; 10] = [
    "add",
    "ablate",
    "mean_ablate",
    "project_out",
    "reflect",
    "cap",
    "patch",
    "scale",
    "ban",
    "force",
];

/// `experts`: an expert id or an array of them (checked against the layer's router later).
fn expert_list(verb: &str, v: Option<&Dynamic>) -> Result<Option<Vec<i32>>> {
    let Some(v) = v.filter(|v| !v.is_unit()) else {
        return Ok(None);
    };
    let bad = || {
        Error::Invalid(format!(
            "{verb}: 'experts' must be an expert id or an array of expert ids (integers)"
        ))
    };
    let one = |d: &Dynamic| -> Result<i32> {
        let i = d.as_int().map_err(|_| bad())?;
        i32::try_from(i).map_err(|_| Error::Invalid(format!("{verb}: expert {i} is out of range")))
    };
    if let Some(a) = v.read_lock::<RhaiArray>() {
        return a.iter().map(one).collect::<Result<Vec<_>>>().map(Some);
    }
    one(v).map(|e| Some(vec![e]))
}

/// A built-in intervention from an op map (`#{op: "add", vector, alpha, window}`).
pub fn parse_op(m: &Model, point: HookName, map: &Map) -> Result<Intervention> {
    let op = map
        .get("op")
        .and_then(|v| v.clone().into_immutable_string().ok())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "hook: an intervention map needs 'op', one of {}",
                OPS.join(", ")
            ))
        })?;
    let keys: &[&str] = match op.as_str() {
        "add" | "reflect" => &["op", "vector", "alpha", "window"],
        "ablate" => &["op", "window"],
        "mean_ablate" => &["op", "mean", "window"],
        "project_out" => &["op", "vector", "window"],
        "cap" => &["op", "vector", "tau", "window"],
        "patch" => &["op", "from", "window"],
        "scale" => &["op", "factor", "experts", "window"],
        "ban" | "force" => &["op", "experts", "window"],
        other if super::sae::sae_op_keys(other).is_some() => {
            super::sae::sae_op_keys(other).unwrap_or_default()
        }
        other => {
            return Err(Error::Invalid(format!(
                "hook: unknown op {other:?} (valid: {}, sae_splice, sae_ablate, sae_steer)",
                OPS.join(", ")
            )))
        }
    };
    let verb = format!("hook ({op})");
    let o = Options::parse(&verb, map, keys)?;
    let vector = || -> Result<Array> {
        let v = o.get("vector").ok_or_else(|| {
            Error::Invalid(format!("{verb}: needs 'vector' (a Tensor or Direction)"))
        })?;
        vector_of(v).ok_or_else(|| {
            Error::Invalid(format!(
                "{verb}: 'vector' must be a Tensor or a Direction, got {}",
                super::display::type_name(v)
            ))
        })
    };
    let alpha = o.float("alpha", 1.0)? as f32;
    let op = match op.as_str() {
        sae_op if super::sae::sae_op_keys(sae_op).is_some() => {
            super::sae::parse_sae_op(sae_op, &verb, &o)?
        }
        "add" => Op::Add {
            vector: vector()?,
            alpha,
        },
        "reflect" => Op::Reflect {
            vector: vector()?,
            alpha,
        },
        "project_out" => Op::ProjectOut { vector: vector()? },
        "cap" => Op::Cap {
            vector: vector()?,
            tau: o.float("tau", 0.0)? as f32,
        },
        "ablate" => Op::Ablate,
        "mean_ablate" => {
            let mean = o.get("mean").ok_or_else(|| {
                Error::Invalid(format!(
                    "{verb}: needs 'mean' (a Tensor, e.g. cache[name][0])"
                ))
            })?;
            Op::MeanAblate {
                mean: vector_of(mean)
                    .ok_or_else(|| Error::Invalid(format!("{verb}: 'mean' must be a Tensor")))?,
            }
        }
        "scale" => Op::Scale {
            factor: o
                .opt_float("factor")?
                .ok_or_else(|| Error::Invalid(format!("{verb}: needs 'factor' (a number)")))?
                as f32,
            experts: expert_list(&verb, o.get("experts"))?,
        },
        "ban" | "force" => {
            let experts = expert_list(&verb, o.get("experts"))?.ok_or_else(|| {
                Error::Invalid(format!(
                    "{verb}: needs 'experts' (an expert id or an array of them)"
                ))
            })?;
            if op.as_str() == "ban" {
                Op::Ban { experts }
            } else {
                Op::Force { experts }
            }
        }
        _ => {
            let cache = o.value::<Cache>("from", "a Cache")?.ok_or_else(|| {
                Error::Invalid(format!("{verb}: needs 'from' (a Cache from capture)"))
            })?;
            Op::Patch(patch_source(&cache, point)?)
        }
    };
    let iv = Intervention {
        point,
        op,
        window: parse_window(&verb, o.get("window"))?,
    };
    iv.check(&point_widths(&m.info, &point))?;
    iv.check_router(point.layer().and_then(|l| m.router(l)))?;
    Ok(iv)
}

fn patch_source(cache: &Cache, point: HookName) -> Result<PatchSource> {
    let c = &cache.0;
    let entry = c.entries.get(&point).ok_or_else(|| {
        let names: Vec<String> = c.points.iter().map(|p| p.to_string()).collect();
        Error::Invalid(format!(
            "hook (patch): the cache has no {point} (it holds {})",
            names.join(", ")
        ))
    })?;
    match (entry, c.positions) {
        (Captured::PerInput(rows), _) => Ok(PatchSource::All(rows.clone())),
        (Captured::Stacked(a), Positions::Last) => Ok(PatchSource::Last(a.clone())),
        (Captured::Stacked(a), Positions::Index(i)) => Ok(PatchSource::Index(a.clone(), i)),
        (Captured::Stacked(_), _) => Err(Error::Invalid(
            "hook (patch): a cache of mean activations has no positions to patch; use \
             #{op: \"mean_ablate\", mean: cache[name][0]}"
                .into(),
        )),
    }
}

pub(super) fn hook_fn_impl(m: &ModelHandle, name: &str, f: FnPtr) -> Result<()> {
    let mut g = m.get()?;
    let point = HookName::parse(name, g.n_layers())?;
    g.check_point(&point)?;
    let label = if f.is_anonymous() {
        "fn".to_string()
    } else {
        format!("fn {}", f.fn_name())
    };
    g.hooks.attach(Hook {
        name: point,
        label,
        steering: false,
        func: script_hook(point, f),
    });
    Ok(())
}

pub(super) fn hook_op_impl(m: &ModelHandle, name: &str, op: &Map) -> Result<()> {
    let mut g = m.get()?;
    let point = HookName::parse(name, g.n_layers())?;
    g.check_point(&point)?;
    let iv = parse_op(&g, point, op)?;
    g.hooks.attach(Hook {
        name: point,
        label: iv.label(),
        steering: false,
        func: iv.into_hook(),
    });
    Ok(())
}

#[export_module]
mod hook_functions {
    use super::*;

    pub type Model = super::ModelHandle;

    /// From now on every forward and generation step calls `f(x)` at hook point `name` with
    /// the activation `x` (a Tensor, `[batch, pos, ...]`); a returned Tensor (same shape)
    /// replaces it, `()` leaves it. A hook function cannot call verbs on the same model.
    ///
    /// Example: `hook(m, "blocks.3.hook_resid_post", |x| x * 0.5)`
    #[rhai_fn(name = "hook", return_raw)]
    pub fn hook_fn(m: &mut Model, name: &str, f: FnPtr) -> RhaiResult<()> {
        Ok(hook_fn_impl(m, name, f)?)
    }

    /// A built-in intervention at hook point `name`, run without script code: `#{op: "add",
    /// vector, alpha}`, `#{op: "ablate"}`, `#{op: "mean_ablate", mean}`, `#{op: "project_out",
    /// vector}`, `#{op: "reflect", vector, alpha}`, `#{op: "cap", vector, tau}`, `#{op: "patch",
    /// from: cache}`, `#{op: "scale", factor}`; on mixture-of-experts layers `#{op: "ban",
    /// experts}` at `mlp.hook_router_logits`, `#{op: "force", experts}` at `mlp.hook_expert_ids`,
    /// `#{op: "scale", factor, experts}` at `mlp.hook_expert_out`; `window`: "all" (default),
    /// "prompt", "generated", or an array of token positions (negative from the end of the
    /// prompt).
    ///
    /// Example: `hook(m, "blocks.20.hook_resid_post", #{op: "add", vector: d, alpha: 8.0, window: "generated"})`
    #[rhai_fn(name = "hook", return_raw)]
    pub fn hook_op(m: &mut Model, name: &str, op: Map) -> RhaiResult<()> {
        Ok(hook_op_impl(m, name, &op)?)
    }

    /// Removes every hook and steering intervention from the model.
    ///
    /// Example: `clear_hooks(m)`
    #[rhai_fn(return_raw)]
    pub fn clear_hooks(m: &mut Model) -> RhaiResult<()> {
        m.get()?.hooks.clear();
        Ok(())
    }

    /// The attached hooks, in the order they run: `#{point, hook, steering}`.
    ///
    /// Example: `hooks(m)`
    #[rhai_fn(return_raw, pure)]
    pub fn hooks(m: &mut Model) -> RhaiResult<RhaiArray> {
        let g = m.get()?;
        let steering = g.hooks.steering_flags();
        Ok(g.hooks
            .list()
            .into_iter()
            .zip(steering)
            .map(|((point, label), steer)| {
                let mut row = Map::new();
                row.insert("point".into(), point.to_string().into());
                row.insert("hook".into(), label.into());
                row.insert("steering".into(), steer.into());
                Dynamic::from_map(row)
            })
            .collect())
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(hook_functions).into());
}
