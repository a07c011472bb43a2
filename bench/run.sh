#!/usr/bin/env bash
# mlxi next to mlx-lm and PyTorch + transformers on the same weights, same machine, one run.
#
#   bench/run.sh [PROMPT_TOKENS] [GEN_TOKENS] [TRIALS]
#                (defaults 128 64 3; the 4-bit rows use 32 16 and one trial: mlx-lm's CPU 4-bit
#                kernels run at about 1 token/s)
#   CONTEXTS="1024 4096" bench/run.sh   also decode after prompts of these lengths (32 tokens,
#                one trial), the three tools side by side: the cost of a step at long context
#   TORCH=0 bench/run.sh                 without the PyTorch column
#   GEN_BATCHES="1 8 32" bench/run.sh    also batched greedy generation (GEN_TOKENS new tokens
#                for each of B rows of 32 prompt tokens): total new tokens/s, mlxi and PyTorch
#
# Prepares (once) a reference venv with mlx-lm (tests/reference/requirements.txt), the default
# model converted to a Hugging Face f32 folder (tests/reference/gguf_to_hf.py) and a 4-bit
# mlx-community copy (tests/reference/quantize_dir.sh), builds mlxi in release mode, then measures
# load time, prefill and decode speed, and peak memory for the tools and prints the ratios.
# mlx-lm gets the BLAS mlxi was linked with (MKL or OpenBLAS, through LD_PRELOAD; `mlxi bench`
# prints which); PyTorch (torch 2.15.0 from PyPI, installed into the reference venv the first
# time: about 3 GB with its CUDA libraries, unused here) uses its own MKL and oneDNN.
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
TORCH="${TORCH:-1}"
CONTEXTS="${CONTEXTS:-}"
GEN_BATCHES="${GEN_BATCHES:-}"
GB_ARGS=()
[ -n "$GEN_BATCHES" ] && GB_ARGS=(--gen-batches "${GEN_BATCHES// /,}")
if [ "$TORCH" = 1 ] && ! "$REF/bin/python" -c 'import torch' 2>/dev/null; then
    echo "==> PyTorch into $REF" >&2
    "$REF/bin/pip" install -q "torch==2.15.0"
fi
# The BLAS mlxi links (build.rs), for mlx-lm too.
if ldd "$MLXI" | grep -q libmkl_core; then
    BLASDIR="$MLXI_HOME/blas"
    PRELOAD="$BLASDIR/libmkl_intel_lp64.so.3 $BLASDIR/libmkl_gnu_thread.so.3 $BLASDIR/libmkl_core.so.3 libgomp.so.1"
else
    PRELOAD="$(ldconfig -p 2>/dev/null | awk '/libopenblas.so.0/ {print $NF; exit}')"
fi

run_ref() { # name dir pt gt trials
    echo "==> mlx-lm: $1" >&2
    LD_PRELOAD="${PRELOAD:-}" "$REF/bin/python" "$ROOT/tests/reference/mlxlm_bench.py" "$2" \
        --prompt-tokens "$3" --gen-tokens "$4" --trials "$5" --json > "$OUT/ref-$1.json"
}
run_torch() { # name dir pt gt trials [extra args]
    echo "==> torch: $1" >&2
    "$REF/bin/python" "$ROOT/tests/reference/torch_bench.py" "$2" \
        --prompt-tokens "$3" --gen-tokens "$4" --trials "$5" "${@:6}" --json > "$OUT/torch-$1.json"
}
run_mlxi() { # name source pt gt trials [extra args]
    echo "==> mlxi: $1" >&2
    "$MLXI" bench "$2" --prompt-tokens "$3" --gen-tokens "$4" --trials "$5" "${@:6}" --json > "$OUT/mlxi-$1.json"
}

"$MLXI" bench default --prompt-tokens 2 --gen-tokens 2 --trials 1 | grep device
run_ref f32 "$F32" "$PT" "$GT" "$TRIALS"
run_mlxi f32 "$F32" "$PT" "$GT" "$TRIALS"
[ "$TORCH" = 1 ] && run_torch f32 "$F32" "$PT" "$GT" "$TRIALS"
if [ -n "$GEN_BATCHES" ]; then  # separate processes: their peak memory is not the rows' above
    run_mlxi f32-batches "$F32" 8 "$GT" "$TRIALS" "${GB_ARGS[@]}"
    [ "$TORCH" = 1 ] && run_torch f32-batches "$F32" 8 "$GT" "$TRIALS" "${GB_ARGS[@]}"
fi
for ctx in $CONTEXTS; do
    run_ref "f32-$ctx" "$F32" "$ctx" 32 1
    run_mlxi "f32-$ctx" "$F32" "$ctx" 32 1
    [ "$TORCH" = 1 ] && run_torch "f32-$ctx" "$F32" "$ctx" 32 1
done
run_mlxi gguf default "$PT" "$GT" "$TRIALS"
run_ref q4 "$Q4" 32 16 1
run_mlxi q4 "$Q4" 32 16 1

CONTEXTS="$CONTEXTS" "$REF/bin/python" - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
load = lambda n: json.load(open(os.path.join(out, n)))
maybe = lambda n: load(n) if os.path.exists(os.path.join(out, n)) else None
rows = [("same f32 weights (HF folder)", load("ref-f32.json"), load("mlxi-f32.json"), maybe("torch-f32.json"))]
for ctx in os.environ.get("CONTEXTS", "").split():
    rows.append((f"same f32 weights, {ctx}-token context", load(f"ref-f32-{ctx}.json"),
                 load(f"mlxi-f32-{ctx}.json"), maybe(f"torch-f32-{ctx}.json")))
rows.append(("4-bit weights (mlx-community folder)", load("ref-q4.json"), load("mlxi-q4.json"), None))
gguf = load("mlxi-gguf.json")
mb = lambda b: f"{b / 1e6:.0f} MB"
print()
print(f"{'':38} {'metric':16} {'mlx-lm':>12} {'torch':>12} {'mlxi':>12} {'mlxi/mlx-lm':>12} {'mlxi/torch':>12}")
for name, r, m, t in rows:
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
        c = t[key] if t else None
        tc = fmt(c) if c is not None else "-"
        tr = f"{b / c:>11.2f}x" if c else f"{'-':>12}"
        print(f"{'':38} {label:16} {fmt(a):>12} {tc:>12} {fmt(b):>12} {b / a:>11.2f}x {tr}")
    same_t = (t["generated_ids"] == m["generated_ids"]) if t else "-"
    if t and t["prompt_ids_sha256"] != r["prompt_ids_sha256"]:
        print("    warning: torch ran other prompt ids than mlx-lm")
    print(f"{'':38} {'same tokens':16} {'':>12} {str(same_t):>12} {str(same):>12}")
mb_ = (maybe("mlxi-f32-batches.json") or {}).get("gen_batches", [])
tb_ = {g["batch"]: g for g in (maybe("torch-f32-batches.json") or {}).get("gen_batches", [])}
if mb_:
    one = next((g["new_tps"] for g in mb_ if g["batch"] == 1), None)
    tone = tb_.get(1, {}).get("new_tps")
    trials = load("mlxi-f32-batches.json")["trials"]
    print(f"batched greedy generation ({mb_[0]['len']} prompt + {mb_[0]['gen_tokens']} new tokens a row, median of {trials}): total new tok/s")
    print(f"{'':38} {'batch':16} {'torch':>12} {'mlxi':>12} {'mlxi/torch':>12} {'mlxi/batch 1':>12} {'torch/batch 1':>13} {'same row 0':>10}")
    for g in mb_:
        t = tb_.get(g["batch"])
        tt = f"{t['new_tps']:.1f}" if t else "-"
        ratio = f"{g['new_tps'] / t['new_tps']:.2f}x" if t else "-"
        scale = f"{g['new_tps'] / one:.2f}x" if one else "-"
        tscale = f"{t['new_tps'] / tone:.2f}x" if t and tone else "-"
        same = str(t["row0_ids"] == g["row0_ids"]) if t else "-"
        print(f"{'':38} {g['batch']:<16} {tt:>12} {g['new_tps']:>12.1f} {ratio:>12} {scale:>12} {tscale:>13} {same:>10}")
print(f"mlxi on the default GGUF ({gguf['prompt_tokens']}/{gguf['gen_tokens']}): load {gguf['load_s']:.2f} s, "
      f"prefill {gguf['prefill_tps']:.1f} tok/s, decode {gguf['decode_tps']:.1f} tok/s, peak {mb(gguf['peak_memory_bytes'])}")
PY
rm -rf "$OUT"
