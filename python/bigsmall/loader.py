"""Loading compressed models as torch tensors: from_pretrained, StreamingLoader, iter_weights.

Sources (`name_or_path`): a .bs file, a directory of .bs shards (a
compressed model directory), or a Hugging Face Hub name ``owner/repo[@rev]``
or ``hf://owner/repo[@rev]`` (``revision=`` adds ``@rev``). An existing local
path always wins over a Hub name.

Where the bytes are decoded (`daemon`):

* ``None`` (default): through bigsmalld when ``$BIGSMALL_SOCKET`` is set,
  else in process.
* ``False``: in process always: the C++ decoder of the extension (the
  daemon's own load pipeline, on `threads` threads, 0 = every core), every
  tensor hash-checked. Tensors are zero-copy views of the decoded memory,
  private to this process and writable.
* a socket path (str / os.PathLike), ``True`` (the default socket) or a
  ``bigsmall._core.DaemonClient``: through bigsmalld. Layers are the daemon's
  shared copy, mapped zero-copy; **these tensors are READ-ONLY memory**
  (writing through one, e.g. an in-place op, kills the process with
  SIGSEGV; on a GPU it would corrupt the daemon's copy for every client).
  Each tensor holds its layer's lease until torch frees it (and every view of
  it). Pass ``copy=True`` for writable tensors of your own.

Devices (`device`): "cpu" or "cuda[:N]". In process, layers are decoded on
the host and copied to the GPU one layer at a time (the host copy freed
before the next). Through the daemon, a GPU target is a device session:
the daemon decodes on the GPU and the tensors are CUDA IPC views of its
device memory (zero-copy, opened once per arena). A daemon started with
``--gpu-backend emulated`` (CI, no GPU) gives host copies of its emulated
device layers (on the GPU when this process has CUDA, else left on the host
with a warning).

Memory: ``from_pretrained`` holds the whole model (the decoded bytes, once).
``StreamingLoader.iter_layers`` holds at most the layer it yields, the
layers decoded ahead (`read_ahead`), and whatever the caller keeps: it drops
its own references to a layer (and releases its lease) before it fetches the
next, and empties the dict it yielded, so a loop that does not keep the
tensors runs in about (1 + read_ahead) layers of memory plus the non-layer
tensors it asked for. Measured (tests/python/test_memory.py, a 173 MB model of
12 layers x 14.2 MB, peak RSS over the RSS before loading): iter_layers +38 MB
in process (read_ahead=1: 2.7 layers), +21 MB through bigsmalld;
from_pretrained +196 MB in process, +183 MB through bigsmalld;
safetensors.torch.load_file of the uncompressed file +178 MB.

Through the daemon, from_pretrained streams with a window of every layer + 1
(all leases held, zero-copy); when the daemon refuses that window
(--max-window, --max-total-window) or the model exceeds its cache budget, it
copies each layer and releases it instead (logged at INFO on the "bigsmall"
logger).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterator, Optional, Union

import torch

from . import _core, errors
from .dtypes import to_tensor
from .hub import _with_revision

__all__ = ["from_pretrained", "StreamingLoader", "iter_weights"]

log = logging.getLogger("bigsmall")

PathLike = Union[str, "os.PathLike[str]"]
DaemonSpec = Union[None, bool, str, "os.PathLike[str]", Any]

# owner/repo[@rev]: the Hub's names (letters, digits, '-', '_', '.').
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@\S+)?$")


# ---------------------------------------------------------------- arguments

class _Source:
    """What to open: a local path (absolute) or a Hub name."""

    def __init__(self, hub: bool, name: str) -> None:
        self.hub = hub
        self.name = name

    def __repr__(self) -> str:
        return f"_Source(hub={self.hub}, name={self.name!r})"


def _resolve_source(name_or_path: PathLike, revision: Optional[str]) -> _Source:
    if isinstance(name_or_path, os.PathLike):
        text, maybe_hub = os.fspath(name_or_path), False
    elif isinstance(name_or_path, str):
        text, maybe_hub = name_or_path, True
    else:
        raise errors.InvalidArgumentError(
            f"name_or_path must be a path or a Hub name, not {type(name_or_path).__name__}")
    if not text:
        raise errors.InvalidArgumentError("name_or_path is empty")
    hub = False
    if text.startswith("hf://"):
        hub = True
    elif (maybe_hub and _HUB_NAME.match(text) and not os.path.exists(text)
          and not os.path.isdir(text.split("/", 1)[0])):
        # As the CLI decides: owner/repo[@rev] when no local path of that
        # name and no local directory 'owner' exist.
        hub = True
    if hub:
        return _Source(True, _with_revision(text, revision))
    if revision:
        raise errors.InvalidArgumentError(
            f"revision={revision!r} applies to Hub names only, and {text!r} is a local path")
    return _Source(False, os.path.abspath(os.path.expanduser(text)))


def _parse_device(device: Union[str, torch.device, int, None]) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise errors.InvalidArgumentError(f"bad device {device!r}: {e}") from None
    if dev.type not in ("cpu", "cuda"):
        raise errors.InvalidArgumentError(f"device must be 'cpu' or 'cuda[:N]', not {device!r}")
    if dev.type == "cuda" and dev.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        dev = torch.device("cuda", index)
    return dev


def _daemon_device_name(dev: torch.device) -> str:
    """StartStream.device for a torch device: "" (host), "cuda:N" or the GPU's UUID."""
    if dev.type != "cuda":
        return ""
    # With CUDA_VISIBLE_DEVICES this process's ordinals are not the daemon's:
    # name the GPU by its UUID then.
    if os.environ.get("CUDA_VISIBLE_DEVICES") and torch.cuda.is_available():
        try:
            return "GPU-" + str(torch.cuda.get_device_properties(dev.index).uuid)
        except Exception:  # noqa: BLE001 - an old torch without .uuid: the ordinal
            pass
    return f"cuda:{dev.index}"


def _resolve_daemon(daemon: DaemonSpec):
    """None: in process; else what DaemonClient is made from (or one given)."""
    if daemon is False:
        return None
    if daemon is None:
        socket = os.environ.get("BIGSMALL_SOCKET")
        return socket if socket else None
    if daemon is True:
        return ""
    if isinstance(daemon, _core.DaemonClient):
        return daemon
    if isinstance(daemon, (str, os.PathLike)):
        socket = os.fspath(daemon)
        if not socket:
            raise errors.InvalidArgumentError("daemon='' names no socket (False: in process)")
        return socket
    raise errors.InvalidArgumentError(
        f"daemon must be None, False, True, a socket path or a DaemonClient, not {type(daemon).__name__}")


# ---------------------------------------------------------------- backends

def _dict_of(records, device: Optional[torch.device], copy: bool) -> dict[str, torch.Tensor]:
    return {record[0]: to_tensor(record, copy=copy, device=device) for record in records}


class _LocalBackend:
    """In process: _core.LocalModel."""

    daemon = False

    def __init__(self, source: _Source, device: torch.device, threads: int) -> None:
        if device.type == "cuda" and not torch.cuda.is_available():
            raise errors.FailedPreconditionError(
                f"device={str(device)!r}, but this process has no CUDA (torch.cuda.is_available() "
                f"is False)")
        self.device = device
        if source.hub:
            self.model = _core.LocalModel.open_hub(source.name, int(threads))
        else:
            self.model = _core.LocalModel.open(source.name, int(threads))
        self.model_id = self.model.id

    def layer_count(self) -> int:
        return self.model.layer_count()

    def has_non_layer(self) -> bool:
        return self.model.has_non_layer()

    def describe(self) -> dict:
        return self.model.describe()

    def _target(self) -> Optional[torch.device]:
        return self.device if self.device.type != "cpu" else None

    def non_layer(self) -> dict[str, torch.Tensor]:
        if not self.model.has_non_layer():
            return {}
        layer = self.model.load_layer(-1)
        try:
            return _dict_of(layer.tensors(), self._target(), False)
        finally:
            layer.release()

    def layers(self, include_non_layer: bool, read_ahead: int) -> Iterator[tuple[int, dict]]:
        """(index, tensors) in order; the caller drops each before the next."""
        stream = self.model.stream(0, 0, include_non_layer, max(0, int(read_ahead)))
        try:
            while True:
                layer = stream.next()
                if layer is None:
                    return
                index = layer.index
                tensors = _dict_of(layer.tensors(), self._target(), False)
                layer.release()
                del layer
                yield index, tensors
                del tensors
        finally:
            stream.close()

    def close(self) -> None:
        self.model.close()


class _DaemonBackend:
    """Through bigsmalld: _core.DaemonClient."""

    daemon = True

    def __init__(self, source: _Source, device: torch.device, client_spec: Any,
                 copy: bool) -> None:
        self.device = device
        self.device_name = _daemon_device_name(device)
        self.copy = copy
        if isinstance(client_spec, _core.DaemonClient):
            self.client = client_spec
        else:
            self.client = _core.DaemonClient(client_spec or None)
        self.description = self.client.open_model(source.name)
        self.model_id = self.description["model_id"]
        self._infos: dict[int, list[dict]] = {}
        for group in self.description.get("layers") or []:
            self._infos[int(group["index"])] = group.get("tensors") or []
        non_layer = self.description.get("non_layer")
        if non_layer is not None:
            self._infos[-1] = non_layer.get("tensors") or []
        # device="cuda" in a process without CUDA: only a daemon with an
        # emulated GPU (CI) can serve it, as host tensors.
        self.host_only = False
        if device.type == "cuda" and not torch.cuda.is_available():
            try:
                backend = self.client.stats().get("gpu_backend")
            except errors.BigSmallError:
                backend = None
            if backend != "emulated":
                raise errors.FailedPreconditionError(
                    f"device={str(device)!r}, but this process has no CUDA "
                    f"(torch.cuda.is_available() is False)")
            self.host_only = True
            log.warning("bigsmalld's GPU is emulated and this process has no CUDA: "
                        "device layers come back as host tensors")

    def layer_count(self) -> int:
        return len(self.description.get("layers") or [])

    def has_non_layer(self) -> bool:
        return self.description.get("non_layer") is not None

    def describe(self) -> dict:
        return self.description

    def decoded_bytes(self) -> int:
        groups = list(self.description.get("layers") or [])
        if self.has_non_layer():
            groups.append(self.description["non_layer"])
        return sum(int(g.get("size", 0)) for g in groups)

    def _host_target(self) -> Optional[torch.device]:
        """Where host bytes go: None (stay) or the CUDA device."""
        if self.device.type == "cpu" or self.host_only:
            return None
        return self.device

    def stream(self, window: int, include_non_layer: bool, from_layer: int = 0,
               to_layer: int = 0):
        return self.client.stream(self.model_id, from_layer, to_layer, int(window),
                                  include_non_layer, self.device_name)

    def layer_dict(self, layer, copy: bool) -> dict[str, torch.Tensor]:
        """The tensors of one DaemonLayer (zero-copy unless copy or a host->GPU move).

        Zero-copy views hold their layer's lease and the stream's call (the
        extension's keep-alive) until torch frees them, whether the stream is
        closed or not."""
        if layer.on_device and layer.emulated:
            # The emulated GPU's memory is no CUDA memory: host copies.
            target = self._host_target()
            records = [(t["name"], t["dtype"], tuple(t["shape"]), layer.copy_to_host(t["name"]))
                       for t in self._infos.get(int(layer.index), [])]
            return _dict_of(records, target, False)
        records = layer.tensors()
        if layer.on_device:
            # CUDA IPC views on the daemon's device memory.
            return _dict_of(records, None, copy)
        return _dict_of(records, self._host_target(), copy)

    def non_layer(self) -> dict[str, torch.Tensor]:
        if not self.has_non_layer():
            return {}
        # A stream of the empty layer range [n, n) with the non-layer group:
        # that group alone, as any layer (zero-copy, or on the GPU of a
        # device session).
        n = self.layer_count()
        stream = self.stream(2, True, from_layer=n, to_layer=n)
        layer = stream.next()
        if layer is None or int(layer.index) != -1:
            raise errors.InternalError(
                f"bigsmalld sent {'nothing' if layer is None else f'layer {layer.index}'} for "
                f"the non-layer group of {self.model_id}")
        tensors = self.layer_dict(layer, self.copy)
        layer.release()
        del layer
        if stream.next() is not None:  # StreamEnd: the call ends OK once nothing views it
            raise errors.InternalError(f"bigsmalld sent more than the non-layer group of "
                                       f"{self.model_id}")
        stream.close()
        return tensors

    def cache_budget(self) -> Optional[int]:
        """The daemon's cache budget for this session's layers (the host's, or the GPU's
        of a device session); None when it does not say."""
        try:
            stats = self.client.stats()
        except errors.BigSmallError:
            return None
        if not isinstance(stats, dict):
            return None
        budget = stats.get("cache_budget_bytes")
        if self.device_name:
            devices = stats.get("devices") or []
            mine = [d for d in devices
                    if self.device_name in (d.get("name"), d.get("gpu_uuid"))] or devices
            budgets = [int(d["cache_budget_bytes"]) for d in mine if d.get("cache_budget_bytes")]
            budget = min(budgets) if budgets else None
        return int(budget) if budget else None

    def close(self) -> None:
        pass


def _open_backend(source: _Source, device: torch.device, daemon: DaemonSpec, threads: int,
                  copy: bool):
    client_spec = _resolve_daemon(daemon)
    if client_spec is None:
        return _LocalBackend(source, device, threads)
    return _DaemonBackend(source, device, client_spec, copy)


# ---------------------------------------------------------------- from_pretrained

def _zero_copy_stream(backend: "_DaemonBackend", groups: int):
    """A stream whose window holds the whole model, and its first layer; None when the
    daemon refuses such a window. Returns (stream, first layer, whether StreamEnd can be read)."""
    # groups + 1 leaves room to read StreamEnd with every layer held; a
    # daemon whose --max-window is exactly the model's size gets `groups`.
    for window, reads_end in ((groups + 1, True), (max(1, groups), False)):
        try:
            stream = backend.stream(window, True)
            first = stream.next()
        except (errors.InvalidArgumentError, errors.ResourceExhaustedError) as e:
            log.info("from_pretrained: bigsmalld refused a window of %d layers (%s)", window,
                     e.message)
            continue
        log.debug("from_pretrained: zero-copy from bigsmalld (window %d, read-only tensors)",
                  window)
        return stream, first, reads_end
    return None


def _daemon_state_dict(backend: _DaemonBackend, copy: bool) -> dict[str, torch.Tensor]:
    groups = backend.layer_count() + (1 if backend.has_non_layer() else 0)
    if not copy:
        budget = backend.cache_budget()
        if budget is not None and backend.decoded_bytes() > budget:
            log.info("from_pretrained: the model (%d bytes) is larger than bigsmalld's cache "
                     "budget (%d): copying each layer", backend.decoded_bytes(), budget)
            copy = True
    opened = None if copy else _zero_copy_stream(backend, groups)
    if opened is not None:
        stream, layer, reads_end = opened
        out: dict[str, torch.Tensor] = {}
        received = 0
        try:
            while layer is not None:
                out.update(backend.layer_dict(layer, False))
                layer.release()
                received += 1
                if received == groups and not reads_end:
                    # Every layer is held and the window is full: StreamEnd cannot be
                    # read; the call stays open while the tensors live.
                    break
                layer = stream.next()
            stream.close()  # the tensors hold the leases and the call
            return out
        except errors.ResourceExhaustedError as e:
            log.info("from_pretrained: bigsmalld cannot hold the whole model leased (%s)",
                     e.message)
            out.clear()
            del layer, stream, opened
    log.info("from_pretrained: copying each layer from bigsmalld (writable tensors)")
    stream = backend.stream(0, True)
    out = {}
    while True:
        layer = stream.next()
        if layer is None:
            break
        out.update(backend.layer_dict(layer, True))
        layer.release()
        del layer
    stream.close()
    return out


def from_pretrained(name_or_path: PathLike, device: Union[str, torch.device] = "cpu",
                    revision: Optional[str] = None, daemon: DaemonSpec = None, *,
                    threads: int = 0, copy: bool = False) -> dict[str, torch.Tensor]:
    """Loads every tensor of a compressed model: {name: tensor}, bit-identical
    to the original safetensors.

    name_or_path: a .bs file, a directory of .bs shards, or a Hub name
    (owner/repo[@rev], hf://owner/repo[@rev]; revision= adds @rev).
    device: "cpu" or "cuda[:N]". daemon: None ($BIGSMALL_SOCKET if set, else
    in process), False (in process), a socket path / True / a DaemonClient
    (through bigsmalld). threads: decoder threads in process (0: all cores).
    copy: through the daemon, writable copies instead of zero-copy read-only
    views of its shared memory (see the module's docstring).

    Through the daemon, the model is streamed with a window as large as the
    model, so every layer stays leased and mapped zero-copy; when the daemon
    does not allow that (its --max-window, --max-total-window or cache
    budget), each layer is copied and released instead (logged at INFO).
    Raises bigsmall.errors exceptions (NotFoundError, DataLossError, ...).
    """
    source = _resolve_source(name_or_path, revision)
    dev = _parse_device(device)
    backend = _open_backend(source, dev, daemon, threads, copy)
    try:
        if isinstance(backend, _DaemonBackend):
            return _daemon_state_dict(backend, copy)
        out: dict[str, torch.Tensor] = {}
        for _, tensors in backend.layers(True, 1):
            out.update(tensors)
            del tensors
        return out
    finally:
        backend.close()


# ---------------------------------------------------------------- StreamingLoader

class StreamingLoader:
    """Layer-by-layer loading with bounded memory.

        with bigsmall.StreamingLoader("model.bs", device="cuda") as loader:
            model_parts = loader.load_non_layer_tensors()   # embeddings, final norm, ...
            for layer_idx, tensors in loader.iter_layers():  # in order
                use(layer_idx, tensors)                      # {name: tensor}

    Before it fetches the next layer, iter_layers drops its own references
    to the previous one (releasing the daemon's lease) and EMPTIES the dict
    it yielded: keep what you need by taking the tensors out of it
    (``kept.update(tensors)``), not by keeping the dict. Memory is then
    bounded by (1 + read_ahead) layers plus what you keep.

    Through the daemon the tensors are read-only zero-copy views that hold
    their layer's lease, and the stream's window is read_ahead + 1 layers:
    keeping the tensors of more layers than that stops the stream with
    FailedPreconditionError, so pass copy=True to keep many layers (or
    use from_pretrained). Arguments as for from_pretrained; read_ahead: layers
    decoded ahead of the loop (in process; through the daemon it sizes the
    window).
    """

    def __init__(self, name_or_path: PathLike, device: Union[str, torch.device] = "cpu",
                 daemon: DaemonSpec = None, revision: Optional[str] = None, threads: int = 0,
                 read_ahead: int = 1, *, copy: bool = False) -> None:
        self._source = _resolve_source(name_or_path, revision)
        self._device = _parse_device(device)
        self._read_ahead = max(0, int(read_ahead))
        self._copy = bool(copy)
        self._backend = _open_backend(self._source, self._device, daemon, threads, self._copy)
        self._closed = False

    # -- context manager
    def __enter__(self) -> "StreamingLoader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise errors.FailedPreconditionError("the StreamingLoader is closed")

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def model_id(self) -> str:
        return self._backend.model_id

    @property
    def through_daemon(self) -> bool:
        return bool(self._backend.daemon)

    def layer_count(self) -> int:
        """Layers (transformer blocks), without the non-layer group."""
        self._check_open()
        return self._backend.layer_count()

    def has_non_layer(self) -> bool:
        self._check_open()
        return self._backend.has_non_layer()

    def describe(self) -> dict:
        """The model's description (layers, their tensors, sizes and hashes)."""
        self._check_open()
        return self._backend.describe()

    def load_non_layer_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors outside the layers (embeddings, final norm, head): {name: tensor}.

        Yours to keep. Through the daemon they are zero-copy read-only views
        of its shared copy (on the GPU for a device session) that hold the
        group's lease while they live, or copies with copy=True."""
        self._check_open()
        return self._backend.non_layer()

    def iter_layers(self) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """Yields (layer_idx, {name: tensor}) for every layer in order (see the class docstring)."""
        self._check_open()
        if isinstance(self._backend, _LocalBackend):
            for index, tensors in self._backend.layers(False, self._read_ahead):
                yield index, tensors
                tensors.clear()
                del tensors
            return
        yield from self._iter_daemon_layers()

    def _iter_daemon_layers(self) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        backend: _DaemonBackend = self._backend
        window = self._read_ahead + 1
        try:
            stream = backend.stream(window, False)
            layer = stream.next()
        except errors.InvalidArgumentError as e:
            log.info("StreamingLoader: bigsmalld refused a window of %d (%s): its default",
                     window, e.message)
            window = 0
            stream = backend.stream(0, False)
            layer = stream.next()
        # close() at the end (or when the loop stops early) stops the stream;
        # the tensors the caller kept hold their leases and the call.
        try:
            while layer is not None:
                index = layer.index
                tensors = backend.layer_dict(layer, self._copy)
                layer.release()
                del layer
                yield index, tensors
                tensors.clear()
                del tensors
                try:
                    layer = stream.next()
                except errors.FailedPreconditionError as e:
                    raise errors.FailedPreconditionError(
                        f"{e.message} (the tensors of earlier layers are still referenced: "
                        f"through bigsmalld they are zero-copy views that hold their layer's "
                        f"lease, and the window is {stream.window}; keep copies: "
                        f"StreamingLoader(..., copy=True) or tensor.clone())") from e
        finally:
            stream.close()

    def close(self) -> None:
        """Closes the model (idempotent). Tensors handed out stay valid."""
        if not self._closed:
            self._closed = True
            self._backend.close()


def iter_weights(name_or_path: PathLike, device: Union[str, torch.device] = "cpu",
                 daemon: DaemonSpec = None, revision: Optional[str] = None, *, threads: int = 0,
                 read_ahead: int = 1, copy: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, tensor) for every tensor: the non-layer tensors first,
    then layer by layer, dropping its references to each tensor once yielded
    (as model.load_weights wants: memory stays about a layer)."""
    with StreamingLoader(name_or_path, device=device, daemon=daemon, revision=revision,
                         threads=threads, read_ahead=read_ahead, copy=copy) as loader:
        tensors = loader.load_non_layer_tensors()
        yield from _drain(tensors)
        for _, tensors in loader.iter_layers():
            yield from _drain(tensors)
        del tensors


def _drain(tensors: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    for name in list(tensors):
        tensor = tensors.pop(name)
        yield name, tensor
        del tensor
