#!/usr/bin/env bash
# Builds libengram and installs it under PREFIX for C/C++ engines:
#   PREFIX/lib/libengram.so, PREFIX/lib/libengram.a, PREFIX/include/engram.h,
#   PREFIX/lib/pkgconfig/engram.pc   (pkg-config --cflags --libs engram)
# Usage: bindings/c/install.sh PREFIX [release|dev]   (default release)
set -euo pipefail
cd "$(dirname "$0")/../.."
prefix="${1:?usage: bindings/c/install.sh PREFIX [release|dev]}"
profile="${2:-release}"
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "profile must be release or dev" >&2; exit 2 ;;
esac
cargo build -p engram-ffi --profile "$profile" >&2
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
prefix="$(cd "$prefix" && pwd)"
install -m 0755 "$target/$dir/libengram.so" "$prefix/lib/"
install -m 0644 "$target/$dir/libengram.a" "$prefix/lib/"
install -m 0644 bindings/c/include/engram.h "$prefix/include/"
version="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="engram-ffi"))')"
# Libs.private: what the Rust standard library needs when linking libengram.a statically.
cat > "$prefix/lib/pkgconfig/engram.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: engram
Description: DeepSeek Engram conditional-memory tables: row lookups from DRAM and NVMe
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lengram
Libs.private: -lpthread -ldl -lm -lrt -lgcc_s -lc
PC
echo "$prefix"
