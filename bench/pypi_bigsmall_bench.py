#!/usr/bin/env python3
"""Whole-file ratio and 1-thread decode speed of the PyPI `bigsmall` package (4.0.0), which shares
our import name and so runs in its own venv through bench/pypi_bigsmall_worker.py.

    python3 bench/pypi_bigsmall_bench.py [--python /work/venv-pypi-bigsmall/bin/python] [--repeat 2] FILE...

One JSON line per file on stdout: pypi_ratio (its .bs bytes / safetensors file bytes, lower is
better), pypi_decode_gbps_1t (data-section bytes / process CPU seconds of bigsmall.decompress,
numba on one thread, best of --repeat), pypi_encode_gbps_1t (compress(workers=1)), roundtrip_ok.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--python", default="/work/venv-pypi-bigsmall/bin/python")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    if not os.path.exists(a.python):
        print(f"[pypi_bigsmall_bench] skipped: no {a.python}", file=sys.stderr)
        return 0
    bad = 0
    with tempfile.TemporaryDirectory(prefix="pypi_bs_") as tmp:
        p = subprocess.Popen([a.python, os.path.join(HERE, "pypi_bigsmall_worker.py")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, bufsize=1)
        version = json.loads(p.stdout.readline())["version"]
        for f in a.files:
            print(f"[pypi_bigsmall_bench] {f}", file=sys.stderr, flush=True)
            p.stdin.write(json.dumps({"file": os.path.abspath(f), "tmpdir": tmp, "repeat": a.repeat}) + "\n")
            p.stdin.flush()
            r = json.loads(p.stdout.readline())
            row = {"file": os.path.abspath(f), "pypi_bigsmall_version": version}
            if "error" in r:
                row.update({"pypi_ratio": None, "note": r["error"][:300]})
                bad += 1
            else:
                row.update({
                    "pypi_ratio": r["bs_bytes"] / r["file_bytes"],
                    "pypi_bs_bytes": r["bs_bytes"],
                    "pypi_decode_gbps_1t": r["data_bytes"] / max(r["decode_cpu_s"], 1e-9) / 1e9,
                    "pypi_decode_wall_gbps": r["data_bytes"] / max(r["decode_wall_s"], 1e-9) / 1e9,
                    "pypi_encode_gbps_1t": r["data_bytes"] / max(r["encode_cpu_s"], 1e-9) / 1e9,
                    "roundtrip_ok": r["ok"],
                })
                if not r["ok"]:
                    row["pypi_ratio"] = None
                    row["note"] = "ROUND TRIP MISMATCH"
                    bad += 1
            print(json.dumps(row), flush=True)
        p.stdin.close()
        p.wait()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
