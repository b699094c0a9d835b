"""Checks of the committed models/ against their loader (pytest or `python test_export.py`).

* config.json / vocab.json / safetensors pass every validation of hub.load_model;
* every file the decoders read matches SHA256SUMS, and a flipped bit is rejected;
* corrupting any config field (incl. the mHC keys of format v2) is rejected (ConfigError);
* golden.json logits and greedy ids are reproduced from the committed weights.
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hub  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models"


def model_dirs() -> list[Path]:
    return sorted(p.parent for p in MODELS.glob("*/config.json"))


def test_configs_validate():
    dirs = model_dirs()
    assert dirs, "no exported model under models/"
    for d in dirs:
        hub.load_model(d)


def _assert_rejected(good: dict, mutations: list, deletions: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for key, val in mutations:
            c = copy.deepcopy(good)
            tgt = c
            parts = key.split(".")
            for p in parts[:-1]:
                tgt = tgt[p]
            tgt[parts[-1]] = val
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(c))
            try:
                hub.load_config(path)
            except hub.ConfigError:
                continue
            raise AssertionError(f"corrupted config accepted: {key} = {val!r}")
        for key in deletions:
            c = copy.deepcopy(good)
            del c[key]
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(c))
            try:
                hub.load_config(path)
            except hub.ConfigError:
                continue
            raise AssertionError(f"config without {key} accepted")


def test_config_corruption_rejected():
    d = next(p for p in model_dirs() if json.load(open(p / "config.json"))["engram"] is not None)
    good = json.load(open(d / "config.json"))
    mutations = [("vocab_size", 1), ("unk_token_id", 0), ("head_dim", 7), ("torch_dtype", "fp8"), ("rope_style", "interleaved"),
                 ("num_experts_per_tok", 99), ("extra_field", 1), ("engram.seed", 1), ("engram.base_sizes", [4967]),
                 ("engram.hc_mult", 4), ("engram.key_norm_eps", 1e-5), ("engram.primes", {"1": [[2, 3, 5, 7], [11, 13, 17, 19]]}),
                 ("engram.multipliers", {"1": [1, 3, 5]}), ("engram.layer_ids", [7]), ("engram.compressed_pad_id", 0),
                 ("engram.compression_lookup_sha256_i32le", "00"), ("rms_norm_eps", "1e-6"), ("hc_mult", 4)]
    _assert_rejected(good, mutations, ["vocab_size", "engram"])


def test_hc_config_corruption_rejected():
    dirs = [p for p in model_dirs() if json.load(open(p / "config.json"))["format"] == hub.FORMAT_HC]
    assert dirs, "no committed mHC model"
    for d in dirs:
        good = json.load(open(d / "config.json"))
        mutations = [("hc_mult", 3), ("hc_mult", 0), ("hc_mult", 99), ("hc_sinkhorn_iters", 0), ("hc_eps", 0.0),
                     ("hc_eps", "1e-6"), ("format", hub.FORMAT), ("engram.hc_mult", 1)]
        _assert_rejected(good, mutations, ["hc_mult", "hc_sinkhorn_iters", "hc_eps"])


def test_checksums_guard_every_file():
    import shutil

    for d in model_dirs():
        hub.check_sums(d)
        with tempfile.TemporaryDirectory() as tmp:
            m = Path(tmp) / d.name
            shutil.copytree(d, m)
            w = m / "model.safetensors"
            b = bytearray(w.read_bytes())
            b[-1000] ^= 0x10
            w.write_bytes(bytes(b))
            try:
                hub.load_model(m)
            except hub.ConfigError as e:
                assert "SHA-256" in str(e), e
            else:
                raise AssertionError(f"{d.name}: a bit-flipped model.safetensors was accepted")


def test_golden_reproduced():
    import torch

    torch.set_num_threads(1)
    for d in model_dirs():
        if not (d / "golden.json").exists():
            continue
        cj, model, addr, vocab = hub.load_model(d)
        g = json.load(open(d / "golden.json"))
        for f, sha in g["files_sha256"].items():
            assert hub.sha256_file(d / f) == sha, f"{d.name}/{f} changed since golden.json was written"
        r2r = np.full(cj["raw_vocab_size"], cj["unk_token_id"], dtype=np.int64)
        r2r[vocab] = np.arange(vocab.size)
        for p in g["prompts"]:
            assert [int(r2r[x]) for x in p["raw_ids"]] == p["reduced_ids"]
            rows = None
            if addr is not None:
                rr = addr.row_ids(np.asarray([p["raw_ids"]]))
                assert {str(L): v[0].tolist() for L, v in rr.items()} == p["engram_row_ids"]
                rows = {L: torch.from_numpy(v) for L, v in rr.items()}
            with torch.no_grad():
                logits, _ = model(torch.tensor([p["reduced_ids"]]), rows)
            for pos, exp in zip(p["logit_positions"], p["logits"]):
                err = (logits[0, pos] - torch.tensor(exp)).abs().max().item()
                assert err < 1e-4, (d.name, p["name"], pos, err)
            # greedy ids: replay the continuation teacher-forced and check each step's argmax
            raw = p["raw_ids"] + p["greedy_raw_ids"]
            red = p["reduced_ids"] + p["greedy_reduced_ids"]
            assert cj["unk_token_id"] not in p["greedy_reduced_ids"]
            assert [int(vocab[x]) for x in p["greedy_reduced_ids"]] == p["greedy_raw_ids"]
            rows = None
            if addr is not None:
                rows = {L: torch.from_numpy(v) for L, v in addr.row_ids(np.asarray([raw])).items()}
            with torch.no_grad():
                logits, _ = model(torch.tensor([red]), rows)
            n = len(p["reduced_ids"])
            for i, tok in enumerate(p["greedy_reduced_ids"]):
                step = logits[0, n - 1 + i].clone()
                step[cj["unk_token_id"]] = float("-inf")
                if p["greedy_top2_margin"][i] > 1e-4:
                    assert int(torch.argmax(step)) == tok, (d.name, p["name"], i)


if __name__ == "__main__":
    test_configs_validate()
    print("configs validate:", [d.name for d in model_dirs()])
    test_config_corruption_rejected()
    test_hc_config_corruption_rejected()
    print("corrupted configs rejected")
    test_checksums_guard_every_file()
    print("checksums guard every file")
    test_golden_reproduced()
    print("golden reproduced")
