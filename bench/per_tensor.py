#!/usr/bin/env python3
"""Per-tensor comparison of our stored blobs with the floor and every peer, tensor by tensor.

    python3 bench/per_tensor.py --bigsmall build/cli/bigsmall FILE.safetensors|DIR ... \
        [--jobs 2] [--out per_tensor.jsonl] [--summary-out summary.json] [--top 30] \
        [--modes balanced,storage,inference] [--no-zipnn] [--no-pypi] [--refresh-peers]

For every tensor of every file (a DIR means its *.safetensors files):
  ours      the blob bytes of that tensor in the .bs file the CLI writes in each mode
            (`bigsmall compress [--storage|--inference] --threads 1`, then `bigsmall info --json
            --tensors`: stored_bytes; if info cannot summarise a blob, the .bs index is parsed
            here per docs/FORMAT.md section 3). Index records and 4 KiB group padding are not
            counted per tensor (the per-file .bs size is reported too).
  floor     order-0 entropy of the whole element value (dtypes of <= 16 bits; for wider ones
            most values are unique and the empirical figure is no floor), and the sum over byte
            positions of each byte plane's order-0 entropy, in bytes.
  zstd19    python `zstandard`, level 19, one frame of the tensor's bytes.
  zipnn     ZipNN (pip `zipnn`), byte input, threads=1, its default method (AUTO) and chunk, in the
            bytearray_dtype of the tensor's dtype (F32 float32, BF16 bfloat16, F16 float16,
            F8_E4M3 float8_e4m3fn, F8_E5M2 float8_e5m2). ZipNN has no integer byte mode; 1-, 2-
            and 4-byte integer tensors go through its float8/float16/float32 byte mode (a
            lossless byte-plane split, labelled in zipnn_mode); 8-byte integers are skipped.
  pypi      the PyPI `bigsmall` package (4.0.0), in its own venv (--pypi-python), through
            bench/pypi_bigsmall_worker.py (see there: the tensor encoded alone as its compress()
            does, cost = blob + its per-tensor codec parameters).
Peers and floors are cached by a hash of (dtype, shape, bytes) in --peer-cache
(default ~/.cache/bigsmall/peer-cache), with the peer's version, so a rerun recomputes only ours.
Peer decode times (1 thread, CPU seconds) are kept with them.

Writes one JSON line per tensor (--out) and a per-file summary (--summary-out), and prints every
tensor whose --storage blob is larger than the best peer's, sorted by the loss in bytes.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time

import warnings

import numpy as np

warnings.filterwarnings("ignore", category=FutureWarning)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("balanced", "storage", "inference")
MODE_FLAG = {"balanced": [], "storage": ["--storage"], "inference": ["--inference"]}
ZIPNN_FLOAT = {"F32": "float32", "BF16": "bfloat16", "F16": "float16",
               "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
ZIPNN_BY_WIDTH = {1: "float8_e4m3fn", 2: "float16", 4: "float32"}
FLOOR_VERSION = "1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Ours: compress with the CLI, per-tensor blob sizes from `info --json --tensors` (or the index)
# ------------------------------------------------------------------------------------------------
def parse_bs_index(path: str) -> list[dict]:
    """Per-tensor blob sizes from a .bs file's index (docs/FORMAT.md sections 2-3), in the order of
    the tensors' data offsets."""
    import zstandard
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:8] != b"\x89BSM\r\n\x1a\n":
            raise ValueError(f"{path}: not a .bs file")
        index_offset, stored, raw_size = struct.unpack_from("<QQQ", hdr, 16)
        f.seek(index_offset)
        ix = zstandard.ZstdDecompressor().decompress(f.read(stored), max_output_size=raw_size)
    pos = 0

    def take(n):
        nonlocal pos
        b = ix[pos:pos + n]
        if len(b) != n:
            raise ValueError("truncated index")
        pos += n
        return b

    def u32():
        return struct.unpack("<I", take(4))[0]

    def u64():
        return struct.unpack("<Q", take(8))[0]

    take(u32())              # writer
    take(1)                  # mode
    u64()                    # original_size
    take(16)                 # original_hash
    take(u32())              # base_name
    prefix = take(u64())     # prefix_size + prefix
    u32()                    # num_groups
    nt = u32()
    (hn,) = struct.unpack_from("<Q", prefix, 0)
    hdrj = json.loads(prefix[8:8 + hn])
    hdrj.pop("__metadata__", None)
    names = [n for n, _ in sorted(hdrj.items(), key=lambda kv: tuple(kv[1]["data_offsets"]))]
    if len(names) != nt:
        raise ValueError(f"index has {nt} tensors, its header {len(names)}")
    out = []
    for i in range(nt):
        u32()
        u64()
        size = u64()
        take(16)
        flags = take(1)[0]
        if flags & 1:
            take(16)
        out.append({"name": names[i], "stored_bytes": size, "coders": None})
    return out


def run_ours(bigsmall: str, path: str, mode: str, tmpdir: str) -> dict:
    out = os.path.join(tmpdir, f"{os.getpid()}-{abs(hash((path, mode)))}.bs")
    cmd = [bigsmall, "compress", path, "-o", out, "--threads", "1", "-f", "-q"] + MODE_FLAG[mode]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"error": f"compress exit {r.returncode}: {r.stderr.strip()[-500:]}"}
    res = {"bs_bytes": os.path.getsize(out), "compress_wall_s": wall, "tensors": {}}
    info = subprocess.run([bigsmall, "info", out, "--json", "--tensors"], capture_output=True, text=True)
    rows = None
    if info.returncode == 0:
        try:
            rows = json.loads(info.stdout).get("tensors")
            res["source"] = "bigsmall info --json --tensors"
        except json.JSONDecodeError:
            rows = None
    if rows is None:
        res["info_error"] = (info.stderr.strip() or info.stdout.strip())[-300:]
        rows = parse_bs_index(out)
        res["source"] = "index parsed by per_tensor.py (info --tensors failed)"
    for t in rows:
        res["tensors"][t["name"]] = {"bytes": int(t["stored_bytes"]), "coders": t.get("coders")}
    os.unlink(out)
    return res


# ------------------------------------------------------------------------------------------------
# Peers and floors (in worker processes)
# ------------------------------------------------------------------------------------------------
def entropy_bytes(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    if n == 0:
        return 0.0
    return float(-(c * np.log2(c / n)).sum() / 8)


def floors(raw: bytes, width: int) -> dict:
    a = np.frombuffer(raw, dtype=np.uint8)
    out = {"version": FLOOR_VERSION}
    if width in (1, 2) and len(a) % width == 0:
        v = a if width == 1 else a.view(np.uint16)
        out["elem_bytes"] = entropy_bytes(np.bincount(v, minlength=1 << (8 * width)))
    else:
        out["elem_bytes"] = None
    if width >= 1 and len(a) % width == 0:
        planes = a.reshape(-1, width)
        out["planes_bytes"] = sum(entropy_bytes(np.bincount(planes[:, k], minlength=256)) for k in range(width))
    else:
        out["planes_bytes"] = entropy_bytes(np.bincount(a, minlength=256))
    return out


def zstd19(raw: bytes) -> dict:
    import zstandard
    c = zstandard.ZstdCompressor(level=19)
    t0 = time.process_time()
    blob = c.compress(raw)
    enc = time.process_time() - t0
    d = zstandard.ZstdDecompressor()
    best = float("inf")
    for _ in range(2):
        t0 = time.process_time()
        back = d.decompress(blob)
        best = min(best, time.process_time() - t0)
    return {"version": zstandard.__version__, "bytes": len(blob), "encode_s": enc, "decode_s": best,
            "ok": back == raw}


def zipnn_mode(dtype: str, width: int) -> str | None:
    return ZIPNN_FLOAT.get(dtype) or ZIPNN_BY_WIDTH.get(width)


def zipnn_run(raw: bytes, dtype: str, width: int) -> dict:
    import contextlib
    import io
    ver = importlib.metadata.version("zipnn")
    mode = zipnn_mode(dtype, width)
    if mode is None:
        return {"version": ver, "bytes": None, "mode": None, "skip": f"ZipNN has no byte mode for {dtype}"}
    try:
        from zipnn import ZipNN
        with contextlib.redirect_stdout(io.StringIO()):
            z = ZipNN(bytearray_dtype=mode, threads=1)
            t0 = time.process_time()
            # compress() rewrites its input in place (0.5.4): give it a copy
            blob = bytes(z.compress(bytearray(raw)))
            enc = time.process_time() - t0
            best, back = float("inf"), None
            for _ in range(2):
                zd = ZipNN(bytearray_dtype=mode, threads=1)
                buf = bytearray(blob)
                t0 = time.process_time()
                back = zd.decompress(buf)
                best = min(best, time.process_time() - t0)
        ok = bytes(back) == raw
        res = {"version": ver, "bytes": len(blob), "mode": mode, "encode_s": enc, "decode_s": best, "ok": ok}
        if mode != ZIPNN_FLOAT.get(dtype):
            res["note"] = f"{dtype} through ZipNN's {mode} byte mode (it has no integer mode)"
        if not ok:
            res["bytes"] = None
            res["skip"] = "ZipNN round trip mismatch"
        return res
    except Exception as ex:
        return {"version": ver, "bytes": None, "mode": mode, "skip": f"ZipNN failed: {type(ex).__name__}: {ex}"[:300]}


_PYPI = None


def pypi_run(py: str, job: dict) -> dict:
    global _PYPI
    if _PYPI is None:
        _PYPI = subprocess.Popen([py, os.path.join(HERE, "pypi_bigsmall_worker.py")], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = json.loads(_PYPI.stdout.readline())
        _PYPI.version = hello["version"]
    _PYPI.stdin.write(json.dumps(job) + "\n")
    _PYPI.stdin.flush()
    line = _PYPI.stdout.readline()
    if not line:
        _PYPI = None
        return {"bytes": None, "skip": "PyPI bigsmall worker died"}
    r = json.loads(line)
    r["version"] = getattr(_PYPI, "version", "?") if _PYPI else "?"
    if "error" in r:
        return {"version": r["version"], "bytes": None, "skip": "PyPI bigsmall failed: " + r["error"][:300]}
    if not r.get("ok"):
        r["skip"] = "PyPI bigsmall round trip mismatch"
        r["bytes"] = None
    return r


def peer_task(task: dict) -> dict:
    """Compute the missing parts of one tensor's peer record (runs in a worker process)."""
    with open(task["path"], "rb") as f:
        f.seek(task["offset"])
        raw = f.read(task["nbytes"])
    rec = dict(task["have"])
    need = task["need"]
    if "floor" in need:
        rec["floor"] = floors(raw, task["width"])
    if "zstd19" in need:
        rec["zstd19"] = zstd19(raw)
    if "zipnn" in need:
        rec["zipnn"] = zipnn_run(raw, task["dtype"], task["width"])
    if "pypi" in need:
        rec["pypi"] = pypi_run(task["pypi_python"], {"path": task["path"], "offset": task["offset"],
                                                     "nbytes": task["nbytes"], "dtype": task["dtype"],
                                                     "shape": task["shape"], "name": task["name"]})
    return rec


# ------------------------------------------------------------------------------------------------
def tensor_key(dtype: str, shape: list, raw) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{dtype}|{shape}|".encode())
    h.update(raw)
    return h.hexdigest()


def cache_path(cache: str, key: str) -> str:
    return os.path.join(cache, key[:2], key + ".json")


def expand(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".safetensors"))
        else:
            out.append(p)
    return out


def fmt_bytes(n) -> str:
    return "-" if n is None else f"{n:,.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--bigsmall", required=True, help="our CLI, e.g. build/cli/bigsmall")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", default="per_tensor.jsonl")
    ap.add_argument("--summary-out", default=None)
    ap.add_argument("--top", type=int, default=30, help="print this many losses (0: all)")
    ap.add_argument("--peer-cache", default=os.path.join(os.path.expanduser("~"), ".cache", "bigsmall", "peer-cache"))
    ap.add_argument("--refresh-peers", action="store_true", help="recompute peers even when cached")
    ap.add_argument("--no-zipnn", action="store_true")
    ap.add_argument("--no-pypi", action="store_true")
    ap.add_argument("--pypi-python", default="/work/venv-pypi-bigsmall/bin/python",
                    help="python of the venv holding the PyPI bigsmall package")
    ap.add_argument("--labels", default=None, help="JSON {path: {derived: bool, ...}} merged into the rows")
    a = ap.parse_args()
    files = expand(a.files)
    modes = [m for m in a.modes.split(",") if m]
    t_start = time.time()
    skips = []
    peers = ["floor", "zstd19"]
    try:
        import zipnn  # noqa: F401
        if not a.no_zipnn:
            peers.append("zipnn")
    except ImportError:
        skips.append("ZipNN skipped: `import zipnn` failed (pip install zipnn)")
    if a.no_zipnn:
        skips.append("ZipNN skipped: --no-zipnn")
    if a.no_pypi:
        skips.append("PyPI bigsmall skipped: --no-pypi")
    elif not os.path.exists(a.pypi_python):
        skips.append(f"PyPI bigsmall skipped: no {a.pypi_python} (python3 -m venv /work/venv-pypi-bigsmall && "
                     "/work/venv-pypi-bigsmall/bin/pip install bigsmall==4.0.0)")
    else:
        peers.append("pypi")
    for s in skips:
        log("[per_tensor] " + s)
    labels = json.load(open(a.labels)) if a.labels else {}

    # ---- ours: every file x mode, --jobs CLI processes at a time, each on one thread ----
    ours: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="per_tensor_") as tmp, cf.ThreadPoolExecutor(a.jobs) as pool:
        futs = {pool.submit(run_ours, a.bigsmall, f, m, tmp): (f, m) for f in files for m in modes}
        for fut in cf.as_completed(futs):
            ours[futs[fut]] = fut.result()
    t_ours = time.time() - t_start
    log(f"[per_tensor] ours: {len(files)} files x {len(modes)} modes in {t_ours:.1f} s")

    # ---- peers: cached by tensor hash; missing parts computed in --jobs processes ----
    tensors = []   # (file, name, entry, key)
    tasks = []
    for f in files:
        _, entries, start = st_io.read_header(f)
        mm = np.memmap(f, dtype=np.uint8, mode="r") if os.path.getsize(f) > 0 else None
        for name, e in entries:
            b, en = e["data_offsets"]
            raw = memoryview(mm[start + b:start + en]) if en > b else b""
            key = tensor_key(e["dtype"], e["shape"], raw)
            width = st_io.itemsize(e["dtype"]) if e["dtype"] in st_io.ST_DTYPES else 1
            have = {}
            cp = cache_path(a.peer_cache, key)
            if os.path.exists(cp) and not a.refresh_peers:
                try:
                    have = json.load(open(cp))
                except (OSError, json.JSONDecodeError):
                    have = {}
            need = [p for p in peers if p not in have or (p == "floor" and have[p].get("version") != FLOOR_VERSION)]
            if "zipnn" in need or ("zipnn" in peers and have.get("zipnn", {}).get("version") !=
                                   importlib.metadata.version("zipnn")):
                need = sorted(set(need) | {"zipnn"})
            tensors.append((f, name, e, key))
            if need:
                tasks.append({"path": f, "offset": start + b, "nbytes": en - b, "dtype": e["dtype"], "width": width,
                              "shape": e["shape"], "name": name, "key": key, "need": need, "have": have,
                              "pypi_python": a.pypi_python})
            else:
                tasks.append({"key": key, "cached": have})
    records = {}
    todo = [t for t in tasks if "need" in t]
    for t in tasks:
        if "cached" in t:
            records[t["key"]] = t["cached"]
    log(f"[per_tensor] peers: {len(tensors)} tensors, {len(todo)} to compute ({len(tensors) - len(todo)} cached)")
    t1 = time.time()
    if todo:
        # large tensors first, so the pool's tail is short
        todo.sort(key=lambda t: -t["nbytes"])
        with cf.ProcessPoolExecutor(a.jobs) as pool:
            futs = {pool.submit(peer_task, t): t for t in todo}
            done = 0
            for fut in cf.as_completed(futs):
                t = futs[fut]
                rec = fut.result()
                records[t["key"]] = rec
                cp = cache_path(a.peer_cache, t["key"])
                os.makedirs(os.path.dirname(cp), exist_ok=True)
                with open(cp + ".tmp", "w") as fh:
                    json.dump(rec, fh)
                os.replace(cp + ".tmp", cp)
                done += 1
                if done % 200 == 0:
                    log(f"[per_tensor]   {done}/{len(todo)} ({time.time() - t1:.0f} s)")
    t_peers = time.time() - t1
    log(f"[per_tensor] peers computed in {t_peers:.1f} s")

    # ---- rows ----
    rows, summary = [], {}
    for f, name, e, key in tensors:
        rec = records[key]
        nbytes = e["data_offsets"][1] - e["data_offsets"][0]
        row = {"file": os.path.abspath(f), "name": name, "dtype": e["dtype"], "shape": e["shape"], "bytes": nbytes,
               "key": key}
        row.update({k: v for k, v in labels.get(os.path.abspath(f), {}).items() if k in ("derived",)})
        for m in modes:
            o = ours.get((f, m), {})
            t = o.get("tensors", {}).get(name)
            row[f"ours_{m}"] = t["bytes"] if t else None
            row[f"ours_{m}_coders"] = t.get("coders") if t else None
        fl = rec.get("floor", {})
        row["floor_elem"] = fl.get("elem_bytes")
        row["floor_planes"] = fl.get("planes_bytes")
        cand = {}
        z = rec.get("zstd19")
        if z:
            row["zstd19"] = z["bytes"] if z.get("ok") else None
            row["zstd19_decode_s"] = z.get("decode_s")
            if z.get("ok"):
                cand["zstd-19"] = z["bytes"]
        if "zipnn" in peers:
            zn = rec.get("zipnn", {})
            row["zipnn"] = zn.get("bytes")
            row["zipnn_mode"] = zn.get("mode")
            row["zipnn_decode_s"] = zn.get("decode_s")
            if zn.get("skip"):
                row["zipnn_skip"] = zn["skip"]
            if zn.get("bytes") is not None:
                cand["ZipNN"] = zn["bytes"]
        if "pypi" in peers:
            pp = rec.get("pypi", {})
            row["pypi_bigsmall"] = pp.get("bytes")
            row["pypi_codec"] = pp.get("codec")
            row["pypi_decode_s"] = pp.get("decode_s")
            if pp.get("skip"):
                row["pypi_skip"] = pp["skip"]
            if pp.get("bytes") is not None:
                cand["PyPI bigsmall"] = pp["bytes"]
        if cand:
            bp = min(cand, key=cand.get)
            row["best_peer"], row["best_peer_bytes"] = bp, cand[bp]
        else:
            row["best_peer"], row["best_peer_bytes"] = None, None
        for m in modes:
            o, b = row[f"ours_{m}"], row["best_peer_bytes"]
            row[f"loss_{m}"] = None if o is None or b is None else o - b
        rows.append(row)
        s = summary.setdefault(os.path.abspath(f), {
            "file": os.path.abspath(f), "tensors": 0, "bytes": 0, "best_peer_sum": 0, "floor_elem": 0.0,
            "floor_planes": 0.0, "floor_elem_complete": True, "zstd19": 0, "zipnn": 0, "pypi_bigsmall": 0,
            "zipnn_decode_s": 0.0, "pypi_decode_s": 0.0, "zipnn_complete": True, "pypi_complete": True,
            **{f"ours_{m}": 0 for m in modes}, **{f"losses_{m}": 0 for m in modes},
            **{f"loss_bytes_{m}": 0 for m in modes}, "worst": {}})
        s["tensors"] += 1
        s["bytes"] += nbytes
        s["best_peer_sum"] += row["best_peer_bytes"] or 0
        if row["floor_elem"] is None:
            s["floor_elem_complete"] = False
        else:
            s["floor_elem"] += row["floor_elem"]
        s["floor_planes"] += row["floor_planes"] or 0
        s["zstd19"] += row.get("zstd19") or 0
        for p, k in (("zipnn", "zipnn"), ("pypi_bigsmall", "pypi")):
            if row.get(p) is None:
                s[f"{k}_complete"] = False
            else:
                s[p] += row[p]
                s[f"{k}_decode_s"] += row.get(f"{k}_decode_s") or 0
        for m in modes:
            o = row[f"ours_{m}"]
            s[f"ours_{m}"] += o or 0
            if row[f"loss_{m}"] is not None and row[f"loss_{m}"] > 0:
                s[f"losses_{m}"] += 1
                s[f"loss_bytes_{m}"] += row[f"loss_{m}"]
            if o is not None and row["best_peer_bytes"]:
                r = o / row["best_peer_bytes"]
                w = s["worst"].get(m)
                if w is None or r > w["ratio"]:
                    s["worst"][m] = {"ratio": r, "name": name, "ours": o, "peer": row["best_peer"],
                                     "peer_bytes": row["best_peer_bytes"], "bytes": nbytes}
        for m in modes:
            o = ours.get((f, m), {})
            s[f"bs_bytes_{m}"] = o.get("bs_bytes")
            s[f"ours_source_{m}"] = o.get("source")
            if o.get("error"):
                s[f"ours_error_{m}"] = o["error"]
    with open(a.out, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    meta = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "bigsmall": os.path.abspath(a.bigsmall), "modes": modes, "peers": peers, "skips": skips,
            "load_average": os.getloadavg(), "cpu": st_io.cpu_model(), "jobs": a.jobs,
            "seconds": {"ours": t_ours, "peers": t_peers, "total": time.time() - t_start},
            "peers_computed": len(todo), "peers_cached": len(tensors) - len(todo)}
    if a.summary_out:
        with open(a.summary_out, "w") as fh:
            json.dump({"meta": meta, "files": list(summary.values())}, fh, indent=1)

    # ---- report ----
    for f in files:
        for m in modes:
            if ours.get((f, m), {}).get("error"):
                print(f"ERROR ours {m} {f}: {ours[(f, m)]['error']}")
    print(f"# per-tensor: {len(rows)} tensors in {len(files)} files; peers {peers}; "
          f"{meta['seconds']['total']:.0f} s ({len(todo)} peer records computed, rest cached)")
    for s in summary.values():
        line = (f"{os.path.basename(s['file'])}: {s['tensors']} tensors; storage {s.get('ours_storage', 0):,} "
                f"vs sum of best peers {s['best_peer_sum']:,}; storage loses on {s.get('losses_storage', 0)} "
                f"tensors by {s.get('loss_bytes_storage', 0):,} B")
        w = s["worst"].get("storage")
        if w:
            line += f"; worst {w['name']} {w['ours']:,}/{w['peer_bytes']:,} ({w['peer']}) = {w['ratio']:.2f}x"
        print(line)
    if "storage" in modes:
        losses = sorted((r for r in rows if (r["loss_storage"] or 0) > 0), key=lambda r: -r["loss_storage"])
        print(f"\n# --storage larger than the best peer: {len(losses)} tensors, "
              f"{sum(r['loss_storage'] for r in losses):,} bytes in all (sorted by loss; top "
              f"{a.top or len(losses)})")
        print("| loss B | file | tensor | dtype | shape | bytes | balanced | storage | inference | zstd-19 | ZipNN | "
              "PyPI bigsmall | best | storage coders |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in losses[:a.top or None]:
            print(f"| {r['loss_storage']:,} | {os.path.basename(r['file'])} | {r['name']} | {r['dtype']} | "
                  f"{r['shape']} | {r['bytes']:,} | {fmt_bytes(r.get('ours_balanced'))} | "
                  f"{fmt_bytes(r.get('ours_storage'))} | {fmt_bytes(r.get('ours_inference'))} | "
                  f"{fmt_bytes(r.get('zstd19'))} | {fmt_bytes(r.get('zipnn'))} | {fmt_bytes(r.get('pypi_bigsmall'))} | "
                  f"{r['best_peer']} | {r.get('ours_storage_coders') or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
