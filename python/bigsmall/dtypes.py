"""safetensors dtypes <-> torch dtypes, and tensor records -> typed tensors.

The C++ core hands out every tensor as a record (name, dtype, shape, data):
`dtype` the safetensors dtype string as stored, `data` a 1-D torch.uint8
tensor over the tensor's bytes (zero-copy). ``to_tensor`` reinterprets those
bytes as the tensor's torch dtype and shape without copying them.

A dtype torch has no type for (F4, F6_E2M3, F6_E3M2, I4, U4, F8_E8M0 on an
old torch, a string no spec names) is never an error: the tensor comes back
as its raw bytes, a uint8 tensor of shape [nbytes], with two attributes set
on the tensor object: ``bigsmall_dtype`` (the dtype string) and
``bigsmall_shape`` (the stored shape, a tuple). ``is_raw(t)`` tells them
apart. (Attributes live on the Python object: a view or copy of it made by
torch does not carry them; ``retag`` copies them over.)
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["SAFETENSORS_TO_TORCH", "TORCH_TO_SAFETENSORS", "torch_dtype", "safetensors_dtype",
           "to_tensor", "is_raw", "retag"]


def _optional(*names: str) -> dict[str, torch.dtype]:
    """{safetensors name: torch dtype} for the torch dtypes this torch has."""
    out = {}
    for st_name, torch_name in zip(names[::2], names[1::2]):
        dtype = getattr(torch, torch_name, None)
        if isinstance(dtype, torch.dtype):
            out[st_name] = dtype
    return out


# Exactly safetensors.torch's mapping (plus F8_E8M0 where torch has it).
SAFETENSORS_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    **_optional("F8_E4M3", "float8_e4m3fn", "F8_E5M2", "float8_e5m2",
                "F8_E4M3FNUZ", "float8_e4m3fnuz", "F8_E5M2FNUZ", "float8_e5m2fnuz",
                "F8_E8M0", "float8_e8m0fnu",
                "U16", "uint16", "U32", "uint32", "U64", "uint64",
                "C64", "complex64"),
}
TORCH_TO_SAFETENSORS: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_TO_TORCH.items()}


def torch_dtype(dtype: str) -> Optional[torch.dtype]:
    """The torch dtype of a safetensors dtype string; None: no torch type (raw bytes)."""
    return SAFETENSORS_TO_TORCH.get(dtype)


def safetensors_dtype(dtype: torch.dtype) -> str:
    """The safetensors dtype string of a torch dtype (KeyError: none)."""
    return TORCH_TO_SAFETENSORS[dtype]


def is_raw(tensor: torch.Tensor) -> bool:
    """True for a tensor of a dtype torch has no type for (raw uint8 bytes)."""
    return getattr(tensor, "bigsmall_dtype", None) is not None


def retag(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Copies the raw-dtype attributes of `src` (if any) onto `dst`; returns dst."""
    dtype = getattr(src, "bigsmall_dtype", None)
    if dtype is not None:
        dst.bigsmall_dtype = dtype
        dst.bigsmall_shape = src.bigsmall_shape
    return dst


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def to_tensor(record, *, copy: bool = False, device: Optional[torch.device | str] = None,
              non_blocking: bool = False) -> torch.Tensor:
    """The typed tensor of a _core TensorRecord (name, dtype, shape, data).

    Zero-copy: a view of `data` (the C++ memory it keeps alive), unless
    `copy` (a clone: writable memory of its own) or `device` (a copy there,
    unless it is there already) asks otherwise. Scalars (shape ()) and empty
    tensors are handled. A dtype torch has no type for comes back as the raw
    bytes (uint8 [nbytes]) tagged with ``bigsmall_dtype``/``bigsmall_shape``.
    """
    name, dtype, shape, data = record
    shape = tuple(int(d) for d in shape)
    target = SAFETENSORS_TO_TORCH.get(dtype)
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise TypeError(f"tensor {name!r}: expected 1-D uint8 bytes, got {data.dtype} {tuple(data.shape)}")
    if target is None:
        out = data
    else:
        itemsize = torch.empty((), dtype=target).element_size()
        nbytes = data.numel()
        if nbytes != _numel(shape) * itemsize:
            raise ValueError(f"tensor {name!r}: {nbytes} bytes for {dtype} {list(shape)}")
        if nbytes == 0:
            out = torch.empty(shape, dtype=target, device=data.device)
        else:
            out = data.view(target).reshape(shape)
    if device is not None:
        moved = out.to(device, non_blocking=non_blocking)
        out = moved.clone() if (copy and moved is out) else moved
    elif copy:
        out = out.clone()
    if target is None:
        # A fresh tensor object (never `data` itself), so the tag is this one's.
        if out is data:
            out = data.view(torch.uint8)
        out.bigsmall_dtype = dtype
        out.bigsmall_shape = shape
    return out
