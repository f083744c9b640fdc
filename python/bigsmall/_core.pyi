"""bigsmall._core: the C++ extension (nanobind). THE CONTRACT between the C++
bindings (python/src/*.cc) and the Python package (python/bigsmall/*.py).

Conventions
- Tensor records: every call that hands out tensor bytes returns a list of
  TensorRecord tuples (name, dtype, shape, data): `dtype` is the safetensors
  dtype string ("BF16", "F8_E4M3", or an unknown one as stored), `shape` a
  tuple of ints, `data` a 1-D torch.uint8 tensor over the tensor's bytes,
  ZERO-COPY (DLPack): it keeps the memory it views alive (a decoded layer
  block, a daemon lease + mapping, a CUDA IPC arena) until torch frees it and
  every view of it. The Python side reinterprets it (view(dtype).reshape).
  Daemon host layers are READ-ONLY memory (the daemon's shared copy): writing
  through such a tensor faults (SIGSEGV); the Python API documents this and
  offers copies.
- Every call that does I/O or decoding releases the GIL while it works.
- Errors: non-OK statuses raise the exception the installed factory makes
  (_set_error_factory; bigsmall.errors.from_status), whose class follows the
  status code; .code is the code's name ("DATA_LOSS", ...).
- Layer dicts (describe()): {"index": int (-1: the non-layer group),
  "name": str, "number": int, "size": int (bytes decoded),
  "stored_size": int, "tensors": [TensorInfo dict]}; TensorInfo dict:
  {"name", "dtype", "shape": tuple, "size": int, "offset": int (in the
  layer), "hash": str (32 hex, XXH3-128 of the bytes)}.
"""
from typing import Callable, Optional
import torch

TensorRecord = tuple[str, str, tuple[int, ...], torch.Tensor]

__version__: str
STATUS_CODES: dict[str, int]

def _set_error_factory(factory: Callable[[int, str, str], BaseException]) -> None: ...
def _raise_status(code: int, message: str) -> None: ...
def _test_byte_tensor(data: bytes) -> torch.Tensor: ...
def _test_live_buffers() -> int: ...

# ---------------------------------------------------------------- local_model.cc
# In process: the daemon's own Model and load pipeline (daemon::Model::Open /
# OpenSources + LoadLayer) into anonymous host memory, decoding on a thread
# pool of `threads` (0: all cores); every tensor hash-checked before return.

class LocalModel:
    @staticmethod
    def open(path: str, threads: int = 0) -> "LocalModel":
        """A .bs file or a directory of .bs shards (a compressed model dir)."""
    @staticmethod
    def open_hub(name: str, threads: int = 0, download: bool = True) -> "LocalModel":
        """'owner/repo[@rev]' or 'hf://owner/repo[@rev]' (HF_* environment, as
        huggingface_hub reads it): resolves the revision, downloads the repo's
        .bs shards and shard index into the shared HF cache (resumable,
        verified), then opens them from the cache. Offline / cached: no
        network. A repo without .bs files is FAILED_PRECONDITION saying so."""
    id: str            # the model id (as the daemon would name it)
    path: str          # what it was opened from
    def layer_count(self) -> int: ...        # layers, without the non-layer group
    def has_non_layer(self) -> bool: ...
    def describe(self) -> dict: ...          # {"id", "path", "layers": [layer dict], "non_layer": layer dict | None}
    def memory(self) -> dict:
        """Decoded memory held now (by LoadedLayers, tensors and streams'
        read-ahead): {"blocks": one per live layer, "allocated": bytes
        (page-rounded), "arenas", "arena_bytes": address space}."""
    def load_layer(self, index: int) -> "LoadedLayer":
        """Decodes layer `index` (-1: the non-layer group) into fresh memory."""
    def stream(self, from_layer: int = 0, to_layer: int = 0, include_non_layer: bool = False,
               read_ahead: int = 1) -> "LocalStream":
        """Layers in order, decoding up to `read_ahead` layers ahead of the
        consumer on a background thread (bounded: at most read_ahead + the
        layers the consumer still holds are in memory)."""
    def close(self) -> None: ...

class LoadedLayer:
    index: int
    name: str
    size: int          # bytes of decoded memory
    def tensors(self) -> list[TensorRecord]: ...
    def release(self) -> None:
        """Drops this object's reference to the memory (tensors handed out keep
        it alive until freed)."""

class LocalStream:
    def next(self) -> Optional[LoadedLayer]:
        """The next layer, None at the end; a decode error is raised here."""
    def close(self) -> None: ...             # stops the read-ahead; idempotent

# ---------------------------------------------------------------- daemon_client.cc
# Through bigsmalld (client/client.h).

class DaemonClient:
    def __init__(self, socket: Optional[str] = None, rpc_timeout_ms: int = 30000,
                 stream_idle_timeout_ms: int = 60000) -> None:
        """socket: a Unix socket path, 'unix:...' or host:port; None:
        $BIGSMALL_SOCKET, else /run/bigsmall/bigsmall.sock."""
    target: str
    def wait_ready(self, timeout_ms: int) -> None: ...
    def open_model(self, name: str) -> dict:
        """A path the daemon can open, or a Hub name ('owner/repo@rev',
        'hf://...'). Returns the description: {"model_id", "path",
        "layers": [layer dict], "non_layer": layer dict | None, ...}."""
    def describe(self, model_id: str) -> dict: ...
    def stream(self, model_id: str, from_layer: int = 0, to_layer: int = 0, window: int = 0,
               include_non_layer: bool = False, device: str = "",
               pin_host_memory: bool = False) -> "DaemonStream": ...
    def get_tensors(self, model_id: str, names: list[str]) -> list[TensorRecord]:
        """Copies (host memory); names=[]: every non-layer tensor."""
    def stats(self) -> dict: ...
    def list_models(self) -> list[dict]: ...

class DaemonStream:
    window: int
    def next(self) -> Optional["DaemonLayer"]: ...  # None at the end
    def close(self) -> None:
        """Stops the stream (idempotent): no more layers, next() returns None.
        Layers and tensor views still held keep their leases (and the call)
        until the last of them goes, exactly as when the stream is collected."""

class DaemonLayer:
    index: int
    name: str
    size: int
    cache_hit: bool
    on_device: bool
    device: int            # local CUDA ordinal, -1: host
    emulated: bool         # device layer of the daemon's emulated GPU (no real CUDA memory)
    def tensors(self) -> list[TensorRecord]:
        """Host layers: zero-copy views of the daemon's shared memory
        (read-only). Real device layers: torch CUDA uint8 tensors on the IPC
        pointer (zero-copy). Emulated device layers: FAILED_PRECONDITION
        (their memory is no CUDA memory); use copy_to_host."""
    def copy_to_host(self, name: str) -> torch.Tensor: ...   # uint8, a copy
    def verify(self) -> None: ...          # on the device for device layers; DATA_LOSS naming tensors
    def release(self) -> None:
        """Releases the lease once no tensor handed out still views it (the
        tensors hold it); this object's own reference goes now."""

# ---------------------------------------------------------------- codec_ops.cc
# The CLI's operations, same errors (codes) as the CLI.

def compress(src: str, dst: str = "", mode: str = "balanced", base: str = "", threads: int = 0,
             force: bool = False, layer_pattern: str = "", follow_symlinks: bool = False) -> dict:
    """mode: "balanced" | "storage" | "inference". Returns {"input", "output",
    "mode", "input_bytes", "output_bytes", "ratio", "tensors", "files", "seconds"}."""
def decompress(src: str, dst: str = "", base: str = "", threads: int = 0, force: bool = False) -> dict: ...
def verify(src: str, against: str = "", base: str = "", threads: int = 0) -> dict: ...
def info(src: str, tensors: bool = False) -> dict:
    """What `bigsmall info --json` prints (a local path or a Hub name)."""
def compress_hub(repo: str, output_dir: str = "", mode: str = "balanced", threads: int = 0,
                 force: bool = False) -> dict:
    """Downloads owner/repo[@rev] into the HF cache and compresses it into
    output_dir (with a model card), as `bigsmall compress owner/repo`."""
def upload(directory: str, repo: str, revision: str = "main", private: bool = False,
           commit_message: str = "", create: bool = True) -> dict:
    """As `bigsmall upload --json`: {"ok", "command", "input", "repo", "revision", "commit",
    "commit_url", "files", "lfs_files_sent", "lfs_files_skipped", "bytes_sent"}."""
