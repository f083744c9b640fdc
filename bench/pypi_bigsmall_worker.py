#!/usr/bin/env python3
"""Per-tensor worker for the PyPI `bigsmall` package (a different project with the same import name).

Run it with the python of its own venv (never ours: the import names clash), e.g.
    /work/venv-pypi-bigsmall/bin/python bench/pypi_bigsmall_worker.py
It reads one JSON job per stdin line, {"path", "offset", "nbytes", "dtype" (safetensors code),
"shape", "name"}, reads those bytes of the file itself, and prints one JSON line per job:
{"bytes", "blob_bytes", "extras_bytes", "codec", "encode_s", "decode_s", "ok"} or {"error": ...}.

It encodes the tensor alone the way bigsmall 4.0.0's compress() does each tensor
(encoder._compress_impl): tensor_analysis.analyze_tensors on the tensor (so its lowcard / wpe_delta
special codecs apply; cross-tensor tying cannot, a tensor is alone), tensors under
RAW_TINY_THRESHOLD bytes stored raw, else encoder._encode_worker (auto_select_codec: every
candidate codec, smallest wins) with compress()'s defaults (enable_a5, no GPU layout, not
prefer_speed, fp2 residual on). Cost `bytes` = blob + the JSON of its codec parameters ("extra"),
which its container header stores per tensor (names, shapes and offsets are not counted, as they
are not for the other coders). Decoded with decoder._decode_blob and compared byte for byte.
Times are process CPU seconds (NUMBA_NUM_THREADS=1: one thread), decode best of 2 (the first call
may include numba JIT compilation).

File mode: a job {"file": PATH, "tmpdir": DIR, "repeat": N} runs the package's own whole-file path,
bigsmall.compress(PATH, DIR/x.bs, workers=1, progress=False) and bigsmall.decompress (best of N,
process CPU time and wall time), checks every tensor's bytes, and prints {"bs_bytes",
"data_bytes", "file_bytes", "encode_cpu_s", "encode_wall_s", "decode_cpu_s", "decode_wall_s", "ok"}.
"""
import json
import os
import sys
import time

os.environ.setdefault("BIGSMALL_DISABLE_VERSION_CHECK", "1")  # no PyPI call on import
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bigsmall import decoder, encoder, formats  # noqa: E402
from bigsmall import tensor_analysis as ta  # noqa: E402
from bigsmall._st_raw import _ST_CODE_TO_NAME  # noqa: E402
import bigsmall  # noqa: E402


def run(job: dict) -> dict:
    with open(job["path"], "rb") as f:
        f.seek(job["offset"])
        raw = f.read(job["nbytes"])
    shape = list(job["shape"])
    dtype = _ST_CODE_TO_NAME.get(job["dtype"], job["dtype"])
    try:
        fmt = formats.detect_format_from_dtype(dtype)
    except ValueError:
        fmt = "raw"
    n = int(np.prod(shape)) if shape else 1
    item_bytes = len(raw) // max(1, n) if shape else len(raw)
    t = {"name": job["name"], "shape": shape, "dtype": dtype, "item_bytes": item_bytes, "raw": raw, "fmt": fmt}
    t0 = time.process_time()
    if len(raw) < encoder.RAW_TINY_THRESHOLD:
        blob, codec, extras = raw, "raw", {"n_bytes": len(raw)}
    else:
        kind = ta.analyze_tensors([t])[0][0]["kind"]
        _, blob, codec, extras, _ = encoder._encode_worker(
            (0, kind, fmt, raw, item_bytes, shape, dtype, job["name"], True, False, False, True))
    enc = time.process_time() - t0
    entry = {"name": job["name"], "shape": shape, "dtype": dtype, "codec": codec, "extra": extras or None}
    best, back = float("inf"), None
    for _ in range(2):
        t0 = time.process_time()
        back = decoder._decode_blob(entry, blob)
        best = min(best, time.process_time() - t0)
    extras_bytes = len(json.dumps(extras or None, separators=(",", ":")))
    return {"bytes": len(blob) + extras_bytes, "blob_bytes": len(blob), "extras_bytes": extras_bytes,
            "codec": codec, "encode_s": enc, "decode_s": best, "ok": bytes(back) == raw}


def run_file(job: dict) -> dict:
    import contextlib
    import io
    from bigsmall._st_raw import iter_raw
    path = job["file"]
    dst = os.path.join(job["tmpdir"], f"pypi-{os.getpid()}.bs")
    try:
        t0, w0 = time.process_time(), time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            bigsmall.compress(path, dst, workers=1, progress=False)
        enc, encw = time.process_time() - t0, time.perf_counter() - w0
        orig = {name: raw for name, _, _, raw in iter_raw(path)}
        data_bytes = sum(len(r) for r in orig.values())
        best, bestw, out = float("inf"), float("inf"), None
        for _ in range(max(1, int(job.get("repeat", 2)))):
            out = None
            t0, w0 = time.process_time(), time.perf_counter()
            out = bigsmall.decompress(dst, progress=False)
            best, bestw = min(best, time.process_time() - t0), min(bestw, time.perf_counter() - w0)
        ok = set(out) == set(orig) and all(np.ascontiguousarray(out[k]).tobytes() == bytes(orig[k]) for k in orig)
        return {"bs_bytes": os.path.getsize(dst), "data_bytes": data_bytes, "file_bytes": os.path.getsize(path),
                "encode_cpu_s": enc, "encode_wall_s": encw, "decode_cpu_s": best, "decode_wall_s": bestw, "ok": ok}
    finally:
        if os.path.exists(dst):
            os.unlink(dst)


def main() -> int:
    print(json.dumps({"ready": True, "version": bigsmall.__version__}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            job = json.loads(line)
            res = run_file(job) if "file" in job else run(job)
        except Exception as ex:  # report per job; keep serving
            res = {"error": f"{type(ex).__name__}: {ex}"}
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
