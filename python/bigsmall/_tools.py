"""Where the package's tools are: bigsmall/bin/{bigsmall,bigsmalld,bigsmall-client}.

The wheel installs the CLI, the daemon and its client next to the package
(python/CMakeLists.txt), so a pip-installed package can start its own daemon.
$BIGSMALL_BIN_DIR, when set, is looked in first (tests against a build tree
point it at a directory holding the tools).
"""
from __future__ import annotations

import os

from . import errors

__all__ = ["tool_path", "daemon_binary", "TOOLS"]

TOOLS = ("bigsmall", "bigsmalld", "bigsmall-client")
_PACKAGE_BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin")


def tool_path(name: str) -> str:
    """The path of one of the package's tools ("bigsmall", "bigsmalld", "bigsmall-client").

    Raises NotFoundError (a FileNotFoundError) when it is not installed.
    """
    if name not in TOOLS:
        raise errors.InvalidArgumentError(f"unknown tool {name!r} (one of {', '.join(TOOLS)})")
    tried = []
    override = os.environ.get("BIGSMALL_BIN_DIR")
    if override:
        tried.append(os.path.join(override, name))
    tried.append(os.path.join(_PACKAGE_BIN, name))
    for path in tried:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise errors.NotFoundError(f"{name} is not installed (looked for {', '.join(tried)})")


def daemon_binary() -> str:
    """The path of the bigsmalld the package ships (bigsmall/bin/bigsmalld)."""
    return tool_path("bigsmalld")
