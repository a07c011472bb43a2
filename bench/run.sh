#!/usr/bin/env bash
# mlxi next to mlx-lm on the same weights, same machine, one run.
#
#   bench/run.sh [PROMPT_TOKENS] [GEN_TOKENS] [TRIALS]
#                (defaults 128 64 3; the 4-bit rows use 32 16 and one trial: mlx-lm's CPU 4-bit
#                kernels run at about 1 token/s)
#
# Prepares (once) a reference venv with mlx-lm (tests/reference/requirements.txt), the default
# model converted to a Hugging Face f32 folder (tests/reference/gguf_to_hf.py) and a 4-bit
# mlx-community copy (tests/reference/quantize_dir.sh), builds mlxi in release mode, then measures
# load time, prefill and decode speed, and peak memory for both tools and prints the ratios.
# Both tools use OpenBLAS (mlx-lm through LD_PRELOAD, mlxi through its link line).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MLXI_HOME="${MLXI_HOME:-$HOME/.cache/mlxi}"
PT="${1:-128}"
GT="${2:-64}"
TRIALS="${3:-3}"
REF="$MLXI_HOME/refvenv"
F32="$MLXI_HOME/reference/smollm2-f32"
Q4="$MLXI_HOME/reference/smollm2-4bit"
GGUF="$MLXI_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT="$(mktemp -d)"

[ -f "$GGUF" ] || { echo "run ./setup first" >&2; exit 1; }
if [ ! -x "$REF/bin/python" ]; then
    echo "==> reference venv (mlx-lm) at $REF"
    python3 -m venv "$REF"
    "$REF/bin/pip" install -q -r "$ROOT/tests/reference/requirements.txt"
fi
[ -f "$F32/config.json" ] || "$REF/bin/python" "$ROOT/tests/reference/gguf_to_hf.py" "$GGUF" "$F32" --dtype f32
[ -f "$Q4/config.json" ] || PYTHON="$REF/bin/python" "$ROOT/tests/reference/quantize_dir.sh" "$F32" "$Q4"
(cd "$ROOT" && cargo build --release --quiet)
MLXI="$ROOT/target/release/mlxi"
OPENBLAS="$(ldconfig -p 2>/dev/null | awk '/libopenblas.so.0/ {print $NF; exit}')"

run_ref() { # name dir pt gt trials
    echo "==> mlx-lm: $1" >&2
    LD_PRELOAD="${OPENBLAS:-}" "$REF/bin/python" "$ROOT/tests/reference/mlxlm_bench.py" "$2" \
        --prompt-tokens "$3" --gen-tokens "$4" --trials "$5" --json > "$OUT/ref-$1.json"
}
run_mlxi() { # name source pt gt trials
    echo "==> mlxi: $1" >&2
    "$MLXI" bench "$2" --prompt-tokens "$3" --gen-tokens "$4" --trials "$5" --json > "$OUT/mlxi-$1.json"
}

run_ref f32 "$F32" "$PT" "$GT" "$TRIALS"
run_mlxi f32 "$F32" "$PT" "$GT" "$TRIALS"
run_mlxi gguf default "$PT" "$GT" "$TRIALS"
run_ref q4 "$Q4" 32 16 1
run_mlxi q4 "$Q4" 32 16 1

"$REF/bin/python" - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
load = lambda n: json.load(open(os.path.join(out, n)))
rows = [
    ("same f32 weights (HF folder)", load("ref-f32.json"), load("mlxi-f32.json")),
    ("4-bit weights (mlx-community folder)", load("ref-q4.json"), load("mlxi-q4.json")),
]
gguf = load("mlxi-gguf.json")
mb = lambda b: f"{b / 1e6:.0f} MB"
print()
print(f"{'':38} {'metric':16} {'mlx-lm':>12} {'mlxi':>12} {'mlxi/mlx-lm':>12}")
for name, r, m in rows:
    print(f"{name} ({r['prompt_tokens']} prompt, {r['gen_tokens']} generated tokens, median of {r['trials']})")
    same = r["generated_ids"] == m["generated_ids"]
    for label, key, fmt, higher in [
        ("load", "load_s", lambda x: f"{x:.2f} s", False),
        ("prefill tok/s", "prefill_tps", lambda x: f"{x:.1f}", True),
        ("decode tok/s", "decode_tps", lambda x: f"{x:.1f}", True),
        ("peak memory", "peak_memory_bytes", mb, False),
        ("max RSS", "max_rss_bytes", mb, False),
    ]:
        a, b = r[key], m[key]
        print(f"{'':38} {label:16} {fmt(a):>12} {fmt(b):>12} {b / a:>11.2f}x")
    print(f"{'':38} {'same tokens':16} {'':>12} {str(same):>12}")
print(f"mlxi on the default GGUF ({gguf['prompt_tokens']}/{gguf['gen_tokens']}): load {gguf['load_s']:.2f} s, "
      f"prefill {gguf['prefill_tps']:.1f} tok/s, decode {gguf['decode_tps']:.1f} tok/s, peak {mb(gguf['peak_memory_bytes'])}")
PY
rm -rf "$OUT"
