#!/usr/bin/env bash
# Probe training speed: mlxi next to scikit-learn on the same captured activations and folds.
#
#   bench/probe.sh [N_PER_CLASS]     (default 100: 200 examples, every layer, 5 folds)
#
# Needs ./setup and the reference venv (bench/run.sh creates it; scikit-learn is in
# tests/reference/requirements.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MLXI_HOME="${MLXI_HOME:-$HOME/.cache/mlxi}"
REF="$MLXI_HOME/refvenv"
N="${1:-100}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
if [ ! -x "$REF/bin/python" ]; then
    python3 -m venv "$REF"
    "$REF/bin/pip" install -q -r "$ROOT/tests/reference/requirements.txt"
fi
"$REF/bin/python" -c "import sklearn" 2>/dev/null || "$REF/bin/pip" install -q scikit-learn==1.9.1
(cd "$ROOT" && cargo build --release --quiet)
"$ROOT/target/release/mlxi" run "$ROOT/bench/probe.rhai" --set "out=$OUT" --set "n=$N"
"$REF/bin/python" "$ROOT/bench/probe_sklearn.py" "$OUT"
