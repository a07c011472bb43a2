//! Analysis verbs: `logit_lens(m, input, k)` and `attention(m, input, layer)`.

use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, Map, NativeCallContext, FLOAT, INT};

use super::capture::rows_of;
use super::hooks::with_call;
use super::model::ModelHandle;
use super::tensor::Tensor;
use super::RhaiResult;
use crate::model::Model;
use crate::{analysis, Error, Result};

fn one_input(m: &Model, input: &Dynamic, verb: &str) -> Result<Vec<u32>> {
    let mut rows = rows_of(m, input, verb)?;
    if rows.len() != 1 {
        return Err(Error::Invalid(format!(
            "{verb}: takes one input (text or ids), not a batch"
        )));
    }
    Ok(rows.remove(0))
}

fn logit_lens_impl(m: &mut Model, input: &Dynamic, k: INT) -> Result<RhaiArray> {
    if k < 1 {
        return Err(Error::Invalid(format!(
            "logit_lens: k must be at least 1, got {k}"
        )));
    }
    let ids = one_input(m, input, "logit_lens")?;
    let layers = analysis::logit_lens(m, &ids, k as usize)?;
    layers
        .into_iter()
        .map(|top| {
            let row = top
                .into_iter()
                .map(|(id, prob)| {
                    let mut e = Map::new();
                    e.insert("token".into(), m.tokenizer.decode(&[id], false)?.into());
                    e.insert("id".into(), (id as INT).into());
                    e.insert("prob".into(), (prob as FLOAT).into());
                    Ok(Dynamic::from_map(e))
                })
                .collect::<Result<RhaiArray>>()?;
            Ok(Dynamic::from_array(row))
        })
        .collect()
}

fn attention_impl(m: &mut Model, input: &Dynamic, layer: INT) -> Result<Tensor> {
    let n = m.n_layers() as INT;
    let l = if layer < 0 { layer + n } else { layer };
    if !(0..n).contains(&l) {
        return Err(Error::Invalid(format!(
            "attention: layer {layer} is out of range for a model with {n} layers"
        )));
    }
    let ids = one_input(m, input, "attention")?;
    Ok(Tensor::new(analysis::attention(m, &ids, l as usize)?))
}

#[export_module]
mod analysis_functions {
    use super::*;

    pub type Model = super::ModelHandle;

    /// The logit lens: for each layer, the `k` most likely next tokens (`#{token, id, prob}`)
    /// read from that layer's `hook_resid_post` at the last position through the final norm
    /// and unembedding.
    ///
    /// Example: `logit_lens(m, "The capital of France is", 3)[-1][0].token  // " Paris"`
    #[rhai_fn(return_raw)]
    pub fn logit_lens(
        ctx: NativeCallContext,
        m: &mut Model,
        input: Dynamic,
        k: INT,
    ) -> RhaiResult<RhaiArray> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || logit_lens_impl(&mut g, &input, k))?)
    }

    /// The attention pattern of a layer (negative from the end): a Tensor `[head, query_pos,
    /// key_pos]` whose rows sum to 1 (less on models with attention sinks, gpt-oss: the rest
    /// went to the sink).
    ///
    /// Example: `attention(m, "The cat sat on the mat", 0).shape  // [9, 7, 7]`
    #[rhai_fn(return_raw)]
    pub fn attention(
        ctx: NativeCallContext,
        m: &mut Model,
        input: Dynamic,
        layer: INT,
    ) -> RhaiResult<Tensor> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || attention_impl(&mut g, &input, layer))?)
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(analysis_functions).into());
}
