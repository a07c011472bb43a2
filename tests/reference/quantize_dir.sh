#!/usr/bin/env bash
# Make an mlx-community-style 4-bit copy of a Hugging Face-layout model folder with mlx-lm.
#
# Usage: tests/reference/quantize_dir.sh SRC_DIR DST_DIR [DTYPE]
#   SRC_DIR  e.g. ~/.cache/mlxi/reference/smollm2-f32 (written by gguf_to_hf.py)
#   DST_DIR  e.g. ~/.cache/mlxi/reference/smollm2-4bit (must not exist; mlx-lm refuses to overwrite)
#   DTYPE    dtype of the non-quantized tensors (norms) and of the quantization scales/biases:
#            bfloat16 (default, as mlx-community checkpoints of bf16 models), float16 or float32.
# Environment: PYTHON (default ~/.cache/mlxi/refvenv/bin/python).
#
# Runs `python -m mlx_lm convert --hf-path SRC --mlx-path DST -q --q-bits 4 --q-group-size 64
# --dtype DTYPE`: affine 4-bit, group size 64, weights stored as uint32-packed `weight` plus
# `scales` and `biases` side by side, and a "quantization" entry in config.json.
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
SRC=$1
DST=$2
DTYPE=${3:-bfloat16}
PYTHON=${PYTHON:-$HOME/.cache/mlxi/refvenv/bin/python}
"$PYTHON" -m mlx_lm convert --hf-path "$SRC" --mlx-path "$DST" \
    -q --q-bits 4 --q-group-size 64 --dtype "$DTYPE"
