#!/usr/bin/env python3
"""Chunk size vs compression ratio (issue 7: smaller rANS chunks give a GPU more independent work
per layer, but each chunk of each rANS plane carries its own 32 lane states, so they cost ratio).

Compresses the real corpus files with `bigsmall compress --chunk-elements N` for each N and writes
a markdown table: the ratio (stored / original, %) per N and mode, its cost in percentage points
against the mode's default chunk size (65536 elements for 2- and 4-byte dtypes in balanced and
inference mode, codec/tensor_encoder.cc kDefaultChunkElements), the chunks one 7B-class layer has,
and an empty GPU GB/s column that the GPU bench (bench/gpu_bench.cc) fills in on a GPU.

    python3 bench/chunk_curve.py --bigsmall build/cli/bigsmall \\
        [--bf16 $BIGSMALL_CORPUS_BF16] [--fp32 $BIGSMALL_CORPUS] [--out bench/results/chunk_curve.md]

It is a benchmark, not a test: it checks nothing but that every file round-trips (`verify`).
"""
import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time

CHUNKS = [4096, 8192, 16384, 32768, 65536, 131072]
DEFAULT = 65536  # kDefaultChunkElements (2- and 4-byte dtypes, balanced and inference)
MODES = {"balanced": [], "inference": ["--inference"]}
# Elements of one Llama-2-7B decoder layer: q, k, v, o (4096 x 4096) + gate, up, down (4096 x 11008)
# + 2 norms (4096): the work one single-layer decode launch has.
LAYER_7B = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096


WIDTH = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}


def chunk_counts(path):
    """{N: chunks per plane summed over the file's tensors} (what the encoder makes for N)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    elements = []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        size = t["data_offsets"][1] - t["data_offsets"][0]
        elements.append(size // WIDTH.get(t["dtype"], 1))
    return {c: sum(-(-e // c) for e in elements) for c in CHUNKS}


def compress(bigsmall, src, out, chunk, flags):
    cmd = [bigsmall, "compress", src, "-o", out, "-f", "--json", "--chunk-elements", str(chunk)] + flags
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    j = json.loads(p.stdout)
    subprocess.run([bigsmall, "verify", out, "-q"], check=True)
    return j["input_bytes"], j["output_bytes"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bigsmall", required=True)
    ap.add_argument("--bf16", default=os.environ.get("BIGSMALL_CORPUS_BF16"))
    ap.add_argument("--fp32", default=os.environ.get("BIGSMALL_CORPUS"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "chunk_curve.md"))
    args = ap.parse_args()
    files = [(label, path) for label, path in (("BF16", args.bf16), ("FP32", args.fp32)) if path]
    if not files:
        sys.exit("no corpus: pass --bf16/--fp32 or set BIGSMALL_CORPUS_BF16/BIGSMALL_CORPUS")
    tmp = tempfile.mkdtemp(prefix="chunk_curve.")
    results = {}  # (label, mode) -> {chunk: (input, output)}
    start = time.time()
    try:
        for label, path in files:
            for mode, flags in MODES.items():
                row = results.setdefault((label, mode), {})
                for chunk in CHUNKS:
                    row[chunk] = compress(args.bigsmall, path, os.path.join(tmp, "c.bs"), chunk, flags)
                    ratio = 100.0 * row[chunk][1] / row[chunk][0]
                    print("%s %-9s %7d elements/chunk: %d -> %d bytes, %.3f %%" %
                          (label, mode, chunk, row[chunk][0], row[chunk][1], ratio), flush=True)
    finally:
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
        os.rmdir(tmp)
    version = subprocess.run([args.bigsmall, "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Chunk size vs ratio (format 1.1)",
        "",
        "`python3 bench/chunk_curve.py --bigsmall build/cli/bigsmall` (%s; %s, %d CPUs, %.0f s). "
        "Ratio = stored / original bytes of the whole `.bs` file; cost = ratio - ratio at the default "
        "%d elements per chunk, in percentage points (issue 7 budget: <= 0.1). Every file verified." %
        (version or "bigsmall", platform.machine(), os.cpu_count() or 0, time.time() - start, DEFAULT),
        "",
        "Corpus: " + "; ".join("%s `%s` (%d bytes)" % (label, os.path.basename(path), os.path.getsize(path))
                               for label, path in files) + ". "
        "Chunks per 7B layer = ceil(%d / N) per byte plane (one Llama-2-7B decoder layer, %.0f M "
        "elements): the independent work one single-layer decode has. MiniLM's largest tensor is its "
        "30522 x 384 embedding; most of its tensors (384 x 384, 384 x 1536) hold 147 K to 590 K "
        "elements, so every N here splits them." % (LAYER_7B, LAYER_7B / 1e6),
        "",
        "Bytes per extra chunk = (stored(N) - stored(2N)) / (chunks(N) - chunks(2N)), chunks counted "
        "per plane over the file's tensors: the fixed cost of one more chunk (its 32 u32 lane states "
        "and u32 size per rANS plane, less the tails it saves).",
        "",
        "| dtype | mode | elements/chunk | chunks per plane (file) | stored bytes | ratio % | "
        "cost vs default (points) | bytes per extra chunk | chunks per 7B layer | "
        "GPU decode GB/s (filled by the GPU bench) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    counts = {label: chunk_counts(path) for label, path in files}
    for (label, mode), row in results.items():
        base = 100.0 * row[DEFAULT][1] / row[DEFAULT][0]
        cc = counts[label]
        for chunk in CHUNKS:
            inp, outp = row[chunk]
            ratio = 100.0 * outp / inp
            per_chunk = "—"
            if 2 * chunk in row and cc[chunk] > cc[2 * chunk]:
                per_chunk = "%.0f" % ((outp - row[2 * chunk][1]) / (cc[chunk] - cc[2 * chunk]))
            lines.append("| %s | %s | %d%s | %d | %d | %.3f | %+.3f | %s | %d | — |" % (
                label, mode, chunk, " (default)" if chunk == DEFAULT else "", cc[chunk], outp, ratio,
                ratio - base, per_chunk, -(-LAYER_7B // chunk)))
    lines.append("")
    lines.append("Smallest chunk within the 0.1-point budget, per row group: " + "; ".join(
        "%s %s: %s" % (label, mode, min((c for c in CHUNKS
                                         if 100.0 * (row[c][1] / row[c][0] - row[DEFAULT][1] / row[DEFAULT][0])
                                         <= 0.1), default="none"))
        for (label, mode), row in results.items()) + ".")
    lines.append("")
    # Projection to a 7B-class layer: the cost is per chunk, so a layer's cost follows from its chunk
    # count and the measured bytes per extra chunk (median over this file's N pairs).
    lines.append("Projected cost vs default for one 7B-class layer (its chunk count x the median bytes per "
                 "extra chunk measured above / its original bytes), points:")
    lines.append("")
    lines.append("| dtype | mode | median bytes per extra chunk | " +
                 " | ".join("N=%d" % c for c in CHUNKS) + " |")
    lines.append("|---|---|---:|" + "---:|" * len(CHUNKS))
    for (label, mode), row in results.items():
        cc = counts[label]
        per = sorted((row[c][1] - row[2 * c][1]) / (cc[c] - cc[2 * c]) for c in CHUNKS
                     if 2 * c in row and cc[c] > cc[2 * c])
        med = per[len(per) // 2]
        width = 2 if label == "BF16" else 4
        proj = [100.0 * med * (-(-LAYER_7B // c) - -(-LAYER_7B // DEFAULT)) / (LAYER_7B * width) for c in CHUNKS]
        lines.append("| %s | %s | %.0f | " % (label, mode, med) + " | ".join("%+.3f" % x for x in proj) + " |")
    lines.append("")
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
