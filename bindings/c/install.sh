#!/usr/bin/env bash
# Builds libengram and installs it under PREFIX for C/C++ engines:
#   PREFIX/lib/libengram.so, PREFIX/lib/libengram.a (stripped), PREFIX/include/engram.h,
#   PREFIX/lib/pkgconfig/engram.pc   (pkg-config --cflags --libs engram)
# Any PREFIX works: engram.pc's Libs carry an rpath to PREFIX/lib, so a program linked with
# `pkg-config --libs engram` runs without LD_LIBRARY_PATH; for /usr and /usr/local it also
# runs ldconfig (as root). For a PREFIX outside pkg-config's search path, point
# PKG_CONFIG_PATH at PREFIX/lib/pkgconfig. An install that is up to date rebuilds and
# rewrites nothing.
#
# Usage: bindings/c/install.sh PREFIX [release|dev|test]   (default release)
#   test: the libraries `cargo test` built for scripts/test.sh (its one feature set)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
usage="usage: bindings/c/install.sh PREFIX [release|dev|test]"
prefix="${1:?$usage}"
profile="${2:-release}"
case "$profile" in
  release) build=(cargo build -p engram-ffi --release); dir=release ;;
  dev) build=(cargo build -p engram-ffi); dir=debug ;;
  test) build=(cargo test "${TEST_CARGO_ARGS[@]}" --no-run); dir=debug/deps ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
"${build[@]}" >&2
built="$(target_dir)/$dir"
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
prefix="$(cd "$prefix" && pwd)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Stripped of debug info (the Rust standard library's and ours), the symbols kept.
strip --strip-debug -o "$work/libengram.so" "$built/libengram.so"
strip --strip-debug -o "$work/libengram.a" "$built/libengram.a"
# install -C: an unchanged file is not rewritten.
install -C -m 0755 "$work/libengram.so" "$prefix/lib/libengram.so"
install -C -m 0644 "$work/libengram.a" "$prefix/lib/libengram.a"
install -C -m 0644 bindings/c/include/engram.h "$prefix/include/engram.h"
version="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="engram-ffi"))')"
# Libs.private: what the Rust standard library needs when linking libengram.a statically.
cat > "$work/engram.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: engram
Description: DeepSeek Engram conditional-memory tables: row lookups from DRAM and NVMe
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -Wl,-rpath,\${libdir} -lengram
Libs.private: -lpthread -ldl -lm -lrt -lgcc_s -lc
PC
install -C -m 0644 "$work/engram.pc" "$prefix/lib/pkgconfig/engram.pc"
case "$prefix" in
  /usr|/usr/local)
    if [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi ;;
esac
echo "$prefix"
