"""The CLI's operations as functions: compress, decompress, verify, info.

Thin wrappers over the C++ core (the code `bigsmall` itself runs), with the
CLI's errors as exceptions of bigsmall.errors (an existing output without
force=True is AlreadyExistsError, a corrupt file DataLossError, ...). Each
returns the summary the CLI prints with --json, as a dict. Paths may be str
or os.PathLike.
"""
from __future__ import annotations

import os
from typing import Optional, Union

from . import _core

__all__ = ["compress", "decompress", "verify", "info", "MODES"]

PathLike = Union[str, "os.PathLike[str]"]
MODES = ("balanced", "storage", "inference")


def _path(value: Optional[PathLike]) -> str:
    return "" if value is None else os.fspath(value)


def compress(src: PathLike, dst: Optional[PathLike] = None, mode: str = "balanced",
             base: Optional[PathLike] = None, threads: int = 0, force: bool = False,
             layer_pattern: Optional[str] = None, follow_symlinks: bool = False) -> dict:
    """Compresses a .safetensors file (or a model directory) into .bs.

    dst: the output (default: next to src, as `bigsmall compress` names it).
    mode: "balanced", "storage" or "inference". base: a base model to code a
    fine-tune against. threads: 0 uses every core. Returns {"input",
    "output", "mode", "input_bytes", "output_bytes", "ratio", "tensors",
    "files", "seconds"}.
    """
    return _core.compress(_path(src), _path(dst), mode, _path(base), int(threads), bool(force),
                          layer_pattern or "", bool(follow_symlinks))


def decompress(src: PathLike, dst: Optional[PathLike] = None, base: Optional[PathLike] = None,
               threads: int = 0, force: bool = False) -> dict:
    """Decompresses a .bs file (or directory) back to the original safetensors bytes."""
    return _core.decompress(_path(src), _path(dst), _path(base), int(threads), bool(force))


def verify(src: PathLike, against: Optional[PathLike] = None, base: Optional[PathLike] = None,
           threads: int = 0) -> dict:
    """Checks every hash of a .bs file (and, with `against`, equality with the original)."""
    return _core.verify(_path(src), _path(against), _path(base), int(threads))


def info(src: PathLike, tensors: bool = False) -> dict:
    """What `bigsmall info --json` prints for a .bs file, a directory or a Hub name."""
    return _core.info(_path(src), bool(tensors))
