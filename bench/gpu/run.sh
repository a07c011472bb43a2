#!/usr/bin/env bash
# mlxi on an NVIDIA GPU: parity with the CPU goldens, the scripts end to end, and speed next to
# mlx-lm on the same GPU in one run. Runs on the lent GPU machine (no network) from the files
# that bench/gpu/pack.sh prepared and the device calls parked in PARK:
#
#   bench/gpu/run.sh PARK OUT
#
# PARK holds: libmlx.so.xz (the mlx-cuda-13 wheel's libmlx.so), mlx_cuda_13.libs.tar.xz,
# model.gguf.xz (the default model), bins.tar.xz (mlxi and test binaries built against the CUDA
# wheel, with the build machine's paths baked in), wheels/ (mlx and mlx-lm for Python 3.12),
# crt/ (the nvidia-cuda-crt wheel), include.tar.xz (the wheel's mlx/include), tokenizer/ (the
# default model's tokenizer as tests/reference/gguf_to_hf.py writes it).
# Figures and logs go to OUT (gpu.txt, log.txt, table.txt, status.txt, and json.tar with each
# tool's JSON). Each step runs even if an earlier one failed; status.txt says how each ended.
set -uo pipefail
PARK="$1"
OUT="$2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The paths the binaries were built with (bench/gpu/pack.sh): the wheel's mlx/ folder (rpath),
# the checkout (tests' CARGO_MANIFEST_DIR) and the cargo target folder (CARGO_BIN_EXE_mlxi).
SITE=/tmp/cudaw/x
BUILT_ROOT=/work/main
BUILT_TARGET=/work/target-cuda
export MLXI_HOME=/tmp/mlxi-home
status=()
step() {
    local name="$1"
    shift
    echo "==> $name" | tee -a "$OUT/log.txt"
    local t0=$SECONDS
    "$@" >>"$OUT/log.txt" 2>&1
    local rc=$?
    status+=("$name: rc=$rc ($((SECONDS - t0)) s)")
    echo "    rc=$rc" >>"$OUT/log.txt"
}

unpack() {
    mkdir -p "$SITE/mlx/lib" "$MLXI_HOME/models" "$BUILT_TARGET/release/deps"
    xz -d -T0 -c "$PARK/libmlx.so.xz" >"$SITE/mlx/lib/libmlx.so" || return 1
    tar -xJf "$PARK/mlx_cuda_13.libs.tar.xz" -C "$SITE" || return 1
    # NVRTC compiles MLX's JIT kernels against the wheel's headers (mlx/include: CCCL, CUTLASS's
    # cute for the quantized matmuls) and the CUDA runtime headers (nvidia/cuda_runtime/include
    # beside mlx/, else $CUDA_HOME/include).
    tar -xJf "$PARK/include.tar.xz" -C "$SITE" || return 1
    xz -d -T0 -c "$PARK/model.gguf.xz" >"$MLXI_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf" || return 1
    sha256sum "$MLXI_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    tar -xJf "$PARK/bins.tar.xz" -C "$BUILT_TARGET/release" || return 1
    # libmlx.so finds CUDA through $ORIGIN/../../nvidia/...: the NVIDIA packages of the
    # machine's Python (CUDA 13 runtime, cuBLAS, cuDNN, cuFFT, NVRTC, NCCL).
    local nv
    nv="$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')" || return 1
    if [ -f "$nv/cu13/include/crt/mma.h" ]; then
        ln -sfn "$nv" "$SITE/nvidia"
    else
        # No nvidia-cuda-crt there (setup installs it): NVRTC fails on crt/mma.h for the
        # quantized matmuls. A tree of links to the machine's packages, plus its headers.
        rm -rf "$SITE/nvidia" "$SITE/crt-x"
        cp -rs "$nv" "$SITE/nvidia" || return 1
        python3 -m zipfile -e "$PARK"/crt/nvidia_cuda_crt-*.whl "$SITE/crt-x" || return 1
        cp -rn "$SITE/crt-x/nvidia/." "$SITE/nvidia/" || return 1
        ls "$SITE/nvidia/cu13/include/crt/mma.h"
    fi
    python3 -c 'import importlib.metadata as m
for p in ("nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-cuda-crt"):
    try: print(p, m.version(p))
    except m.PackageNotFoundError: print(p, "absent")'
    ls "$nv"
    # The tests read fixtures from the checkout they were built in.
    if [ ! -e "$BUILT_ROOT" ]; then mkdir -p "$(dirname "$BUILT_ROOT")" && ln -sfn "$ROOT" "$BUILT_ROOT"; fi
    # mlx-lm on the same libmlx.so: the mlx wheel's Python bindings beside it.
    # (Unzipped rather than pip-installed: pip --target will not merge into the existing mlx/.)
    local whl
    for whl in "$PARK"/wheels/*.whl; do python3 -m zipfile -e "$whl" "$SITE" || return 1; done
    ls -la "$SITE/mlx/lib"
    readelf -d "$BUILT_TARGET/release/mlxi" | grep -E "NEEDED|RUNPATH|RPATH"
    ldd "$BUILT_TARGET/release/mlxi" | grep -E "not found|mlx|cuda|cublas" || true
}

export PYTHONPATH="$SITE"
MLXI="$BUILT_TARGET/release/mlxi"
J="$OUT/json"
mkdir -p "$OUT" "$J"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/gpu.txt" 2>&1
step "unpack" unpack
# The CUDA headers for NVRTC: MLX looks beside its library first (nvidia/cu13/include, completed
# with nvidia-cuda-crt above: without crt/mma.h the quantized f32 kernels failed to compile on
# the H200, 2026-12-01, whatever CUDA_HOME said); CUDA_HOME is its fallback.
if [ -z "${CUDA_HOME:-}" ]; then
    for c in /usr/local/cuda "$SITE/nvidia/cu13"; do
        if [ -f "$c/include/cuda_runtime.h" ]; then export CUDA_HOME="$c"; break; fi
    done
fi
echo "CUDA_HOME=${CUDA_HOME:-}" | tee -a "$OUT/gpu.txt"
step "device" "$MLXI" -e 'let m = load(); print(m.info()); top_k(m, "The capital of France is", 3)'
step "mlx-lm device" python3 -c 'import mlx.core as mx, mlx_lm; print(mx.__version__, mx.default_device(), mlx_lm.__version__)'

# Parity: the CPU goldens (mlx-lm, f32) on the GPU, through the same tests CI runs.
# GPU_TESTS picks fewer (a metered machine); GPU_QUICK=1 skips the default model's and
# PyTorch's figures.
for t in ${GPU_TESTS:-parity_default parity_archs model_cli hooks hooks_archs}; do
    # Full f32 matmuls, as the goldens were made (MLX uses TF32 on NVIDIA by default).
    step "test $t" env MLX_ENABLE_TF32=0 "$BUILT_TARGET/release/tests/$t" --test-threads 1
done
# The main experiment end to end (probes, capture, steering) in its quick mode.
step "sentiment.rhai (quick)" "$MLXI" run "$ROOT/scripts/sentiment.rhai" --set quick=true --set out=/tmp/out-sentiment

# Speed: random-weight bf16 checkpoints of the SmolLM2-135M and -1.7B shapes, mlx-lm and mlxi
# on the same GPU, one after the other.
# GPU_SPEED=0 skips the speed runs (a parity-only session).
[ "${GPU_SPEED:-1}" = 0 ] || for shape in 135m 1.7b; do
    dir="/tmp/random-$shape"
    step "make $shape" python3 "$ROOT/bench/gpu/random_llama.py" "$shape" "$dir" "$PARK/tokenizer"
    step "mlx-lm $shape" sh -c "python3 '$ROOT/tests/reference/mlxlm_bench.py' '$dir' --prompt-tokens 512 --gen-tokens 128 --trials 5 --forward-batch 32 --forward-len 64 --json > '$J/mlxlm-$shape.json'"
    step "mlxi $shape" sh -c "'$MLXI' bench '$dir' --prompt-tokens 512 --gen-tokens 128 --trials 5 --batch 32 --batch-len 64 --json > '$J/mlxi-$shape.json'"
done
[ -n "${GPU_QUICK:-}" ] || [ "${GPU_SPEED:-1}" = 0 ] || step "mlxi default (Q4_1 GGUF)" sh -c "'$MLXI' bench default --prompt-tokens 512 --gen-tokens 128 --trials 5 --batch 32 --batch-len 64 --json > '$J/mlxi-default.json'"
[ -n "${GPU_QUICK:-}" ] || [ "${GPU_SPEED:-1}" = 0 ] || step "torch 135m" python3 "$ROOT/bench/gpu/torch_decode.py" /tmp/random-135m "$J/torch-135m.json"

[ "${GPU_SPEED:-1}" = 0 ] || python3 "$ROOT/bench/gpu/table.py" "$J" | tee "$OUT/table.txt"
printf '%s\n' "${status[@]}" | tee "$OUT/status.txt"
tar -cf "$OUT/json.tar" -C "$OUT" json && rm -rf "$J"
