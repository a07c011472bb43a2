//! Pipeline sharding: a model split by blocks over the ranks of an MLX distributed group, as
//! mlx-lm's pipeline mode does. Rank `r` loads only its contiguous share of the blocks (plus the
//! embedding, final norm and head, which every rank keeps); a forward runs the embedding on rank
//! 0, passes the residual stream from stage to stage with `send`/`recv`, and hands the last
//! stage's output to every rank, which then apply the final norm and head alike. Every rank
//! therefore sees the same logits, so sampling with one seed picks the same tokens everywhere.
//!
//! Hooks address blocks by their global index: a hook or steering vector at block `i` runs on
//! the rank that holds block `i`, and what a forward captures there is shared with every rank
//! afterwards (see [`Pipeline::share_captures`]), so a script reads the same activations on
//! every rank.

use std::ops::Range;

use mlx_rs::{Array, Dtype};

use crate::distributed::{self, World};
use crate::error::{Error, Result};
use crate::hooks::{HookName, Hooks};

/// This process's stage of a pipeline-sharded model.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub rank: usize,
    pub size: usize,
    /// The blocks each rank holds, in rank order; together `0..n_layers`.
    pub ranges: Vec<Range<usize>>,
    /// The residual stream's dtype and width (what passes between stages).
    pub dtype: Dtype,
    pub d_model: i32,
}

/// The stage plan for `n_layers` blocks over `world`: contiguous ranges, the first
/// `n_layers % size` ranks one block longer. An error when there are fewer blocks than ranks.
pub fn plan(n_layers: usize, world: &World) -> Result<Vec<Range<usize>>> {
    if n_layers < world.size() {
        return Err(Error::Invalid(format!(
            "pipeline: {n_layers} block(s) cannot be split over {} ranks",
            world.size()
        )));
    }
    Ok((0..world.size())
        .map(|r| share(n_layers, r, world.size()))
        .collect())
}

fn share(n: usize, rank: usize, size: usize) -> Range<usize> {
    let base = n / size;
    let extra = n % size;
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

impl Pipeline {
    /// This rank's blocks.
    pub fn held(&self) -> Range<usize> {
        self.ranges[self.rank].clone()
    }

    fn last(&self) -> usize {
        self.size - 1
    }

    /// The rank that computes `point`: the holder of its block, rank 0 for the embedding;
    /// `None` for the final norm, which every rank computes.
    pub fn owner(&self, point: &HookName) -> Option<usize> {
        match point.layer() {
            Some(i) => self.ranges.iter().position(|r| r.contains(&i)),
            None if *point == HookName::Embed => Some(0),
            None => None,
        }
    }

    /// The residual stream entering this rank's blocks: received from the previous rank, or
    /// `None` on rank 0, which embeds the tokens itself.
    pub fn receive(&self, batch: i32, len: i32) -> Result<Option<Array>> {
        if self.rank == 0 {
            return Ok(None);
        }
        let world = distributed::world()?;
        let shape = [batch, len, self.d_model];
        world.recv(&shape, self.dtype, self.rank - 1).map(Some)
    }

    /// Passes the stream leaving this rank's blocks on to the next rank, and returns the last
    /// stage's output on every rank (bit for bit the same everywhere).
    pub fn pass_on(&self, h: Array, batch: i32, len: i32) -> Result<Array> {
        let world = distributed::world()?;
        let shape = [batch, len, self.d_model];
        if h.shape() != shape {
            return Err(Error::Invalid(format!(
                "pipeline: the residual stream leaving blocks {:?} has shape {:?}, expected \
                 {shape:?}",
                self.held(),
                h.shape()
            )));
        }
        let h = h.as_dtype(self.dtype)?;
        if self.rank < self.last() {
            world.send(&h, self.rank + 1)?;
        }
        let h = if self.rank == self.last() {
            h
        } else {
            mlx_rs::ops::zeros_dtype(&shape, self.dtype)?
        };
        world.broadcast_same(&h, self.last())
    }

    /// After a forward: every captured point's new activation (recorded by the rank that
    /// computed it) is handed to every rank, in the same order on each. `before` is each
    /// captured point's count before the forward ([`Hooks::capture_counts`]).
    pub fn share_captures(&self, hooks: &mut Hooks, before: &[(HookName, usize)]) -> Result<()> {
        if before.is_empty() {
            return Ok(());
        }
        let world = distributed::world()?;
        for (point, n) in before {
            let Some(owner) = self.owner(point) else {
                continue;
            };
            let mine = if owner == self.rank {
                hooks.captured_after(point, *n)
            } else {
                None
            };
            let got = world.broadcast(mine.as_ref(), owner)?;
            if owner != self.rank {
                if let Some(a) = got {
                    hooks.push_captured(point, a);
                }
            }
        }
        Ok(())
    }

    /// `rank 0 of 2: blocks 0-14`.
    pub fn describe(&self) -> String {
        let r = self.held();
        format!(
            "rank {} of {}: blocks {}-{}",
            self.rank,
            self.size,
            r.start,
            r.end.saturating_sub(1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_cover_every_block_once_in_order() {
        for size in 1..6 {
            for n in size..40 {
                let all: Vec<usize> = (0..size).flat_map(|r| share(n, r, size)).collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>());
                assert!((0..size).all(|r| !share(n, r, size).is_empty()));
            }
        }
        assert_eq!(share(30, 0, 2), 0..15);
        assert_eq!(share(30, 1, 2), 15..30);
        assert_eq!(share(7, 2, 3), 5..7);
    }
}
