//! Steering and hooks for the length of one call: `generate(m, prompt, #{steer: ...})`,
//! `with_steering(m, dirs, opts, || ...)` and `with_hooks(m, #{point: op}, || ...)`.
//!
//! `steer(m, d)` and `unsteer(m)` are global: `unsteer` also removes steering the caller
//! attached, and an error between the two leaves the model steered. The scoped forms attach
//! their steering, run, and then remove exactly the hooks they attached (by [`HookId`]), whether
//! the run returned or failed: hooks attached before stay, in their order.
//!
//! What to steer with (`dirs`, or the `steer` option of `generate`) is a Direction, a map
//! `#{direction: d, alpha, mode, layers, window, tau}` (`steer`'s options for that direction),
//! or an array of either.

use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, FnPtr, Map, NativeCallContext};

use super::model::{generate_impl, ModelHandle};
use super::options::Options;
use super::steer::{steer_impl, Direction, STEER_KEYS};
use super::RhaiResult;
use crate::hooks::HookId;
use crate::model::Model;
use crate::{Error, Result};

/// The keys of a map naming one direction to steer with.
fn item_keys() -> Vec<&'static str> {
    std::iter::once("direction")
        .chain(STEER_KEYS.iter().copied())
        .collect()
}

/// The directions in `spec` and the `steer` options for each: `defaults`, overridden by the
/// keys of a direction's map.
fn items(verb: &str, spec: &Dynamic, defaults: &Map) -> Result<Vec<(Direction, Map)>> {
    let one = |v: &Dynamic| -> Result<(Direction, Map)> {
        if let Some(d) = v.read_lock::<Direction>() {
            return Ok((d.clone(), defaults.clone()));
        }
        if let Some(map) = v.read_lock::<Map>() {
            let o = Options::parse(verb, &map, &item_keys())?;
            let d = o
                .value::<Direction>("direction", "a Direction")?
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{verb}: a steering map needs 'direction' (a Direction)"
                    ))
                })?;
            let mut opts = defaults.clone();
            for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "direction") {
                opts.insert(k.clone(), v.clone());
            }
            return Ok((d, opts));
        }
        Err(Error::Invalid(format!(
            "{verb}: steer with a Direction, a map #{{direction, alpha, ...}} or an array of \
             them, not {}",
            super::display::type_name(v)
        )))
    };
    match spec.read_lock::<RhaiArray>() {
        Some(a) => a.iter().map(one).collect(),
        None => Ok(vec![one(spec)?]),
    }
}

/// Attaches the steering in `spec` and returns the ids of the hooks it added. On an error
/// nothing stays attached.
pub fn attach(m: &mut Model, verb: &str, spec: &Dynamic, defaults: &Map) -> Result<Vec<HookId>> {
    let before = m.hooks.ids();
    let added = |m: &Model| -> Vec<HookId> {
        let now = m.hooks.ids();
        now.into_iter().filter(|id| !before.contains(id)).collect()
    };
    for (d, opts) in items(verb, spec, defaults)? {
        if let Err(e) = steer_impl(m, &d, &opts) {
            let ids = added(m);
            m.hooks.detach(&ids);
            return Err(e);
        }
    }
    Ok(added(m))
}

/// `generate`, steered for this call only when `opts` has `steer`.
pub fn generate_steered(m: &mut Model, prompt: &Dynamic, opts: &Map) -> Result<Dynamic> {
    let Some(spec) = opts.get("steer").filter(|v| !v.is_unit()) else {
        return generate_impl(m, prompt, opts);
    };
    let ids = attach(m, "generate (steer)", spec, &Map::new())?;
    let out = generate_impl(m, prompt, opts);
    m.hooks.detach(&ids);
    out
}

/// Runs `f` with the steering in `dirs` attached, then removes it, also when `f` fails.
fn with_steering_impl(
    ctx: &NativeCallContext,
    m: &ModelHandle,
    dirs: &Dynamic,
    opts: &Map,
    f: &FnPtr,
) -> RhaiResult<Dynamic> {
    let ids = attach(&mut *m.get()?, "with_steering", dirs, opts)?;
    let out = f.call_within_context::<Dynamic>(ctx, ());
    match m.get() {
        Ok(mut g) => g.hooks.detach(&ids),
        // The model is busy only if `with_steering` runs inside one of its own hooks, which
        // `attach` above already refused.
        Err(e) if out.is_ok() => return Err(e.into()),
        Err(_) => {}
    }
    out
}

/// Attaches the hooks of `spec` (`#{point: op map, function, or an array of them}`) and returns
/// the ids of what it added; on an error nothing stays attached.
fn attach_hooks(m: &ModelHandle, spec: &Map) -> Result<Vec<HookId>> {
    let before = m.get()?.hooks.ids();
    let added = |m: &ModelHandle| -> Result<Vec<HookId>> {
        let now = m.get()?.hooks.ids();
        Ok(now.into_iter().filter(|id| !before.contains(id)).collect())
    };
    let one = |name: &str, v: &Dynamic| -> Result<()> {
        if let Some(f) = v.read_lock::<FnPtr>() {
            return super::hooks::hook_fn_impl(m, name, f.clone());
        }
        if let Some(op) = v.read_lock::<Map>() {
            return super::hooks::hook_op_impl(m, name, &op);
        }
        Err(Error::Invalid(format!(
            "with_hooks: the hook at {name:?} must be an op map (#{{op: ...}}), a function or \
             an array of them, not {}",
            super::display::type_name(v)
        )))
    };
    for (name, v) in spec {
        let r = match v.read_lock::<RhaiArray>() {
            Some(a) => a.iter().try_for_each(|x| one(name, x)),
            None => one(name, v),
        };
        if let Err(e) = r {
            let ids = added(m)?;
            m.get()?.hooks.detach(&ids);
            return Err(e);
        }
    }
    added(m)
}

/// Runs `f` with the hooks of `spec` attached, then removes them, also when `f` fails.
fn with_hooks_impl(
    ctx: &NativeCallContext,
    m: &ModelHandle,
    spec: &Map,
    f: &FnPtr,
) -> RhaiResult<Dynamic> {
    let ids = attach_hooks(m, spec)?;
    let out = f.call_within_context::<Dynamic>(ctx, ());
    match m.get() {
        Ok(mut g) => g.hooks.detach(&ids),
        Err(e) if out.is_ok() => return Err(e.into()),
        Err(_) => {}
    }
    out
}

#[export_module]
mod scoped_functions {
    use super::*;

    pub type Model = super::ModelHandle;

    /// Runs `f` (a function of no arguments) with the model steered along `dirs` (a
    /// Direction, an array of them, or maps `#{direction: d, alpha, ...}`) using `steer`'s
    /// opts, and returns what `f` returns. Afterwards exactly that steering is removed, also
    /// when `f` throws; steering and hooks attached before stay. Call it as a function when
    /// `f` uses `m` (Rhai refuses `m.with_steering(...)` then, as it does `m.hook(...)`).
    ///
    /// Example: `let text = with_steering(m, d, #{alpha: 8.0}, || generate(m, "Today I feel"));`
    #[rhai_fn(name = "with_steering", return_raw)]
    pub fn with_steering_with(
        ctx: NativeCallContext,
        m: Model,
        dirs: Dynamic,
        opts: Map,
        f: FnPtr,
    ) -> RhaiResult<Dynamic> {
        with_steering_impl(&ctx, &m, &dirs, &opts, &f)
    }

    /// `with_steering` with `steer`'s default options (alpha 1, mode "add", at each
    /// direction's layer), or with per-direction maps.
    ///
    /// Example: `with_steering(m, [#{direction: d, alpha: 4.0}], || top_k(m, "I feel", 3))`
    #[rhai_fn(name = "with_steering", return_raw)]
    pub fn with_steering(
        ctx: NativeCallContext,
        m: Model,
        dirs: Dynamic,
        f: FnPtr,
    ) -> RhaiResult<Dynamic> {
        with_steering_impl(&ctx, &m, &dirs, &Map::new(), &f)
    }

    /// Runs `f` (a function of no arguments) with hooks attached and returns what `f`
    /// returns; afterwards exactly those hooks are removed, also when `f` throws (hooks
    /// attached before stay). `hooks` maps hook names to what `hook(m, name, ...)` takes: an op
    /// map, a function, or an array of them. Call it as a function when `f` uses `m`.
    ///
    /// Example: `with_hooks(m, #{"blocks.0.mlp.hook_router_logits": #{op: "ban", experts: [3]}}, || forward(m, "Hi"))`
    #[rhai_fn(name = "with_hooks", return_raw)]
    pub fn with_hooks(
        ctx: NativeCallContext,
        m: Model,
        hooks: Map,
        f: FnPtr,
    ) -> RhaiResult<Dynamic> {
        with_hooks_impl(&ctx, &m, &hooks, &f)
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(scoped_functions).into());
}
