//! Built-in interventions: the operations `hook(m, name, #{op: ...})` and `steer` attach at a
//! hook point (add, ablate, mean-ablate, project out, reflect, cap, patch), each restricted to
//! a window of positions (all, the prompt, the generated tokens, or listed positions).
//!
//! They run inside the graph as MLX operations, without calling script code, on every forward
//! and every cached generation step. Positions follow the rows' own tokens under left padding:
//! position 0 is each row's first real token.

use mlx_rs::ops::argsort_axis;
use mlx_rs::ops::indexing::{take_along_axis, TryIndexOp};
use mlx_rs::{ops, Array, Dtype};

use crate::error::{Error, Result};
use crate::hooks::{HookCtx, HookFn, HookName};
use crate::model::lora::Target;
use crate::model::moe::Router;
use crate::model::ModelInfo;

/// Which query positions an intervention touches.
#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    /// Every position (the default).
    All,
    /// The prompt's positions (everything in a run without generation).
    Prompt,
    /// Generated tokens only (nothing in a run without generation).
    Generated,
    /// Token positions of each row (0 = its first real token); negative ones count from the
    /// end of the prompt (-1 = the prompt's last token).
    Positions(Vec<i64>),
}

impl Window {
    /// A short description for `hooks(m)`.
    pub fn describe(&self) -> String {
        match self {
            Window::All => "all".into(),
            Window::Prompt => "prompt".into(),
            Window::Generated => "generated".into(),
            Window::Positions(p) => format!("{p:?}"),
        }
    }

    /// The `[batch, len]` positions of this call the window selects, row-major; `None` when it
    /// selects all of them.
    fn select(&self, ctx: &HookCtx, batch: usize) -> Option<Vec<bool>> {
        let len = ctx.len as usize;
        let abs = |j: usize| ctx.offset + j as i32;
        let mut sel = vec![false; batch * len];
        match self {
            Window::All => return None,
            Window::Prompt | Window::Generated => {
                let want_prompt = *self == Window::Prompt;
                for r in 0..batch {
                    for j in 0..len {
                        sel[r * len + j] = (abs(j) < ctx.prompt_len) == want_prompt;
                    }
                }
            }
            Window::Positions(ps) => {
                for r in 0..batch {
                    let pad = ctx.pad(r);
                    let prompt_tokens = (ctx.prompt_len - pad) as i64;
                    for &p in ps {
                        let i = if p < 0 { prompt_tokens + p } else { p };
                        let a = pad as i64 + i;
                        if i >= 0 && a >= ctx.offset as i64 && a < (ctx.offset + ctx.len) as i64 {
                            sel[r * len + (a - ctx.offset as i64) as usize] = true;
                        }
                    }
                }
            }
        }
        if sel.iter().all(|&s| s) {
            None
        } else {
            Some(sel)
        }
    }
}

/// Where a cached activation goes in a patched run.
#[derive(Debug, Clone)]
pub enum PatchSource {
    /// Every token of each input: one `[len, ...]` array per input.
    All(Vec<Array>),
    /// One position of each input (`[n, ...]`): the last prompt token.
    Last(Array),
    /// One position of each input (`[n, ...]`): token `index` (negative from the end).
    Index(Array, i64),
}

/// A built-in operation on an activation `x` (`[batch, pos, ..., d]`). Vectors act along the
/// last axis.
#[derive(Debug, Clone)]
pub enum Op {
    /// `x + alpha v`
    Add { vector: Array, alpha: f32 },
    /// zeros
    Ablate,
    /// a fixed value (broadcast over batch and positions)
    MeanAblate { mean: Array },
    /// `x - (x.u) u`, `u` the unit vector along `v`
    ProjectOut { vector: Array },
    /// `x - 2 alpha (x.u) u` (alpha 1: the mirror image across the plane normal to `v`)
    Reflect { vector: Array, alpha: f32 },
    /// `x - max(x.u - tau, 0) u`: the component along `u` capped at `tau`
    Cap { vector: Array, tau: f32 },
    /// the activation recorded in another run
    Patch(PatchSource),
    /// `x * factor`; at `hook_expert_out` or `hook_expert_weights` with `experts`, only those
    /// experts' slots (where the router chose them)
    Scale {
        factor: f32,
        experts: Option<Vec<i32>>,
    },
    /// at `hook_router_logits`: these experts' logits set to `-inf` (never chosen, weight 0)
    Ban { experts: Vec<i32> },
    /// at `hook_expert_ids`: these experts chosen first, the router's best of the others after
    Force { experts: Vec<i32> },
    /// a sparse autoencoder at the point: its reconstruction spliced in, features ablated, or
    /// a feature's decoder row added (see [`crate::sae`])
    Sae {
        sae: std::rc::Rc<crate::sae::Sae>,
        edit: crate::sae::SaeEdit,
    },
}

impl Op {
    /// The operation's name as scripts write it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Add { .. } => "add",
            Op::Ablate => "ablate",
            Op::MeanAblate { .. } => "mean_ablate",
            Op::ProjectOut { .. } => "project_out",
            Op::Reflect { .. } => "reflect",
            Op::Cap { .. } => "cap",
            Op::Patch(_) => "patch",
            Op::Scale { .. } => "scale",
            Op::Ban { .. } => "ban",
            Op::Force { .. } => "force",
            Op::Sae { edit, .. } => edit.name(),
        }
    }

    fn vector(&self) -> Option<&Array> {
        match self {
            Op::Add { vector, .. }
            | Op::ProjectOut { vector }
            | Op::Reflect { vector, .. }
            | Op::Cap { vector, .. } => Some(vector),
            _ => None,
        }
    }
}

/// An operation, the point it acts on, and its window.
#[derive(Debug, Clone)]
pub struct Intervention {
    pub point: HookName,
    pub op: Op,
    pub window: Window,
}

/// The vector widths `point` takes: its last axis, or all its axes after the position
/// (q/k/v/z: one head or every head); empty when not fixed.
pub fn point_widths(info: &ModelInfo, point: &HookName) -> Vec<i32> {
    use HookName::*;
    let i = info;
    match point {
        Embed | LnFinal | ResidPre(_) | ResidMid(_) | ResidPost(_) | AttnOut(_) | MlpOut(_)
        | Ln1Normalized(_) | Ln2Normalized(_) => vec![i.d_model],
        Q(_) | Z(_) | RotQ(_) => vec![i.d_head, i.n_heads * i.d_head],
        K(_) | V(_) | RotK(_) => vec![i.d_head, i.n_kv_heads * i.d_head],
        HeadResult(_) => vec![i.d_model, i.n_heads * i.d_model],
        Ln1Scale(_) | Ln2Scale(_) | LnFinalScale => vec![1],
        Lora(_, t) => match t {
            Target::Q => vec![i.n_heads * i.d_head],
            Target::K | Target::V => vec![i.n_kv_heads * i.d_head],
            Target::O | Target::Down => vec![i.d_model],
            Target::Gate | Target::Up => vec![i.d_mlp],
        },
        ExpertOut(_) => vec![i.d_model],
        RouterLogits(_) => vec![i.n_experts],
        MlpPre(_) | MlpPreLinear(_) | MlpPost(_) | AttnScores(_) | Pattern(_) | ExpertIds(_)
        | ExpertWeights(_) => Vec::new(),
    }
}

fn unit(v: &Array) -> Result<Array> {
    let v = v.as_dtype(Dtype::Float32)?;
    let n = v.square()?.sum(None)?.sqrt()?;
    Ok(v.divide(ops::maximum(&n, Array::from_f32(1e-12))?)?)
}

fn f32s(x: f32) -> Array {
    Array::from_f32(x)
}

impl Intervention {
    /// Checks what can be checked before a run: vectors are 1-D with one of the `widths` the
    /// point allows (the last axis, or all the axes after the position flattened, e.g. every
    /// head of `hook_z`), and the point allows the op.
    pub fn check(&self, widths: &[i32]) -> Result<()> {
        let what = format!("{} at {}", self.op.name(), self.point);
        if self.point.is_attention_map() && !matches!(self.op, Op::Ablate) {
            return Err(Error::Invalid(format!(
                "{what}: on attention scores or patterns only \"ablate\" (and script functions) \
                 apply"
            )));
        }
        let at = |points: &str| {
            Err(Error::Invalid(format!(
                "{what}: \"{}\" acts at {points} only",
                self.op.name()
            )))
        };
        match (&self.op, self.point) {
            (Op::Ban { .. }, HookName::RouterLogits(_)) => {}
            (Op::Ban { .. }, _) => return at("blocks.N.mlp.hook_router_logits"),
            (Op::Force { .. }, HookName::ExpertIds(_)) => {}
            (Op::Force { .. }, _) => return at("blocks.N.mlp.hook_expert_ids"),
            (
                Op::Scale {
                    experts: Some(_), ..
                },
                HookName::ExpertOut(_) | HookName::ExpertWeights(_),
            ) => {}
            (
                Op::Scale {
                    experts: Some(_), ..
                },
                _,
            ) => {
                return Err(Error::Invalid(format!(
                    "{what}: 'experts' picks expert slots at blocks.N.mlp.hook_expert_out or \
                     hook_expert_weights only (leave it out to scale the whole activation)"
                )))
            }
            (Op::Patch(_), HookName::ExpertIds(_)) => {}
            (_, HookName::ExpertIds(_)) => {
                return Err(Error::Invalid(format!(
                    "{what}: on chosen expert ids only \"force\" and \"patch\" (and script \
                     functions) apply"
                )))
            }
            _ => {}
        }
        if let Op::Sae { sae, edit } = &self.op {
            if !widths.is_empty() && !widths.contains(&sae.d_in) {
                let ws: Vec<String> = widths.iter().map(|w| w.to_string()).collect();
                return Err(Error::Invalid(format!(
                    "{what}: the SAE reads {} dimensions (d_in); this point has {}",
                    sae.d_in,
                    ws.join(" or ")
                )));
            }
            match edit {
                crate::sae::SaeEdit::Ablate { features, .. }
                | crate::sae::SaeEdit::Steer { features, .. } => {
                    sae.check_features(&what, features)?
                }
                crate::sae::SaeEdit::Splice { .. } => {}
            }
        }
        if let Some(v) = self.op.vector() {
            if v.ndim() != 1 {
                return Err(Error::Invalid(format!(
                    "{what}: the vector must be 1-dimensional, got shape {:?}",
                    v.shape()
                )));
            }
            if !widths.is_empty() && !widths.contains(&v.shape()[0]) {
                let ws: Vec<String> = widths.iter().map(|w| w.to_string()).collect();
                return Err(Error::Invalid(format!(
                    "{what}: the vector has {} entries; this point takes {}",
                    v.shape()[0],
                    ws.join(" or ")
                )));
            }
        }
        Ok(())
    }

    /// Checks the expert ids of a routing op against the router of the point's layer (`None`:
    /// the layer has no router): each in range, none twice, a ban that leaves at least `k`
    /// experts, no more forced experts than the router chooses.
    pub fn check_router(&self, router: Option<Router>) -> Result<()> {
        let experts = match &self.op {
            Op::Ban { experts } | Op::Force { experts } => experts,
            Op::Scale {
                experts: Some(experts),
                ..
            } => experts,
            _ => return Ok(()),
        };
        let what = format!("{} at {}", self.op.name(), self.point);
        let Some(r) = router else {
            return Err(Error::Invalid(format!(
                "{what}: this layer has no mixture-of-experts router"
            )));
        };
        if experts.is_empty() {
            return Err(Error::Invalid(format!(
                "{what}: 'experts' is empty; name at least one expert (0..{})",
                r.n_experts - 1
            )));
        }
        for (j, e) in experts.iter().enumerate() {
            if *e < 0 || *e >= r.n_experts {
                return Err(Error::Invalid(format!(
                    "{what}: expert {e} is out of range; this layer has experts 0..{} ({} of \
                     them)",
                    r.n_experts - 1,
                    r.n_experts
                )));
            }
            if experts[..j].contains(e) {
                return Err(Error::Invalid(format!(
                    "{what}: expert {e} is listed twice"
                )));
            }
        }
        let n = experts.len() as i32;
        match &self.op {
            Op::Ban { .. } if r.n_experts - n < r.k => Err(Error::Invalid(format!(
                "{what}: banning {n} of {} experts leaves {}, fewer than the {} the router \
                 chooses per token",
                r.n_experts,
                r.n_experts - n,
                r.k
            ))),
            Op::Force { .. } if n > r.k => Err(Error::Invalid(format!(
                "{what}: {n} experts forced, but the router chooses only {} per token",
                r.k
            ))),
            _ => Ok(()),
        }
    }

    /// The intervention applied to `x` for this call, or `None` when it leaves `x` unchanged.
    pub fn apply(&self, x: &Array, ctx: HookCtx<'_>) -> Result<Option<Array>> {
        // A vector as wide as all the axes after the position (every head at once): act on
        // the activation with those axes flattened.
        if let Some(v) = self.op.vector() {
            let shape = x.shape();
            let flat: i32 = shape[2..].iter().product();
            if shape.len() > 3 && v.shape() == [flat] && shape[shape.len() - 1] != flat {
                let xf = x.reshape(&[shape[0], shape[1], flat])?;
                return match self.apply(&xf, ctx)? {
                    Some(y) => Ok(Some(y.reshape(shape)?)),
                    None => Ok(None),
                };
            }
        }
        let shape = x.shape().to_vec();
        let batch = shape[0] as usize;
        let axis = self.point.pos_axis();
        let mut sel = self.window.select(&ctx, batch);
        if sel.as_ref().is_some_and(|s| !s.iter().any(|&b| b)) {
            return Ok(None);
        }
        let what = || format!("{} at {}", self.op.name(), self.point);
        if let Some(v) = self.op.vector() {
            let d = shape[shape.len() - 1];
            if v.shape() != [d] {
                return Err(Error::Invalid(format!(
                    "{}: the vector has shape {:?}, the activation {:?}",
                    what(),
                    v.shape(),
                    shape
                )));
            }
        }
        let dt = x.dtype();
        let project = |v: &Array| -> Result<(Array, Array)> {
            let u = unit(v)?;
            let x32 = x.as_dtype(Dtype::Float32)?;
            let p = x32.multiply(&u)?.sum_axis(-1, true)?;
            Ok((x32, p.multiply(&u)?))
        };
        let y = match &self.op {
            Op::Add { vector, alpha } => x.add(vector.multiply(f32s(*alpha))?.as_dtype(dt)?)?,
            Op::Ablate => ops::zeros_like(x)?,
            Op::MeanAblate { mean } => {
                let trailing = &shape[axis + 1..];
                if crate::arrays::broadcast_shapes(mean.shape(), trailing).as_deref()
                    != Some(trailing)
                {
                    return Err(Error::Invalid(format!(
                        "{}: the mean has shape {:?}, which does not fit the activation's \
                         trailing shape {:?}",
                        what(),
                        mean.shape(),
                        trailing
                    )));
                }
                ops::broadcast_to(mean.as_dtype(dt)?, &shape)?
            }
            Op::ProjectOut { vector } => {
                let (x32, along) = project(vector)?;
                x32.subtract(along)?.as_dtype(dt)?
            }
            Op::Reflect { vector, alpha } => {
                let (x32, along) = project(vector)?;
                x32.subtract(along.multiply(f32s(2.0 * alpha))?)?
                    .as_dtype(dt)?
            }
            Op::Cap { vector, tau } => {
                let u = unit(vector)?;
                let x32 = x.as_dtype(Dtype::Float32)?;
                let p = x32.multiply(&u)?.sum_axis(-1, true)?;
                let excess = ops::maximum(p.subtract(f32s(*tau))?, f32s(0.0))?;
                x32.subtract(excess.multiply(&u)?)?.as_dtype(dt)?
            }
            Op::Scale {
                factor,
                experts: None,
            } => x.multiply(f32s(*factor).as_dtype(dt)?)?,
            Op::Scale {
                factor,
                experts: Some(experts),
            } => {
                let ids = ctx.experts.ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: no chosen experts here (a mixture-of-experts point)",
                        what()
                    ))
                })?;
                let hit = chosen_among(ids, experts)?;
                let mut f = ops::select(&hit, f32s(*factor), f32s(1.0))?.as_dtype(dt)?;
                if shape.len() > ids.ndim() {
                    f = f.expand_dims(-1)?;
                }
                x.multiply(&f)?
            }
            Op::Ban { experts } => {
                let e = shape[shape.len() - 1];
                let mut banned = vec![false; e.max(0) as usize];
                for &i in experts {
                    if let Some(b) = banned.get_mut(i as usize) {
                        *b = true;
                    }
                }
                let mask = Array::from_slice(&banned, &[e]);
                let neg = f32s(f32::NEG_INFINITY).as_dtype(dt)?;
                ops::select(&mask, &neg, x)?
            }
            Op::Force { experts } => force(x, experts)?,
            Op::Sae { sae, edit } => sae.apply(x, edit)?,
            Op::Patch(src) => {
                let (patched, patch_sel) = self.patch(src, x, &ctx)?;
                sel = Some(match sel {
                    None => patch_sel,
                    Some(s) => s.iter().zip(&patch_sel).map(|(a, b)| *a && *b).collect(),
                });
                if !sel.as_ref().is_some_and(|s| s.iter().any(|&b| b)) {
                    return Ok(None);
                }
                patched
            }
        };
        let Some(sel) = sel else {
            return Ok(Some(y));
        };
        // Keep x outside the window: a [batch, 1.., len, 1..] mask along the position axis.
        let mut mshape = vec![1i32; shape.len()];
        mshape[0] = batch as i32;
        mshape[axis] = ctx.len;
        let mask = Array::from_slice(&sel, &mshape);
        Ok(Some(ops::select(&mask, &y, x)?))
    }

    /// The patched activation for this call and the positions it covers.
    fn patch(&self, src: &PatchSource, x: &Array, ctx: &HookCtx) -> Result<(Array, Vec<bool>)> {
        let shape = x.shape().to_vec();
        let (batch, len) = (shape[0] as usize, ctx.len as usize);
        let trailing = &shape[2..];
        let n = match src {
            PatchSource::All(rows) => rows.len(),
            PatchSource::Last(a) | PatchSource::Index(a, _) => a.shape()[0] as usize,
        };
        if n != batch && n != 1 {
            return Err(Error::Invalid(format!(
                "patch at {}: the cache holds {n} inputs, this run has {batch}",
                self.point
            )));
        }
        let src_row = |r: usize| if n == 1 { 0 } else { r };
        let mut sel = vec![false; batch * len];
        let dt = x.dtype();
        match src {
            PatchSource::Last(a) | PatchSource::Index(a, _) => {
                if &a.shape()[1..] != trailing {
                    return Err(Error::Invalid(format!(
                        "patch at {}: the cache holds {:?} per input, the activation {:?}",
                        self.point,
                        &a.shape()[1..],
                        trailing
                    )));
                }
                for r in 0..batch {
                    let target = match src {
                        PatchSource::Index(_, i) if *i >= 0 => ctx.pad(r) as i64 + i,
                        PatchSource::Index(_, i) => ctx.prompt_len as i64 + i,
                        _ => ctx.prompt_len as i64 - 1,
                    };
                    let j = target - ctx.offset as i64;
                    if target >= ctx.pad(r) as i64 && (0..len as i64).contains(&j) {
                        sel[r * len + j as usize] = true;
                    }
                }
                // [n, ...] -> [batch, 1, ...], broadcast over positions.
                let rows: Vec<i32> = (0..batch).map(|r| src_row(r) as i32).collect();
                let v = a
                    .take_axis(Array::from_slice(&rows, &[batch as i32]), 0)?
                    .expand_dims(1)?
                    .as_dtype(dt)?;
                Ok((ops::broadcast_to(v, &shape)?, sel))
            }
            PatchSource::All(rows) => {
                for (i, a) in rows.iter().enumerate() {
                    if &a.shape()[1..] != trailing {
                        return Err(Error::Invalid(format!(
                            "patch at {}: the cache holds {:?} per position for input {i}, \
                             the activation {:?}",
                            self.point,
                            &a.shape()[1..],
                            trailing
                        )));
                    }
                }
                // Position i of the cache goes to position i of the run: a cache of another
                // length would be patched in misaligned, so it is refused.
                for r in 0..batch {
                    let s = src_row(r);
                    let (l, prompt) = (rows[s].shape()[0], ctx.prompt_len - ctx.pad(r));
                    if l != prompt {
                        return Err(Error::Invalid(format!(
                            "patch at {}: the cache holds {l} positions for input {s}, this \
                             run's prompt{} has {prompt} tokens; patching every position needs \
                             inputs of the same length (capture the cache from prompts of the \
                             same length, or patch one position with positions \"last\" or an \
                             index)",
                            self.point,
                            if batch > 1 {
                                format!(" {r}")
                            } else {
                                String::new()
                            },
                        )));
                    }
                }
                let lmax = rows.iter().map(|a| a.shape()[0]).max().unwrap_or(0).max(1);
                // One [n * lmax, ...] table; each (row, position) picks its entry.
                let mut padded = Vec::with_capacity(rows.len());
                for a in rows {
                    let l = a.shape()[0];
                    if l < lmax {
                        let mut zshape = vec![lmax - l];
                        zshape.extend_from_slice(trailing);
                        let z = ops::zeros_dtype(&zshape, a.dtype())?;
                        padded.push(ops::concatenate(&[a.clone(), z], 0)?);
                    } else {
                        padded.push(a.clone());
                    }
                }
                let mut tshape = vec![rows.len() as i32 * lmax];
                tshape.extend_from_slice(trailing);
                let table = ops::concatenate(&padded, 0)?.reshape(&tshape)?;
                let mut idx = vec![0i32; batch * len];
                for r in 0..batch {
                    let s = src_row(r);
                    let l = rows[s].shape()[0] as i64;
                    for j in 0..len {
                        let i = (ctx.offset + j as i32 - ctx.pad(r)) as i64;
                        if (0..l).contains(&i) {
                            sel[r * len + j] = true;
                            idx[r * len + j] = s as i32 * lmax + i as i32;
                        }
                    }
                }
                let mut out_shape = vec![batch as i32, len as i32];
                out_shape.extend_from_slice(trailing);
                let v = table
                    .take_axis(Array::from_slice(&idx, &[(batch * len) as i32]), 0)?
                    .reshape(&out_shape)?
                    .as_dtype(dt)?;
                Ok((v, sel))
            }
        }
    }

    /// A short description for `hooks(m)`.
    pub fn label(&self) -> String {
        let mut s = self.op.name().to_string();
        match &self.op {
            Op::Add { alpha, .. } | Op::Reflect { alpha, .. } => s += &format!(" alpha={alpha}"),
            Op::Cap { tau, .. } => s += &format!(" tau={tau}"),
            Op::Ban { experts } | Op::Force { experts } => s += &format!(" experts={experts:?}"),
            Op::Sae { edit, .. } => match edit {
                crate::sae::SaeEdit::Splice { keep_error } => {
                    s += &format!(" keep_error={keep_error}")
                }
                crate::sae::SaeEdit::Ablate {
                    features,
                    keep_error,
                } => s += &format!(" features={features:?} keep_error={keep_error}"),
                crate::sae::SaeEdit::Steer { features, scale } => {
                    s += &format!(" features={features:?} scale={scale}")
                }
            },
            Op::Scale { factor, experts } => {
                s += &format!(" factor={factor}");
                if let Some(e) = experts {
                    s += &format!(" experts={e:?}");
                }
            }
            _ => {}
        }
        if self.window != Window::All {
            s += &format!(" window={}", self.window.describe());
        }
        s
    }

    /// The intervention as a hook function.
    pub fn into_hook(self) -> HookFn {
        Box::new(move |x, ctx| self.apply(x, ctx))
    }
}

/// `[..., k]` bool: where the chosen experts `ids` `[..., k]` are among `experts`.
fn chosen_among(ids: &Array, experts: &[i32]) -> Result<Array> {
    let n = experts.len() as i32;
    let listed = Array::from_slice(experts, &[n]);
    Ok(ids
        .as_dtype(Dtype::Int32)?
        .expand_dims(-1)?
        .eq(&listed)?
        .any_axis(-1, false)?)
}

/// Chosen experts `ids` `[batch, pos, k]` with `forced` put first: then the others in their
/// order (the router's ranking), as many as fit in `k`.
fn force(ids: &Array, forced: &[i32]) -> Result<Array> {
    let shape = ids.shape().to_vec();
    let (k, n) = (shape[shape.len() - 1], forced.len() as i32);
    let ids = ids.as_dtype(Dtype::Int32)?;
    // Not forced first, in order, then forced ones: key = forced * k + slot (all distinct).
    let is_forced = chosen_among(&ids, forced)?.as_dtype(Dtype::Int32)?;
    let slot = Array::from_iter(0..k, &[k]);
    let key = is_forced.multiply(Array::from_int(k))?.add(&slot)?;
    let order = argsort_axis(&key, -1)?.as_dtype(Dtype::Int32)?;
    let keep = order.try_index((.., .., 0..k - n))?;
    let rest = take_along_axis(&ids, &keep, -1)?;
    let mut fshape = shape.clone();
    let last = fshape.len() - 1;
    fshape[last] = n;
    let front = ops::broadcast_to(Array::from_slice(forced, &[n]), &fshape)?;
    Ok(ops::concatenate(&[front, rest], -1)?)
}
