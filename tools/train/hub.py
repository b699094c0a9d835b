"""Exported model directory: write, and load with every field validated.

models/<name>/
  config.json         hyper-parameters (validated by load_config)
  model.safetensors   backbone + Engram gate/conv weights (no table)
  engram.safetensors  Engram tables + offsets, addressing config in metadata (only if Engram)
  vocab.json          reduced id -> raw tokenizer id
  golden.json         PyTorch logits and greedy ids from these files
  SHA256SUMS          `sha256sum` lines for config.json, vocab.json, model.safetensors and
                      engram.safetensors: the Rust decoder refuses files that differ, and a
                      table imported from engram.safetensors is bound to its sum
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import engram_addr as ea
from model import EngramConfig, ModelConfig, MoEEngramLM

FORMAT = "engram-moe-v1"  # plain residual (hc_mult = 1)
FORMAT_HC = "engram-moe-v2"  # v1 + hc_mult, hc_sinkhorn_iters, hc_eps (mHC, ENGRAM-SPEC section 15)
VOCAB_FORMAT = "engram-moe-vocab-v1"
TABLE_FORMAT = "engram-table-import-v1"
RAW_VOCAB_SIZE = 129280
SUMS_FILE = "SHA256SUMS"
F32_EPS = float(torch.finfo(torch.float32).eps)  # 2^-23

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}

# every key of config.json and its type; load_config rejects missing, extra or mistyped keys
CONFIG_KEYS = {
    "format": str, "model_type": str, "architectures": list, "torch_dtype": str,
    "vocab_size": int, "unk_token_id": int, "bos_token_id": int, "raw_vocab_size": int, "raw_bos_token_id": int,
    "vocab_file": str, "tokenizer_sha256": str,
    "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int, "num_key_value_heads": int,
    "head_dim": int, "attention_bias": bool, "rope_theta": float, "rope_style": str, "max_position_embeddings": int,
    "rms_norm_eps": float, "hidden_act": str,
    "n_routed_experts": int, "n_shared_experts": int, "num_experts_per_tok": int, "moe_intermediate_size": int,
    "scoring_func": str, "norm_topk_prob": bool, "routed_scaling_factor": float, "first_k_dense_replace": int,
    "tie_word_embeddings": bool, "engram": (dict, type(None)),
}
HC_KEYS = {"hc_mult": int, "hc_sinkhorn_iters": int, "hc_eps": float}
MAX_HC_MULT = 16
MAX_SINKHORN_ITERS = 1000
ENGRAM_KEYS = {
    "layer_ids": list, "max_ngram": int, "n_head_per_ngram": int, "n_embed_per_ngram": int, "head_dim": int,
    "n_hash_heads": int, "d_mem": int, "base_sizes": list, "hc_mult": int, "kernel_size": int, "conv_dilation": int,
    "seed": int, "pad_id": int, "compressed_pad_id": int, "compressed_vocab_size": int, "compression_table": str,
    "compression_lookup_sha256_i32le": str, "key_norm_eps": float, "query_norm_eps": float, "conv_norm_eps": float,
    "score_clamp_min": float, "gate": str, "primes": dict, "offsets": dict, "total_rows": dict, "multipliers": dict,
    "table_file": str, "table_dtype": str, "conv_zero_init_in_training": bool,
}


class ConfigError(ValueError):
    pass


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_keys(d: dict, spec: dict, where: str) -> None:
    _check(set(d) == set(spec), f"{where}: missing {sorted(set(spec) - set(d))}, unknown {sorted(set(d) - set(spec))}")
    for k, t in spec.items():
        v = d[k]
        ok = isinstance(v, t) and not (t is int and isinstance(v, bool))
        if t is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        _check(ok, f"{where}.{k}: expected {t}, found {type(v).__name__} {v!r}")


def config_to_json(cfg: ModelConfig, dtype: str, max_pos: int, addr: ea.EngramAddressing | None) -> dict:
    from data import BOS_ID, TOKENIZER_SHA256

    eng = None
    if cfg.engram is not None:
        e = cfg.engram
        eng = {
            "layer_ids": e.layer_ids, "max_ngram": e.max_ngram, "n_head_per_ngram": e.n_head_per_ngram,
            "n_embed_per_ngram": e.n_embed_per_ngram, "head_dim": e.head_dim, "n_hash_heads": e.n_hash_heads,
            "d_mem": e.d_mem, "base_sizes": e.base_sizes, "hc_mult": e.hc_mult, "kernel_size": e.kernel_size,
            "conv_dilation": e.max_ngram, "seed": e.seed, "pad_id": e.pad_id, "compressed_pad_id": addr.pad_c,
            "compressed_vocab_size": e.compressed_vocab_size, "compression_table": ea.DEEPSEEK_TABLE,
            "compression_lookup_sha256_i32le": ea.lookup_sha256_i32le(addr.lookup),
            "key_norm_eps": F32_EPS, "query_norm_eps": F32_EPS, "conv_norm_eps": 1e-5, "score_clamp_min": 1e-6,
            "gate": "sigmoid(sign(s)*sqrt(max(|s|,score_clamp_min))), s = <rmsnorm(k),rmsnorm(h)>/sqrt(hidden_size)",
            "primes": {str(L): addr.primes[L] for L in e.layer_ids},
            "offsets": {str(L): addr.offsets[L].tolist() for L in e.layer_ids},
            "total_rows": {str(L): addr.total_rows[L] for L in e.layer_ids},
            "multipliers": {str(L): [int(x) for x in addr.multipliers[L]] for L in e.layer_ids},
            "table_file": "engram.safetensors", "table_dtype": dtype, "conv_zero_init_in_training": e.conv_zero_init,
        }
    out = {
        "format": FORMAT if cfg.hc_mult == 1 else FORMAT_HC, "model_type": "engram_moe", "architectures": ["MoEEngramLM"], "torch_dtype": dtype,
        "vocab_size": cfg.vocab_size, "unk_token_id": cfg.unk_id, "bos_token_id": -1,  # filled by caller
        "raw_vocab_size": RAW_VOCAB_SIZE, "raw_bos_token_id": BOS_ID, "vocab_file": "vocab.json",
        "tokenizer_sha256": TOKENIZER_SHA256,
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_heads, "head_dim": cfg.head_dim, "attention_bias": False,
        "rope_theta": float(cfg.rope_theta), "rope_style": "rotate_half", "max_position_embeddings": max_pos,
        "rms_norm_eps": cfg.rms_norm_eps, "hidden_act": "silu",
        "n_routed_experts": cfg.n_routed_experts, "n_shared_experts": cfg.n_shared_experts,
        "num_experts_per_tok": cfg.num_experts_per_tok, "moe_intermediate_size": cfg.moe_intermediate_size,
        "scoring_func": "softmax", "norm_topk_prob": cfg.norm_topk_prob, "routed_scaling_factor": 1.0,
        "first_k_dense_replace": 0, "tie_word_embeddings": cfg.tie_word_embeddings, "engram": eng,
    }
    if cfg.hc_mult > 1:
        out.update(hc_mult=cfg.hc_mult, hc_sinkhorn_iters=cfg.hc_sinkhorn_iters, hc_eps=cfg.hc_eps)
    return out


def load_config(path: Path) -> tuple[dict, ModelConfig]:
    """Parse config.json, validate every field and cross-field constraint, return (json, ModelConfig)."""
    with open(path) as f:
        c = json.load(f)
    _check(c.get("format") in (FORMAT, FORMAT_HC), f"config.format: expected {FORMAT} or {FORMAT_HC}, "
                                                    f"found {c.get('format')!r}")
    _check_keys(c, CONFIG_KEYS if c["format"] == FORMAT else {**CONFIG_KEYS, **HC_KEYS}, "config")
    hc = {"hc_mult": 1, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6}  # v1: plain residual
    if c["format"] == FORMAT_HC:
        hc = {k: c[k] for k in HC_KEYS}
        _check(1 <= hc["hc_mult"] <= MAX_HC_MULT, f"config.hc_mult {hc['hc_mult']}: expected 1..{MAX_HC_MULT}")
        _check(1 <= hc["hc_sinkhorn_iters"] <= MAX_SINKHORN_ITERS, "config.hc_sinkhorn_iters: expected 1..1000")
        _check(0 < hc["hc_eps"] < 1, "config.hc_eps: expected in (0, 1)")
    _check(c["model_type"] == "engram_moe" and c["architectures"] == ["MoEEngramLM"], "config: model_type/architectures")
    _check(c["torch_dtype"] in _DTYPES, f"config.torch_dtype: {c['torch_dtype']}")
    _check(c["vocab_size"] >= 2 and c["unk_token_id"] == c["vocab_size"] - 1, "config: unk_token_id must be vocab_size-1")
    _check(0 <= c["bos_token_id"] < c["unk_token_id"], "config.bos_token_id out of range")
    _check(c["raw_vocab_size"] == RAW_VOCAB_SIZE and 0 <= c["raw_bos_token_id"] < RAW_VOCAB_SIZE, "config: raw vocab")
    _check(c["vocab_size"] - 1 <= c["raw_vocab_size"], "config: reduced vocab larger than raw")
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "n_routed_experts", "num_experts_per_tok",
              "moe_intermediate_size", "max_position_embeddings"):
        _check(c[k] > 0, f"config.{k} must be > 0")
    _check(c["n_shared_experts"] >= 0, "config.n_shared_experts must be >= 0")
    _check(c["num_key_value_heads"] == c["num_attention_heads"], "config: only plain multi-head attention")
    _check(c["head_dim"] * c["num_attention_heads"] == c["hidden_size"] and c["head_dim"] % 2 == 0, "config.head_dim")
    _check(c["num_experts_per_tok"] <= c["n_routed_experts"], "config: top-k > routed experts")
    _check(c["attention_bias"] is False and c["rope_style"] == "rotate_half" and c["hidden_act"] == "silu"
           and c["scoring_func"] == "softmax" and c["routed_scaling_factor"] == 1.0 and c["first_k_dense_replace"] == 0
           and c["tie_word_embeddings"] is False, "config: unsupported architecture variant")
    _check(c["rope_theta"] > 0 and 0 < c["rms_norm_eps"] < 1, "config: rope_theta / rms_norm_eps")
    ecfg = None
    e = c["engram"]
    if e is not None:
        _check_keys(e, ENGRAM_KEYS, "config.engram")
        n, k = e["max_ngram"], e["n_head_per_ngram"]
        _check(n >= 2 and k >= 1, "config.engram: max_ngram >= 2, n_head_per_ngram >= 1")
        _check(e["n_embed_per_ngram"] % k == 0 and e["head_dim"] == e["n_embed_per_ngram"] // k, "config.engram.head_dim")
        _check(e["n_hash_heads"] == (n - 1) * k and e["d_mem"] == (n - 1) * e["n_embed_per_ngram"], "config.engram: H/d_mem")
        _check(len(e["base_sizes"]) == n - 1 and all(isinstance(b, int) and b > 0 for b in e["base_sizes"]), "base_sizes")
        _check(e["hc_mult"] == hc["hc_mult"], f"config.engram.hc_mult {e['hc_mult']}: must equal the residual "
                                              f"streams (hc_mult {hc['hc_mult']})")
        _check(e["kernel_size"] == 4 and e["conv_dilation"] == n, "config.engram: conv kernel 4, dilation max_ngram")
        _check(e["key_norm_eps"] == F32_EPS and e["query_norm_eps"] == F32_EPS and e["conv_norm_eps"] == 1e-5
               and e["score_clamp_min"] == 1e-6, "config.engram: eps constants")
        _check(e["table_file"] == "engram.safetensors" and e["table_dtype"] in _DTYPES, "config.engram.table_*")
        L_ids = e["layer_ids"]
        _check(len(L_ids) >= 1 and len(set(L_ids)) == len(L_ids)
               and all(isinstance(L, int) and 0 <= L < c["num_hidden_layers"] for L in L_ids), "engram.layer_ids")
        _check(e["compression_table"] == ea.DEEPSEEK_TABLE, "config.engram.compression_table")
        lookup, vp, table = ea.load_deepseek_compression()
        _check(e["compressed_vocab_size"] == vp and e["compression_lookup_sha256_i32le"] == table["lookup_sha256_i32le"],
               "config.engram: compression table mismatch")
        ecfg = EngramConfig(layer_ids=L_ids, max_ngram=n, n_head_per_ngram=k, n_embed_per_ngram=e["n_embed_per_ngram"],
                            base_sizes=e["base_sizes"], hc_mult=hc["hc_mult"], kernel_size=4, seed=e["seed"], pad_id=e["pad_id"],
                            compressed_vocab_size=vp, conv_zero_init=e["conv_zero_init_in_training"])
        addr = ea.EngramAddressing(lookup=lookup, compressed_vocab_size=vp, max_ngram=n, n_heads=k,
                                   base_sizes=e["base_sizes"], layer_ids=L_ids, seed=e["seed"], pad_id=e["pad_id"])
        _check(e["compressed_pad_id"] == addr.pad_c, "config.engram.compressed_pad_id")
        keys = {str(L) for L in L_ids}
        for name in ("primes", "offsets", "total_rows", "multipliers"):
            _check(set(e[name]) == keys, f"config.engram.{name}: keys must be the layer ids")
        for L in L_ids:
            s = str(L)
            _check(e["primes"][s] == addr.primes[L], f"config.engram.primes[{L}] disagree with the prime rule")
            _check(e["offsets"][s] == addr.offsets[L].tolist(), f"config.engram.offsets[{L}]")
            _check(e["total_rows"][s] == addr.total_rows[L], f"config.engram.total_rows[{L}]")
            _check(e["multipliers"][s] == [int(x) for x in addr.multipliers[L]], f"config.engram.multipliers[{L}]")
    cfg = ModelConfig(vocab_size=c["vocab_size"], unk_id=c["unk_token_id"], hidden_size=c["hidden_size"],
                      num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                      n_routed_experts=c["n_routed_experts"], n_shared_experts=c["n_shared_experts"],
                      num_experts_per_tok=c["num_experts_per_tok"], moe_intermediate_size=c["moe_intermediate_size"],
                      rope_theta=c["rope_theta"], rms_norm_eps=c["rms_norm_eps"],
                      max_position_embeddings=c["max_position_embeddings"], norm_topk_prob=c["norm_topk_prob"],
                      tie_word_embeddings=False, engram=ecfg, hc_mult=hc["hc_mult"],
                      hc_sinkhorn_iters=hc["hc_sinkhorn_iters"], hc_eps=hc["hc_eps"])
    return c, cfg


def load_vocab(path: Path, cfg_json: dict) -> np.ndarray:
    with open(path) as f:
        v = json.load(f)
    _check(set(v) == {"format", "vocab_size", "unk_id", "raw_vocab_size", "reduced_to_raw", "note"}, "vocab.json keys")
    _check(v["format"] == VOCAB_FORMAT, "vocab.json format")
    _check(v["vocab_size"] == cfg_json["vocab_size"] and v["unk_id"] == cfg_json["unk_token_id"], "vocab.json sizes")
    _check(v["raw_vocab_size"] == cfg_json["raw_vocab_size"], "vocab.json raw_vocab_size")
    r = v["reduced_to_raw"]
    _check(len(r) == v["vocab_size"] - 1, "vocab.json: reduced_to_raw must have vocab_size-1 entries (unk has none)")
    _check(all(isinstance(x, int) and 0 <= x < v["raw_vocab_size"] for x in r), "vocab.json: raw id out of range")
    _check(all(a < b for a, b in zip(r, r[1:])), "vocab.json: reduced_to_raw must be strictly increasing")
    _check(r[cfg_json["bos_token_id"]] == cfg_json["raw_bos_token_id"], "vocab.json: bos mapping")
    return np.asarray(r, dtype=np.int64)


def load_model(model_dir: Path) -> tuple[dict, MoEEngramLM, ea.EngramAddressing | None, np.ndarray]:
    """Load an exported model in float32 (bf16 weights are widened exactly)."""
    model_dir = Path(model_dir)
    check_sums(model_dir)
    cj, cfg = load_config(model_dir / "config.json")
    vocab = load_vocab(model_dir / "vocab.json", cj)
    dtype = _DTYPES[cj["torch_dtype"]]
    addr = None
    layouts = {}
    state = {}
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        _check(f.metadata().get("format") == cj["format"], "model.safetensors metadata format")
        for k in f.keys():
            t = f.get_tensor(k)
            _check(t.dtype == dtype, f"model.safetensors {k}: dtype {t.dtype}")
            state[k] = t.float()
    if cfg.engram is not None:
        lookup, vp, _ = ea.load_deepseek_compression()
        e = cfg.engram
        addr = ea.EngramAddressing(lookup=lookup, compressed_vocab_size=vp, max_ngram=e.max_ngram,
                                   n_heads=e.n_head_per_ngram, base_sizes=e.base_sizes, layer_ids=e.layer_ids,
                                   seed=e.seed, pad_id=e.pad_id)
        with safe_open(str(model_dir / "engram.safetensors"), framework="pt") as f:
            meta = json.loads(f.metadata()["engram"])
            _check(f.metadata().get("format") == TABLE_FORMAT, "engram.safetensors format")
            for L in e.layer_ids:
                w = f.get_tensor(f"layers.{L}.engram.embedding.weight")
                off = f.get_tensor(f"layers.{L}.engram.offsets")
                _check(tuple(w.shape) == (addr.total_rows[L], e.head_dim) and w.dtype == _DTYPES[cj["engram"]["table_dtype"]],
                       f"engram table layer {L}: shape {tuple(w.shape)} dtype {w.dtype}")
                _check(off.tolist() == addr.offsets[L].tolist(), f"engram offsets layer {L}")
                state[f"layers.{L}.engram.multi_head_embedding.embedding.weight"] = w.float()
                state[f"layers.{L}.engram.multi_head_embedding.offsets"] = off
                layouts[L] = {"total_rows": addr.total_rows[L], "offsets": addr.offsets[L].tolist()}
            _check(meta["layer_ids"] == e.layer_ids and meta["base_sizes"] == e.base_sizes and meta["seed"] == e.seed,
                   "engram.safetensors metadata disagrees with config.json")
    model = MoEEngramLM(cfg, layouts)
    model.load_state_dict(state, strict=True)
    model.eval()
    return cj, model, addr, vocab


def table_metadata(cj: dict) -> dict:
    e = cj["engram"]
    return {
        "format": TABLE_FORMAT, "layer_ids": e["layer_ids"], "max_ngram": e["max_ngram"], "n_heads": e["n_head_per_ngram"],
        "head_dim": e["head_dim"], "base_sizes": e["base_sizes"], "seed": e["seed"], "pad_id": e["pad_id"],
        "compressed_pad_id": e["compressed_pad_id"], "compressed_vocab_size": e["compressed_vocab_size"],
        "raw_vocab_size": cj["raw_vocab_size"], "compression_table": e["compression_table"],
        "compression_lookup_sha256_i32le": e["compression_lookup_sha256_i32le"], "tokenizer_sha256": cj["tokenizer_sha256"],
        "dtype": e["table_dtype"], "primes": e["primes"], "offsets": e["offsets"], "total_rows": e["total_rows"],
        "multipliers": e["multipliers"],
    }


def save_model(model_dir: Path, model: MoEEngramLM, cj: dict, vocab: np.ndarray) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    dtype = _DTYPES[cj["torch_dtype"]]
    backbone, tables = {}, {}
    for k, v in model.state_dict().items():
        if ".engram.multi_head_embedding.embedding.weight" in k:
            L = k.split(".")[1]
            tables[f"layers.{L}.engram.embedding.weight"] = v.to(dtype).contiguous()
        elif ".engram.multi_head_embedding.offsets" in k:
            L = k.split(".")[1]
            tables[f"layers.{L}.engram.offsets"] = v.to(torch.int64).contiguous()
        else:
            backbone[k] = v.to(dtype).contiguous()
    save_file(backbone, str(model_dir / "model.safetensors"), metadata={"format": cj["format"]})
    if tables:
        save_file(tables, str(model_dir / "engram.safetensors"),
                  metadata={"format": TABLE_FORMAT, "engram": json.dumps(table_metadata(cj))})
    with open(model_dir / "config.json", "w") as f:
        json.dump(cj, f, indent=2)
        f.write("\n")
    with open(model_dir / "vocab.json", "w") as f:
        json.dump({"format": VOCAB_FORMAT, "vocab_size": cj["vocab_size"], "unk_id": cj["unk_token_id"],
                   "raw_vocab_size": cj["raw_vocab_size"],
                   "note": "reduced_to_raw[i] is the raw DeepSeek tokenizer id of reduced id i (i < unk_id); "
                           "every raw id not listed maps to unk_id; unk_id has no raw id and is never emitted",
                   "reduced_to_raw": [int(x) for x in vocab]}, f)
        f.write("\n")
    write_sums(model_dir)


def sha256_file(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def model_files(model_dir: Path) -> list[str]:
    """The files the decoders read, in SHA256SUMS order."""
    names = ["config.json", "vocab.json", "model.safetensors", "engram.safetensors"]
    return [n for n in names if (Path(model_dir) / n).exists()]


def write_sums(model_dir: Path) -> None:
    """Writes SHA256SUMS as `sha256sum` would (so `sha256sum -c SHA256SUMS` checks it)."""
    model_dir = Path(model_dir)
    lines = "".join(f"{sha256_file(model_dir / n)}  {n}\n" for n in model_files(model_dir))
    (model_dir / SUMS_FILE).write_text(lines)


def check_sums(model_dir: Path) -> None:
    """Every file the decoders read must be listed in SHA256SUMS and match it."""
    model_dir = Path(model_dir)
    sums_path = model_dir / SUMS_FILE
    _check(sums_path.exists(), f"{sums_path} is missing (write it with hub.write_sums)")
    listed = {}
    for line in sums_path.read_text().splitlines():
        if line:
            _check(len(line) > 66 and line[64:66] in ("  ", " *"), f"{sums_path}: malformed line {line!r}")
            listed[line[66:]] = line[:64].lower()
    for n in model_files(model_dir):
        _check(n in listed, f"{n} is not listed in {sums_path}")
        _check(sha256_file(model_dir / n) == listed[n], f"{model_dir / n} differs from the SHA-256 in {sums_path}")
