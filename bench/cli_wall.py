#!/usr/bin/env python3
"""Whole-process wall time of the CLI: `bigsmall compress` and `bigsmall decompress` per file and mode.

    python3 bench/cli_wall.py --bigsmall build/cli/bigsmall [--modes balanced,storage,inference]
        [--repeat 2] [--threads 0] [--tmp /dev/shm] FILE...

Compress writes FILE's .bs under --tmp; decompress rebuilds the safetensors file there (tmpfs by
default, so the figure is the CLI's own cost, not a disk's), best of --repeat. --threads 0: all
cores. One JSON line per file and mode: compress_wall_s, decompress_wall_s, decompress_gbps
(original file bytes / wall second), bs_bytes. Outputs are removed after each file.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODE_FLAG = {"balanced": [], "storage": ["--storage"], "inference": ["--inference"]}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--bigsmall", required=True)
    ap.add_argument("--modes", default="balanced,storage,inference")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
    a = ap.parse_args()
    bad = 0
    for f in a.files:
        size = os.path.getsize(f)
        for m in [x for x in a.modes.split(",") if x]:
            bs = os.path.join(a.tmp, f"cli_wall_{os.getpid()}.bs")
            out = os.path.join(a.tmp, f"cli_wall_{os.getpid()}.safetensors")
            row = {"file": os.path.abspath(f), "mode": m, "threads": a.threads or os.cpu_count(), "tmp": a.tmp}
            try:
                row["compress_wall_s"] = min(timed([a.bigsmall, "compress", f, "-o", bs, "-f", "-q", "--threads",
                                                    str(a.threads)] + MODE_FLAG[m]) for _ in range(a.repeat))
                row["bs_bytes"] = os.path.getsize(bs)
                row["decompress_wall_s"] = min(timed([a.bigsmall, "decompress", bs, "-o", out, "-f", "-q",
                                                      "--threads", str(a.threads)]) for _ in range(a.repeat))
                row["decompress_gbps"] = size / row["decompress_wall_s"] / 1e9
                row["roundtrip_size_ok"] = os.path.getsize(out) == size
            except Exception as ex:  # report, keep going
                row["error"] = str(ex)
                bad += 1
            finally:
                for p in (bs, out):
                    if os.path.exists(p):
                        os.unlink(p)
            print(json.dumps(row), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
