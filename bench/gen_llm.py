#!/usr/bin/env python3
"""Generate a large Llama-shaped safetensors file of SYNTHETIC weights.

For scale, speed and memory runs only: the values are i.i.d. Gaussians, so compression ratios
measured on these files say nothing about real models (use bench/corpus.py for ratios).

    python3 bench/gen_llm.py --out /tmp/llm-2g.safetensors --size-gb 2
    python3 bench/gen_llm.py --out x.safetensors --layers 22 --hidden 2048 --intermediate 5632 --vocab 32000

Tensor names follow HF Llama: model.embed_tokens.weight, model.layers.N.self_attn.{q,k,v,o}_proj.weight,
model.layers.N.mlp.{gate,up,down}_proj.weight, model.layers.N.{input,post_attention}_layernorm.weight,
model.norm.weight, lm_head.weight. k/v projections are [kv_dim, hidden] (grouped-query attention).

Value statistics come from the real all-MiniLM-L6-v2 FP32 weights (bench/corpus.py; measured once,
constants below): per-kind standard deviation at MiniLM's hidden size 384, scaled by sqrt(384/hidden)
(fan-in scaling; --std-scale none keeps them as measured). Norm weights: 1.0 + N(0, 0.106).

Streaming: the header is written first, then each tensor in blocks of --block elements, so memory
stays bounded (~10 bytes per block element) whatever the file size. Deterministic for a given seed
and shape (each tensor has its own generator seeded from (seed, tensor index)).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402

# Measured on all-MiniLM-L6-v2 (FP32, hidden 384), see module docstring.
MINILM_HIDDEN = 384
MINILM_STD = {
    "embed": 0.0556,   # embeddings.word_embeddings.weight
    "qkv": 0.0764,     # attention.self.{query,key,value}.weight
    "o": 0.0505,       # attention.output.dense.weight
    "up": 0.0655,      # intermediate.dense.weight (used for gate and up)
    "down": 0.0447,    # output.dense.weight
    "norm": 0.106,     # std of LayerNorm.weight (mean taken as 1.0 for RMSNorm-style weights)
}

# (hidden, intermediate) ladder used by --size-gb when --hidden is not given: the largest shape
# whose embedding + lm_head take <= 25% of the file and that still gets >= 16 layers
LADDER = [(512, 1408), (1024, 2816), (2048, 5632), (4096, 11008), (8192, 28672)]

DTYPES = {"bf16": ("BF16", 2), "fp16": ("F16", 2), "fp32": ("F32", 4), "fp8e4m3": ("F8_E4M3", 1)}


def tensor_specs(layers: int, hidden: int, inter: int, vocab: int, kv_dim: int):
    """[(name, shape, kind)] in file order."""
    specs = [("model.embed_tokens.weight", [vocab, hidden], "embed")]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "self_attn.q_proj.weight", [hidden, hidden], "qkv"),
            (p + "self_attn.k_proj.weight", [kv_dim, hidden], "qkv"),
            (p + "self_attn.v_proj.weight", [kv_dim, hidden], "qkv"),
            (p + "self_attn.o_proj.weight", [hidden, hidden], "o"),
            (p + "mlp.gate_proj.weight", [inter, hidden], "up"),
            (p + "mlp.up_proj.weight", [inter, hidden], "up"),
            (p + "mlp.down_proj.weight", [hidden, inter], "down"),
            (p + "input_layernorm.weight", [hidden], "norm"),
            (p + "post_attention_layernorm.weight", [hidden], "norm"),
        ]
    specs += [("model.norm.weight", [hidden], "norm"), ("lm_head.weight", [vocab, hidden], "embed")]
    return specs


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def layer_elems(hidden: int, inter: int, kv_dim: int) -> int:
    return 2 * hidden * hidden + 2 * kv_dim * hidden + 3 * inter * hidden + 2 * hidden


def fixed_elems(hidden: int, vocab: int) -> int:
    return 2 * vocab * hidden + hidden


class Converter:
    """FP32 block -> target dtype bytes, reusing buffers."""

    def __init__(self, dtype: str, block: int):
        self.dtype = dtype
        if dtype == "bf16":
            self.tmp = np.empty(block, np.uint32)
            self.one = np.empty(block, np.uint32)
            self.out = np.empty(block, np.uint16)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = x.size
        if self.dtype == "bf16":
            # round to nearest even: (u + 0x7FFF + ((u >> 16) & 1)) >> 16; no NaN/inf in the input
            u = x.view(np.uint32)
            t, one, out = self.tmp[:n], self.one[:n], self.out[:n]
            np.right_shift(u, 16, out=one)
            np.bitwise_and(one, 1, out=one)
            np.add(u, 0x7FFF, out=t)
            np.add(t, one, out=t)
            np.right_shift(t, 16, out=t)
            out[...] = t  # uint32 -> uint16 (values < 2^16)
            return out
        if self.dtype == "fp16":
            return x.astype(np.float16)
        if self.dtype == "fp32":
            return x
        if self.dtype == "fp8e4m3":
            return st_io.f32_to_e4m3fn_bits(x)
        raise ValueError(self.dtype)


def tensor_blocks(args, specs, idx, scale):
    """The bytes of tensor idx, block by block (deterministic per (seed, idx))."""
    name, shape, kind = specs[idx]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([args.seed, idx])))
    n = numel(shape)
    std = np.float32(MINILM_STD[kind] * (1.0 if kind == "norm" else scale))
    block = args.block
    buf = np.empty(block, np.float32)
    conv = Converter(args.dtype, block)
    done = 0
    while done < n:
        m = min(block, n - done)
        x = buf[:m]
        rng.standard_normal(m, dtype=np.float32, out=x)
        np.multiply(x, std, out=x)
        if kind == "norm":
            np.add(x, np.float32(1.0), out=x)
        yield conv(x)
        done += m


def write_tensor_at(job) -> int:
    args, specs, idx, scale, path, offset = job
    written = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        for chunk in tensor_blocks(args, specs, idx, scale):
            mv = memoryview(np.ascontiguousarray(chunk)).cast("B")
            while mv:
                k = os.pwrite(fd, mv, offset + written)
                written += k
                mv = mv[k:]
    finally:
        os.close(fd)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--layers", type=int, default=None, help="default 22, or chosen by --size-gb")
    ap.add_argument("--hidden", type=int, default=None, help="default 2048 (or from a ladder with --size-gb)")
    ap.add_argument("--intermediate", type=int, default=None, help="default ~2.75 x hidden")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--kv-dim", type=int, default=None, help="k/v projection rows (default hidden/8)")
    ap.add_argument("--size-gb", type=float, default=None, help="pick --layers to reach about this many GB (1e9 bytes)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--std-scale", choices=["fanin", "none"], default="fanin")
    ap.add_argument("--block", type=int, default=1 << 20, help="elements generated per block")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --out")
    ap.add_argument("--jobs", type=int, default=1,
                    help="worker processes, one tensor each at a time (same bytes for any value)")
    ap.add_argument("--dry-run", action="store_true", help="print the chosen shape and size, write nothing")
    args = ap.parse_args()

    st_dtype, isz = DTYPES[args.dtype]
    hidden, inter = args.hidden, args.intermediate
    if hidden is None:
        hidden, inter0 = LADDER[2]
        if args.size_gb is not None:
            target_el = args.size_gb * 1e9 / isz
            # largest shape whose embeddings stay under a quarter of the file with >= 16 layers
            fits = [(h, i) for h, i in LADDER if fixed_elems(h, args.vocab) <= 0.25 * target_el and
                    target_el - fixed_elems(h, args.vocab) >= 16 * layer_elems(h, i, max(64, h // 8))]
            hidden, inter0 = fits[-1] if fits else LADDER[0]
        inter = inter if inter is not None else inter0
    elif inter is None:
        inter = int(round(hidden * 2.75 / 256)) * 256
    kv_dim = args.kv_dim or max(64, hidden // 8)
    layers = args.layers
    if layers is None:
        if args.size_gb is not None:
            rest = args.size_gb * 1e9 / isz - fixed_elems(hidden, args.vocab)
            layers = max(1, int(round(rest / layer_elems(hidden, inter, kv_dim))))
        else:
            layers = 22

    if os.path.exists(args.out) and not (args.force or args.dry_run):
        print(f"{args.out} exists (use --force to overwrite)", file=sys.stderr)
        return 1

    specs = tensor_specs(layers, hidden, inter, args.vocab, kv_dim)
    total = sum(numel(s) for _, s, _ in specs) * isz
    scale = (MINILM_HIDDEN / hidden) ** 0.5 if args.std_scale == "fanin" else 1.0
    meta = {
        "format": "pt",
        "generator": "bigsmall bench/gen_llm.py",
        "synthetic": "true",
        "note": "i.i.d. Gaussian weights; for scale/speed/memory runs only, never for ratio claims",
        "seed": str(args.seed),
        "shape": f"layers={layers} hidden={hidden} intermediate={inter} vocab={args.vocab} kv_dim={kv_dim}",
    }
    print(f"[gen_llm] {args.out}: {args.dtype} layers={layers} hidden={hidden} intermediate={inter} "
          f"vocab={args.vocab} kv_dim={kv_dim} tensors={len(specs)} data={total / 1e9:.3f} GB", flush=True)

    if args.dry_run:
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    t0 = time.time()
    w = st_io.StreamingWriter(args.out, [(n, st_dtype, s) for n, s, _ in specs], meta)
    try:
        if args.jobs <= 1:
            for idx in range(len(specs)):
                for chunk in tensor_blocks(args, specs, idx, scale):
                    w.write(chunk)
        else:
            # Each tensor has its own generator, so workers write their
            # tensors' bytes at their offsets (pwrite) and the file is the
            # same as a sequential run's.
            w.f.flush()
            data_start = w.f.tell()
            offsets, pos = [], data_start
            for size in w.sizes:
                offsets.append(pos)
                pos += size
            os.truncate(w.tmp, pos)
            import multiprocessing as mp
            with mp.get_context("fork").Pool(args.jobs) as pool:
                jobs = [(args, specs, idx, scale, w.tmp, offsets[idx]) for idx in range(len(specs))]
                # largest tensors first, so the pool ends together
                jobs.sort(key=lambda j: -w.sizes[j[2]])
                for n in pool.imap_unordered(write_tensor_at, jobs):
                    w.written += n
        w.close()
    except BaseException:
        w.f.close()
        if os.path.exists(w.tmp):
            os.unlink(w.tmp)
        raise
    dt = time.time() - t0
    size = os.path.getsize(args.out)
    print(f"[gen_llm] wrote {size} bytes ({size / 1e9:.3f} GB) in {dt:.1f} s ({size / 1e9 / dt:.2f} GB/s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
