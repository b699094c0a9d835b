#!/usr/bin/env python3
"""Writes the hand-made starting seeds of every fuzz target into corpus/TARGET/seed-*.

Run once from the repository root (python3 fuzz/seeds.py); fuzzing then grows each corpus
and `fuzz.sh merge` minimises it. Checksums are left zero where the fuzz function makes them
right itself (layer header, profile, records), so no hash library is needed here.
"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def read(*p):
    with open(os.path.join(ROOT, *p), "rb") as f:
        return f.read()


# manifest.json: the committed v1 fixture, sealed and unsealed.
fixture = ("engram-store", "tests", "fixtures", "v1-small")
m = read(*fixture, "manifest.json")
put("manifest", "v1-small", m)
j = json.loads(m)
j.pop("manifest_xxh3", None)
put("manifest", "v1-small-unsealed", json.dumps(j))

# Layer headers: the fixture's two.
for f in ("layer-000-id1.bin", "layer-001-id4.bin"):
    put("layer_header", f, read(*fixture, f)[:4096])


# profile.bin: two layers (checksum zero; the target fixes it).
def profile(table_id, layers):
    b = b"ENGRAMPF" + struct.pack("<IIQQ", 1, len(layers), table_id, 0)
    for layer_id, total, entries in layers:
        b += struct.pack("<QQQ", layer_id, len(entries), total)
        for row, hits in entries:
            b += struct.pack("<QQ", row, hits)
    return b + b"\0" * 8


put("profile", "two-layers", profile(7, [(1, 100, [(5, 40), (2, 30), (9, 30)]), (4, 3, [(0, 1)])]))
put("profile", "empty", profile(0, []))


# records.bin for engram_store::fuzz::records_binding(): 2 heads x 16 B rows, layers of
# 1000 and 300 rows, table id 0x0123456789abcdef; 128 records per 4096-byte unit.
def records():
    page = 4096
    dirs, body = [], {}
    nxt = page
    for li, rows in ((0, [1, 2, 3, 4, 999, 0]), (1, [7, 8])):
        n = len(rows) // 2
        idx = nxt
        index = b"".join(struct.pack("<Q", r) for r in rows)
        body[idx] = index
        data = (idx + len(index) + page - 1) // page * page
        body[data] = bytes(range(256)) * 16
        sums = data + page
        body[sums] = b"\0" * 8
        dirs.append(struct.pack("<IIQQQQQQQ", li, 0, n, idx, data, page, sums, 0, 0))
        nxt = (sums + 8 + page - 1) // page * page
    h = b"ENGRAMRC" + struct.pack("<IIQIIII", 1, len(dirs), 0x0123456789ABCDEF, 2, 16, 128, 4096)
    h += b"\0" * (48 - len(h)) + b"".join(dirs)
    h += b"\0" * (4096 - len(h))
    size = max(k + len(v) for k, v in body.items())
    f = bytearray(h + b"\0" * (size - 4096))
    for k, v in body.items():
        f[k : k + len(v)] = v
    return bytes(f)


put("records", "two-layers", records())


# safetensors: the import metadata of model B with a small table, in the dtypes import takes.
def safetensors(tensors, metadata):
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


st = read("models", "stdlib-moe-engram-b", "engram.safetensors")
(n,) = struct.unpack("<Q", st[:8])
meta = json.loads(st[8 : 8 + n])["__metadata__"]
eng = json.loads(meta["engram"])
eng["base_sizes"] = [5, 7]
eng["n_heads"] = 2
eng["head_dim"] = 4
meta_small = dict(meta, engram=json.dumps(eng))
w = "layers.1.engram.embedding.weight"
put("safetensors_import", "bf16", safetensors({w: ("BF16", [6, 4], bytes(48))}, meta_small))
put("safetensors_import", "f32", safetensors({w: ("F32", [3, 4], struct.pack("<12f", *range(12)))}, None))
put("safetensors_import", "f16", safetensors({w: ("F16", [2, 8], bytes(32)), "x": ("I64", [2], bytes(16))}, {"tokenizer_sha256": "ab"}))

# Build config TOML.
put("build_config", "demo", 'preset = "demo"\nheads = 4\nbase_size = 1000\nlayers = [1, 4]\nseed = 3\n')
put("build_config", "full", 'preset = "v41"\nmax_ngram = 3\nheads = 2\nbase_sizes = [60, 67]\nlayers = [2]\npad_id = 2\nrow_layout = "fp8:16"\ndim = 32\ninit = "normal:0.5"\ninclude = ["*.txt"]\nexclude = ["x/**"]\njsonl_field = "text"\nthreads = 2\nimport_pattern = "l.{layer}.w"\ntokenizer = "tok.json"\n')
put("build_config", "zeros", 'row_layout = "f32"\ndim = 8\ninit = "zeros"\n')

# engram-hash-v1: the inline-compression cases of the conformance file, and one named table
# small enough to keep (its SHA-256 left out).
hv = json.loads(read("tests", "data", "conformance", "engram-hash-v1.json"))
inline = [c for c in hv["cases"] if "lookup" in c["compression"]]
for c in inline[:3]:
    put("vectors_hash", c["name"], json.dumps({"format": hv["format"], "cases": [c]}))
named = {"raw_vocab_size": 8, "compressed_vocab_size": 6, "encoding": "merged_only", "merged": [[3, 1], [5, 0]]}
case = dict(inline[0], compression={"table": "t"})
put("vectors_hash", "named", json.dumps({"format": hv["format"], "compression_tables": {"t": named}, "cases": [case]}))

# moe-core config.json of the three models; SHA256SUMS of the three.
for model in ("stdlib-moe-a", "stdlib-moe-engram-b", "stdlib-moe-engram-mhc-c"):
    put("model_config", model, read("models", model, "config.json"))
    put("sha256sums", model, read("models", model, "SHA256SUMS"))
put("sha256sums", "binary-mode", "0" * 64 + " *a.bin\n\n" + "F" * 64 + "  b\r\n")
