"""BigSmall: lossless compression of model weights, loaded bit-identical as torch tensors.

    import bigsmall

    bigsmall.compress("model.safetensors", "model.bs")
    state_dict = bigsmall.from_pretrained("model.bs")            # {name: torch.Tensor}
    with bigsmall.StreamingLoader("model.bs", device="cuda") as loader:
        extra = loader.load_non_layer_tensors()
        for layer_idx, tensors in loader.iter_layers():
            ...

Decoding is done by the C++ core (the extension bigsmall._core), in process
or by the bigsmalld daemon (daemon= a socket, or $BIGSMALL_SOCKET): see
bigsmall.loader. Errors are bigsmall.errors exceptions, one class per status
code. Importing the package never touches the network.
"""
from __future__ import annotations

import os as _os

import torch as _torch  # noqa: F401  (the extension's tensors are torch tensors)

# Tests against a build tree (no pip install) point BIGSMALL_EXT_DIR at the
# directory holding the built extension (<build>/python/bigsmall); the
# package's own modules still come from here.
_ext_dir = _os.environ.get("BIGSMALL_EXT_DIR")
if _ext_dir:
    __path__.append(_os.path.abspath(_ext_dir))  # type: ignore[name-defined]  # noqa: F821

from . import _core  # noqa: E402
from . import errors  # noqa: E402

_core._set_error_factory(errors.from_status)

from . import dtypes  # noqa: E402
from ._tools import daemon_binary, tool_path  # noqa: E402
from .errors import (  # noqa: E402
    AbortedError,
    AlreadyExistsError,
    BigSmallError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)
from .hub import compress_for_hub, upload_to_hub  # noqa: E402
from .loader import StreamingLoader, from_pretrained, iter_weights  # noqa: E402
from .ops import compress, decompress, info, verify  # noqa: E402

__version__: str = _core.__version__

__all__ = [
    "__version__",
    "from_pretrained",
    "StreamingLoader",
    "iter_weights",
    "compress",
    "decompress",
    "info",
    "verify",
    "compress_for_hub",
    "upload_to_hub",
    "daemon_binary",
    "tool_path",
    "dtypes",
    "errors",
    # The exception classes, as bigsmall.errors lists them (its CODES, error_class and
    # from_status stay in bigsmall.errors).
    *(name for name in errors.__all__ if name.endswith("Error")),
]
