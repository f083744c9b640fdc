"""vLLM model-loader plugin: ``--load-format bigsmall``.

Installed through the ``vllm.general_plugins`` entry point (pyproject.toml:
``bigsmall = "bigsmall.vllm_plugin:register"``). vLLM calls every general
plugin in each of its processes (the API server, the engine core and every
worker), so :func:`register` runs where the model is actually loaded, too.

Usage::

    bigsmall compress ./Llama-3-8B -o ./Llama-3-8B.bs       # keeps config.json, tokenizer...
    vllm serve ./Llama-3-8B.bs --load-format bigsmall
    BIGSMALL_SOCKET=/run/bigsmall/bigsmall.sock vllm serve ./Llama-3-8B.bs --load-format bigsmall
    vllm serve ./Llama-3-8B.bs --load-format bigsmall \\
        --model-loader-extra-config '{"socket": "/run/bigsmall/bigsmall.sock"}'

The model argument is a compressed model directory (``bigsmall compress`` of
a Hugging Face model directory: the ``.bs`` shards plus every other file of
the original verbatim, so vLLM reads ``config.json`` and the tokenizer from
it as from any model directory) or a Hub name of such a repository. The
weights can also come from elsewhere (a single ``.bs`` file, another
directory) with ``"path"`` in the extra config; vLLM still reads the config
from the model argument.

``--model-loader-extra-config`` keys (all optional):

- ``"socket"``: bigsmalld's socket, or ``false`` to decode in process even
  when ``$BIGSMALL_SOCKET`` is set. Without it the loader uses
  ``$BIGSMALL_SOCKET`` when set, else decodes in process (all cores).
- ``"path"``: where the weights are (a ``.bs`` file, a directory of ``.bs``
  shards, or ``owner/repo[@rev]``); default: the model argument.
- ``"revision"``: the Hub revision; default: vLLM's ``--revision``.
- ``"device"``: where bigsmall hands the tensors out, ``"cpu"`` (default) or
  ``"cuda"`` (this rank's current CUDA device; through the daemon: its CUDA
  IPC memory). vLLM's weight loaders copy them into the parameters.

Memory: ``load_weights`` hands ``model.load_weights`` a generator over
:func:`bigsmall.iter_weights`: the non-layer tensors first, then layer by
layer, each layer's memory freed (in process) or its lease released
(daemon) once the loop moves past it and vLLM dropped its references. The
whole checkpoint is never in host memory at once, as long as the model's
``load_weights`` consumes the iterator lazily (vLLM's ``AutoWeightsLoader``
and the decoder models do; a few models, e.g. vLLM's BERT embedding model,
call ``list(weights)`` themselves and so hold every layer until they are
done).

Tensor parallelism: every rank runs this loader on the full tensors, and
vLLM's parameter ``weight_loader`` functions cut each rank's shard out of
them with ``Tensor.narrow`` (a view) before ``param.data.copy_(shard)``. The
tensors bigsmall yields are zero-copy views (of the in-process decoded
layer, or of bigsmalld's shared memory), and nothing here clones, converts
or makes them contiguous, so each rank copies only its own shard into its
parameters; through bigsmalld the ranks share one decoded copy of each
layer (the daemon decodes once, every rank maps it) instead of each rank
reading and decoding the checkpoint. Daemon host layers are read-only
memory: a model whose weight loader wrote into the loaded tensor in place
would fault; vLLM's loaders only read it.

Limits (vLLM reads some facts from the safetensors headers, which a
compressed directory does not have): with ``--dtype auto`` and a
``config.json`` that names no dtype, vLLM falls back to float32 instead of
the checkpoint's dtype (pass ``--dtype``); a config that claims tied word
embeddings while the checkpoint has its own ``lm_head`` is not untied.
Secondary weight sources (``model.secondary_weights``) are not supported.

Importing this module imports neither vLLM nor bigsmall's extension and
touches no network; :func:`register` imports vLLM's model-loader registry
(it runs inside vLLM, so vLLM is there). Without vLLM, using the loader
raises an ImportError that says so.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Iterator, Optional, Union

# BigSmallModelLoader is also importable (module __getattr__: it needs vLLM),
# but not by `import *`, which must not import vLLM.
__all__ = ["LOAD_FORMAT", "register"]

LOAD_FORMAT = "bigsmall"
"""The ``--load-format`` value this plugin registers."""

_EXTRA_CONFIG_KEYS = frozenset({"socket", "path", "revision", "device"})

_logger = logging.getLogger(__name__)
_lock = threading.Lock()
_loader_class: Optional[type] = None
_registered = False


def _require_vllm() -> None:
    try:
        import vllm.model_executor.model_loader  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "bigsmall's vLLM loader (--load-format bigsmall) needs vLLM: "
            "`pip install vllm` in this environment (bigsmall itself works "
            f"without it; import failed: {exc})") from exc


def register() -> None:
    """Registers ``--load-format bigsmall`` with vLLM's model-loader registry.

    The ``vllm.general_plugins`` entry point: vLLM calls it once per process
    (``vllm.plugins.load_general_plugins``). Idempotent: later calls in the
    same process do nothing (vLLM would otherwise warn that the format is
    being overwritten).
    """
    global _registered
    with _lock:
        if _registered:
            return
        _require_vllm()
        from vllm.model_executor.model_loader import register_model_loader

        register_model_loader(LOAD_FORMAT)(_get_loader_class())
        _registered = True


def _get_loader_class() -> type:
    """The loader class, defined on first use (it subclasses vLLM's
    BaseModelLoader, so it needs vLLM)."""
    global _loader_class
    if _loader_class is None:
        _require_vllm()
        _loader_class = _define_loader_class()
    return _loader_class


def __getattr__(name: str) -> Any:
    # `from bigsmall.vllm_plugin import BigSmallModelLoader` works without
    # importing vLLM at module import, and fails clearly without vLLM.
    if name == "BigSmallModelLoader":
        return _get_loader_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_loader_class() -> type:
    import torch
    from torch import nn
    from vllm.config import ModelConfig
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader
    from vllm.model_executor.model_loader.default_loader import (
        DefaultModelLoader,
    )

    class BigSmallModelLoader(BaseModelLoader):
        """Loads a model's weights from a bigsmall-compressed checkpoint.

        See the module docstring (bigsmall.vllm_plugin) for the sources,
        the extra config, the memory bound and tensor parallelism.
        """

        def __init__(self, load_config: LoadConfig) -> None:
            super().__init__(load_config)
            extra = load_config.model_loader_extra_config
            if extra is None:
                extra = {}
            if not isinstance(extra, dict):
                raise ValueError(
                    "model_loader_extra_config must be a dict for load format "
                    f"{LOAD_FORMAT!r}, got {type(extra).__name__}")
            unexpected = set(extra) - _EXTRA_CONFIG_KEYS
            if unexpected:
                raise ValueError(
                    f"Unexpected extra config keys for load format "
                    f"{LOAD_FORMAT!r}: {sorted(unexpected)} (known: "
                    f"{sorted(_EXTRA_CONFIG_KEYS)})")
            socket = extra.get("socket")
            if socket is not None and socket is not False and (
                    not isinstance(socket, str) or not socket):
                raise ValueError(
                    "model_loader_extra_config['socket'] must be a socket path "
                    f"or false (in process), got {socket!r}")
            for key in ("path", "revision"):
                if extra.get(key) is not None and not isinstance(extra[key], str):
                    raise ValueError(
                        f"model_loader_extra_config[{key!r}] must be a string, "
                        f"got {type(extra[key]).__name__}")
            device = extra.get("device", "cpu")
            if device not in ("cpu", "cuda"):
                raise ValueError(
                    "model_loader_extra_config['device'] must be 'cpu' or "
                    f"'cuda', got {device!r}")
            # None: $BIGSMALL_SOCKET if set, else in process; False: in process.
            self._socket: Union[None, bool, str] = socket
            self._path: Optional[str] = extra.get("path")
            self._revision: Optional[str] = extra.get("revision")
            self._device: str = device

        # -- where the weights are ------------------------------------------
        def source(self, model_config: ModelConfig) -> tuple[str, Optional[str]]:
            """(path or Hub name, revision) the weights are read from."""
            path = self._path or model_config.model
            revision = self._revision
            if revision is None and self._path is None:
                revision = model_config.revision
            return path, revision

        def _check_local(self, path: str) -> None:
            if os.path.isdir(path):
                if not any(name.endswith(".bs") for name in os.listdir(path)):
                    raise ValueError(
                        f"--load-format {LOAD_FORMAT}: {path!r} holds no .bs "
                        "file; compress the model first (`bigsmall compress "
                        f"{path} -o {path.rstrip(os.sep)}.bs`) and serve that "
                        "directory")
            elif not os.path.exists(path) and path.startswith(("/", ".", "~")):
                raise FileNotFoundError(
                    f"--load-format {LOAD_FORMAT}: no such file or directory: "
                    f"{path!r}")

        def download_model(self, model_config: ModelConfig) -> None:
            """Nothing to download ahead: a local path is checked here; a Hub
            name is fetched (into the shared HF cache, resumable) when the
            weights are opened in load_weights."""
            path, _ = self.source(model_config)
            self._check_local(path)

        # -- loading ---------------------------------------------------------
        def _tensor_device(self) -> str:
            if self._device == "cuda":
                return f"cuda:{torch.cuda.current_device()}"
            return "cpu"

        def iter_weights(self, model_config: ModelConfig) -> Iterator[
                tuple[str, torch.Tensor]]:
            """The checkpoint's (name, tensor) pairs, layer by layer, as
            bigsmall.iter_weights yields them (zero-copy views: see the
            module docstring)."""
            import bigsmall

            path, revision = self.source(model_config)
            self._check_local(path)
            return bigsmall.iter_weights(
                path, device=self._tensor_device(), daemon=self._socket,
                revision=revision)

        def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
            if getattr(model, "secondary_weights", ()):
                raise NotImplementedError(
                    f"--load-format {LOAD_FORMAT}: {type(model).__name__} "
                    "loads weights from secondary sources, which this loader "
                    "does not support")
            started = time.perf_counter()
            weights = self.iter_weights(model_config)
            try:
                loaded = model.load_weights(weights)
            finally:
                close = getattr(weights, "close", None)
                if close is not None:  # releases the layer in flight on error
                    close()
            socket = self._socket
            if socket is None:
                socket = os.environ.get("BIGSMALL_SOCKET") or False
            _logger.info(
                "bigsmall: loading weights took %.2f seconds (%s)",
                time.perf_counter() - started,
                f"through bigsmalld at {socket}" if socket else "in process")
            if model_config.quantization is None and loaded is not None:
                # vLLM's own check (DefaultModelLoader's): every parameter
                # came from the checkpoint. It uses nothing of the loader.
                DefaultModelLoader.track_weights_loading(
                    self, model, loaded, quantized=False)

    BigSmallModelLoader.__module__ = __name__
    BigSmallModelLoader.__qualname__ = "BigSmallModelLoader"  # pickles by name
    return BigSmallModelLoader
