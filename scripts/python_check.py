#!/usr/bin/env python3
"""The Python check that ends the demo: a compressed MiniLM computes the original's embeddings.

    python3 scripts/python_check.py COMPRESSED [--original DIR] [--daemon SOCKET] [--device cpu|cuda]

COMPRESSED is the .bs directory (or .bs file) made by `bigsmall compress` from ORIGINAL, a
sentence-transformers model directory (default: $BIGSMALL_CORPUS_DIR, else
~/.cache/bigsmall/corpus/minilm-dir: all-MiniLM-L6-v2). sentence-transformers loads ORIGINAL and
encodes fixed sentences; then, for each path, its transformer's weights are overwritten with NaN
and replaced by the ones bigsmall delivers (strict: the same keys, dtypes and shapes), and the
embeddings must be BIT-identical (torch.equal) to the original's:

    in-process            bigsmall.from_pretrained (the C++ decoder in this process)
    daemon                bigsmall.from_pretrained(daemon=SOCKET) (the daemon's shared memory)
    streaming in-process  bigsmall.StreamingLoader, layer by layer into the model
    streaming daemon      the same through the daemon

The daemon paths run when --daemon (or $BIGSMALL_SOCKET) names a running bigsmalld that can open
COMPRESSED. One line per path; the exit status is 1 if any path differs or fails, 0 otherwise.
Offline (HF_HUB_OFFLINE=1). One CPU thread (bit-identity needs the same kernels in the same order).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Fixed, varied inputs: plain English, long (past the 256-token limit: truncation), punctuation,
# digits, accents, CJK, Cyrillic, Arabic (RTL), emoji and ZWJ sequences, combining marks,
# control-ish whitespace, a single character, and empty / whitespace-only strings.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Lossless compression of model weights: every bit must come back.",
    " ".join(["A long sentence that keeps going to exceed the model's sequence limit."] * 40),
    "¿Dónde está la biblioteca? Ça va très bien, merci. Grüße aus Köln!",
    "机器学习模型的权重可以无损压缩。日本語のテキストも。한국어 문장입니다.",
    "Привет, мир! Это проверка кодировки.",
    "مرحبا بالعالم، هذا اختبار للنص من اليمين إلى اليسار.",
    "Emoji: 🚀🔥👩\u200d💻 🏳️\u200d🌈 and flags 🇫🇷🇯🇵",
    "Combining marks: e\u0301 a\u0308 n\u0303 Z\u0351\u0334a\u0358l\u0337g\u0336o\u0353",
    "3.14159 2.71828 1e-10 0xDEADBEEF 42% $1,000,000 #hashtag @user",
    "\ttabs\tand\nnew\nlines\r\n",
    "x",
    "",
    "   ",
]


def auto_model(st_model) -> "torch.nn.Module":
    """The transformers model inside a SentenceTransformer (its keys are the file's)."""
    first = st_model[0]
    model = getattr(first, "auto_model", None)
    return model if model is not None else first.model


def encode(st_model) -> "torch.Tensor":
    """The embeddings of SENTENCES (unnormalised, batches of 4)."""
    import torch
    with torch.inference_mode():
        return st_model.encode(SENTENCES, convert_to_tensor=True, batch_size=4,
                               show_progress_bar=False, normalize_embeddings=False)


def poison(module: "torch.nn.Module") -> None:
    """Overwrites every weight of `module`: NaN (floating point), -1 (integers)."""
    import torch
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.fill_(float("nan"))
            else:
                t.fill_(-1)


def default_original() -> str:
    if os.environ.get("BIGSMALL_CORPUS_DIR"):
        return os.environ["BIGSMALL_CORPUS_DIR"]
    cache = os.environ.get("BIGSMALL_CACHE", str(Path.home() / ".cache/bigsmall/corpus"))
    return str(Path(cache) / "minilm-dir")


class Mismatch(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("compressed", help="the .bs directory or .bs file")
    ap.add_argument("--original", default=default_original(),
                    help="the uncompressed sentence-transformers model directory")
    ap.add_argument("--daemon", default=os.environ.get("BIGSMALL_SOCKET"),
                    help="a running bigsmalld's socket (default $BIGSMALL_SOCKET; none: in "
                         "process only)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = ap.parse_args()

    # In-process means in process: bigsmall reads $BIGSMALL_SOCKET when daemon=None.
    os.environ.pop("BIGSMALL_SOCKET", None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    original = Path(args.original)
    if original.is_file():  # e.g. .../model.safetensors: its directory is the model
        original = original.parent
    if not (original / "modules.json").is_file() and not (original / "config.json").is_file():
        print(f"{original} is not a sentence-transformers / transformers model directory "
              "(--original)", file=sys.stderr)
        return 2

    import torch
    import bigsmall
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)

    model = SentenceTransformer(str(original), device=args.device)
    model.eval()
    inner = auto_model(model)
    reference = encode(model)
    target = inner.state_dict()
    buffers = dict(inner.named_buffers())

    def put(name: str, tensor, seen: set) -> None:
        """One delivered tensor into the model: exactly its key, dtype and shape."""
        if name in seen:
            raise Mismatch(f"{name} delivered twice")
        seen.add(name)
        if name not in target and name in buffers:
            # a non-persistent buffer (embeddings.position_ids), which transformers' loader skips
            if not torch.equal(tensor.to(buffers[name].device), buffers[name]):
                raise Mismatch(f"{name}: the file's buffer differs from the model's")
            return
        if name not in target:
            raise Mismatch(f"unexpected tensor {name}")
        dst = target[name]
        if (tensor.dtype, tuple(tensor.shape)) != (dst.dtype, tuple(dst.shape)):
            raise Mismatch(f"{name}: {tensor.dtype}{tuple(tensor.shape)}, the model has "
                           f"{dst.dtype}{tuple(dst.shape)}")
        with torch.no_grad():
            dst.copy_(tensor)

    def check_complete(seen: set) -> None:
        missing = set(target) - seen
        if missing:
            raise Mismatch(f"never delivered: {sorted(missing)[:5]} ({len(missing)} keys)")

    def whole(sock):
        poison(inner)
        weights = bigsmall.from_pretrained(args.compressed, device=args.device, daemon=sock)
        seen: set = set()
        for name, tensor in weights.items():
            put(name, tensor, seen)
        check_complete(seen)
        return f"{len(seen)} tensors"

    def streaming(sock):
        poison(inner)
        seen: set = set()
        with bigsmall.StreamingLoader(args.compressed, device=args.device, daemon=sock) as loader:
            for name, tensor in loader.load_non_layer_tensors().items():
                put(name, tensor, seen)
            layers = 0
            for _, tensors in loader.iter_layers():
                for name, tensor in tensors.items():
                    put(name, tensor, seen)
                layers += 1
                del tensors
            if layers != loader.layer_count():
                raise Mismatch(f"{layers} layers streamed, layer_count() says {loader.layer_count()}")
        check_complete(seen)
        return f"{len(seen)} tensors in {layers} layers"

    paths = [("in-process", whole, False), ("streaming in-process", streaming, False)]
    if args.daemon:
        paths[1:1] = [("daemon", whole, args.daemon)]
        paths.append(("streaming daemon", streaming, args.daemon))

    failed = 0
    for label, run, sock in paths:
        t0 = time.perf_counter()
        try:
            what = run(sock)
            got = encode(model)
            if got.shape != reference.shape:
                raise Mismatch(f"embeddings of shape {tuple(got.shape)}, the original's "
                               f"{tuple(reference.shape)}")
            if not torch.equal(got, reference):
                diff = (got.float() - reference.float()).abs().max().item()
                raise Mismatch(f"embeddings differ from the original's (max |d| = {diff})")
            print(f"{label:<21} embeddings of {len(SENTENCES)} sentences identical to the original's "
                  f"(torch.equal; {what}, {args.device}, {time.perf_counter() - t0:.2f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 -- every failure is one line and a non-zero exit
            failed += 1
            print(f"{label:<21} FAILED: {type(e).__name__}: {e}", flush=True)
    if not args.daemon:
        print("(no --daemon / $BIGSMALL_SOCKET: the daemon paths did not run)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
