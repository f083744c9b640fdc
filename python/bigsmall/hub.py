"""Hugging Face Hub helpers: compress a Hub model, upload a compressed one.

Both run the C++ core's Hub client (the code of `bigsmall compress
owner/repo` and `bigsmall upload`), reading the HF_* environment as
huggingface_hub does (HF_TOKEN, HF_ENDPOINT, HF_HOME, HF_HUB_CACHE,
HF_HUB_OFFLINE). Nothing here runs at import; only these calls touch the
network.
"""
from __future__ import annotations

import os
from typing import Optional, Union

from . import _core, errors

__all__ = ["compress_for_hub", "upload_to_hub"]

PathLike = Union[str, "os.PathLike[str]"]


def _with_revision(repo: str, revision: Optional[str]) -> str:
    if not revision:
        return repo
    base, sep, current = repo.partition("@")
    if sep and current != revision:
        raise errors.InvalidArgumentError(
            f"{repo!r} names revision {current!r} but revision={revision!r}")
    return f"{base}@{revision}"


def compress_for_hub(repo: str, output_dir: Optional[PathLike] = None, mode: str = "balanced",
                     threads: int = 0, force: bool = False, revision: Optional[str] = None) -> dict:
    """Downloads owner/repo[@rev] (its safetensors) into the HF cache and
    compresses it into `output_dir` (default: as `bigsmall compress owner/repo`
    names it), with a model card, ready for upload_to_hub. Returns the summary."""
    return _core.compress_hub(_with_revision(repo, revision),
                              "" if output_dir is None else os.fspath(output_dir), mode,
                              int(threads), bool(force))


def upload_to_hub(directory: PathLike, repo: str, revision: str = "main", private: bool = False,
                  commit_message: Optional[str] = None, create: bool = True) -> dict:
    """Uploads a compressed model directory to owner/repo (one commit on
    `revision`; `create` makes the repo when it does not exist). Returns
    {"repo", "revision", "commit", "files", "bytes", ...}."""
    return _core.upload(os.fspath(directory), repo, revision, bool(private), commit_message or "",
                        bool(create))
