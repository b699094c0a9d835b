"""Export a trained run to models/<name>/ and compute golden outputs from the written files.

    python export.py --run B --out ../../models/stdlib-moe-engram-b --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import data
import hub
from model import EngramConfig, ModelConfig
from train import RUNS, build_model, evaluate, raw_to_reduced_table

PROMPTS = [
    ("imports", "import os\nimport sys\n\n\ndef main():\n", "last"),
    ("fibonacci", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n', "last"),
    ("class", "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n", "last"),
    ("loop", "for i in range(10):\n    if i % 2 == 0:\n        print(", "last"),
    ("rare-tokens", "# Ωμέγα café naïve 数据\nresult = ", "last"),  # raw ids outside the reduced vocab -> unk
    ("short", "x = 1", "all"),
]
N_NEW = 32


def r9(x: float) -> float:
    return float(f"{x:.9g}")  # float32 round-trips through 9 significant digits


@torch.no_grad()
def golden(model, addr, vocab: np.ndarray, cj: dict, tok, names: list[str] | None = None) -> list[dict]:
    r2r = raw_to_reduced_table(vocab, cj["unk_token_id"])
    unk = cj["unk_token_id"]
    out = []
    for name, text, which in PROMPTS:
        if names is not None and name not in names:
            continue
        raw = [data.BOS_ID] + data.encode(tok, text)
        red = [int(r2r[x]) for x in raw]
        rows = addr.row_ids(np.asarray([raw])) if addr is not None else None

        def fwd(raw_ids, red_ids):
            rr = None
            if addr is not None:
                rr = {L: torch.from_numpy(v) for L, v in addr.row_ids(np.asarray([raw_ids])).items()}
            logits, _ = model(torch.tensor([red_ids]), rr)
            return logits[0]

        logits = fwd(raw, red)
        positions = list(range(len(raw))) if which == "all" else [len(raw) - 1]
        rec = {"name": name, "text": text, "raw_ids": raw, "reduced_ids": red,
               "n_unk_in_prompt": sum(1 for x in red if x == unk),
               "engram_row_ids": {str(L): v[0].tolist() for L, v in rows.items()} if rows is not None else None,
               "logit_positions": positions, "logits": [[r9(x) for x in logits[p].tolist()] for p in positions]}
        g_red, g_raw, margins = [], [], []
        cur_raw, cur_red = list(raw), list(red)
        for _ in range(N_NEW):
            assert len(cur_raw) <= cj["max_position_embeddings"]
            last = fwd(cur_raw, cur_red)[-1].clone()
            last[unk] = float("-inf")  # never emit the unknown id
            top2 = torch.topk(last, 2)
            nxt = int(torch.argmax(last))  # first maximal index
            margins.append(r9((top2.values[0] - top2.values[1]).item()))
            g_red.append(nxt)
            g_raw.append(int(vocab[nxt]))
            cur_red.append(nxt)
            cur_raw.append(int(vocab[nxt]))
        rec.update(greedy_reduced_ids=g_red, greedy_raw_ids=g_raw, greedy_top2_margin=margins,
                   greedy_text=tok.decode(g_raw, skip_special_tokens=False))
        out.append(rec)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="run name under ~/.cache/engram/train/runs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--no-golden", action="store_true")
    ap.add_argument("--golden-prompts", nargs="*", default=None, help="subset of prompt names (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()

    ck = torch.load(RUNS / args.run / "checkpoint.pt", weights_only=False)
    c = dict(ck["config"])
    e = c.pop("engram")
    ecfg = EngramConfig(**e) if e is not None else None
    cfg = ModelConfig(**c, engram=ecfg)
    model, addr = build_model(cfg)
    model.load_state_dict(ck["state_dict"])
    vocab = np.asarray(ck["vocab"], dtype=np.int64)
    seq_len = ck["args"]["seq_len"]

    cj = hub.config_to_json(cfg, args.dtype, seq_len, addr)
    cj["bos_token_id"] = int(np.searchsorted(vocab, data.BOS_ID))
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    hub.save_model(out, model, cj, vocab)

    # everything below is computed from the files just written (bf16 widened to f32)
    cj2, m2, addr2, vocab2 = hub.load_model(out)
    assert cj2 == cj and np.array_equal(vocab2, vocab)
    r2r = raw_to_reduced_table(vocab2, cj["unk_token_id"])
    val = data.load("val")
    res = {"val_loss_exported": evaluate(m2, val, r2r, addr2, seq_len, 32)}
    if addr2 is not None:
        res["val_loss_exported_engram_zeroed"] = evaluate(m2, val, r2r, addr2, seq_len, 32, engram_scale=0.0)
    print(json.dumps(res), flush=True)

    shutil.copyfile(data.CACHE / "corpus.json", out.parent / "corpus.json")  # file lists of both splits
    files = ["config.json", "model.safetensors", "vocab.json"] + (["engram.safetensors"] if addr2 is not None else [])
    training = {"run": args.run, "args": ck["args"], "final_f32": ck["final"], "log": ck["log"], "export": res,
                "files_sha256": {f: hub.sha256_file(out / f) for f in files}}
    with open(out / "training.json", "w") as f:
        json.dump(training, f, indent=1)
        f.write("\n")
    if not args.no_golden:
        tok = data.load_tokenizer()
        g = {"format": "engram-moe-golden-v1",
             "compute": f"PyTorch {torch.__version__}, CPU, 1 thread, float32; weights read from the files below "
                        f"({args.dtype} widened exactly to float32); every step is a full forward over the whole "
                        "sequence (no KV cache); Engram rows hashed from the raw ids",
             "files_sha256": training["files_sha256"],
             "unk_id": cj["unk_token_id"], "n_new": N_NEW,
             "greedy_rule": "argmax of the last position's logits with unk_id set to -inf (first index on ties); "
                            "the chosen reduced id is appended to the reduced stream and vocab.reduced_to_raw[id] "
                            "to the raw stream",
             "logits_note": "logits[i] are the float32 logits (length vocab_size) at position logit_positions[i], "
                            "printed with 9 significant digits",
             "prompts": golden(m2, addr2, vocab2, cj, tok, args.golden_prompts)}
        with open(out / "golden.json", "w") as f:
            json.dump(g, f)
            f.write("\n")
        for p in g["prompts"]:
            print(f"{p['name']}: {p['greedy_text']!r}")
    print(f"export done in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
