"""BigSmall's exceptions: one class per status code.

Every error of the C++ core (the codec, the in-process loader, the daemon
client, the CLI operations) is an absl::Status, whose codes are gRPC's. The
extension raises it as the class of its code (the factory ``from_status`` is
installed by ``bigsmall/__init__.py``), so callers catch what they mean:

    try:
        bigsmall.from_pretrained("model.bs")
    except bigsmall.DataLossError as e:      # corrupt or truncated file
        print(e.code, e.message)

Every class derives from ``BigSmallError`` and, where Python has a matching
built-in, from that too: ``NotFoundError`` is a ``FileNotFoundError``,
``InvalidArgumentError`` a ``ValueError``, ``PermissionDeniedError`` a
``PermissionError``, ``AlreadyExistsError`` a ``FileExistsError`` and
``DeadlineExceededError`` a ``TimeoutError``.
"""
from __future__ import annotations

import errno as _errno
from typing import Optional

__all__ = [
    "BigSmallError",
    "CancelledError",
    "UnknownError",
    "InvalidArgumentError",
    "DeadlineExceededError",
    "NotFoundError",
    "AlreadyExistsError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "FailedPreconditionError",
    "AbortedError",
    "OutOfRangeError",
    "UnimplementedError",
    "InternalError",
    "UnavailableError",
    "DataLossError",
    "UnauthenticatedError",
    "CODES",
    "error_class",
    "from_status",
]

# The status codes (absl's and gRPC's numbers and names, which are the same).
CODES: dict[str, int] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
_NAMES: dict[int, str] = {value: name for name, value in CODES.items()}


class BigSmallError(Exception):
    """A failed BigSmall operation.

    Attributes:
      code: the status code's name as gRPC spells it ("DATA_LOSS", ...).
      code_value: its number (15 for DATA_LOSS, ...).
      message: the status message (what failed, and why).
    """

    code: str = "UNKNOWN"
    code_value: int = 2

    def __init__(self, message: str = "", code: Optional[str] = None,
                 code_value: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if code_value is not None:
            self.code_value = code_value

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self):
        return (type(self), (self.message, self.code, self.code_value))


class _OSErrorMixin:
    """For the classes that are also OSErrors: errno and strerror set."""

    errno_value: int = 0

    def __init__(self, message: str = "", code: Optional[str] = None,
                 code_value: Optional[int] = None) -> None:
        BigSmallError.__init__(self, message, code, code_value)  # type: ignore[arg-type]
        self.errno = self.errno_value
        self.strerror = message


class CancelledError(BigSmallError):
    """CANCELLED: the operation was cancelled."""
    code, code_value = "CANCELLED", 1


class UnknownError(BigSmallError):
    """UNKNOWN: an error without a more precise code."""
    code, code_value = "UNKNOWN", 2


class InvalidArgumentError(BigSmallError, ValueError):
    """INVALID_ARGUMENT: a bad argument (also a ValueError)."""
    code, code_value = "INVALID_ARGUMENT", 3


class DeadlineExceededError(_OSErrorMixin, BigSmallError, TimeoutError):
    """DEADLINE_EXCEEDED: a deadline or timeout passed (also a TimeoutError)."""
    code, code_value, errno_value = "DEADLINE_EXCEEDED", 4, _errno.ETIMEDOUT


class NotFoundError(_OSErrorMixin, BigSmallError, FileNotFoundError):
    """NOT_FOUND: a file, model, layer or tensor that does not exist (also a FileNotFoundError)."""
    code, code_value, errno_value = "NOT_FOUND", 5, _errno.ENOENT


class AlreadyExistsError(_OSErrorMixin, BigSmallError, FileExistsError):
    """ALREADY_EXISTS: the output exists (force=True overwrites; also a FileExistsError)."""
    code, code_value, errno_value = "ALREADY_EXISTS", 6, _errno.EEXIST


class PermissionDeniedError(_OSErrorMixin, BigSmallError, PermissionError):
    """PERMISSION_DENIED: not allowed (also a PermissionError)."""
    code, code_value, errno_value = "PERMISSION_DENIED", 7, _errno.EACCES


class ResourceExhaustedError(BigSmallError):
    """RESOURCE_EXHAUSTED: out of memory, disk, cache budget or a daemon limit."""
    code, code_value = "RESOURCE_EXHAUSTED", 8


class FailedPreconditionError(BigSmallError):
    """FAILED_PRECONDITION: the system is not in a state that allows the operation."""
    code, code_value = "FAILED_PRECONDITION", 9


class AbortedError(BigSmallError):
    """ABORTED: the operation was aborted."""
    code, code_value = "ABORTED", 10


class OutOfRangeError(BigSmallError):
    """OUT_OF_RANGE: a layer or offset past the end."""
    code, code_value = "OUT_OF_RANGE", 11


class UnimplementedError(BigSmallError):
    """UNIMPLEMENTED: not supported (by this build or this format)."""
    code, code_value = "UNIMPLEMENTED", 12


class InternalError(BigSmallError):
    """INTERNAL: a bug in BigSmall (please report it)."""
    code, code_value = "INTERNAL", 13


class UnavailableError(BigSmallError):
    """UNAVAILABLE: the daemon, the Hub or a device is not reachable, or an I/O error."""
    code, code_value = "UNAVAILABLE", 14


class DataLossError(BigSmallError):
    """DATA_LOSS: corrupt or truncated data (a hash or format check failed)."""
    code, code_value = "DATA_LOSS", 15


class UnauthenticatedError(BigSmallError):
    """UNAUTHENTICATED: missing or bad credentials."""
    code, code_value = "UNAUTHENTICATED", 16


_CLASSES: dict[int, type] = {
    cls.code_value: cls
    for cls in (CancelledError, UnknownError, InvalidArgumentError, DeadlineExceededError,
                NotFoundError, AlreadyExistsError, PermissionDeniedError, ResourceExhaustedError,
                FailedPreconditionError, AbortedError, OutOfRangeError, UnimplementedError,
                InternalError, UnavailableError, DataLossError, UnauthenticatedError)
}


def error_class(code: int | str) -> type:
    """The exception class of a status code (its number or its name)."""
    if isinstance(code, str):
        value = CODES.get(code.upper())
        if value is None:
            return BigSmallError
        code = value
    return _CLASSES.get(int(code), BigSmallError)


def from_status(code: int, name: str, message: str) -> BigSmallError:
    """The exception for a status (the factory the C++ extension calls).

    `code` decides the class; `name` is the code's name as the C++ side
    spells it (kept as .code for a code this module does not know).
    """
    cls = _CLASSES.get(code)
    if cls is None:
        # OK (0) is no error, and other numbers are none of absl's: keep what
        # was said, as the generic class.
        return BigSmallError(message, name or _NAMES.get(code, "UNKNOWN"), code)
    return cls(message)
