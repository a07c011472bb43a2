#!/usr/bin/env bash
# A capture + probe study over 2N prompts (default N=500: 1,000 prompts) on 1 process and on 2
# (`mlxi launch -n 2`, ring backend on loopback), side by side: wall time, capture and probe
# time, speed-up, and the largest max RSS of one process (GNU time's %M: for the launcher, its
# largest child).
#
#   bench/dist.sh [N]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-500}"
MLXI="$ROOT/target/release/mlxi"
(cd "$ROOT" && cargo build --release --quiet)
run() { # label, then the mlxi arguments
    local label="$1"; shift
    local log; log="$(mktemp)"
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -f "maxrss_kb %M" -o "$log.time" "$MLXI" "$@" >"$log" 2>"$log.err" || { cat "$log.err"; exit 1; }
    end=$(date +%s.%N)
    local wall; wall=$(echo "$end - $start" | bc)
    local cap probe rss
    cap=$(grep -o 'capture_s [0-9.]*' "$log" | head -1 | cut -d' ' -f2)
    probe=$(grep -o 'probe_s [0-9.]*' "$log" | head -1 | cut -d' ' -f2)
    rss=$(grep -o 'maxrss_kb [0-9]*' "$log.time" | cut -d' ' -f2)
    printf '%-12s wall %7.1f s  capture %7.1f s  probe %6.1f s  max RSS/process %6.0f MB\n' \
        "$label" "$wall" "$cap" "$probe" "$(echo "$rss / 1024" | bc)"
    grep '^processes\|^capture_s' "$log" | sed 's/^/             /'
    echo "$label $wall $cap" >>"$SUMMARY"
    rm -f "$log" "$log.time" "$log.err"
}
SUMMARY="$(mktemp)"
trap 'rm -f "$SUMMARY"' EXIT
run "1 process" run "$ROOT/bench/dist.rhai" --set "n=$N"
run "2 processes" launch -n 2 "$ROOT/bench/dist.rhai" --set "n=$N"
awk 'NR==1{w=$3; c=$4} NR==2{printf "speed-up (2 vs 1): wall %.2fx, capture %.2fx\n", w/$3, c/$4}' "$SUMMARY"
