#!/usr/bin/env bash
# Pipeline sharding of the default model: one process holding the whole model, then two
# (`mlxi launch -n 2`, ring backend on loopback) each holding half of the blocks, side by side:
# weight memory, MLX memory and peak RSS per process, and the time of a forward (8 prompts),
# a capture (64 prompts, every hook_resid_post) and a greedy generation (32 tokens).
#
#   bench/pipeline.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MLXI="$ROOT/target/release/mlxi"
(cd "$ROOT" && cargo build --release --quiet)
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## 1 process (whole model)"
"$MLXI" run "$ROOT/bench/pipeline.rhai" "$@"
echo "## 2 processes (pipeline: blocks split over 2 ranks)"
"$MLXI" launch -n 2 "$ROOT/bench/pipeline.rhai" "$@" | grep -v '^\[rank'
