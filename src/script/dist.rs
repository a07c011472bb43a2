//! Ranks in scripts: `world()`, collectives on Tensors (`all_sum`, `all_gather`), `gather` of
//! any JSON-able value, `share` of a list of inputs, and `locally` for work ranks do apart ([`crate::distributed`]).
//!
//! In a process that no launcher started, the world is one rank: `world()` is
//! `#{rank: 0, size: 1, backend: "none"}` and every call returns its input (`gather(v)` is
//! `[v]`), so a script written for several processes runs unchanged alone.

use rhai::plugin::*;
use rhai::{Array, Dynamic, Engine, FnPtr, Map, INT};

use super::files::to_json;
use super::results::from_json;
use super::tensor::Tensor;
use super::RhaiResult;
use crate::distributed;
use crate::Error;

#[export_module]
mod dist_functions {
    use super::*;

    /// This process's place in the group: `#{rank, size, backend}` (`backend` is `"none"` for a
    /// process on its own, else `"ring"`, `"jaccl"`, `"mpi"` or `"nccl"`).
    ///
    /// Example: `if world().rank == 0 { print("I write the results") }`
    #[rhai_fn(return_raw)]
    pub fn world() -> RhaiResult<Map> {
        let w = distributed::world()?;
        let mut m = Map::new();
        m.insert("rank".into(), Dynamic::from_int(w.rank() as INT));
        m.insert("size".into(), Dynamic::from_int(w.size() as INT));
        m.insert("backend".into(), Dynamic::from(w.backend().to_string()));
        Ok(m)
    }

    /// The element-wise sum of `t` over every rank (each rank passes the same shape and dtype).
    ///
    /// Example: `let total = all_sum(tensor([1.0, 2.0]));`
    #[rhai_fn(return_raw)]
    pub fn all_sum(t: Tensor) -> RhaiResult<Tensor> {
        Ok(Tensor::new(distributed::world()?.all_sum(t.array())?))
    }

    /// Every rank's `t` stacked along the first axis in rank order (the first dimension may
    /// differ between ranks; a scalar counts as one row).
    ///
    /// Example: `let rows = all_gather(my_rows);  // [rows of rank 0; rows of rank 1; ...]`
    #[rhai_fn(return_raw)]
    pub fn all_gather(t: Tensor) -> RhaiResult<Tensor> {
        Ok(Tensor::new(distributed::world()?.all_gather(t.array())?))
    }

    /// Every rank's value (numbers, strings, arrays, maps, Tensors as nested arrays: anything
    /// `save_json` writes), as an array in rank order, on every rank.
    ///
    /// Example: `let all = gather(#{rank: world().rank, acc: acc});  // all[0].acc, all[1].acc`
    #[rhai_fn(return_raw)]
    pub fn gather(value: Dynamic) -> RhaiResult<Array> {
        let text = serde_json::to_vec(&to_json(&value)?)
            .map_err(|e| Error::Invalid(format!("gather: {e}")))?;
        let parts = distributed::world()?.all_gather_bytes(&text)?;
        let mut out = Array::with_capacity(parts.len());
        for (rank, bytes) in parts.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| {
                Error::Invalid(format!("gather: rank {rank}'s value did not arrive whole"))
            })?;
            out.push(from_json(&v));
        }
        Ok(out)
    }

    /// Calls `f` with this process working alone: capture and the other data-parallel verbs
    /// run all their inputs here, and `all_sum`/`all_gather`/`gather` are errors. For work
    /// that ranks do apart, e.g. a metric inside their own sweep cells. Returns `f`'s value.
    ///
    /// Example: `let acts = locally(|| capture(m, outputs));`
    #[rhai_fn(return_raw)]
    pub fn locally(ctx: NativeCallContext, f: FnPtr) -> RhaiResult<Dynamic> {
        let _alone = distributed::LocalScope::enter();
        f.call_within_context(&ctx, ())
    }

    /// This rank's share of `items`: a contiguous slice, the first `len % size` ranks one item
    /// longer, so concatenating the shares in rank order gives `items` back.
    ///
    /// Example: `let mine = share(prompts);  // all of them when alone`
    #[rhai_fn(return_raw)]
    pub fn share(items: Array) -> RhaiResult<Array> {
        let range = distributed::world()?.share(items.len());
        Ok(items[range].to_vec())
    }
}

/// Registers `world`, `all_sum`, `all_gather`, `gather`, `share` and `locally`.
pub fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(dist_functions).into());
}
