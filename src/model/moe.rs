//! The router of a mixture-of-experts MLP, shared by every MoE architecture (Qwen3-MoE,
//! gpt-oss): router logits -> the `k` chosen experts -> their mixing weights, and the weighted
//! sum of the chosen experts' outputs, with the hook points (and so the interventions: ban,
//! force, scale) in one place, named and shaped the same for every architecture.
//!
//! An architecture computes the router logits and the experts itself and calls:
//!
//! ```text
//! let route = router.route(i, router_proj.forward(x)?, step)?;   // hook_router_logits, ids, weights
//! let out = /* the experts `route.ids` on x */;                   // [B, T, k, d_model]
//! router.mix(i, out, &route, step)                                // hook_expert_out, weighted sum
//! ```
//!
//! The architectures differ only in how weights come from logits ([`Weighting`]): Qwen3-MoE
//! (mlx-lm `qwen3_moe.py`) takes the softmax over all experts, then the chosen ones'
//! probabilities (renormalized to sum 1 when `norm_topk_prob`); gpt-oss (mlx-lm `gpt_oss.py`)
//! takes the softmax over the chosen experts' logits only. Both choose the `k` experts with the
//! largest logits (the softmax is monotonic, so this is also the top-k of the probabilities).

use mlx_rs::ops::indexing::{take_along_axis, TryIndexOp};
use mlx_rs::ops::{self, argsort_axis};
use mlx_rs::{Array, Dtype};

use super::layers::Step;
use crate::error::{Error, Result};
use crate::hooks::HookName;

/// How the chosen experts' weights come from the router logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// Softmax over all experts, then the chosen experts' probabilities, divided by their sum
    /// when `renormalize` (Qwen3-MoE's `norm_topk_prob`).
    SoftmaxAll { renormalize: bool },
    /// Softmax over the chosen experts' logits (gpt-oss).
    SoftmaxChosen,
}

/// One layer's router: how many experts, how many are chosen per token, how they are weighted.
#[derive(Debug, Clone, Copy)]
pub struct Router {
    pub n_experts: i32,
    pub k: i32,
    pub weighting: Weighting,
}

/// The experts chosen for each token and their weights.
pub struct Route {
    /// `[batch, pos, k]` int32, highest logit first (as replaced by hooks).
    pub ids: Array,
    /// `[batch, pos, k]`, in the order of `ids`.
    pub weights: Array,
}

impl Router {
    /// The route of layer `layer` from the router's `logits` `[batch, pos, n_experts]`, through
    /// `mlp.hook_router_logits`, `mlp.hook_expert_ids` (a replacement is checked: `k` distinct
    /// experts per token, each in range) and `mlp.hook_expert_weights`.
    pub fn route(&self, layer: usize, logits: Array, step: &mut Step) -> Result<Route> {
        let logits = step.hook(HookName::RouterLogits(layer), logits)?;
        let order = argsort_axis(logits.negative()?, -1)?;
        let ids = order
            .try_index((.., .., 0..self.k))?
            .as_dtype(Dtype::Int32)?;
        let ids_point = HookName::ExpertIds(layer);
        let ids = if step.is_active(&ids_point) {
            let ids = step.hook(ids_point, ids)?;
            self.check_ids(ids_point, &ids)?;
            ids
        } else {
            ids
        };
        let weights = match self.weighting {
            Weighting::SoftmaxAll { renormalize } => {
                let probs = ops::softmax_axis(&logits, -1, true)?;
                let w = take_along_axis(&probs, &ids, -1)?;
                if renormalize {
                    w.divide(w.sum_axis(-1, true)?)?
                } else {
                    w
                }
            }
            Weighting::SoftmaxChosen => {
                ops::softmax_axis(take_along_axis(&logits, &ids, -1)?, -1, true)?
            }
        };
        let weights = step.hook_experts(HookName::ExpertWeights(layer), weights, &ids)?;
        Ok(Route { ids, weights })
    }

    /// The MLP's output `[batch, pos, d]`: the chosen experts' outputs `out` `[batch, pos, k,
    /// d]` (through `mlp.hook_expert_out`) summed with the route's weights, in `out`'s dtype.
    pub fn mix(&self, layer: usize, out: Array, route: &Route, step: &mut Step) -> Result<Array> {
        let out = step.hook_experts(HookName::ExpertOut(layer), out, &route.ids)?;
        let dtype = out.dtype();
        Ok(out
            .multiply(route.weights.expand_dims(-1)?)?
            .sum_axis(-2, false)?
            .as_dtype(dtype)?)
    }

    /// Expert ids a hook put at `point`: each in `0..n_experts`, distinct within a token.
    fn check_ids(&self, point: HookName, ids: &Array) -> Result<()> {
        if ids.size() == 0 {
            return Ok(());
        }
        let ids = ids.as_dtype(Dtype::Int32)?;
        let range = ops::stack(&[ids.min(None)?, ids.max(None)?], 0)?;
        let (lo, hi) = match range.as_slice::<i32>() {
            [lo, hi] => (*lo, *hi),
            _ => return Ok(()),
        };
        if lo < 0 || hi >= self.n_experts {
            let bad = if lo < 0 { lo } else { hi };
            return Err(Error::Invalid(format!(
                "{point}: a hook chose expert {bad}; this layer has experts 0..{} ({} of them)",
                self.n_experts - 1,
                self.n_experts
            )));
        }
        if self.k > 1 {
            let sorted = ops::sort_axis(&ids, -1)?;
            let a = sorted.try_index((.., .., 1..))?;
            let b = sorted.try_index((.., .., ..self.k - 1))?;
            if a.eq(&b)?.any(None)?.as_slice::<bool>() == [true] {
                return Err(Error::Invalid(format!(
                    "{point}: a hook chose the same expert twice for one token; each token \
                     needs {} distinct experts",
                    self.k
                )));
            }
        }
        Ok(())
    }
}
