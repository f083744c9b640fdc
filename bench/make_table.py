#!/usr/bin/env python3
"""Merge the raw results of bench/run_bench.sh into bench/results/BENCHMARKS.md (stdout).

    python3 bench/make_table.py --results bench/results --manifest corpus.json --manifest corpus2.json

Reads, from --results: codec.json (codec_bench), zipnn.jsonl (zipnn_bench), pypi_bigsmall.jsonl
(pypi_bigsmall_bench), cli.jsonl (cli_wall), per_tensor.jsonl + per_tensor_summary.json
(per_tensor), run_meta.json (machine, load, commit; written by run_bench.sh). Missing inputs give
'-' cells and a line saying what is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return default


def load_jsonl(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    rows.append(json.loads(line))
    except OSError:
        pass
    return rows


def pct(v):
    return "-" if v is None else "%.2f%%" % (100 * v)


def num(v, f="%.2f"):
    return "-" if v is None else f % v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="bench/results")
    ap.add_argument("--manifest", action="append", default=[])
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    R = lambda n: os.path.join(a.results, n)  # noqa: E731
    info = {}
    for m in a.manifest:
        man = load_json(m, {})
        for e in man.get("files", []):
            if e.get("kind") == "directory":
                continue
            rel = e.get("file") or e.get("path")
            info[os.path.abspath(os.path.join(man["cache"], rel))] = e
    def label(f):  # the file's path inside its corpus cache (e.g. minilm/model.safetensors)
        e = info.get(f, {})
        return e.get("file") or e.get("path") or os.path.basename(f)

    codec = load_json(R("codec.json"), []) or []
    zipnn = {os.path.abspath(r["file"]): r for r in load_jsonl(R("zipnn.jsonl"))}
    pypi = {os.path.abspath(r["file"]): r for r in load_jsonl(R("pypi_bigsmall.jsonl"))}
    cli = {}
    for r in load_jsonl(R("cli.jsonl")):
        cli[(os.path.abspath(r["file"]), r["mode"])] = r
    pt_rows = load_jsonl(R("per_tensor.jsonl"))
    pt_sum = load_json(R("per_tensor_summary.json"), {}) or {}
    pts = {os.path.abspath(s["file"]): s for s in pt_sum.get("files", [])}
    meta = load_json(R("run_meta.json"), {}) or {}
    by_file: dict[str, dict] = {}
    for r in codec:
        by_file.setdefault(os.path.abspath(r["file"]), {})[r["mode"]] = r
    files = list(by_file) or list(pts)
    missing = [n for n in ("codec.json", "zipnn.jsonl", "pypi_bigsmall.jsonl", "cli.jsonl", "per_tensor.jsonl")
               if not os.path.exists(R(n))]

    out = []
    w = out.append
    w("# Codec benchmark\n")
    decoder = codec[0]["decoder"] if codec else "?"
    threads = codec[0]["threads"] if codec else "?"
    w(f"Measured {meta.get('when', '?')} by `bench/run_bench.sh{' --quick' if meta.get('quick') else ''}` at commit "
      f"`{meta.get('commit', '?')}`{' (working tree had uncommitted changes)' if meta.get('dirty') else ''}, "
      f"on {meta.get('cpu', '?')} ({meta.get('cores', '?')} cores, {meta.get('mem_gb', '?')} GB), "
      f"N = {threads} threads, decoder `{decoder}`. Load average (1, 5, 15 min) at the start "
      f"{' '.join('%.2f' % x for x in meta.get('load_start', []))}, at the end "
      f"{' '.join('%.2f' % x for x in meta.get('load_end', []))} "
      f"(a shared machine: 1-thread figures use thread/process CPU time, N-thread figures wall time). "
      f"Peers: zstd {meta.get('zstd', '?')} (python zstandard {meta.get('zstandard', '?')}), ZipNN "
      f"{meta.get('zipnn', '?')}, PyPI bigsmall {meta.get('pypi_bigsmall', '?')} (its own venv). "
      f"Everything in a row comes from this one run; per-tensor peer sizes come from the per-tensor cache "
      f"(keyed by a hash of each tensor's bytes) and are recomputed whenever a peer's version changes.\n")
    for s in meta.get("skips", []) + [f"missing input: {m}" for m in missing]:
        w(f"- **Skipped**: {s}")
    w("")
    w("Ratios: stored bytes / original bytes, lower is better. Ours and PyPI bigsmall: the whole output file "
      "over the whole safetensors file. zstd -3 and ZipNN: the data section compressed as one stream "
      "(`codec_bench`, `zipnn_bench.py`); zstd -19: the sum of per-tensor frames (`per_tensor.py`, "
      "python zstandard level 19). Floor: per-tensor order-0 entropy of the whole element value for dtypes of "
      "<= 16 bits, and the sum of byte-plane entropies for wider ones (for F32 most values are unique, so no "
      "element floor exists), per tensor, summed over the data section; *(planes)*: most bytes are in "
      "tensors wider than 16 bits. *Worst tensor vs best peer*: over the file's tensors, "
      "the largest ratio of our `--storage` blob to the smallest peer (zstd -19, ZipNN, PyPI bigsmall) on "
      "that tensor, with the tensor's bytes; *losses*: tensors where `--storage` is larger than the best "
      "peer, and the bytes lost. *Derived* files are value conversions made by `bench/corpus.py` / "
      "`bench/corpus2.py`, not published checkpoints.\n")

    floor_of: dict[str, list] = {}  # file -> [floor bytes, bytes of tensors whose floor is the planes sum]
    for r in pt_rows:
        fo = floor_of.setdefault(os.path.abspath(r["file"]), [0.0, 0])
        if r.get("floor_elem") is not None:
            fo[0] += r["floor_elem"]
        else:
            fo[0] += r.get("floor_planes") or 0
            fo[1] += r["bytes"]
    w("## Ratio per file\n")
    w("| file | real/derived | dtype | MB | floor | balanced | storage | inference | zstd -3 | zstd -19 | ZipNN | "
      "PyPI bigsmall | worst tensor vs best peer (storage) | storage losses (tensors, bytes) |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in files:
        e = info.get(f, {})
        modes = by_file.get(f, {})
        s = pts.get(f, {})
        data = s.get("bytes") or (modes.get("balanced", {}).get("data_bytes"))
        fl, flabel = None, ""
        fr = floor_of.get(f)
        if fr and data:
            fl = fr[0] / data
            flabel = " (planes)" if fr[1] > data / 2 else (" (planes for some)" if fr[1] > data / 100 else "")
        wst = (s.get("worst") or {}).get("storage")
        worst = "-" if not wst else "%.2fx `%s` (%s B: %s vs %s %s)" % (
            wst["ratio"], wst["name"], f"{wst['bytes']:,}", f"{wst['ours']:,}", wst["peer"], f"{wst['peer_bytes']:,}")
        z19 = s.get("zstd19") / data if s and data else None
        derived = e.get("derived")
        w("| %s | %s | %s | %.2f | %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label(f), "derived" if derived else ("real" if e else "?"), e.get("dtype", "?"),
            (e.get("bytes") or os.path.getsize(f) if os.path.exists(f) else 0) / 1e6, pct(fl), flabel,
            pct(modes.get("balanced", {}).get("ours_ratio_file")), pct(modes.get("storage", {}).get("ours_ratio_file")),
            pct(modes.get("inference", {}).get("ours_ratio_file")), pct(modes.get("balanced", {}).get("zstd3_ratio")),
            pct(z19), pct(zipnn.get(f, {}).get("zipnn_ratio")), pct(pypi.get(f, {}).get("pypi_ratio")), worst,
            "-" if not s else f"{s.get('losses_storage', 0)}, {s.get('loss_bytes_storage', 0):,}"))

    # per dtype, from the per-tensor rows
    w("\n## Ratio per tensor dtype (all files, from the per-tensor run; blob bytes, no file framing)\n")
    w("| dtype | tensors | MB | floor elem | floor planes | balanced | storage | inference | zstd -19 | ZipNN | "
      "PyPI bigsmall | best peer per tensor | storage losses (tensors, bytes) |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    agg: dict[str, dict] = {}
    for r in pt_rows:
        d = agg.setdefault(r["dtype"], {"n": 0, "bytes": 0, "fe": 0.0, "fe_ok": True, "fp": 0.0, "b": 0, "s": 0,
                                        "i": 0, "z": 0, "zn": 0, "zn_ok": True, "p": 0, "p_ok": True, "best": 0,
                                        "ln": 0, "lb": 0})
        d["n"] += 1
        d["bytes"] += r["bytes"]
        if r.get("floor_elem") is None:
            d["fe_ok"] = False
        else:
            d["fe"] += r["floor_elem"]
        d["fp"] += r.get("floor_planes") or 0
        d["b"] += r.get("ours_balanced") or 0
        d["s"] += r.get("ours_storage") or 0
        d["i"] += r.get("ours_inference") or 0
        d["z"] += r.get("zstd19") or 0
        for k, ok, src in (("zn", "zn_ok", "zipnn"), ("p", "p_ok", "pypi_bigsmall")):
            if r.get(src) is None:
                d[ok] = False
            else:
                d[k] += r[src]
        d["best"] += r.get("best_peer_bytes") or 0
        if (r.get("loss_storage") or 0) > 0:
            d["ln"] += 1
            d["lb"] += r["loss_storage"]
    for dt, d in sorted(agg.items(), key=lambda kv: -kv[1]["bytes"]):
        n = d["bytes"] or 1
        part = lambda v, ok: ("-" if not v else pct(v / n) + " (partial)") if not ok else pct(v / n)  # noqa: E731
        w("| %s | %d | %.2f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d, %s |" % (
            dt, d["n"], d["bytes"] / 1e6, pct(d["fe"] / n) if d["fe_ok"] else "-", pct(d["fp"] / n), pct(d["b"] / n),
            pct(d["s"] / n), pct(d["i"] / n), pct(d["z"] / n), part(d["zn"], d["zn_ok"]), part(d["p"], d["p_ok"]),
            pct(d["best"] / n), d["ln"], f"{d['lb']:,}"))
    w("\n*(partial)*: the peer skipped some tensors of that dtype (ZipNN has no 8-byte integer mode); "
      "ZipNN on integer tensors uses its float byte mode of the same width (a lossless byte split).\n")

    # the issue-11 ratio targets, measured
    w("## Ratio targets (issue 11)\n")
    lost = [r for r in pt_rows if (r.get("loss_storage") or 0) > 0]
    w(f"- `--storage` never larger than zstd -19, ZipNN or PyPI bigsmall on any tensor: larger on "
      f"**{len(lost)} of {len(pt_rows)}** tensors ({sum(r['loss_storage'] for r in lost):,} bytes in all).")
    big = [r for r in pt_rows if r["dtype"] == "BF16" and r["bytes"] >= (1 << 20) and r.get("floor_elem") is not None
           and r.get("ours_storage") is not None]
    if big:
        gaps = sorted(((r["ours_storage"] - r["floor_elem"]) * 8 / (r["bytes"] / 2), r) for r in big)
        over = [g for g in gaps if g[0] > 0.10]
        g, r = gaps[-1]
        w(f"- BF16 within 0.10 bits/weight of the per-tensor order-0 floor on large tensors (>= 1 MiB): "
          f"{len(big) - len(over)} of {len(big)} are; worst +{g:.3f} bits/w (`{r['name']}` in "
          f"{os.path.basename(r['file'])}); median +{gaps[len(gaps) // 2][0]:.3f}.")
    pts_bs, pts_ib = [], []
    for f in files:
        mm = by_file.get(f, {})
        if all(k in mm for k in ("balanced", "storage", "inference")):
            pts_bs.append((100 * (mm["balanced"]["ours_ratio_file"] - mm["storage"]["ours_ratio_file"]), f))
            pts_ib.append((100 * (mm["inference"]["ours_ratio_file"] - mm["balanced"]["ours_ratio_file"]), f))
    if pts_bs:
        mb, mi = max(pts_bs), max(pts_ib)
        w(f"- balanced never more than 0.5 points above storage: {sum(1 for p_ in pts_bs if p_[0] <= 0.5)} of "
          f"{len(pts_bs)} files; worst {mb[0]:+.2f} points ({os.path.basename(mb[1])}).")
        w(f"- `--inference` within 0.3 points of balanced on every file: {sum(1 for p_ in pts_ib if p_[0] <= 0.3)} of "
          f"{len(pts_ib)} files; worst {mi[0]:+.2f} points ({os.path.basename(mi[1])}).")
    w("")

    w("## Speed per file (GB/s of original bytes)\n")
    w("Library: `codec_bench`, in memory, encode per tensor; decode of the whole .bs through the batch "
      "`DecodeTensors` path (every tensor's XXH3-128 checked), 1 thread (thread CPU time) and N threads "
      "(wall). ZipNN: whole data section, threads=1 (1t, process CPU time) and N (wall). PyPI bigsmall: `bigsmall.decompress` of its "
      "whole file, one thread (process CPU time). CLI: whole-process `bigsmall compress` / `decompress` wall "
      "time with N threads, output on tmpfs.\n")
    w(f"| file | mode | encode 1t | encode {threads}t | decode 1t | decode {threads}t | CLI compress s | "
      f"CLI decompress s (GB/s) | ZipNN enc 1t | ZipNN dec 1t | ZipNN dec {threads}t | PyPI bigsmall dec 1t |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in files:
        z = zipnn.get(f, {})
        p = pypi.get(f, {})
        for m in ("balanced", "storage", "inference"):
            r = by_file.get(f, {}).get(m)
            if not r:
                continue
            c = cli.get((f, m), {})
            first = m == "balanced"
            w("| %s | %s | %.2f | %.2f | %.2f | %.2f | %s | %s | %s | %s | %s | %s |" % (
                label(f) if first else "", m, r["encode_gbps_1t"], r["encode_gbps_mt"],
                r["decode_gbps_1t"], r["decode_gbps_mt"], num(c.get("compress_wall_s")),
                "-" if c.get("decompress_wall_s") is None else "%.2f (%.2f)" % (c["decompress_wall_s"],
                                                                                 c["decompress_gbps"]),
                num(z.get("zipnn_encode_gbps_1t")) if first else "", num(z.get("zipnn_decode_gbps_1t")) if first else "",
                num(z.get("zipnn_decode_gbps_mt")) if first else "",
                num(p.get("pypi_decode_gbps_1t"), "%.3f") if first else ""))

    losses = sorted((r for r in pt_rows if (r.get("loss_storage") or 0) > 0), key=lambda r: -r["loss_storage"])
    w(f"\n## Tensors where `--storage` is larger than the best peer ({len(losses)} of {len(pt_rows)}, "
      f"{sum(r['loss_storage'] for r in losses):,} bytes in all; top {a.top} by bytes lost)\n")
    w("| loss B | file | tensor | dtype | shape | bytes | balanced | storage | inference | zstd -19 | ZipNN | "
      "PyPI bigsmall | best |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    fb = lambda v: "-" if v is None else f"{v:,}"  # noqa: E731
    for r in losses[:a.top]:
        w(f"| {r['loss_storage']:,} | {os.path.basename(r['file'])} | `{r['name']}` | {r['dtype']} | {r['shape']} | "
          f"{r['bytes']:,} | {fb(r.get('ours_balanced'))} | {fb(r.get('ours_storage'))} | "
          f"{fb(r.get('ours_inference'))} | {fb(r.get('zstd19'))} | {fb(r.get('zipnn'))} | "
          f"{fb(r.get('pypi_bigsmall'))} | {r.get('best_peer')} |")
    w("\nRaw data: `codec.json`, `zipnn.jsonl`, `pypi_bigsmall.jsonl`, `cli.jsonl`, `per_tensor.jsonl` "
      "(every tensor: ours per mode with its coders, floors, each peer), `per_tensor_summary.json`, "
      "`run_meta.json` beside this file.\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
