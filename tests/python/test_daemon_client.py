"""bigsmall._core.DaemonClient / DaemonStream / DaemonLayer against a real
bigsmalld (bigsmall/bin/bigsmalld, started privately by
bigsmall._daemon_proc.DaemonProcess), on the MiniLM model of the corpus.

Every tensor the daemon hands out is compared byte for byte with the
original safetensors file; leases are watched through GetStats.
"""
from __future__ import annotations

import gc
import json
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import bigsmall
from bigsmall import _core
from bigsmall import _daemon_proc
from bigsmall._daemon_proc import DaemonProcess, DaemonStartError
from conftest import wait_for

CORPUS = Path(os.environ.get("BIGSMALL_CORPUS",
                             "/root/.cache/bigsmall/corpus/minilm/model.safetensors"))

LAYER_KEYS = {"index", "name", "number", "size", "stored_size", "tensors"}
TENSOR_KEYS = {"name", "dtype", "shape", "size", "offset", "hash"}


def _require_tools() -> None:
    try:
        _daemon_proc.daemon_binary()
        _daemon_proc.tool_binary("bigsmall")
    except FileNotFoundError as e:
        pytest.skip(f"bigsmall tools not installed with the package: {e}")


class Original:
    """The safetensors file, parsed by hand: name -> (dtype, shape, bytes)."""

    def __init__(self, path: Path) -> None:
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        header.pop("__metadata__", None)
        self.data = np.frombuffer(raw, dtype=np.uint8)
        self.tensors: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]] = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            self.tensors[name] = (info["dtype"], tuple(info["shape"]), (8 + n + begin, 8 + n + end))

    def bytes_of(self, name: str) -> np.ndarray:
        begin, end = self.tensors[name][2]
        return self.data[begin:end]

    def check(self, name: str, dtype: str, shape: tuple, data: torch.Tensor) -> None:
        assert name in self.tensors, f"unknown tensor {name}"
        want_dtype, want_shape, _ = self.tensors[name]
        assert dtype == want_dtype, name
        assert tuple(shape) == want_shape, name
        assert data.dtype == torch.uint8 and data.dim() == 1, name
        assert np.array_equal(data.cpu().numpy(), self.bytes_of(name)), f"bytes differ in {name}"


@pytest.fixture(scope="module")
def original() -> Original:
    if not CORPUS.is_file():
        pytest.skip(f"the MiniLM corpus file is missing: {CORPUS} (set BIGSMALL_CORPUS)")
    return Original(CORPUS)


@pytest.fixture(scope="module")
def model_dir(original, minilm_cli_bs) -> Path:
    _require_tools()
    return minilm_cli_bs.parent


@pytest.fixture(scope="module", params=["none", "emulated"])
def daemon(request, model_dir):
    with DaemonProcess([model_dir], gpu_backend=request.param, cache_budget="1G",
                       gpu_memory="512M") as d:
        yield d
        assert d.running(), f"bigsmalld died:\n{d.log_tail()}"


@pytest.fixture(scope="module")
def emu_daemon(model_dir):
    with DaemonProcess([model_dir], gpu_backend="emulated", cache_budget="1G",
                       gpu_memory="512M") as d:
        yield d


@pytest.fixture
def client(daemon):
    c = daemon.client(rpc_timeout_ms=10000, stream_idle_timeout_ms=10000)
    yield c
    gc.collect()
    # Each test leaves no lease behind (its streams and tensors are gone).
    wait_for("every lease of the test to end", lambda: c.stats()["active_leases"] == 0, timeout=5.0)


def _open(client, model_dir: Path) -> dict:
    return client.open_model(str(model_dir / "minilm.bs"))


def _leases(client) -> int:
    return client.stats()["active_leases"]


# ---------------------------------------------------------------- descriptions


def test_description_layout(client, model_dir, original):
    desc = _open(client, model_dir)
    assert desc["model_id"] == desc["id"] and desc["model_id"].startswith("m")
    assert desc["path"] == str(model_dir / "minilm.bs")
    assert desc["num_layers"] == len(desc["layers"]) == 6
    assert desc["num_tensors"] == len(original.tensors)
    assert desc["non_layer"] is not None and desc["non_layer"]["index"] == -1
    seen = set()
    for i, layer in enumerate(desc["layers"] + [desc["non_layer"]]):
        assert set(layer) == LAYER_KEYS
        if layer is not desc["non_layer"]:
            assert layer["index"] == i
        for t in layer["tensors"]:
            assert set(t) == TENSOR_KEYS
            dtype, shape, (begin, end) = original.tensors[t["name"]]
            assert (t["dtype"], t["shape"], t["size"]) == (dtype, shape, end - begin)
            assert isinstance(t["shape"], tuple)
            assert len(t["hash"]) == 32 and int(t["hash"], 16) >= 0
            assert t["offset"] + t["size"] <= layer["size"]
            seen.add(t["name"])
    assert seen == set(original.tensors)
    again = client.describe(desc["model_id"])
    assert again == desc


def test_hashes_are_xxh3_128_of_the_bytes(client, model_dir, original):
    xxhash = pytest.importorskip("xxhash", reason="xxhash (Python) checks the hash strings")
    desc = _open(client, model_dir)
    for t in desc["layers"][0]["tensors"] + desc["non_layer"]["tensors"]:
        assert t["hash"] == xxhash.xxh3_128_hexdigest(original.bytes_of(t["name"]).tobytes())


def test_stats_and_list_models(client, daemon, model_dir):
    desc = _open(client, model_dir)
    stats = client.stats()
    assert stats["gpu_backend"] == daemon.gpu_backend
    assert isinstance(stats["devices"], list) and isinstance(stats["uptime_seconds"], float)
    if daemon.gpu_backend == "emulated":
        assert stats["devices"][0]["emulated"] is True
    models = client.list_models()
    assert desc["model_id"] in [m["model_id"] for m in models]
    assert client.target == "unix:" + daemon.socket


# ---------------------------------------------------------------- streaming


def test_stream_every_layer_matches_the_original(client, model_dir, original):
    desc = _open(client, model_dir)
    stream = client.stream(desc["model_id"], include_non_layer=True, window=2)
    assert stream.window == 2
    indexes, compared = [], set()
    while (layer := stream.next()) is not None:
        indexes.append(layer.index)
        assert not layer.on_device and layer.device == -1 and not layer.emulated
        info = desc["non_layer"] if layer.index == -1 else desc["layers"][layer.index]
        assert layer.name == info["name"] and layer.size == info["size"]
        records = layer.tensors()
        assert [r[0] for r in records] == [t["name"] for t in info["tensors"]]
        for name, dtype, shape, data in records:
            original.check(name, dtype, shape, data)
            compared.add(name)
        layer.verify()
        del records, data
        layer.release()
    assert indexes == [-1, 0, 1, 2, 3, 4, 5]
    assert compared == set(original.tensors)
    assert stream.next() is None  # after the end
    stream.close()
    stream.close()  # idempotent


def test_stream_range(client, model_dir):
    desc = _open(client, model_dir)
    stream = client.stream(desc["model_id"], from_layer=2, to_layer=4, window=1)
    got = []
    while (layer := stream.next()) is not None:
        got.append(layer.index)
        layer.release()
    assert got == [2, 3]
    with pytest.raises(bigsmall.errors.BigSmallError) as e:
        client.stream(desc["model_id"], from_layer=7).next()
    assert e.value.code == "OUT_OF_RANGE"


def test_streams_from_several_threads(client, model_dir, original):
    # One client, streams of their own and one stream shared by two threads:
    # the GIL is released in next(), so the calls really run at once.
    desc = _open(client, model_dir)
    shared = client.stream(desc["model_id"], window=2)
    seen_shared: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def own_stream() -> None:
        try:
            stream = client.stream(desc["model_id"], include_non_layer=True, window=2)
            while (layer := stream.next()) is not None:
                for name, dtype, shape, data in layer.tensors():
                    original.check(name, dtype, shape, data)
                layer.release()
            stream.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    def share() -> None:
        try:
            while (layer := shared.next()) is not None:
                with lock:
                    seen_shared.append(layer.index)
                layer.release()
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=own_stream) for _ in range(3)]
    threads += [threading.Thread(target=share) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures
    assert sorted(seen_shared) == list(range(6))
    shared.close()


def test_lease_lives_while_a_tensor_view_lives(client, model_dir, original):
    desc = _open(client, model_dir)
    # One layer: no other lease (a prefetched layer in the window) is counted.
    stream = client.stream(desc["model_id"], from_layer=0, to_layer=1, window=2)
    layer = stream.next()
    name, dtype, shape, data = layer.tensors()[0]
    weights = data.view(torch.float32).reshape(shape)  # a view of the view
    del data
    assert _leases(client) == 1
    layer.release()
    del layer
    gc.collect()
    # The lease is the tensor's: still held, memory still the layer's.
    assert _leases(client) == 1
    assert np.array_equal(weights.reshape(-1).view(torch.uint8).numpy(), original.bytes_of(name))
    del weights
    gc.collect()
    wait_for("the lease to end after the last view went", lambda: _leases(client) == 0, timeout=5.0)
    stream.close()


def test_stream_collected_while_views_live_keeps_their_lease(client, model_dir, original):
    desc = _open(client, model_dir)
    stream = client.stream(desc["model_id"], from_layer=2, to_layer=3, window=1)
    layer = stream.next()
    records = layer.tensors()
    del layer, stream
    gc.collect()
    assert _leases(client) == 1
    for name, dtype, shape, data in records:
        original.check(name, dtype, shape, data)
    del records, name, dtype, shape, data
    gc.collect()
    wait_for("the lease to end with the last view", lambda: _leases(client) == 0, timeout=5.0)


def test_window_full_is_failed_precondition(client, model_dir):
    desc = _open(client, model_dir)
    stream = client.stream(desc["model_id"], window=1)
    first = stream.next()
    with pytest.raises(bigsmall.errors.BigSmallError) as e:
        stream.next()
    assert e.value.code == "FAILED_PRECONDITION"
    # A tensor view holds the window too.
    data = first.tensors()[0][3]
    first.release()
    with pytest.raises(bigsmall.errors.BigSmallError) as e:
        stream.next()
    assert e.value.code == "FAILED_PRECONDITION"
    del data
    gc.collect()
    second = stream.next()
    assert second.index == 1
    second.release()
    stream.close()


def test_released_layer_and_closed_stream(client, model_dir):
    desc = _open(client, model_dir)
    stream = client.stream(desc["model_id"], window=2)
    layer = stream.next()
    index = layer.index
    layer.release()
    layer.release()  # idempotent
    assert layer.index == index  # the metadata stays
    for call in (layer.tensors, layer.verify, lambda: layer.copy_to_host("x")):
        with pytest.raises(bigsmall.errors.BigSmallError) as e:
            call()
        assert e.value.code == "FAILED_PRECONDITION"
    stream.close()
    assert stream.next() is None  # a closed stream hands out no more layers
    stream.close()  # idempotent


def test_close_with_a_live_view_keeps_its_lease_until_the_view_goes(client, model_dir, original):
    desc = _open(client, model_dir)
    stream = client.stream(desc["model_id"], from_layer=1, to_layer=2, window=2)
    layer = stream.next()
    records = layer.tensors()
    layer.release()
    del layer
    assert stream.next() is None  # StreamEnd: the call stays open while leases live
    stream.close()
    assert stream.next() is None
    stream.close()  # idempotent
    # The view is the last holder: its lease (and the call) still live.
    assert _leases(client) == 1
    # An Evict of everything unleased leaves a leased layer alone.
    evicted = subprocess.run([str(_daemon_proc.tool_binary("bigsmall-client")), "--socket",
                              client.target.removeprefix("unix:"), "evict"],
                             capture_output=True, text=True, timeout=30)
    assert evicted.returncode == 0, evicted.stderr
    assert _leases(client) == 1
    for name, dtype, shape, data in records:
        original.check(name, dtype, shape, data)
    del records, name, dtype, shape, data
    gc.collect()
    wait_for("the lease to end with the last view after close()", lambda: _leases(client) == 0,
             timeout=5.0)


def test_close_mid_stream_with_a_live_view(client, model_dir, original):
    desc = _open(client, model_dir)
    stream = client.stream(desc["model_id"], window=1)
    layer = stream.next()
    name, dtype, shape, data = layer.tensors()[0]
    del layer
    stream.close()  # before StreamEnd: no more layers; the view keeps its lease
    assert stream.next() is None
    assert _leases(client) >= 1
    original.check(name, dtype, shape, data)
    del data
    gc.collect()
    wait_for("the leases to end with the last view after close()", lambda: _leases(client) == 0,
             timeout=5.0)


def test_copy_to_host_of_a_host_layer(client, model_dir, original):
    desc = _open(client, model_dir)
    stream = client.stream(desc["model_id"], from_layer=0, to_layer=1, window=1)
    layer = stream.next()
    name = desc["layers"][0]["tensors"][0]["name"]
    copy = layer.copy_to_host(name)
    layer.release()
    del layer
    gc.collect()
    wait_for("the lease to end (a copy holds none)", lambda: _leases(client) == 0, timeout=5.0)
    assert np.array_equal(copy.numpy(), original.bytes_of(name))
    stream.close()


# ---------------------------------------------------------------- get_tensors


def test_get_tensors_copies(client, model_dir, original):
    desc = _open(client, model_dir)
    records = client.get_tensors(desc["model_id"], [])
    assert sorted(r[0] for r in records) == sorted(t["name"] for t in desc["non_layer"]["tensors"])
    for name, dtype, shape, data in records:
        original.check(name, dtype, shape, data)
    assert _leases(client) == 0  # copies: no lease held
    # Writable memory of its own: changing it changes nothing else.
    name, _, _, data = records[0]
    data[:4] = 0
    fresh = client.get_tensors(desc["model_id"], [name])
    assert np.array_equal(fresh[0][3].numpy(), original.bytes_of(name))
    layer_tensor = desc["layers"][3]["tensors"][1]["name"]
    (got,) = client.get_tensors(desc["model_id"], [layer_tensor])
    original.check(*got)
    with pytest.raises(bigsmall.errors.BigSmallError) as e:
        client.get_tensors(desc["model_id"], ["no.such.tensor"])
    assert e.value.code == "NOT_FOUND"


# ---------------------------------------------------------------- errors


def test_unknown_model_is_not_found(client, model_dir):
    unknown = "m000000000000"
    for call in (lambda: client.describe(unknown),
                 lambda: client.stream(unknown).next(),
                 lambda: client.get_tensors(unknown, []),
                 lambda: client.open_model(str(model_dir / "missing.bs"))):
        with pytest.raises(bigsmall.errors.BigSmallError) as e:
            call()
        assert e.value.code == "NOT_FOUND", e.value
    with pytest.raises(bigsmall.errors.BigSmallError) as e:
        client.open_model("/etc/passwd")  # outside the model directories
    assert e.value.code == "PERMISSION_DENIED"


def test_daemon_not_running_is_unavailable(tmp_path):
    c = _core.DaemonClient(str(tmp_path / "nobody.sock"), rpc_timeout_ms=300,
                           stream_idle_timeout_ms=300)
    assert c.target == "unix:" + str(tmp_path / "nobody.sock")
    calls = {
        "wait_ready": lambda: c.wait_ready(300),
        "open_model": lambda: c.open_model("/models/x.bs"),
        "describe": lambda: c.describe("m000000000000"),
        "stats": c.stats,
        "list_models": c.list_models,
        "get_tensors": lambda: c.get_tensors("m000000000000", []),
        "stream": lambda: c.stream("m000000000000").next(),
    }
    for what, call in calls.items():
        # In a thread, so that a call that hangs (as a stream once did) fails the test.
        result: list[BaseException] = []

        def run() -> None:
            try:
                call()
            except BaseException as e:  # noqa: BLE001 - inspected below
                result.append(e)

        start = time.monotonic()
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), f"{what} still waits after 10 s"
        assert time.monotonic() - start < 5, what
        assert result and isinstance(result[0], bigsmall.errors.BigSmallError), (what, result)
        assert result[0].code == "UNAVAILABLE", (what, result[0])


def test_rpcs_release_the_gil(tmp_path):
    # A call that waits (no daemon: up to its deadline) lets other threads run.
    c = _core.DaemonClient(str(tmp_path / "nobody.sock"), rpc_timeout_ms=600)
    done = threading.Event()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            c.open_model("/models/x.bs")
        except BaseException as e:  # noqa: BLE001 - the expected UNAVAILABLE
            errors.append(e)
        done.set()

    worker = threading.Thread(target=call)
    worker.start()
    ticks = 0
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    worker.join(timeout=5)
    assert ticks > 50, "the main thread did not run while the call waited"
    assert errors and errors[0].code == "UNAVAILABLE"


def test_daemon_stopped_mid_stream_is_unavailable(model_dir):
    with DaemonProcess([model_dir]) as d:
        c = d.client(rpc_timeout_ms=1000, stream_idle_timeout_ms=2000)
        desc = _open(c, model_dir)
        stream = c.stream(desc["model_id"], window=1)
        layer = stream.next()
        assert d.stop() == 0  # drains (1 s), then ends the session
        layer.release()
        start = time.monotonic()
        with pytest.raises(bigsmall.errors.BigSmallError) as e:
            stream.next()
        assert e.value.code == "UNAVAILABLE"
        with pytest.raises(bigsmall.errors.BigSmallError) as e:
            c.stats()
        assert e.value.code == "UNAVAILABLE"
        assert time.monotonic() - start < 5


@pytest.mark.parametrize("gpu_backend", ["none", "emulated"])
def test_held_layers_keep_their_bytes_after_the_daemon_exits(model_dir, original, gpu_backend):
    # A dying daemon (SIGTERM: drain, then its sessions are cancelled and its
    # cache freed) must not change the bytes under a client's mapping: the
    # arena files are unlinked, not zeroed (no hole punching at shutdown).
    device = "cuda:0" if gpu_backend == "emulated" else ""
    with DaemonProcess([model_dir], gpu_backend=gpu_backend, gpu_memory="512M") as d:
        c = d.client(rpc_timeout_ms=5000, stream_idle_timeout_ms=5000)
        desc = _open(c, model_dir)
        stream = c.stream(desc["model_id"], include_non_layer=True, window=3, device=device)
        held = [stream.next(), stream.next()]
        views = [] if device else [r for layer in held for r in layer.tensors()]
        assert d.stop() == 0  # drains (1 s), then cancels the session
        assert not d.running()
    infos = [desc["non_layer"] if layer.index == -1 else desc["layers"][layer.index]
             for layer in held]
    checked = 0
    for name, dtype, shape, data in views:
        original.check(name, dtype, shape, data)
        checked += 1
    for layer, info in zip(held, infos):
        for t in info["tensors"]:
            original.check(t["name"], t["dtype"], t["shape"], layer.copy_to_host(t["name"]))
            checked += 1
        layer.verify()
    assert checked > 0
    del views, held
    stream.close()


def test_pin_host_memory(client, model_dir, original):
    desc = _open(client, model_dir)
    try:
        stream = client.stream(desc["model_id"], from_layer=0, to_layer=1, pin_host_memory=True)
    except bigsmall.errors.BigSmallError as e:
        # Without CUDA (a CPU build, no driver or GPU) pinning is refused up front.
        assert e.code == "FAILED_PRECONDITION" and "pin_host_memory" in e.message
        return
    layer = stream.next()
    for name, dtype, shape, data in layer.tensors():
        original.check(name, dtype, shape, data)
    del data
    layer.release()
    stream.close()


def test_bad_arguments(tmp_path):
    with pytest.raises(bigsmall.errors.BigSmallError) as e:
        _core.DaemonClient(str(tmp_path / "s.sock"), rpc_timeout_ms=-1)
    assert e.value.code == "INVALID_ARGUMENT"


def test_device_session_on_a_daemon_without_gpu(model_dir):
    with DaemonProcess([model_dir], gpu_backend="none") as d:
        c = d.client(rpc_timeout_ms=10000, stream_idle_timeout_ms=10000)
        desc = _open(c, model_dir)
        with pytest.raises(bigsmall.errors.BigSmallError) as e:
            c.stream(desc["model_id"], device="cuda:0").next()
        assert e.value.code == "FAILED_PRECONDITION"


# ---------------------------------------------------------------- device sessions


def test_emulated_device_layers(emu_daemon, model_dir, original):
    c = emu_daemon.client(rpc_timeout_ms=10000, stream_idle_timeout_ms=10000)
    desc = _open(c, model_dir)
    stream = c.stream(desc["model_id"], include_non_layer=True, window=2, device="cuda:0")
    compared = set()
    while (layer := stream.next()) is not None:
        assert layer.on_device and layer.emulated and layer.device == 0
        with pytest.raises(bigsmall.errors.BigSmallError) as e:
            layer.tensors()
        assert e.value.code == "FAILED_PRECONDITION" and "emulated" in e.value.message
        layer.verify()
        info = desc["non_layer"] if layer.index == -1 else desc["layers"][layer.index]
        for t in info["tensors"]:
            copy = layer.copy_to_host(t["name"])
            original.check(t["name"], t["dtype"], t["shape"], copy)
            compared.add(t["name"])
        with pytest.raises(bigsmall.errors.BigSmallError) as e:
            layer.copy_to_host("no.such.tensor")
        assert e.value.code == "NOT_FOUND"
        layer.release()
    assert compared == set(original.tensors)
    stream.close()
    gc.collect()
    wait_for("the device leases to end", lambda: c.stats()["active_leases"] == 0, timeout=5.0)
    assert c.stats()["devices"][0]["active_leases"] == 0


def test_real_cuda_device_layers(model_dir, original):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False): real device layers "
                    "are zero-copy CUDA tensors on the daemon's IPC memory")
    with DaemonProcess([model_dir], gpu_backend="cuda", cache_budget="1G", gpu_memory="1G") as d:
        c = d.client(rpc_timeout_ms=30000, stream_idle_timeout_ms=30000)
        desc = _open(c, model_dir)
        stream = c.stream(desc["model_id"], include_non_layer=True, window=2, device="cuda:0")
        compared = set()
        while (layer := stream.next()) is not None:
            assert layer.on_device and not layer.emulated and layer.device >= 0
            layer.verify()
            for name, dtype, shape, data in layer.tensors():
                assert data.is_cuda and data.device.index == layer.device
                original.check(name, dtype, shape, data)
                compared.add(name)
            del data
            layer.release()
        assert compared == set(original.tensors)
        stream.close()


# ---------------------------------------------------------------- the daemon helper


def test_daemon_process_starts_and_stops_cleanly(model_dir):
    d = DaemonProcess([model_dir])
    with d:
        assert d.running() and os.path.exists(d.socket)
        workdir = d.workdir
        assert "--no-hub" in d.args() and "--model-dir" in d.args()
    assert d.returncode() == 0
    assert not workdir.exists()
    assert "bigsmalld" in d.log()
    d.stop()  # idempotent


def test_daemon_process_on_a_given_socket(model_dir, tmp_path):
    sock = tmp_path / "run" / "bs.sock"
    sock.parent.mkdir(mode=0o700)
    with DaemonProcess([model_dir], socket=sock) as d:
        assert d.socket == str(sock) and sock.exists()
        assert d.environ() == {"BIGSMALL_SOCKET": str(sock)}
        c = _core.DaemonClient(str(sock), rpc_timeout_ms=5000)
        assert _open(c, model_dir)["num_layers"] == 6
    assert not sock.exists()


def test_daemon_process_reports_a_failed_start(model_dir):
    d = DaemonProcess([model_dir], extra_args=["--no-such-flag"], ready_timeout=10)
    with pytest.raises(DaemonStartError) as e:
        d.start()
    assert "no-such-flag" in str(e.value)
    assert not d.running()
