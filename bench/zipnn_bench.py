#!/usr/bin/env python3
"""Measure ZipNN (pip package `zipnn`) on safetensors files: ratio, encode/decode speed, round trip.

    python3 bench/zipnn_bench.py FILE.safetensors [FILE ...]
    python3 bench/zipnn_bench.py --corpus            # every file in the corpus.json of bench/corpus.py

For each file the whole data section (everything after the JSON header) is compressed in one call,
as bytes, in the ZipNN dtype mode of the file's dominant dtype (by bytes): F32 -> 'float32',
BF16 -> 'bfloat16', F16 -> 'float16', F8_E4M3 -> 'float8_e4m3fn', F8_E5M2 -> 'float8_e5m2'; an
integer dominant dtype (U8/I8, I16/U16, I32/U32: ZipNN has no integer mode) -> the float byte mode of
its width (float8_e4m3fn, float16, float32), labelled in the row's note.
Minor tensors of another dtype (e.g. MiniLM's 4 KB I64 position_ids) go through in that same mode.
ZipNN's default method ('AUTO': byte-plane Huffman, zstd for zero-heavy chunks) and chunk size
(256 KiB) are used. Timed: compress() and decompress() calls only, best of --repeat, with threads=1
(process CPU time) and threads=--threads-mt (default: all CPUs; wall time). Speeds are original (uncompressed) bytes / second, in
GB/s (1e9). Ratio = compressed bytes (incl. ZipNN's header) / data-section bytes; lower is better.

Prints one JSON line per file on stdout; progress and ZipNN's own chatter go to stderr.

Caveat found while writing this: ZipNN 0.5.4's compress() modifies the buffer it is given, in place
(it reorders bits of the caller's data, even of an immutable `bytes`). Each timed call therefore
gets a fresh bytearray copy, made outside the timed region, and the round trip is checked against
a separate pristine copy.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402

ZIPNN_DTYPE = {"F32": "float32", "BF16": "bfloat16", "F16": "float16",
               "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
ZIPNN_BY_WIDTH = {1: "float8_e4m3fn", 2: "float16", 4: "float32"}


def corpus_files(cache: str | None) -> list[tuple[str, dict]]:
    cache = cache or os.environ.get("BIGSMALL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bigsmall", "corpus")
    man = json.load(open(os.path.join(cache, "corpus.json")))
    out = []
    for e in man["files"]:
        if e.get("kind") == "directory":
            continue
        out.append((os.path.join(man.get("cache", cache), e["path"]), e))
    return out


def timed(fn, repeat: int, make_input, clock=time.perf_counter):
    """Best time of fn(make_input()) over `repeat` runs; make_input() is not timed. threads=1 runs
    use process CPU time (robust to other load on a shared machine, as codec_bench's 1-thread
    figures), multi-thread runs wall time."""
    best, res = float("inf"), None
    for _ in range(repeat):
        arg = make_input()
        t = clock()
        res = fn(arg)
        best = min(best, clock() - t)
        del arg
    return best, res


def bench_file(path: str, threads_mt: int, repeat: int, info: dict | None) -> dict:
    from zipnn import ZipNN

    _, entries, start = st_io.read_header(path)
    by_dtype: dict[str, int] = {}
    for _, e in entries:
        by_dtype[e["dtype"]] = by_dtype.get(e["dtype"], 0) + e["data_offsets"][1] - e["data_offsets"][0]
    dtype = max(by_dtype, key=by_dtype.get) if by_dtype else None
    row = {"file": os.path.abspath(path), "dtype": dtype, "data_bytes": sum(by_dtype.values()),
           "zipnn_version": importlib.metadata.version("zipnn")}
    if info is not None:
        row["derived"] = info.get("derived")
    notes = []
    other = {d: n for d, n in by_dtype.items() if d != dtype}
    if other:
        notes.append(f"data section also holds {other} bytes of other dtypes, compressed in the {dtype} mode")
    zd = ZIPNN_DTYPE.get(dtype)
    if zd is None and dtype in st_io.ST_DTYPES and st_io.itemsize(dtype) in ZIPNN_BY_WIDTH:
        # ZipNN has no integer byte mode: integer data (e.g. GGUF blocks stored as U8) goes through
        # its float byte mode of the same width, a lossless byte-plane split (as per_tensor.py does)
        zd = ZIPNN_BY_WIDTH[st_io.itemsize(dtype)]
        notes.append(f"{dtype} through ZipNN's {zd} byte mode (it has no integer mode)")
    row["zipnn_bytearray_dtype"] = zd
    nulls = {k: None for k in ("zipnn_ratio", "zipnn_compressed_bytes", "zipnn_encode_gbps_1t", "zipnn_decode_gbps_1t",
                               "zipnn_encode_gbps_mt", "zipnn_decode_gbps_mt", "threads_mt", "roundtrip_ok")}
    if zd is None:
        row.update(nulls)
        notes.append(f"ZipNN has no float mode for {dtype}")
        row["note"] = "; ".join(notes)
        return row
    if dtype.startswith("F8"):
        notes.append("FP8 via ZipNN's float8 byte mode (bit reorder of the single byte, one group)")

    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    n = len(data)
    ref = np.frombuffer(data, dtype=np.uint8).copy()  # pristine reference for the round-trip check
    try:
        results = {}
        for label, th in (("1t", 1), ("mt", threads_mt)):
            with contextlib.redirect_stdout(sys.stderr):
                # ZipNN 0.5.4 rewrites its input buffer in place during compress() (even a `bytes`
                # object), so every call gets a fresh copy, made outside the timed region.
                z = ZipNN(bytearray_dtype=zd, threads=th)
                clock = time.process_time if th == 1 else time.perf_counter
                t_enc, comp = timed(z.compress, repeat, lambda: bytearray(data), clock)
                comp = bytes(comp)
                zd_ = ZipNN(bytearray_dtype=zd, threads=th)
                t_dec, back = timed(zd_.decompress, repeat, lambda: bytearray(comp), clock)
            ok = len(back) == n and np.array_equal(np.frombuffer(back, dtype=np.uint8), ref)
            results[label] = (len(comp), t_enc, t_dec, ok)
            del back
        c1 = results["1t"][0]
        row.update({
            "zipnn_ratio": round(c1 / n, 6),
            "zipnn_compressed_bytes": c1,
            "zipnn_encode_gbps_1t": round(n / results["1t"][1] / 1e9, 4),
            "zipnn_decode_gbps_1t": round(n / results["1t"][2] / 1e9, 4),
            "zipnn_encode_gbps_mt": round(n / results["mt"][1] / 1e9, 4),
            "zipnn_decode_gbps_mt": round(n / results["mt"][2] / 1e9, 4),
            "threads_mt": threads_mt,
            "roundtrip_ok": bool(results["1t"][3] and results["mt"][3]),
        })
        if results["mt"][0] != c1:
            row["zipnn_compressed_bytes_mt"] = results["mt"][0]
        if not row["roundtrip_ok"]:
            notes.append("ROUND TRIP MISMATCH")
    except Exception as ex:  # report, don't abort the batch
        row.update(nulls)
        notes.append(f"ZipNN failed: {type(ex).__name__}: {ex}")
    row["repeat"] = repeat
    row["cpu"] = st_io.cpu_model()
    row["host_cpus"] = os.cpu_count()
    if notes:
        row["note"] = "; ".join(notes)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*")
    ap.add_argument("--corpus", action="store_true", help="bench every file listed in corpus.json")
    ap.add_argument("--cache", default=None, help="corpus cache dir (as bench/corpus.py)")
    ap.add_argument("--threads-mt", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions, best kept")
    args = ap.parse_args()
    todo: list[tuple[str, dict | None]] = [(f, None) for f in args.files]
    if args.corpus:
        todo += corpus_files(args.cache)
    if not todo:
        ap.error("no files (give paths or --corpus)")
    bad = 0
    for path, info in todo:
        print(f"[zipnn_bench] {path}", file=sys.stderr, flush=True)
        row = bench_file(path, args.threads_mt, args.repeat, info)
        print(json.dumps(row), flush=True)
        if row.get("roundtrip_ok") is False:
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
