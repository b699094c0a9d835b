#!/usr/bin/env bash
# Builds the tools (cargo build --release) and installs `engram`, `engram-build` and
# `moe-core` into PREFIX/bin, so the README's commands run as written.
#
#   scripts/install.sh [--mooncake] [PREFIX]
#
# PREFIX defaults to $ENGRAM_PREFIX, else ${CARGO_HOME:-~/.cargo}, whose bin/ rustup puts
# on PATH. --mooncake builds them with the Mooncake client (`--backend mooncake`, `engram
# publish|unpublish|skeleton`; an embedded Python 3.11, PYO3_PYTHON, default
# /usr/bin/python3.11). The binaries are also in target/release/ (cargo's own output).
# The first build takes about 7 minutes on 2 cores; a second run copies only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

mooncake=()
if [ "${1:-}" = --mooncake ]; then
    mooncake=(--mooncake)
    shift
fi
case "${1:-}" in
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "install.sh: unknown option $1 (usage: scripts/install.sh [--mooncake] [PREFIX])" >&2; exit 2 ;;
esac
prefix="${1:-${ENGRAM_PREFIX:-${CARGO_HOME:-$HOME/.cargo}}}"

phase "building engram, engram-build, moe-core (cargo build --release${mooncake:+ with Mooncake})" \
    build_tools "${mooncake[@]}"
release="$(target_dir)/release"
mkdir -p "$prefix/bin"
bin="$(cd "$prefix/bin" && pwd)"
for tool in engram engram-build moe-core; do
    # install -C: an unchanged binary is not rewritten (its mtime stays).
    install -C -m 0755 "$release/$tool" "$bin/$tool"
done
echo "installed engram, engram-build, moe-core into $bin" >&2
case ":$PATH:" in
    *":$bin:"*) ;;
    *) echo "note: $bin is not on PATH; add it: export PATH=\"$bin:\$PATH\"" >&2 ;;
esac
