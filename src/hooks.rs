//! Hook points: TransformerLens names for every activation, and the registry the model's block
//! code consults at each point. A point with nothing attached returns its input unchanged.

use std::collections::HashMap;
use std::fmt;

use mlx_rs::Array;

use crate::error::{Error, Result};
use crate::model::lora::Target;

/// A hook point. Shapes are TransformerLens's: `[batch, pos, ...]`.
///
/// Norm points: `hook_scale` is the norm's root mean square `sqrt(mean(x^2) + eps)`,
/// `[batch, pos, 1]`; `hook_normalized` is the norm's output *with* its weight (mlxi does not fold
/// norm weights into the next layer, so this is what the next layer reads; TransformerLens's
/// `hook_normalized` is `x / scale`, before the weight). `ln1` is the norm before attention,
/// `ln2` the norm before the MLP (Gemma's `pre_feedforward_layernorm`; Gemma's post-attention
/// and post-feedforward norms are inside `hook_attn_out` and `hook_mlp_out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookName {
    /// Token embeddings (after any embedding scale), `[batch, pos, d_model]`.
    Embed,
    /// Residual stream entering block `i`, `[batch, pos, d_model]`.
    ResidPre(usize),
    /// Root mean square of the residual stream at the attention's norm, `[batch, pos, 1]`
    /// (computed only when hooked).
    Ln1Scale(usize),
    /// The attention's input norm output (weight applied), `[batch, pos, d_model]`.
    Ln1Normalized(usize),
    /// Residual stream after attention, before the MLP, `[batch, pos, d_model]`.
    ResidMid(usize),
    /// Root mean square of the residual stream at the MLP's norm, `[batch, pos, 1]` (computed
    /// only when hooked).
    Ln2Scale(usize),
    /// The MLP's input norm output (weight applied), `[batch, pos, d_model]`.
    Ln2Normalized(usize),
    /// Residual stream leaving block `i`, `[batch, pos, d_model]`.
    ResidPost(usize),
    /// Attention output added to the residual stream, `[batch, pos, d_model]`.
    AttnOut(usize),
    /// MLP output added to the residual stream, `[batch, pos, d_model]`.
    MlpOut(usize),
    /// Queries before rotary embedding, `[batch, pos, head, d_head]`.
    Q(usize),
    /// Keys before rotary embedding, `[batch, pos, kv_head, d_head]`.
    K(usize),
    /// Values, `[batch, pos, kv_head, d_head]`.
    V(usize),
    /// Queries after rotary embedding, `[batch, pos, head, d_head]`.
    RotQ(usize),
    /// Keys after rotary embedding (what the KV cache stores), `[batch, pos, kv_head, d_head]`.
    RotK(usize),
    /// Attention scores before the softmax: `q k^T` times the scale, soft-capped where the
    /// architecture soft-caps (Gemma 2), masked entries `-inf`, `[batch, head, query_pos,
    /// key_pos]` (computed only when hooked). The mask is applied again after the hooks, so a
    /// replacement cannot make a query see a masked key.
    AttnScores(usize),
    /// Attention-weighted values before the output projection, `[batch, pos, head, d_head]`.
    Z(usize),
    /// Attention probabilities, `[batch, head, query_pos, key_pos]` (computed only when hooked).
    Pattern(usize),
    /// Each head's output through the output projection (no bias), `[batch, pos, head,
    /// d_model]`; the sum over heads plus the projection's bias is the projection's output
    /// (computed only when hooked).
    HeadResult(usize),
    /// A mixture-of-experts router's logits, one per expert, `[batch, pos, n_experts]` (only
    /// on layers with a router). Replacing them changes which experts are chosen and their
    /// weights.
    RouterLogits(usize),
    /// The experts the router chose for each token, `[batch, pos, k]` (int32), highest router
    /// logit first. A replacement must hold `k` distinct experts per token, each in
    /// `0..n_experts`; the weights are then computed for the replaced choice.
    ExpertIds(usize),
    /// The chosen experts' mixing weights, `[batch, pos, k]`, in the order of `hook_expert_ids`.
    ExpertWeights(usize),
    /// The gate projection before the activation function, `[batch, pos, d_mlp]`. In a
    /// mixture-of-experts block, the chosen experts' gates, `[batch, pos, k, d_expert]`, as
    /// `hook_post`.
    MlpPre(usize),
    /// The MLP's up projection (multiplied by the activated gate), shaped as `hook_pre`.
    MlpPreLinear(usize),
    /// MLP hidden activation (after the gate), `[batch, pos, d_mlp]`. In a mixture-of-experts
    /// block, the chosen experts' activations, `[batch, pos, k, d_expert]`, highest router
    /// weight first.
    MlpPost(usize),
    /// In a mixture-of-experts block, each chosen expert's output before the weighted sum,
    /// `[batch, pos, k, d_model]`, in the order of `hook_expert_ids`; `hook_mlp_out` is the sum
    /// over `k` weighted by `hook_expert_weights`.
    ExpertOut(usize),
    /// Root mean square of the residual stream at the final norm, `[batch, pos, 1]` (computed
    /// only when hooked).
    LnFinalScale,
    /// The final norm's output, `[batch, pos, d_model]`.
    LnFinal,
    /// A LoRA adapter's update of one linear layer of block `i`, before it is added to the
    /// layer's output: `scale * (x A) B`, shaped as the layer's output (`[batch, pos, out]`).
    /// `blocks.{i}.attn.hook_lora_q|k|v|o` and `blocks.{i}.mlp.hook_lora_gate|up|down`; present
    /// only where an unfused adapter is on (see [`HookName::lora_points`]).
    Lora(usize, Target),
}

impl HookName {
    /// Every hook point of a model with `n_layers` blocks, in forward order.
    pub fn all(n_layers: usize) -> Vec<HookName> {
        let mut v = vec![HookName::Embed];
        for i in 0..n_layers {
            v.extend([
                HookName::ResidPre(i),
                HookName::Ln1Scale(i),
                HookName::Ln1Normalized(i),
                HookName::Q(i),
                HookName::K(i),
                HookName::V(i),
                HookName::RotQ(i),
                HookName::RotK(i),
                HookName::AttnScores(i),
                HookName::Pattern(i),
                HookName::Z(i),
                HookName::HeadResult(i),
                HookName::AttnOut(i),
                HookName::ResidMid(i),
                HookName::Ln2Scale(i),
                HookName::Ln2Normalized(i),
                HookName::RouterLogits(i),
                HookName::ExpertIds(i),
                HookName::ExpertWeights(i),
                HookName::MlpPre(i),
                HookName::MlpPreLinear(i),
                HookName::MlpPost(i),
                HookName::ExpertOut(i),
                HookName::MlpOut(i),
                HookName::ResidPost(i),
            ]);
        }
        v.extend([HookName::LnFinalScale, HookName::LnFinal]);
        v
    }

    /// The adapter points of the layers `targets` (`(block, target)`), in forward order.
    pub fn lora_points(targets: &[(usize, Target)]) -> Vec<HookName> {
        let mut v: Vec<HookName> = targets.iter().map(|&(i, t)| HookName::Lora(i, t)).collect();
        v.sort();
        v
    }

    /// Every point of a model with `n_layers` blocks, adapter points included, in forward
    /// order (for sorting names a script lists).
    pub fn forward_order(n_layers: usize) -> Vec<HookName> {
        let mut v = Vec::new();
        for p in HookName::all(n_layers) {
            let lora: &[Target] = match p {
                HookName::Ln1Normalized(_) => &[Target::Q, Target::K, Target::V],
                HookName::Z(_) => &[Target::O],
                HookName::Ln2Normalized(_) => &[Target::Gate, Target::Up],
                HookName::MlpPost(_) => &[Target::Down],
                _ => &[],
            };
            v.push(p);
            if let Some(i) = p.layer() {
                v.extend(lora.iter().map(|t| HookName::Lora(i, *t)));
            }
        }
        v
    }

    /// The `(hook_scale, hook_normalized)` points of block `i`'s norm before attention.
    pub fn ln1(i: usize) -> (HookName, HookName) {
        (HookName::Ln1Scale(i), HookName::Ln1Normalized(i))
    }

    /// The `(hook_scale, hook_normalized)` points of block `i`'s norm before the MLP.
    pub fn ln2(i: usize) -> (HookName, HookName) {
        (HookName::Ln2Scale(i), HookName::Ln2Normalized(i))
    }

    /// The block index, for per-layer points.
    pub fn layer(&self) -> Option<usize> {
        use HookName::*;
        match *self {
            Embed | LnFinalScale | LnFinal => None,
            ResidPre(i)
            | Ln1Scale(i)
            | Ln1Normalized(i)
            | ResidMid(i)
            | Ln2Scale(i)
            | Ln2Normalized(i)
            | ResidPost(i)
            | AttnOut(i)
            | MlpOut(i)
            | Q(i)
            | K(i)
            | V(i)
            | RotQ(i)
            | RotK(i)
            | AttnScores(i)
            | Pattern(i)
            | Z(i)
            | HeadResult(i)
            | MlpPre(i)
            | MlpPreLinear(i)
            | MlpPost(i)
            | RouterLogits(i)
            | ExpertIds(i)
            | ExpertWeights(i)
            | ExpertOut(i)
            | Lora(i, _) => Some(i),
        }
    }

    /// True for the points of a mixture-of-experts router (logits, chosen experts, their
    /// weights, each chosen expert's output): they exist only on layers with a router.
    pub fn is_router(&self) -> bool {
        matches!(
            self,
            HookName::RouterLogits(_)
                | HookName::ExpertIds(_)
                | HookName::ExpertWeights(_)
                | HookName::ExpertOut(_)
        )
    }

    /// True for the attention maps `[batch, head, query_pos, key_pos]` (scores and pattern).
    pub fn is_attention_map(&self) -> bool {
        matches!(self, HookName::AttnScores(_) | HookName::Pattern(_))
    }

    /// True for the points of the final norm (reached only when the final norm runs).
    pub fn is_final_norm(&self) -> bool {
        matches!(self, HookName::LnFinalScale | HookName::LnFinal)
    }

    /// The axis of this point's activations that runs over query positions: 2 for an
    /// attention map `[batch, head, query, key]`, 1 for every other point.
    pub fn pos_axis(&self) -> usize {
        if self.is_attention_map() {
            2
        } else {
            1
        }
    }

    /// Parse a TransformerLens name; negative layer indices count from the end.
    pub fn parse(name: &str, n_layers: usize) -> Result<HookName> {
        let unknown = || {
            Error::Invalid(format!(
                "unknown hook point {name:?}; valid names look like hook_embed, \
                 blocks.{{i}}.hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out, \
                 blocks.{{i}}.ln1|ln2.hook_scale|hook_normalized, \
                 blocks.{{i}}.attn.hook_q|hook_k|hook_v|hook_rot_q|hook_rot_k|hook_attn_scores|\
                 hook_pattern|hook_z|hook_result, blocks.{{i}}.mlp.hook_pre|hook_pre_linear|hook_post, \
                 blocks.{{i}}.mlp.hook_router_logits|hook_expert_ids|hook_expert_weights|\
                 hook_expert_out (mixture-of-experts layers), \
                 ln_final.hook_scale|hook_normalized (i in 0..{n_layers}, or negative from the end); \
                 with an adapter, blocks.{{i}}.attn.hook_lora_q|k|v|o and \
                 blocks.{{i}}.mlp.hook_lora_gate|up|down; hook_points(m) lists them all"
            ))
        };
        match name {
            "hook_embed" => return Ok(HookName::Embed),
            "ln_final.hook_normalized" => return Ok(HookName::LnFinal),
            "ln_final.hook_scale" => return Ok(HookName::LnFinalScale),
            _ => {}
        }
        let rest = name.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (idx, point) = rest.split_once('.').ok_or_else(unknown)?;
        let idx: i64 = idx.parse().map_err(|_| unknown())?;
        let n = n_layers as i64;
        let layer = if idx < 0 { n + idx } else { idx };
        if layer < 0 || layer >= n {
            return Err(Error::Invalid(format!(
                "hook point {name:?}: layer {idx} is out of range for a model with {n_layers} layers"
            )));
        }
        let i = layer as usize;
        Ok(match point {
            "hook_resid_pre" => HookName::ResidPre(i),
            "hook_resid_mid" => HookName::ResidMid(i),
            "hook_resid_post" => HookName::ResidPost(i),
            "hook_attn_out" => HookName::AttnOut(i),
            "hook_mlp_out" => HookName::MlpOut(i),
            "ln1.hook_scale" => HookName::Ln1Scale(i),
            "ln1.hook_normalized" => HookName::Ln1Normalized(i),
            "ln2.hook_scale" => HookName::Ln2Scale(i),
            "ln2.hook_normalized" => HookName::Ln2Normalized(i),
            "attn.hook_q" => HookName::Q(i),
            "attn.hook_k" => HookName::K(i),
            "attn.hook_v" => HookName::V(i),
            "attn.hook_rot_q" => HookName::RotQ(i),
            "attn.hook_rot_k" => HookName::RotK(i),
            "attn.hook_attn_scores" => HookName::AttnScores(i),
            "attn.hook_pattern" => HookName::Pattern(i),
            "attn.hook_z" => HookName::Z(i),
            "attn.hook_result" => HookName::HeadResult(i),
            "mlp.hook_pre" => HookName::MlpPre(i),
            "mlp.hook_pre_linear" => HookName::MlpPreLinear(i),
            "mlp.hook_post" => HookName::MlpPost(i),
            "mlp.hook_router_logits" => HookName::RouterLogits(i),
            // TransformerLens's MoE names the chosen experts `hook_expert_indices`.
            "mlp.hook_expert_ids" | "mlp.hook_expert_indices" => HookName::ExpertIds(i),
            "mlp.hook_expert_weights" => HookName::ExpertWeights(i),
            "mlp.hook_expert_out" => HookName::ExpertOut(i),
            _ => {
                let lora = point
                    .split_once('.')
                    .and_then(|(group, p)| Target::from_hook(group, p));
                return lora.map(|t| HookName::Lora(i, t)).ok_or_else(unknown);
            }
        })
    }
}

impl fmt::Display for HookName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HookName::*;
        match self {
            Embed => write!(f, "hook_embed"),
            LnFinalScale => write!(f, "ln_final.hook_scale"),
            LnFinal => write!(f, "ln_final.hook_normalized"),
            ResidPre(i) => write!(f, "blocks.{i}.hook_resid_pre"),
            ResidMid(i) => write!(f, "blocks.{i}.hook_resid_mid"),
            ResidPost(i) => write!(f, "blocks.{i}.hook_resid_post"),
            AttnOut(i) => write!(f, "blocks.{i}.hook_attn_out"),
            MlpOut(i) => write!(f, "blocks.{i}.hook_mlp_out"),
            Ln1Scale(i) => write!(f, "blocks.{i}.ln1.hook_scale"),
            Ln1Normalized(i) => write!(f, "blocks.{i}.ln1.hook_normalized"),
            Ln2Scale(i) => write!(f, "blocks.{i}.ln2.hook_scale"),
            Ln2Normalized(i) => write!(f, "blocks.{i}.ln2.hook_normalized"),
            Q(i) => write!(f, "blocks.{i}.attn.hook_q"),
            K(i) => write!(f, "blocks.{i}.attn.hook_k"),
            V(i) => write!(f, "blocks.{i}.attn.hook_v"),
            RotQ(i) => write!(f, "blocks.{i}.attn.hook_rot_q"),
            RotK(i) => write!(f, "blocks.{i}.attn.hook_rot_k"),
            AttnScores(i) => write!(f, "blocks.{i}.attn.hook_attn_scores"),
            Pattern(i) => write!(f, "blocks.{i}.attn.hook_pattern"),
            Z(i) => write!(f, "blocks.{i}.attn.hook_z"),
            HeadResult(i) => write!(f, "blocks.{i}.attn.hook_result"),
            MlpPre(i) => write!(f, "blocks.{i}.mlp.hook_pre"),
            MlpPreLinear(i) => write!(f, "blocks.{i}.mlp.hook_pre_linear"),
            MlpPost(i) => write!(f, "blocks.{i}.mlp.hook_post"),
            Lora(i, t) => {
                let group = if t.is_attention() { "attn" } else { "mlp" };
                write!(f, "blocks.{i}.{group}.hook_lora_{}", t.short())
            }
            RouterLogits(i) => write!(f, "blocks.{i}.mlp.hook_router_logits"),
            ExpertIds(i) => write!(f, "blocks.{i}.mlp.hook_expert_ids"),
            ExpertWeights(i) => write!(f, "blocks.{i}.mlp.hook_expert_weights"),
            ExpertOut(i) => write!(f, "blocks.{i}.mlp.hook_expert_out"),
        }
    }
}

/// Where in a run a hook is called: this call's queries are absolute positions
/// `offset .. offset + len` (left padding included).
#[derive(Debug, Clone, Copy)]
pub struct HookCtx<'a> {
    pub offset: i32,
    pub len: i32,
    /// Length of the (left-padded) prompt: absolute positions below it are the prompt, the
    /// rest are generated tokens. A run without a cache is all prompt.
    pub prompt_len: i32,
    /// Left-padding length of each row (empty when no row is padded).
    pub pads: &'a [i32],
    /// At `hook_expert_weights` and `hook_expert_out`: the chosen experts `[batch, pos, k]`
    /// (int32), so an intervention can act on one expert's slot.
    pub experts: Option<&'a Array>,
}

impl HookCtx<'_> {
    /// Left padding of row `r`.
    pub fn pad(&self, r: usize) -> i32 {
        self.pads.get(r).copied().unwrap_or(0)
    }
}

/// A function attached at a hook point: returns `Some(replacement)` or `None` to keep `x`.
pub type HookFn = Box<dyn FnMut(&Array, HookCtx<'_>) -> Result<Option<Array>>>;

/// What a capture keeps of an activation (e.g. the last position only); `None` keeps it whole.
pub type Reducer = Box<dyn Fn(&Array, HookCtx<'_>) -> Result<Array>>;

/// One point being captured: how to reduce each activation, and what was kept so far.
struct Captured {
    reduce: Option<Reducer>,
    store: Vec<Array>,
}

/// One attached hook.
pub struct Hook {
    pub name: HookName,
    /// A short description for listings (`hooks(m)`).
    pub label: String,
    /// A steering intervention (removed by `unsteer`), as opposed to a plain hook.
    pub steering: bool,
    pub func: HookFn,
}

/// Names one attached hook, so that whoever attached it can remove it and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HookId(u64);

/// The hooks attached to a model, plus activations being captured in the current run.
#[derive(Default)]
pub struct Hooks {
    hooks: Vec<(HookId, Hook)>,
    /// The id the next attached hook gets.
    next_id: u64,
    /// Points whose activations are recorded by the current forward (see `capture`).
    capture: HashMap<HookName, Captured>,
    /// Length of the prompt of the current run (set by every run that starts from position 0).
    pub prompt_len: i32,
}

impl Hooks {
    /// True when nothing is attached and nothing is captured (the plain fast path).
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty() && self.capture.is_empty()
    }

    /// True when `name` has a hook or is being captured.
    pub fn is_active(&self, name: &HookName) -> bool {
        self.capture.contains_key(name) || self.hooks.iter().any(|(_, h)| &h.name == name)
    }

    /// Attaches `hook` after the others; its id removes it (see [`Hooks::detach`]).
    pub fn attach(&mut self, hook: Hook) -> HookId {
        let id = HookId(self.next_id);
        self.next_id += 1;
        self.hooks.push((id, hook));
        id
    }

    /// The ids of the attached hooks, in attachment order.
    pub fn ids(&self) -> Vec<HookId> {
        self.hooks.iter().map(|(id, _)| *id).collect()
    }

    /// Removes the hooks named by `ids` (those still attached); the others stay, in order.
    pub fn detach(&mut self, ids: &[HookId]) {
        self.hooks.retain(|(id, _)| !ids.contains(id));
    }

    /// Remove every hook (steering included).
    pub fn clear(&mut self) {
        self.hooks.clear();
    }

    /// Remove steering interventions only.
    pub fn clear_steering(&mut self) {
        self.hooks.retain(|(_, h)| !h.steering);
    }

    /// `(point, label)` of every attached hook, in attachment order.
    pub fn list(&self) -> Vec<(HookName, String)> {
        self.hooks
            .iter()
            .map(|(_, h)| (h.name, h.label.clone()))
            .collect()
    }

    /// Whether each attached hook is a steering intervention, in attachment order.
    pub fn steering_flags(&self) -> Vec<bool> {
        self.hooks.iter().map(|(_, h)| h.steering).collect()
    }

    /// Start recording the given points; each forward appends its activation.
    pub fn start_capture(&mut self, points: &[HookName]) {
        self.capture = points
            .iter()
            .map(|p| {
                let c = Captured {
                    reduce: None,
                    store: Vec::new(),
                };
                (*p, c)
            })
            .collect();
    }

    /// Start recording the given points, each forward appending what `reduce` keeps of the
    /// activation (e.g. the last position only, so the whole stream is never held).
    pub fn start_capture_with(&mut self, points: Vec<(HookName, Reducer)>) {
        self.capture = points
            .into_iter()
            .map(|(p, r)| {
                let c = Captured {
                    reduce: Some(r),
                    store: Vec::new(),
                };
                (p, c)
            })
            .collect();
    }

    /// Stop recording and return what was recorded.
    pub fn take_capture(&mut self) -> HashMap<HookName, Vec<Array>> {
        std::mem::take(&mut self.capture)
            .into_iter()
            .map(|(k, c)| (k, c.store))
            .collect()
    }

    /// Each captured point with how many activations it holds, in point order.
    pub fn capture_counts(&self) -> Vec<(HookName, usize)> {
        let mut v: Vec<(HookName, usize)> = self
            .capture
            .iter()
            .map(|(k, c)| (*k, c.store.len()))
            .collect();
        v.sort();
        v
    }

    /// The newest activation recorded at `point`, if it holds more than `n`.
    pub fn captured_after(&self, point: &HookName, n: usize) -> Option<Array> {
        let c = self.capture.get(point)?;
        (c.store.len() > n)
            .then(|| c.store.last().cloned())
            .flatten()
    }

    /// Records `x` at `point` as if this process had computed it (pipeline stages share what
    /// each captured); nothing when `point` is not being captured.
    pub fn push_captured(&mut self, point: &HookName, x: Array) {
        if let Some(c) = self.capture.get_mut(point) {
            c.store.push(x);
        }
    }

    /// Run every hook attached at `name` on `x`, in attachment order, each seeing the previous
    /// one's output; record the result if `name` is being captured.
    pub fn at(&mut self, name: &HookName, x: Array, ctx: HookCtx<'_>) -> Result<Array> {
        if self.is_empty() {
            return Ok(x);
        }
        let mut x = x;
        for (_, hook) in self.hooks.iter_mut().filter(|(_, h)| &h.name == name) {
            if let Some(y) = (hook.func)(&x, ctx)? {
                if y.shape() != x.shape() {
                    return Err(Error::Invalid(format!(
                        "hook at {name} returned shape {:?}, expected {:?}",
                        y.shape(),
                        x.shape()
                    )));
                }
                x = y;
            }
        }
        if let Some(c) = self.capture.get_mut(name) {
            let kept = match &c.reduce {
                Some(reduce) => reduce(&x, ctx)?,
                None => x.clone(),
            };
            c.store.push(kept);
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for name in HookName::forward_order(3) {
            assert_eq!(HookName::parse(&name.to_string(), 3).unwrap(), name);
        }
        assert_eq!(
            HookName::parse("blocks.1.mlp.hook_lora_down", 3).unwrap(),
            HookName::Lora(1, Target::Down)
        );
        assert!(HookName::parse("blocks.1.attn.hook_lora_down", 3).is_err());
        assert!(HookName::parse("blocks.1.mlp.hook_lora_q", 3).is_err());
    }

    #[test]
    fn transformer_lens_names_parse_to_their_points() {
        let cases = [
            ("blocks.1.ln1.hook_scale", HookName::Ln1Scale(1)),
            ("blocks.1.ln2.hook_normalized", HookName::Ln2Normalized(1)),
            ("blocks.0.attn.hook_rot_q", HookName::RotQ(0)),
            ("blocks.-1.attn.hook_attn_scores", HookName::AttnScores(2)),
            ("blocks.2.attn.hook_result", HookName::HeadResult(2)),
            ("blocks.0.mlp.hook_pre", HookName::MlpPre(0)),
            ("blocks.0.mlp.hook_pre_linear", HookName::MlpPreLinear(0)),
            ("blocks.1.mlp.hook_router_logits", HookName::RouterLogits(1)),
            ("blocks.-1.mlp.hook_expert_ids", HookName::ExpertIds(2)),
            ("blocks.0.mlp.hook_expert_indices", HookName::ExpertIds(0)),
            (
                "blocks.0.mlp.hook_expert_weights",
                HookName::ExpertWeights(0),
            ),
            ("blocks.2.mlp.hook_expert_out", HookName::ExpertOut(2)),
            ("ln_final.hook_scale", HookName::LnFinalScale),
        ];
        for (name, point) in cases {
            assert_eq!(HookName::parse(name, 3).unwrap(), point, "{name}");
        }
        assert_eq!(HookName::AttnScores(0).pos_axis(), 2);
        assert_eq!(HookName::HeadResult(0).pos_axis(), 1);
    }

    #[test]
    fn negative_layers_count_from_the_end() {
        assert_eq!(
            HookName::parse("blocks.-1.hook_resid_post", 30).unwrap(),
            HookName::ResidPost(29)
        );
        assert!(HookName::parse("blocks.30.hook_resid_post", 30).is_err());
        assert!(HookName::parse("blocks.-31.hook_resid_post", 30).is_err());
    }

    #[test]
    fn detach_removes_only_the_hooks_named() {
        let hook = |label: &str| Hook {
            name: HookName::Embed,
            label: label.into(),
            steering: false,
            func: Box::new(|_, _| Ok(None)),
        };
        let mut hooks = Hooks::default();
        hooks.attach(hook("a"));
        let b = hooks.attach(hook("b"));
        hooks.attach(hook("c"));
        hooks.detach(&[b]);
        let labels: Vec<String> = hooks.list().into_iter().map(|(_, l)| l).collect();
        assert_eq!(labels, ["a", "c"]);
        hooks.detach(&[b]);
        assert_eq!(hooks.ids().len(), 2);
    }

    #[test]
    fn unknown_names_are_errors_that_list_valid_forms() {
        let err = HookName::parse("blocks.0.hook_resid", 2).unwrap_err();
        assert!(err.to_string().contains("hook_resid_post"), "{err}");
        assert!(HookName::parse("embed", 2).is_err());
    }
}
