#!/usr/bin/env python3
"""Merge codec_bench JSON and zipnn_bench JSON lines into bench/results/BENCHMARKS.md (stdout).

    python3 bench/make_table.py --corpus corpus.json codec.json zipnn.jsonl
"""
import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("codec_json")
    ap.add_argument("zipnn_jsonl")
    a = ap.parse_args()
    corpus = json.load(open(a.corpus))
    info = {os.path.join(corpus["cache"], f["path"]): f for f in corpus["files"]}
    rows = json.load(open(a.codec_json))
    zipnn = {}
    for line in open(a.zipnn_jsonl):
        line = line.strip()
        if line:
            r = json.loads(line)
            zipnn[os.path.abspath(r["file"])] = r
    by_file = {}
    for r in rows:
        by_file.setdefault(os.path.abspath(r["file"]), {})[r["mode"]] = r
    load = os.getloadavg()
    out = []
    out.append("# Codec benchmark\n")
    out.append("Measured %s on %s (%d threads, load average %.1f at the end), decoder `%s`. "
               "Everything in a row was measured in the same run of `bench/run_bench.sh`.\n" % (
                   datetime.date.today().isoformat(), st_io.cpu_model(), rows[0]["threads"], load[0], rows[0]["decoder"]))
    out.append("Ratios are stored bytes / original bytes (lower is better): ours is the whole `.bs` file "
               "(index and 4 KiB alignment included) over the whole safetensors file; zstd and ZipNN "
               "compress the data section. The floor is the per-tensor order-0 entropy of the whole "
               "element value (for FP32 it is not a real floor: most 32-bit values occur once, so the "
               "empirical entropy underestimates). *Derived* files are value conversions of the real "
               "MiniLM weights made by `bench/corpus.py`, not published checkpoints.\n")
    out.append("## Ratio\n")
    out.append("| file | dtype | real/derived | floor | balanced | storage | inference | zstd -3 | zstd -19 | ZipNN | "
               "balanced - floor (bits/w) | storage - floor (bits/w) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f, modes in by_file.items():
        meta = info.get(f, {})
        b, s, i = modes.get("balanced"), modes.get("storage"), modes.get("inference")
        z = zipnn.get(f, {})
        pct = lambda v: "-" if v is None else "%.2f%%" % (100 * v)
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %+.3f | %+.3f |" % (
            os.path.basename(f), meta.get("dtype", "?"), "derived" if meta.get("derived") else "real",
            pct(b["floor_ratio"]), pct(b["ours_ratio_file"]), pct(s["ours_ratio_file"]), pct(i["ours_ratio_file"]),
            pct(b["zstd3_ratio"]), pct(b.get("zstd19_ratio")), pct(z.get("zipnn_ratio")),
            b["ours_bits_per_weight"] - b["floor_bits_per_weight"],
            s["ours_bits_per_weight"] - s["floor_bits_per_weight"]))
    out.append("\n## Speed (GB/s of original bytes; library throughput, in-memory, every tensor hash checked on decode)\n")
    out.append("| file | mode | encode 1t | encode all | decode 1t | decode all | ZipNN encode 1t | ZipNN decode 1t | "
               "ZipNN decode all | CLI compress wall (s) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for f, modes in by_file.items():
        z = zipnn.get(f, {})
        for m in ("balanced", "storage", "inference"):
            r = modes[m]
            g = lambda k: "-" if z.get(k) is None else "%.2f" % z[k]
            out.append("| %s | %s | %.2f | %.2f | %.2f | %.2f | %s | %s | %s | %.2f |" % (
                os.path.basename(f), m, r["encode_gbps_1t"], r["encode_gbps_mt"], r["decode_gbps_1t"],
                r["decode_gbps_mt"], g("zipnn_encode_gbps_1t"), g("zipnn_decode_gbps_1t"),
                g("zipnn_decode_gbps_mt"), r["compress_wall_s"]))
    out.append("\nSingle-thread figures use thread CPU time (robust to other load on a shared machine); "
               "multi-thread figures use wall time.\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
