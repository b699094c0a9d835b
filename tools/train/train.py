"""Train the MoE (A), MoE + Engram (B) or MoE + Engram + mHC (C) model on the CPython stdlib
corpus (CPU, 1 thread).

    python train.py --name B --engram-layers 1 --routed-experts 6 --match-params-of-experts 8 --tokens 1600000
    python train.py --name C --engram-layers 1 --routed-experts 6 --hc-mult 4 --match-params-of-experts 8 ...
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import data
import engram_addr as ea
from model import EngramConfig, ModelConfig, MoEEngramLM

RUNS = Path.home() / ".cache/engram/train/runs"


def reduced_vocab(train_ids: np.ndarray, size: int) -> np.ndarray:
    """The `size` most frequent raw ids of the train split (ties: lower raw id), BOS forced, sorted by raw id."""
    counts = np.bincount(train_ids, minlength=129280)
    order = np.lexsort((np.arange(counts.size), -counts))  # by count desc, then raw id asc
    chosen = [int(x) for x in order[:size] if counts[x] > 0]
    if data.BOS_ID not in chosen:
        chosen = chosen[:-1] + [data.BOS_ID]
    return np.asarray(sorted(chosen), dtype=np.int64)


def raw_to_reduced_table(vocab: np.ndarray, unk_id: int) -> np.ndarray:
    table = np.full(129280, unk_id, dtype=np.int64)
    table[vocab] = np.arange(vocab.size)
    return table


def make_addressing(ecfg: EngramConfig) -> ea.EngramAddressing:
    lookup, vp, _ = ea.load_deepseek_compression()
    assert vp == ecfg.compressed_vocab_size
    return ea.EngramAddressing(lookup=lookup, compressed_vocab_size=vp, max_ngram=ecfg.max_ngram,
                               n_heads=ecfg.n_head_per_ngram, base_sizes=ecfg.base_sizes, layer_ids=ecfg.layer_ids,
                               seed=ecfg.seed, pad_id=ecfg.pad_id)


def build_model(cfg: ModelConfig) -> tuple[MoEEngramLM, ea.EngramAddressing | None]:
    addr = None
    layouts = {}
    if cfg.engram is not None:
        addr = make_addressing(cfg.engram)
        layouts = {L: {"total_rows": addr.total_rows[L], "offsets": addr.offsets[L].tolist()} for L in cfg.engram.layer_ids}
    return MoEEngramLM(cfg, layouts), addr


def n_params(cfg: ModelConfig) -> int:
    """Parameter count without building tables (meta device)."""
    with torch.device("meta"):
        m, _ = build_model(cfg)
    return sum(p.numel() for p in m.parameters())


def chunks(stream: np.ndarray, seq_len: int) -> np.ndarray:
    n = (stream.size - 1) // seq_len
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return stream[idx]  # (n, seq_len+1), overlapping by one token for the targets


def batch_tensors(raw: np.ndarray, r2r: np.ndarray, addr: ea.EngramAddressing | None):
    """raw (B, T+1) raw ids -> inputs (reduced), targets (reduced), Engram rows from raw inputs."""
    red = r2r[raw]
    x = torch.from_numpy(red[:, :-1])
    y = torch.from_numpy(red[:, 1:])
    rows = None
    if addr is not None:
        rows = {L: torch.from_numpy(r) for L, r in addr.row_ids(raw[:, :-1]).items()}
    return x, y, rows


@torch.no_grad()
def evaluate(model, stream, r2r, addr, seq_len, batch, engram_scale=1.0, max_chunks=None) -> float:
    model.eval()
    ch = chunks(stream, seq_len)
    if max_chunks is not None:
        ch = ch[:max_chunks]
    tot, n = 0.0, 0
    for i in range(0, len(ch), batch):
        x, y, rows = batch_tensors(ch[i:i + batch], r2r, addr)
        logits, _ = model(x, rows, engram_scale)
        tot += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        n += y.numel()
    model.train()
    return tot / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=1_600_000, help="training token budget (inputs seen)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8192, help="reduced vocabulary size before the unknown id")
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--routed-experts", type=int, default=8)
    ap.add_argument("--shared-experts", type=int, default=1)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--moe-inter", type=int, default=192)
    ap.add_argument("--engram-layers", type=int, nargs="*", default=[])
    ap.add_argument("--max-ngram", type=int, default=3)
    ap.add_argument("--engram-heads", type=int, default=4)
    ap.add_argument("--engram-embed", type=int, default=32, help="n_embed_per_ngram (D_h = this / heads)")
    ap.add_argument("--engram-base", type=int, default=5000)
    ap.add_argument("--match-params-of-experts", type=int, default=None,
                    help="choose --engram-base so total params equal the same model with this many routed experts and no Engram")
    ap.add_argument("--engram-value-init-std", type=float, default=None,
                    help="N(0, std) init of the Engram value projection (bias 0); default: reference init")
    ap.add_argument("--hc-mult", type=int, default=1, help="residual streams: 1 = plain residual, > 1 = mHC")
    ap.add_argument("--hc-sinkhorn-iters", type=int, default=20)
    ap.add_argument("--stop-after-steps", type=int, default=None, help="debug: stop early (schedule unchanged)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--engram-lr-mult", type=float, default=5.0)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-chunks", type=int, default=128)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t_start = time.time()

    train_stream = data.load("train")
    val_stream = data.load("val")
    vocab = reduced_vocab(train_stream, args.vocab)
    unk_id = int(vocab.size)
    r2r = raw_to_reduced_table(vocab, unk_id)

    def make_cfg(routed: int, base: int | None) -> ModelConfig:
        ecfg = None
        if args.engram_layers:
            ecfg = EngramConfig(layer_ids=args.engram_layers, max_ngram=args.max_ngram, n_head_per_ngram=args.engram_heads,
                                n_embed_per_ngram=args.engram_embed, base_sizes=[base] * (args.max_ngram - 1),
                                hc_mult=args.hc_mult, value_init_std=args.engram_value_init_std)
        return ModelConfig(vocab_size=unk_id + 1, unk_id=unk_id, hidden_size=args.hidden, num_layers=args.layers,
                           num_heads=args.heads, n_routed_experts=routed, n_shared_experts=args.shared_experts,
                           num_experts_per_tok=args.top_k, moe_intermediate_size=args.moe_inter, engram=ecfg,
                           hc_mult=args.hc_mult, hc_sinkhorn_iters=args.hc_sinkhorn_iters)

    base = args.engram_base
    if args.match_params_of_experts is not None and args.engram_layers:
        # the target is model A: the same backbone with that many routed experts, no Engram, plain residual
        target = n_params(ModelConfig(**{**asdict(make_cfg(args.match_params_of_experts, None)), "engram": None,
                                         "hc_mult": 1}))
        without = n_params(make_cfg(args.routed_experts, 2)) 
        rows_per_head = (target - without) // (args.engram_heads * (args.max_ngram - 1) * len(args.engram_layers)
                                              * (args.engram_embed // args.engram_heads))
        base = int(rows_per_head)
        while n_params(make_cfg(args.routed_experts, base)) > target:
            base -= 1
        print(f"match params: target {target}, engram base size {base}", flush=True)
    cfg = make_cfg(args.routed_experts, base)
    model, addr = build_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    eng = sum(p.numel() for n, p in model.named_parameters() if ".engram." in n)
    table = sum(p.numel() for n, p in model.named_parameters() if "multi_head_embedding" in n)
    hc = sum(p.numel() for n, p in model.named_parameters() if n.startswith("hc_head.") or "_hc." in n)
    print(f"params: total {total}, engram {eng} (table {table}), mHC {hc}", flush=True)

    # optimizer: AdamW; Engram table: lr x engram_lr_mult, wd 0 (paper); no wd on norms, biases, embeddings
    groups = {"decay": [], "no_decay": [], "engram_table": []}
    for n, p in model.named_parameters():
        if "multi_head_embedding" in n:
            groups["engram_table"].append(p)
        elif p.dim() >= 2 and "embed_tokens" not in n:
            groups["decay"].append(p)
        else:
            groups["no_decay"].append(p)
    opt = torch.optim.AdamW([
        {"params": groups["decay"], "weight_decay": args.wd, "lr_mult": 1.0},
        {"params": groups["no_decay"], "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": groups["engram_table"], "weight_decay": 0.0, "lr_mult": args.engram_lr_mult},
    ], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    ch = chunks(train_stream, args.seq_len)
    perm = np.random.default_rng(args.seed).permutation(len(ch))
    tokens_per_step = args.batch * args.seq_len
    steps = math.ceil(args.tokens / tokens_per_step)
    assert steps * args.batch <= len(ch), "token budget exceeds one epoch"
    log = []
    out_dir = RUNS / args.name
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ema = None
    for step in range(steps if args.stop_after_steps is None else min(steps, args.stop_after_steps)):
        lr_f = min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_f * g["lr_mult"]
        x, y, rows = batch_tensors(ch[perm[step * args.batch:(step + 1) * args.batch]], r2r, addr)
        logits, aux = model(x, rows)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        (loss + aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if (step + 1) % args.eval_every == 0 or step + 1 == steps or step + 1 == args.stop_after_steps:
            vl = evaluate(model, val_stream, r2r, addr, args.seq_len, 32, max_chunks=args.eval_chunks)
            el = time.time() - t0
            rec = {"step": step + 1, "tokens": (step + 1) * tokens_per_step, "train_loss_ema": ema, "val_loss_subset": vl,
                   "aux": aux.item(), "elapsed_s": el}
            log.append(rec)
            print(json.dumps(rec), flush=True)
    train_s = time.time() - t0
    final = {"val_loss": evaluate(model, val_stream, r2r, addr, args.seq_len, 32)}
    if cfg.engram is not None:
        final["val_loss_engram_zeroed"] = evaluate(model, val_stream, r2r, addr, args.seq_len, 32, engram_scale=0.0)
    final.update(train_loss_ema=ema, train_wall_s=train_s, total_wall_s=time.time() - t_start, params=total,
                 engram_params=eng, engram_table_params=table, hc_params=hc, steps=steps, tokens=steps * tokens_per_step)
    print(json.dumps(final), flush=True)
    torch.save({"config": asdict(cfg), "vocab": vocab.tolist(), "state_dict": model.state_dict(), "args": vars(args),
                "log": log, "final": final}, out_dir / "checkpoint.pt")
    with open(out_dir / "result.json", "w") as f:
        json.dump({"args": vars(args), "config": asdict(cfg), "log": log, "final": final}, f, indent=1)


if __name__ == "__main__":
    main()
