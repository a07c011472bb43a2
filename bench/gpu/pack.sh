#!/usr/bin/env bash
# Prepares, on an ordinary Linux machine (no GPU, no CUDA), everything bench/gpu/run.sh needs on
# the lent GPU machine, which reaches no network and takes at most 64 MiB per call:
#
#   bench/gpu/pack.sh DEST
#
# 1. Downloads Apple's CUDA wheel (mlx-cuda-13==0.32.2) and mlx/mlx-lm for Python 3.12 from PyPI
#    and unpacks the CUDA wheel at /tmp/cudaw/x (run.sh rebuilds the same path there, so the
#    rpath baked into the binaries holds).
# 2. Builds mlxi and the GPU-relevant test binaries against it (MLX_DIR=/tmp/cudaw/x/mlx,
#    target folder /work/target-cuda): the link needs no CUDA library (build.rs passes
#    --allow-shlib-undefined for the CUDA backend).
# 3. Compresses the payload and splits it into DEST/payload.tar.part-a, -b, ... (54 MB each), to be
#    carried one per device call and parked outside the checkout; the last call joins them
#    (cat parts | tar -x) and runs bench/gpu/run.sh (BENCHMARKS.md, "GPU").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$1"
MLXI_HOME="${MLXI_HOME:-$HOME/.cache/mlxi}"
W=/tmp/cudaw
TARGET=/work/target-cuda
PY="$MLXI_HOME/refvenv/bin/python"
[ -x "$PY" ] || PY=python3
# GPU_TESTS picks the test binaries to build (run.sh runs the same list).
TESTS="${GPU_TESTS:-parity_default parity_archs model_cli hooks hooks_archs}"

echo "==> wheels"
mkdir -p "$W/x" "$W/py312"
[ -f "$W"/mlx_cuda_13-0.32.2-py3-none-manylinux_2_35_x86_64.whl ] ||
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_35_x86_64 mlx-cuda-13==0.32.2 -d "$W"
[ -f "$W/x/mlx/lib/libmlx.so" ] || (cd "$W/x" && "$PY" -m zipfile -e "$W"/mlx_cuda_13-0.32.2-*.whl .)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 mlx==0.32.2 mlx-lm==0.32.2 -d "$W/py312"
# crt/mma.h for NVRTC (setup installs nvidia-cuda-crt beside mlx-cuda-13; the GPU machine's
# Python has CUDA 13.0 packages without it).
mkdir -p "$W/crt"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 "nvidia-cuda-crt==13.0.*" -d "$W/crt"

echo "==> build against the CUDA wheel"
[ -d "$TARGET" ] || { [ -d "$ROOT/target" ] && cp -a "$ROOT/target" "$TARGET"; } || true
export MLX_DIR="$W/x/mlx" CARGO_TARGET_DIR="$TARGET"
(cd "$ROOT" && cargo build --release --quiet)
args=()
for t in $TESTS; do args+=(--test "$t"); done
mkdir -p "$TARGET/release/tests"
(cd "$ROOT" && cargo test --release --no-run --message-format=json "${args[@]}") |
    "$PY" -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
        print("   ", m["target"]["name"])
' "$TARGET/release/tests"
readelf -d "$TARGET/release/mlxi" | grep -E "NEEDED|RUNPATH"

echo "==> payload"
P="$W/payload"
rm -rf "$P" "$DEST"
mkdir -p "$P/wheels" "$P/tokenizer" "$P/crt" "$DEST"
stage="$(mktemp -d)"
mkdir -p "$stage/tests"
strip -o "$stage/mlxi" "$TARGET/release/mlxi"
for t in $TESTS; do strip -o "$stage/tests/$t" "$TARGET/release/tests/$t"; done
tar -cf - -C "$stage" . | xz -9 -T2 >"$P/bins.tar.xz"
rm -rf "$stage"
tar -cf - -C "$W/x" mlx_cuda_13.libs | xz -9 -T2 >"$P/mlx_cuda_13.libs.tar.xz"
# CUDA kernels are compiled at run time (NVRTC) against the headers the wheel bundles in
# mlx/include (CCCL, CUTLASS's cute), which MLX looks for beside its library folder.
tar -cf - -C "$W/x" mlx/include | xz -6 -T2 >"$P/include.tar.xz"
cp "$W"/py312/*.whl "$P/wheels/"
cp "$W"/crt/*.whl "$P/crt/"
# The default model's tokenizer, for the random-weight checkpoints.
tok="$MLXI_HOME/reference/smollm2-f32"
[ -f "$tok/tokenizer.json" ] || "$PY" "$ROOT/tests/reference/gguf_to_hf.py" \
    "$MLXI_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$tok" --dtype f32
cp "$tok"/tokenizer*.json "$P/tokenizer/"
if [ -f "$tok/special_tokens_map.json" ]; then cp "$tok/special_tokens_map.json" "$P/tokenizer/"; fi
# The two big files, xz-compressed (libmlx.so 142 MB -> ~63 MB).
[ -f "$W/libmlx.so.xz" ] || xz -6 -T2 -c "$W/x/mlx/lib/libmlx.so" >"$W/libmlx.so.xz"
[ -f "$W/model.gguf.xz" ] || xz -6 -T2 -c "$MLXI_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf" >"$W/model.gguf.xz"
cp "$W/libmlx.so.xz" "$W/model.gguf.xz" "$P/"
# One tar, split in parts that each fit one call beside the checkout (64 MiB in all).
tar -cf - -C "$P" . | split -b 54M -a 1 - "$DEST/payload.tar.part-"
ls -la "$DEST"
