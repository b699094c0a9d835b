#!/usr/bin/env bash
# Runs every command block of README.md verbatim, in order, from a fresh clone of this
# checkout's HEAD (committed work only), as a new user would: ```sh blocks with bash
# (each in its own shell, from the clone's root, echoing each line as it runs), ```c blocks
# compiled with `cc $(pkg-config --cflags --libs engram)` and run, ```python blocks with the
# environment the README's Python block installs into. Then checks the rough edges a new
# user met once (errors that point the right way, logs without escape codes). CI runs it
# after scripts/test.sh, so the README cannot drift from the code.
#
#   scripts/readme-blocks.sh [CLONE_DIR]      (default: a temporary directory, removed after)
#
# The clone gets its own HOME (the tools install into HOME/.cargo/bin, on PATH, and
# bindings/c/install.sh ~/.local lands there); cargo, rustup and the tokenizer cache are the
# caller's (CARGO_HOME, RUSTUP_HOME, ENGRAM_CACHE_DIR). The first run builds everything in
# release (about 10 minutes on 2 cores); CARGO_TARGET_DIR, if set, is used as is.
# The Mooncake block runs where Python 3.11 exists (or ENGRAM_REQUIRE_MOONCAKE=1);
# elsewhere, or with ENGRAM_README_MOONCAKE=0, it is skipped and recorded. The whole transcript goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
root="$PWD"

if [ -n "${1:-}" ]; then
    work="$(mkdir -p "$1" && cd "$1" && pwd)"
else
    work="$(mktemp -d "${TMPDIR:-/tmp}/engram-readme.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
fi
clone="$work/clone"
rm -rf "$clone" "$work/home"
git clone -q "$root" "$clone"
echo "== README blocks: a fresh clone of $(git rev-parse --short HEAD) in $clone"

export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
export ENGRAM_CACHE_DIR="${ENGRAM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/engram}"
export HOME="$work/home"
export ENGRAM_PREFIX="$HOME/.cargo"
export PATH="$ENGRAM_PREFIX/bin:$CARGO_HOME/bin:$PATH"
unset XDG_CACHE_HOME LD_LIBRARY_PATH PKG_CONFIG_PATH ENGRAM_MOONCAKE_VENV ENGRAM_TOKENIZER
mkdir -p "$HOME"
cd "$clone"

# The blocks, in README order: "LANG<TAB>FILE" lines (files under $work/blocks).
mkdir -p "$work/blocks"
python3 - README.md "$work/blocks" >"$work/blocks.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
for i, m in enumerate(re.finditer(r"^```(\w+)\n(.*?)^```$", text, re.S | re.M)):
    lang, body = m.group(1), m.group(2)
    if lang not in ("sh", "c", "python"):
        continue
    ext = {"sh": "sh", "c": "c", "python": "py"}[lang]
    path = f"{sys.argv[2]}/{i:02d}.{ext}"
    open(path, "w").write(body)
    print(f"{lang}\t{path}")
PY

ran=0
run_block() { # LANG FILE
    local lang=$1 file=$2 start=$SECONDS
    echo
    echo "== README block $(basename "$file") ($lang)"
    case "$lang" in
        sh)
            # The test command is CI's own step, run just before this script (.ci/run).
            if [ "$(grep -v '^\s*$' "$file")" = "scripts/test.sh" ]; then
                echo "(not run here: .ci/run runs scripts/test.sh itself, right before this)"
                return 0
            fi
            if grep -q 'mooncake-local.sh start' "$file" && [ "${ENGRAM_REQUIRE_MOONCAKE:-}" != 1 ]; then
                if [ ! -x "$(mooncake_python)" ]; then
                    skipped "README's Mooncake block: no Python 3.11 at $(mooncake_python) to embed"
                    return 0
                elif [ "${ENGRAM_README_MOONCAKE:-1}" = 0 ]; then
                    skipped "README's Mooncake block: left out (ENGRAM_README_MOONCAKE=0)"
                    return 0
                fi
            fi
            bash -euo pipefail -v "$file"
            ;;
        c)
            sed 's/^/  | /' "$file"
            PKG_CONFIG_PATH="$HOME/.local/lib/pkgconfig" bash -euo pipefail -xc \
                'cc -std=c11 -Wall -Wextra -Werror "$0" $(pkg-config --cflags --libs engram) -o "$1"; "$1"' \
                "$file" "$work/$(basename "$file" .c)"
            ;;
        python)
            sed 's/^/  | /' "$file"
            target/venv-readme/bin/python "$file"
            ;;
    esac
    ran=$((ran + 1))
    echo "== README block $(basename "$file"): ok in $(elapsed "$start")"
}
while IFS=$'\t' read -r lang file; do
    run_block "$lang" "$file"
done <"$work/blocks.txt"

echo
echo "== the rough edges a new user met (issue 23), checked"
check() { # DESCRIPTION COMMAND...
    echo "-- $1"
    shift
    "$@"
}
expect_fail() { # OUTPUT_MUST_CONTAIN COMMAND...: fails with a message containing the text
    local want=$1 out rc=0
    shift
    out="$("$@" 2>&1)" || rc=$?
    echo "$out" | sed 's/^/   /'
    [ "$rc" != 0 ] || { echo "expected a failure: $*" >&2; return 1; }
    grep -qF -- "$want" <<<"$out" || { echo "the error does not say '$want'" >&2; return 1; }
}
table=target/engram-tables/stdlib-moe-engram-b
check "the tools are on PATH, from the install prefix" \
    test "$(command -v engram)" = "$ENGRAM_PREFIX/bin/engram"
check "a model without Engram runs in the demo" env MODEL=models/stdlib-moe-a scripts/demo.sh 'import os'
outside() { (cd "$HOME" && "$@"); }
check "moe-core outside the repository names the missing model directory" \
    outside expect_fail "model directory models/stdlib-moe-engram-b does not exist" \
    moe-core generate --max-new-tokens 1
check "engram serve names the directory to create" \
    expect_fail "does not exist; create it" engram serve "$table" --socket "$work/no-such-dir/engram.sock"
check "logs written to files carry no colour codes; synth's progress is lines" bash -c '
    RUST_LOG=info engram synth "$0/synth-log" --preset demo --base-size 2000 --force 2>"$0/synth.log" >/dev/null
    ! grep -q $'"'"'\e\['"'"' "$0/synth.log" && ! grep -q $'"'"'\r'"'"' "$0/synth.log" && grep -q "layer 1/" "$0/synth.log"' "$work"
echo
echo "== README blocks: $ran ran verbatim; every check passed ($(elapsed))"
