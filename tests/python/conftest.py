"""Shared fixtures of the Python suite (tests/python).

* The MiniLM corpus (bench/corpus.py writes it): the FP32 model.safetensors
  ($BIGSMALL_CORPUS), the model directory ($BIGSMALL_CORPUS_DIR) and the
  derived BF16 / FP16 / FP8-e4m3 copies ($BIGSMALL_CORPUS_BF16, _FP16, _FP8),
  each compressed once per session with bigsmall.compress (``minilm_bs``,
  ``minilm_dir_bs``, ``minilm_variant_bs``). Missing corpus files skip the
  tests that need them, saying which.
* ``dtype_model``: a synthetic safetensors file written by hand with every
  dtype (F64 .. BOOL, FP8 e4m3/e5m2/e8m0, U16/U32/U64, F4, F6, a dtype no
  spec names), a scalar and empty tensors, in layers and outside them; with
  its tensors parsed by hand (the reference bytes).
* ``llm_bs``: an LLM-shaped synthetic model (bench/gen_llm.py: 12 layers of
  ~14 MB BF16) for the memory bounds.
* ``bs_daemon``: a private bigsmalld (bigsmall._daemon_proc) serving the
  session's models; stopped at the end.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import pytest

import bigsmall

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "hub"))  # fake_hub_process (the fake Hub's runner)
CORPUS_ROOT = Path("/root/.cache/bigsmall/corpus")
MINILM = Path(os.environ.get("BIGSMALL_CORPUS", CORPUS_ROOT / "minilm" / "model.safetensors"))
MINILM_DIR = Path(os.environ.get("BIGSMALL_CORPUS_DIR", CORPUS_ROOT / "minilm-dir"))
MINILM_VARIANTS = {
    "bf16": Path(os.environ.get("BIGSMALL_CORPUS_BF16", CORPUS_ROOT / "minilm-bf16.safetensors")),
    "fp16": Path(os.environ.get("BIGSMALL_CORPUS_FP16", CORPUS_ROOT / "minilm-fp16.safetensors")),
    "fp8e4m3": Path(os.environ.get("BIGSMALL_CORPUS_FP8",
                                   CORPUS_ROOT / "minilm-fp8e4m3.safetensors")),
}


def need(path: Path, what: str) -> Path:
    """`path`, or skip the test saying what is missing."""
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (python3 bench/corpus.py writes the corpus)")
    return path


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls `condition` every 10 ms; fails the test after `timeout` s, saying what it waited for."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------------------------ safetensors by hand

class StTensor(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    data: bytes


def read_safetensors(path: Path) -> dict[str, StTensor]:
    """Every tensor of a safetensors file, parsed by hand: name -> (dtype, shape, bytes)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    return {name: StTensor(e["dtype"], tuple(e["shape"]),
                           raw[base + e["data_offsets"][0]:base + e["data_offsets"][1]])
            for name, e in header.items()}


def write_safetensors(path: Path, tensors: dict[str, StTensor]) -> None:
    """A safetensors file of these tensors, in this order (header padded to 8 bytes)."""
    header, offset = {}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": t.dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(t.data)]}
        offset += len(t.data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for t in tensors.values():
            f.write(t.data)


# dtype -> bits per element (as the safetensors spec counts them)
DTYPE_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16,
              "I8": 8, "U8": 8, "BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "U16": 16,
              "U32": 32, "U64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "Q9_X": 8}
# dtypes torch cannot read by safetensors.torch.load_file (the rest can)
NOT_IN_SAFETENSORS_TORCH = {"F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "Q9_X"}


def _bytes(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> bytes:
    n = 1
    for d in shape:
        n *= d
    nbytes = (n * DTYPE_BITS[dtype] + 7) // 8
    if dtype == "BOOL":
        return rng.integers(0, 2, nbytes, dtype=np.uint8).tobytes()
    if dtype in ("F32", "F64", "F16", "BF16"):
        # finite values (torch.equal is false on NaN)
        np_type = {"F32": np.float32, "F64": np.float64, "F16": np.float16}.get(dtype)
        if np_type is None:  # BF16: the top half of float32 values
            f = rng.standard_normal(n).astype(np.float32)
            return (f.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        return rng.standard_normal(n).astype(np_type).tobytes()
    if dtype in ("F8_E4M3", "F8_E5M2"):
        b = rng.integers(0, 256, nbytes, dtype=np.uint8)
        # no NaN/inf patterns: e4m3fn NaN is S.1111.111, e5m2's exponent 11111
        if dtype == "F8_E4M3":
            b[(b & 0x7F) == 0x7F] = 0x3C
        else:
            b[(b & 0x7C) == 0x7C] = 0x3C
        return b.tobytes()
    if dtype == "F8_E8M0":
        b = rng.integers(0, 255, nbytes, dtype=np.uint8)  # 0xFF is NaN
        return b.tobytes()
    return rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()


def dtype_tensors() -> dict[str, StTensor]:
    """The synthetic every-dtype model: two layers, non-layer tensors, a scalar, empties."""
    rng = np.random.default_rng(9)
    specs = [
        ("embed.weight", "F32", (16, 8)),
        ("scale", "F32", ()),                      # a scalar
        ("step", "I64", ()),                       # an integer scalar
        ("empty.f32", "F32", (0, 4)),              # empty tensors
        ("empty.bf16", "BF16", (0,)),
        ("model.layers.0.f64", "F64", (3,)),
        ("model.layers.0.f32", "F32", (2, 3)),
        ("model.layers.0.f16", "F16", (4, 5)),
        ("model.layers.0.bf16", "BF16", (3, 7)),
        ("model.layers.0.i64", "I64", (2, 2)),
        ("model.layers.0.i32", "I32", (5,)),
        ("model.layers.0.i16", "I16", (6,)),
        ("model.layers.0.i8", "I8", (9,)),
        ("model.layers.0.u8", "U8", (11,)),
        ("model.layers.0.bool", "BOOL", (2, 5)),
        ("model.layers.0.empty", "F16", (2, 0, 3)),
        ("model.layers.1.f8_e4m3", "F8_E4M3", (4, 8)),
        ("model.layers.1.f8_e5m2", "F8_E5M2", (4, 8)),
        ("model.layers.1.f8_e8m0", "F8_E8M0", (12,)),
        ("model.layers.1.u16", "U16", (7,)),
        ("model.layers.1.u32", "U32", (3, 3)),
        ("model.layers.1.u64", "U64", (4,)),
        ("model.layers.1.f4", "F4", (4, 8)),       # 16 bytes
        ("model.layers.1.f6_e3m2", "F6_E3M2", (4, 4)),   # 12 bytes
        ("model.layers.1.f6_e2m3", "F6_E2M3", (8,)),     # 6 bytes
        ("model.layers.1.q9", "Q9_X", (10,)),      # a dtype no spec names: 1 byte each
        ("model.layers.1.scalar_bf16", "BF16", ()),
    ]
    return {name: StTensor(dtype, shape, _bytes(rng, dtype, shape)) for name, dtype, shape in specs}


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    """The session's model directory (what bs_daemon serves)."""
    return tmp_path_factory.mktemp("bigsmall-models")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return need(MINILM, "the MiniLM corpus model ($BIGSMALL_CORPUS)")


@pytest.fixture(scope="session")
def minilm_bs(models_root, minilm_path) -> Path:
    """MiniLM (FP32) compressed into one .bs file."""
    out = models_root / "minilm.bs"
    bigsmall.compress(minilm_path, out)
    return out


@pytest.fixture(scope="session")
def minilm_cli_bs(tmp_path_factory, minilm_path) -> Path:
    """MiniLM (FP32) compressed by the installed `bigsmall compress` CLI into DIR/minilm.bs,
    alone in its directory (a model directory for bigsmalld)."""
    try:
        cli = bigsmall.tool_path("bigsmall")
    except FileNotFoundError as e:
        pytest.skip(f"the bigsmall CLI is not installed with the package: {e}")
    out = tmp_path_factory.mktemp("minilm-cli") / "minilm.bs"
    subprocess.run([cli, "compress", "-q", "--threads", "2", str(minilm_path), "-o", str(out)],
                   check=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def minilm_dir_bs(models_root) -> Path:
    """The MiniLM model directory compressed into a directory of .bs shards (+ its other files)."""
    src = need(MINILM_DIR, "the MiniLM corpus directory ($BIGSMALL_CORPUS_DIR)")
    out = models_root / "minilm-dir.bs"
    bigsmall.compress(src, out)
    return out


@pytest.fixture(scope="session", params=sorted(MINILM_VARIANTS))
def minilm_variant(request, models_root) -> tuple[Path, Path]:
    """(original, compressed) for each derived MiniLM copy (BF16, FP16, FP8 e4m3)."""
    src = need(MINILM_VARIANTS[request.param], f"the MiniLM {request.param} copy")
    out = models_root / f"minilm-{request.param}.bs"
    if not out.exists():
        bigsmall.compress(src, out)
    return src, out


class DtypeModel(NamedTuple):
    original: Path                   # the every-dtype safetensors file
    compressed: Path                 # its .bs
    tensors: dict[str, StTensor]     # the reference, as written
    known: Path                      # the tensors safetensors.torch can load, alone
    known_compressed: Path


@pytest.fixture(scope="session")
def dtype_model(models_root) -> DtypeModel:
    tensors = dtype_tensors()
    original = models_root / "dtypes.safetensors"
    write_safetensors(original, tensors)
    known = models_root / "dtypes-known.safetensors"
    write_safetensors(known, {k: t for k, t in tensors.items()
                              if t.dtype not in NOT_IN_SAFETENSORS_TORCH})
    compressed = models_root / "dtypes.bs"
    known_compressed = models_root / "dtypes-known.bs"
    bigsmall.compress(original, compressed)
    bigsmall.compress(known, known_compressed)
    return DtypeModel(original, compressed, tensors, known, known_compressed)


LLM_LAYERS = 12
LLM_SHAPE = ["--layers", str(LLM_LAYERS), "--hidden", "768", "--intermediate", "2048",
             "--kv-dim", "768", "--vocab", "1024", "--dtype", "bf16"]


@pytest.fixture(scope="session")
def llm_bs(models_root) -> Path:
    """An LLM-shaped synthetic model: 12 layers x ~14.2 MB BF16 (+ 3.1 MB outside them)."""
    original = models_root / "llm.safetensors"
    subprocess.run([sys.executable, str(REPO / "bench" / "gen_llm.py"), "--out", str(original),
                    *LLM_SHAPE], check=True, stdout=subprocess.DEVNULL)
    out = models_root / "llm.bs"
    bigsmall.compress(original, out)
    return out


def daemon_process(model_dirs, **kwargs):
    """A _daemon_proc.DaemonProcess (not started), or skip when bigsmalld is not installed."""
    from bigsmall import _daemon_proc
    try:
        _daemon_proc.daemon_binary()
    except FileNotFoundError as e:
        pytest.skip(f"bigsmalld is not installed with the package: {e}")
    return _daemon_proc.DaemonProcess(model_dirs, **kwargs)


@pytest.fixture(scope="session")
def bs_daemon(models_root) -> Iterator:
    """A private bigsmalld (host layers) serving models_root; stopped at the end."""
    with daemon_process([models_root], cache_budget="2G") as proc:
        yield proc


@pytest.fixture(scope="session")
def emulated_daemon(models_root) -> Iterator:
    """A private bigsmalld with an emulated GPU cuda:0 (--gpu-backend emulated)."""
    with daemon_process([models_root], gpu_backend="emulated", cache_budget="2G",
                        gpu_memory="1G") as proc:
        yield proc


@pytest.fixture
def no_daemon_env(monkeypatch):
    """$BIGSMALL_SOCKET unset (daemon=None means in process)."""
    monkeypatch.delenv("BIGSMALL_SOCKET", raising=False)


# ------------------------------------------------------------------------------ helpers for tests

def tensor_bytes(tensor) -> bytes:
    """The bytes of a tensor (any dtype, scalars and empties too), from any device."""
    import torch
    t = tensor.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def digest(tensors: dict) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """{name: (dtype, shape, sha256 of the bytes)} of a state dict (raw tensors by their tag)."""
    import hashlib
    out = {}
    for name, t in tensors.items():
        dtype = getattr(t, "bigsmall_dtype", None) or str(t.dtype)
        shape = tuple(getattr(t, "bigsmall_shape", None) or t.shape)
        out[name] = (dtype, shape, hashlib.sha256(tensor_bytes(t)).hexdigest())
    return out


def assert_equal_to_reference(got: dict, want: dict[str, StTensor]) -> None:
    """Every tensor of `got` is the reference's: same dtype, shape and bytes."""
    from bigsmall import dtypes
    assert sorted(got) == sorted(want)
    for name, ref in want.items():
        t = got[name]
        torch_dtype = dtypes.torch_dtype(ref.dtype)
        if torch_dtype is None:
            assert t.bigsmall_dtype == ref.dtype, name
            assert tuple(t.bigsmall_shape) == ref.shape, name
            assert t.dtype.__repr__() == "torch.uint8" and t.dim() == 1, name
        else:
            assert t.dtype == torch_dtype, (name, t.dtype, ref.dtype)
            assert tuple(t.shape) == ref.shape, name
            assert not hasattr(t, "bigsmall_dtype"), name
        assert tensor_bytes(t) == ref.data, name
