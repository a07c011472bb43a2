//! Reading a model's internals: the logit lens (every layer's residual stream decoded through
//! the final norm and unembedding) and attention patterns.

use mlx_rs::{ops, Array, Dtype};

use crate::capture::{capture, Captured, Positions};
use crate::error::{Error, Result};
use crate::hooks::HookName;
use crate::model::Model;

/// For each layer, the `k` most likely next tokens read from that layer's `hook_resid_post` at
/// the last position of `ids`: `(id, probability)`, most likely first.
pub fn logit_lens(model: &mut Model, ids: &[u32], k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
    let n = model.n_layers();
    let points: Vec<HookName> = (0..n).map(HookName::ResidPost).collect();
    let c = capture(model, &[ids.to_vec()], &points, Positions::Last, 1, false)?;
    let mut rows = Vec::with_capacity(n);
    for p in &points {
        match c.entries.get(p) {
            Some(Captured::Stacked(a)) => rows.push(a.clone()),
            _ => return Err(Error::Invalid(format!("logit_lens: {p} was not captured"))),
        }
    }
    let h = ops::concatenate(&rows, 0)?;
    let d = h.shape()[1];
    let h = h.reshape(&[n as i32, 1, d])?.as_dtype(model_dtype(model))?;
    let logits = model.lens(&h)?.as_dtype(Dtype::Float32)?;
    let v = logits.shape()[2] as usize;
    let probs = ops::softmax_axis(&logits, -1, true)?;
    probs.eval()?;
    let all = probs.as_slice::<f32>();
    let k = k.min(v);
    Ok((0..n)
        .map(|l| {
            let row = &all[l * v..(l + 1) * v];
            let mut order: Vec<usize> = (0..v).collect();
            order.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| row[b].total_cmp(&row[a]));
            order.truncate(k);
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            order.into_iter().map(|i| (i as u32, row[i])).collect()
        })
        .collect())
}

/// The dtype the model computes in (its info's dtype name).
fn model_dtype(model: &Model) -> Dtype {
    match model.info.dtype.as_str() {
        "float16" => Dtype::Float16,
        "bfloat16" => Dtype::Bfloat16,
        _ => Dtype::Float32,
    }
}

/// The attention pattern of `layer` for `ids`: `[head, query_pos, key_pos]` (float32).
pub fn attention(model: &mut Model, ids: &[u32], layer: usize) -> Result<Array> {
    let p = HookName::Pattern(layer);
    let c = capture(model, &[ids.to_vec()], &[p], Positions::All, 1, false)?;
    match c.entries.get(&p) {
        Some(Captured::PerInput(rows)) if rows.len() == 1 => Ok(rows[0].clone()),
        _ => Err(Error::Invalid(format!("attention: {p} was not captured"))),
    }
}
