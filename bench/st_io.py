"""Minimal safetensors reader/writer and float conversions in pure numpy.

Used by the bench scripts (corpus.py, gen_llm.py, zipnn_bench.py). No torch, no safetensors package.

File layout: 8-byte little-endian header length N, N bytes of JSON header (padded with spaces to a
multiple of 8, as the reference implementation does), then the data section. Each header entry is
{"dtype", "shape", "data_offsets": [begin, end]} with offsets relative to the data section start.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from typing import Iterable, Iterator

import numpy as np

# safetensors dtype string -> (numpy dtype used to hold the raw bits, item size)
ST_DTYPES = {
    "F64": (np.float64, 8),
    "F32": (np.float32, 4),
    "F16": (np.float16, 2),
    "BF16": (np.uint16, 2),      # raw bit patterns
    "F8_E4M3": (np.uint8, 1),    # raw bit patterns (e4m3fn)
    "F8_E5M2": (np.uint8, 1),
    "I64": (np.int64, 8),
    "I32": (np.int32, 4),
    "I16": (np.int16, 2),
    "I8": (np.int8, 1),
    "U8": (np.uint8, 1),
    "U16": (np.uint16, 2),
    "U32": (np.uint32, 4),
    "U64": (np.uint64, 8),
    "BOOL": (np.bool_, 1),
}


def cpu_model() -> str:
    """The CPU's model name (for benchmark tables)."""
    import platform
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def itemsize(dtype: str) -> int:
    return ST_DTYPES[dtype][1]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_header(path: str) -> tuple[dict, list[tuple[str, dict]], int]:
    """Return (metadata or {}, [(name, entry)] in data-offset order, data_start)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 * 1024 * 1024:
            raise ValueError(f"{path}: header length {n} is implausible")
        hdr = json.loads(f.read(n))
    meta = hdr.pop("__metadata__", None) or {}
    entries = sorted(hdr.items(), key=lambda kv: (kv[1]["data_offsets"][0], kv[1]["data_offsets"][1]))
    return meta, entries, 8 + n


def data_section(path: str) -> tuple[int, int]:
    """(offset, length) of the data section within the file."""
    _, _, start = read_header(path)
    return start, os.path.getsize(path) - start


def iter_tensors(path: str) -> Iterator[tuple[str, str, list[int], np.ndarray]]:
    """Yield (name, dtype, shape, array) in data order; arrays are read-only memmap views."""
    _, entries, start = read_header(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    for name, e in entries:
        b, en = e["data_offsets"]
        npdt, _ = ST_DTYPES[e["dtype"]]
        raw = mm[start + b : start + en]
        arr = raw.view(npdt).reshape(e["shape"]) if en > b else np.zeros(e["shape"], npdt)
        yield name, e["dtype"], list(e["shape"]), arr


def check_file(path: str) -> dict:
    """Validate structure: offsets contiguous, sizes match shapes, data section fully covered."""
    meta, entries, start = read_header(path)
    fsize = os.path.getsize(path)
    pos = 0
    for name, e in entries:
        b, en = e["data_offsets"]
        n = int(np.prod(e["shape"], dtype=np.int64)) if e["shape"] else 1
        if b != pos:
            raise ValueError(f"{name}: begins at {b}, expected {pos}")
        if en - b != n * itemsize(e["dtype"]):
            raise ValueError(f"{name}: {en - b} bytes for shape {e['shape']} {e['dtype']}")
        pos = en
    if start + pos != fsize:
        raise ValueError(f"data section ends at {start + pos}, file is {fsize} bytes")
    return {"tensors": len(entries), "data_bytes": pos, "header_bytes": start, "metadata": meta}


# --------------------------------------------------------------------------------------------
# Writing (streaming: header first, then tensor bytes in order; never the whole file in RAM)
# --------------------------------------------------------------------------------------------
def build_header(specs: Iterable[tuple[str, str, list[int]]], metadata: dict | None = None) -> tuple[bytes, list[int]]:
    """specs: (name, dtype, shape) in the order the data will be written. Returns (header bytes
    including the 8-byte length prefix, list of byte sizes per tensor)."""
    hdr: dict = {}
    if metadata:
        hdr["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    sizes = []
    off = 0
    for name, dtype, shape in specs:
        n = 1
        for d in shape:
            n *= int(d)
        nb = n * itemsize(dtype)
        hdr[name] = {"dtype": dtype, "shape": [int(d) for d in shape], "data_offsets": [off, off + nb]}
        sizes.append(nb)
        off += nb
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * ((-(8 + len(js))) % 8)
    return struct.pack("<Q", len(js)) + js, sizes


class StreamingWriter:
    """Write a safetensors file tensor by tensor, chunk by chunk.

    w = StreamingWriter(path, specs, metadata); for each tensor in spec order: w.write(chunk) ...;
    w.close(). Checks that the byte counts match the specs. Writes to path + '.tmp' and renames.
    """

    def __init__(self, path: str, specs: list[tuple[str, str, list[int]]], metadata: dict | None = None):
        self.path = path
        self.tmp = path + ".tmp"
        self.specs = specs
        header, self.sizes = build_header(specs, metadata)
        self.total = sum(self.sizes)
        self.f = open(self.tmp, "wb")
        self.f.write(header)
        self.written = 0

    def write(self, chunk) -> None:
        mv = memoryview(np.ascontiguousarray(chunk)).cast("B") if isinstance(chunk, np.ndarray) else memoryview(chunk).cast("B")
        self.f.write(mv)
        self.written += mv.nbytes

    def close(self) -> None:
        self.f.close()
        if self.written != self.total:
            os.unlink(self.tmp)
            raise ValueError(f"wrote {self.written} data bytes, header says {self.total}")
        os.replace(self.tmp, self.path)


def write_safetensors(path: str, tensors: list[tuple[str, str, list[int], np.ndarray]], metadata: dict | None = None) -> None:
    """tensors: (name, dtype, shape, array holding the raw element bits); order is kept."""
    w = StreamingWriter(path, [(n, d, s) for n, d, s, _ in tensors], metadata)
    for name, dtype, shape, arr in tensors:
        a = np.ascontiguousarray(arr)
        if a.nbytes != int(np.prod(shape, dtype=np.int64)) * itemsize(dtype):
            raise ValueError(f"{name}: array has {a.nbytes} bytes, not {shape} {dtype}")
        w.write(a.reshape(-1).view(np.uint8))
    w.close()


# --------------------------------------------------------------------------------------------
# Conversions (vectorized; inputs float32 arrays, outputs raw bit patterns)
# --------------------------------------------------------------------------------------------
def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """FP32 -> BF16 bit patterns (uint16), round to nearest even; NaN stays a quiet NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        r[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return r


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_f16(x: np.ndarray) -> np.ndarray:
    """numpy's float16 cast is round-to-nearest-even (overflow goes to inf)."""
    return np.asarray(x, dtype=np.float32).astype(np.float16)


E4M3_MAX = 448.0


def f32_to_e4m3fn_bits(x: np.ndarray) -> np.ndarray:
    """FP32 -> FP8 e4m3fn bit patterns (uint8), round to nearest even, saturating: finite values
    and infinities beyond 448 become +-448 (0x7E/0xFE); NaN becomes 0x7F/0xFF.

    e4m3fn: bias 7, no infinities, 0x7F/0xFF are NaN, max normal 1.75*2^8 = 448, min normal 2^-6,
    subnormals k*2^-9 for k = 1..7.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    sign = ((u >> np.uint32(24)) & np.uint32(0x80)).astype(np.uint8)
    a = u & np.uint32(0x7FFFFFFF)
    af = a.view(np.float32)
    # normal path: round the 23-bit mantissa to 3 bits (RNE), rebias exponent 127 -> 7
    r = (a + np.uint32(0x7FFFF) + ((a >> np.uint32(20)) & np.uint32(1))) >> np.uint32(20)
    code = r.astype(np.int64) - ((127 - 7) << 3)
    code = np.minimum(code, 0x7E)  # saturate (also covers inf)
    # subnormal path (|x| < 2^-6): multiples of 2^-9, rint is round-half-even; 8 -> min normal
    sub = np.rint(np.fmin(af, np.float32(1.0)) * np.float32(512.0)).astype(np.int64)
    out = np.where(af < np.float32(2.0**-6), sub, code).astype(np.uint8)
    out[np.isnan(x)] = 0x7F
    return out | sign


def e4m3fn_bits_to_f32(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.uint8)
    s = np.where(b & 0x80, -1.0, 1.0).astype(np.float32)
    e = ((b >> 3) & 0xF).astype(np.int32)
    m = (b & 0x7).astype(np.float32)
    val = np.where(e == 0, m * np.float32(2.0**-9), (1 + m / 8) * np.ldexp(np.float32(1.0), e - 7)).astype(np.float32)
    val = np.where((b & 0x7F) == 0x7F, np.float32(np.nan), val)
    return s * val


# --------------------------------------------------------------------------------------------
# Torch-free reader for PyTorch .pt/.pth zip checkpoints (state dicts of tensors)
# --------------------------------------------------------------------------------------------
_TORCH_STORAGE = {
    "FloatStorage": ("F32", np.float32), "DoubleStorage": ("F64", np.float64),
    "HalfStorage": ("F16", np.float16), "BFloat16Storage": ("BF16", np.uint16),
    "LongStorage": ("I64", np.int64), "IntStorage": ("I32", np.int32),
    "ShortStorage": ("I16", np.int16), "CharStorage": ("I8", np.int8),
    "ByteStorage": ("U8", np.uint8), "BoolStorage": ("BOOL", np.bool_),
}


class _TensorRef:
    def __init__(self, dtype, arr):
        self.dtype, self.arr = dtype, arr


def load_torch_zip_state_dict(path: str) -> list[tuple[str, str, list[int], np.ndarray]]:
    """Read tensors from a torch.save() zip checkpoint without torch. Nested dicts are flattened
    with '.'; non-tensor entries are dropped. Returns (name, dtype, shape, contiguous array)."""
    zf = zipfile.ZipFile(path)
    names = zf.namelist()
    pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
    prefix = pkl[: -len("data.pkl")]
    storages: dict[str, np.ndarray] = {}

    def persistent_load(pid):
        # ('storage', StorageType, key, location, numel)
        _, stype, key, _loc, _numel = pid
        st, npdt = _TORCH_STORAGE[stype]
        if key not in storages:
            storages[key] = np.frombuffer(zf.read(prefix + "data/" + str(key)), dtype=npdt)
        return (st, storages[key])

    def rebuild_tensor(storage, offset, size, stride, *args):
        st, buf = storage
        if len(size) == 0:
            arr = buf[offset : offset + 1].reshape(())
        else:
            arr = np.lib.stride_tricks.as_strided(
                buf[offset:], shape=tuple(size), strides=tuple(s * buf.itemsize for s in stride))
        return _TensorRef(st, np.array(arr, copy=True, order="C"))

    class _Stub:
        def __init__(self, *a, **k):
            pass

        def __setstate__(self, state):
            pass

    class U(pickle.Unpickler):
        def find_class(self, mod, name):
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return rebuild_tensor
            if name == "_rebuild_parameter":
                return lambda data, *a: data
            if mod == "torch" and name in _TORCH_STORAGE:
                return name
            if mod == "collections" and name == "OrderedDict":
                import collections
                return collections.OrderedDict
            if mod in ("builtins", "__builtin__") and name in ("set", "frozenset", "dict", "list", "tuple", "slice"):
                return getattr(__import__("builtins"), name)
            return _Stub

        def persistent_load(self, pid):
            return persistent_load(pid)

    obj = U(io.BytesIO(zf.read(pkl))).load()
    out: list[tuple[str, str, list[int], np.ndarray]] = []

    def walk(o, pre):
        if isinstance(o, _TensorRef):
            out.append((pre, o.dtype, list(o.arr.shape), o.arr))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{pre}.{k}" if pre else str(k))

    walk(obj, "")
    return out
