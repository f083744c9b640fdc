"""bigsmall._core.LocalModel / LoadedLayer / LocalStream: the in-process loader.

It is the daemon's own Model and load pipeline, run in this process into
anonymous memory. Checked on the MiniLM model of the corpus
(BIGSMALL_CORPUS), compressed here with the bigsmall CLI: every tensor of
every layer is compared byte for byte with the original safetensors file; a
directory of shards (with its shard index); errors and their codes; the
lifetime of tensors (they outlive their layer, stream and model) and the
memory given back when they go (RSS); stream order, read-ahead bound, close
mid-stream, errors in order; Hub models from the fake Hub (tests/hub).
"""
from __future__ import annotations

import gc
import json
import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

import bigsmall
from bigsmall import _core
from conftest import wait_for
from fake_hub_process import FakeHubProcess, FakeHubStartError

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("BIGSMALL_CORPUS",
                             "/root/.cache/bigsmall/corpus/minilm/model.safetensors"))
FAKE_HUB = ROOT / "tests" / "hub" / "fake_hub.py"
MIB = 1 << 20
PAGE = os.sysconf("SC_PAGESIZE")

LAYER_KEYS = {"index", "name", "number", "size", "stored_size", "tensors"}
TENSOR_KEYS = {"name", "dtype", "shape", "size", "offset", "hash"}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Original:
    """The safetensors file(s), parsed by hand: name -> (dtype, shape, bytes)."""

    def __init__(self, *paths: Path) -> None:
        self.tensors: dict[str, tuple[str, tuple[int, ...], np.ndarray]] = {}
        for path in paths:
            raw = np.fromfile(path, dtype=np.uint8)
            (n,) = struct.unpack("<Q", raw[:8].tobytes())
            header = json.loads(raw[8:8 + n].tobytes())
            header.pop("__metadata__", None)
            for name, info in header.items():
                begin, end = info["data_offsets"]
                self.tensors[name] = (info["dtype"], tuple(info["shape"]),
                                      raw[8 + n + begin:8 + n + end])

    def check(self, record: tuple) -> None:
        name, dtype, shape, data = record
        assert name in self.tensors, f"unknown tensor {name}"
        want_dtype, want_shape, want = self.tensors[name]
        assert (dtype, tuple(shape)) == (want_dtype, want_shape), name
        assert isinstance(shape, tuple), name
        assert data.dtype == torch.uint8 and data.dim() == 1 and data.device.type == "cpu", name
        assert np.array_equal(data.numpy(), want), f"bytes differ in {name}"


def _check_all_layers(model: "_core.LocalModel", original: Original) -> None:
    seen: set[str] = set()
    order = ([-1] if model.has_non_layer() else []) + list(range(model.layer_count()))
    for index in order:
        layer = model.load_layer(index)
        assert layer.index == index
        records = layer.tensors()
        for record in records:
            original.check(record)
            assert record[0] not in seen
            seen.add(record[0])
    assert seen == set(original.tensors)


def _code(excinfo: pytest.ExceptionInfo) -> str:
    return getattr(excinfo.value, "code", None)


@pytest.fixture(scope="module")
def cli() -> str:
    try:
        return bigsmall.tool_path("bigsmall")
    except FileNotFoundError as e:
        pytest.skip(f"the bigsmall CLI is not installed with the package: {e}")


@pytest.fixture(scope="module")
def original() -> Original:
    if not CORPUS.is_file():
        pytest.skip(f"corpus model {CORPUS} not present (BIGSMALL_CORPUS)")
    return Original(CORPUS)


def _compress(cli: str, src: Path, dst: Path) -> Path:
    subprocess.run([cli, "compress", str(src), "-o", str(dst), "-q", "-f"], check=True,
                   timeout=300)
    return dst


@pytest.fixture(scope="module")
def bs_file(cli: str, original: Original, minilm_cli_bs: Path) -> Path:
    return minilm_cli_bs


@pytest.fixture(scope="module")
def sharded_dir(cli: str, original: Original, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus split into two safetensors shards with an index, compressed as a directory."""
    from safetensors.torch import load_file, save_file
    src = tmp_path_factory.mktemp("sharded") / "model"
    src.mkdir()
    tensors = load_file(str(CORPUS))
    names = sorted(tensors)
    # Layers 0-2 and the embeddings in the first shard, the rest in the second.
    first = [n for n in names if not re.match(r"encoder\.layer\.[345]\.", n)]
    second = [n for n in names if n not in first]
    files = {"model-00001-of-00002.safetensors": first, "model-00002-of-00002.safetensors": second}
    weight_map = {}
    for fname, part in files.items():
        save_file({n: tensors[n] for n in part}, str(src / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return _compress(cli, src, src.with_name("model.bs"))


# ---------------------------------------------------------------------------- open, describe


def test_open_describe(bs_file: Path, original: Original) -> None:
    model = _core.LocalModel.open(str(bs_file), threads=2)
    assert model.path == str(bs_file.resolve())
    assert model.id
    assert model.layer_count() == 6
    assert model.has_non_layer()
    d = model.describe()
    assert d["id"] == model.id and d["path"] == model.path
    assert len(d["layers"]) == 6
    assert d["non_layer"] is not None and d["non_layer"]["index"] == -1
    names = []
    for i, layer in enumerate(d["layers"] + [d["non_layer"]]):
        assert LAYER_KEYS <= set(layer)
        if layer is not d["non_layer"]:
            assert layer["index"] == i and layer["name"] == f"encoder.layer.{i}"
            assert layer["number"] == i
        assert 0 < layer["stored_size"] and 0 < layer["size"]
        for t in layer["tensors"]:
            assert set(t) == TENSOR_KEYS
            assert re.fullmatch(r"[0-9a-f]{32}", t["hash"])
            dtype, shape, data = original.tensors[t["name"]]
            assert (t["dtype"], t["shape"], t["size"]) == (dtype, shape, data.size)
            assert t["offset"] % 256 == 0 and t["offset"] + t["size"] <= layer["size"]
            names.append(t["name"])
        loaded = model.load_layer(layer["index"])
        assert (loaded.index, loaded.name, loaded.size) == (layer["index"], layer["name"],
                                                            layer["size"])
        assert [r[0] for r in loaded.tensors()] == [t["name"] for t in layer["tensors"]]
    assert sorted(names) == sorted(original.tensors)
    model.close()


def test_every_layer_equals_the_original(bs_file: Path, original: Original) -> None:
    model = _core.LocalModel.open(str(bs_file))
    _check_all_layers(model, original)


def test_directory_of_shards(sharded_dir: Path, original: Original) -> None:
    shards = sorted(p.name for p in sharded_dir.glob("*.bs"))
    assert shards == ["model-00001-of-00002.safetensors.bs", "model-00002-of-00002.safetensors.bs"]
    model = _core.LocalModel.open(str(sharded_dir), threads=1)
    assert model.layer_count() == 6
    assert len(model.describe()["shards"]) == 2
    _check_all_layers(model, original)


# ---------------------------------------------------------------------------- errors


def _group_offset(cli: str, path: Path, layer: int) -> tuple[int, int]:
    out = subprocess.run([cli, "info", "--json", str(path)], check=True, capture_output=True,
                         timeout=60).stdout
    for g in json.loads(out)["groups"]:
        if g["layer"] == layer:
            return g["offset"], g["stored_bytes"]
    raise AssertionError(f"no group of layer {layer}")


def _corrupt_layer(cli: str, src: Path, dst: Path, layer: int) -> Path:
    shutil.copyfile(src, dst)
    offset, size = _group_offset(cli, dst, layer)
    with open(dst, "r+b") as f:
        f.seek(offset + size // 2)
        byte = f.read(1)
        f.seek(offset + size // 2)
        f.write(bytes([byte[0] ^ 0x40]))
    return dst


def test_errors(bs_file: Path, cli: str, tmp_path: Path) -> None:
    with pytest.raises(Exception) as e:
        _core.LocalModel.open(str(tmp_path / "missing.bs"))
    assert _code(e) == "NOT_FOUND"
    assert isinstance(e.value, FileNotFoundError)
    # A truncated file, a file that is no .bs at all.
    truncated = tmp_path / "truncated.bs"
    truncated.write_bytes(bs_file.read_bytes()[:bs_file.stat().st_size // 3])
    with pytest.raises(Exception) as e:
        _core.LocalModel.open(str(truncated))
    assert _code(e) == "DATA_LOSS", e.value
    garbage = tmp_path / "garbage.bs"
    garbage.write_bytes(b"\x17" * 100000)
    with pytest.raises(Exception) as e:
        _core.LocalModel.open(str(garbage))
    assert _code(e) == "DATA_LOSS", e.value
    # A flipped byte in layer 2's data: that layer is DATA_LOSS, the others load.
    model = _core.LocalModel.open(str(_corrupt_layer(cli, bs_file, tmp_path / "bad.bs", 2)))
    with pytest.raises(Exception) as e:
        model.load_layer(2)
    assert _code(e) == "DATA_LOSS", e.value
    assert model.load_layer(1).size > 0
    assert model.load_layer(3).size > 0
    # Bad arguments.
    with pytest.raises(Exception) as e:
        _core.LocalModel.open(str(bs_file), threads=-1)
    assert _code(e) == "INVALID_ARGUMENT"
    for index in (6, -2, 1 << 30):
        with pytest.raises(Exception) as e:
            model.load_layer(index)
        assert _code(e) == "OUT_OF_RANGE"
    for kwargs in ({"from_layer": 7}, {"from_layer": -1}, {"from_layer": 4, "to_layer": 3},
                   {"to_layer": 7}):
        with pytest.raises(Exception) as e:
            model.stream(**kwargs)
        assert _code(e) == "OUT_OF_RANGE", kwargs
    with pytest.raises(Exception) as e:
        model.stream(read_ahead=-1)
    assert _code(e) == "INVALID_ARGUMENT"
    # A closed model.
    model.close()
    model.close()
    assert model.id  # still readable
    for call in (model.layer_count, model.describe, lambda: model.load_layer(0), model.stream):
        with pytest.raises(Exception) as e:
            call()
        assert _code(e) == "FAILED_PRECONDITION"


# ---------------------------------------------------------------------------- lifetime, memory


def test_tensors_outlive_layer_stream_and_model(bs_file: Path, original: Original) -> None:
    model = _core.LocalModel.open(str(bs_file))
    layer = model.load_layer(0)
    records = layer.tensors()
    layer.release()
    with pytest.raises(Exception) as e:
        layer.tensors()
    assert _code(e) == "FAILED_PRECONDITION"
    del layer
    stream = model.stream(include_non_layer=True, read_ahead=2)
    first = stream.next()
    streamed = first.tensors()
    del first
    stream.close()
    del stream
    model.close()
    del model
    gc.collect()
    for record in records + streamed:
        original.check(record)
    # Views of views keep the memory too.
    name, dtype, shape, data = streamed[0]
    view = data[8:16]
    del data, streamed, records
    gc.collect()
    assert np.array_equal(view.numpy(), original.tensors[name][2][8:16])


def test_memory_is_given_back(bs_file: Path) -> None:
    model = _core.LocalModel.open(str(bs_file))
    size = model.describe()["non_layer"]["size"]  # 48 MB (the embeddings)
    gc.collect()
    before = _rss()
    layer = model.load_layer(-1)
    loaded = _rss()
    assert loaded >= before + size * 0.9, (before, loaded, size)
    tensors = [r[3] for r in layer.tensors()]
    biggest = max(tensors, key=lambda t: t.numel())
    del tensors
    layer.release()
    del layer
    gc.collect()
    # The biggest tensor still holds the whole block.
    assert _rss() >= before + size * 0.9
    assert int(biggest[-1]) == int(biggest[-1])  # still readable
    del biggest
    gc.collect()
    after = _rss()
    assert after <= before + size * 0.1, (before, loaded, after, size)
    print(f"RSS before {before / MIB:.1f} MiB, non-layer loaded {loaded / MIB:.1f} MiB, "
          f"freed {after / MIB:.1f} MiB (layer {size / MIB:.1f} MiB)")


# ---------------------------------------------------------------------------- streams


def _drain(stream: "_core.LocalStream") -> list[int]:
    out = []
    while (layer := stream.next()) is not None:
        out.append(layer.index)
    assert stream.next() is None
    return out


@pytest.mark.parametrize("read_ahead", [0, 1, 3, 10])
def test_stream_order(bs_file: Path, original: Original, read_ahead: int) -> None:
    model = _core.LocalModel.open(str(bs_file))
    stream = model.stream(include_non_layer=True, read_ahead=read_ahead)
    seen = []
    while (layer := stream.next()) is not None:
        seen.append(layer.index)
        for record in layer.tensors():
            original.check(record)
        layer.release()
    assert seen == [-1, 0, 1, 2, 3, 4, 5]
    assert stream.next() is None
    stream.close()
    assert _drain(model.stream(read_ahead=read_ahead)) == [0, 1, 2, 3, 4, 5]
    assert _drain(model.stream(2, 4, read_ahead=read_ahead)) == [2, 3]
    assert _drain(model.stream(from_layer=4, read_ahead=read_ahead)) == [4, 5]
    assert _drain(model.stream(3, 3, include_non_layer=True, read_ahead=read_ahead)) == [-1]
    assert _drain(model.stream(6, read_ahead=read_ahead)) == []


def test_stream_read_ahead_is_bounded(bs_file: Path) -> None:
    # Counted in the model's own decoded memory (one block per live layer),
    # not the process's RSS, which the decoder's transient buffers and
    # malloc's arenas also move.
    model = _core.LocalModel.open(str(bs_file))
    layer_size = model.describe()["layers"][0]["size"]  # 7 MB each
    blocks = lambda: model.memory()["blocks"]  # noqa: E731
    assert blocks() == 0
    stream = model.stream(read_ahead=2)
    # It decodes two layers ahead without being asked, then waits.
    wait_for("two layers decoded ahead", lambda: blocks() >= 2)
    time.sleep(0.3)  # a third layer would be decoded by now
    assert blocks() == 2
    assert model.memory()["allocated"] <= 2 * (layer_size + 4096)
    held = stream.next()
    # One handed out (held), two ahead again.
    wait_for("a third layer", lambda: blocks() >= 3)
    time.sleep(0.3)
    assert blocks() == 3
    del held
    stream.close()
    gc.collect()
    wait_for("every block freed", lambda: blocks() == 0)
    assert model.memory()["allocated"] == 0


def test_close_mid_stream(bs_file: Path, original: Original) -> None:
    model = _core.LocalModel.open(str(bs_file))
    stream = model.stream(include_non_layer=True, read_ahead=3)
    first = stream.next()
    assert first.index == -1
    start = time.monotonic()
    stream.close()
    stream.close()
    assert stream.next() is None
    for record in first.tensors():
        original.check(record)
    # Never read, then closed or just dropped: nothing hangs.
    for read_ahead in (1, 4):
        s = model.stream(read_ahead=read_ahead)
        s.close()
        s = model.stream(read_ahead=read_ahead)
        del s
        gc.collect()
    # A stream outlives its model's close().
    s = model.stream(read_ahead=1)
    model.close()
    assert _drain(s) == [0, 1, 2, 3, 4, 5]
    assert time.monotonic() - start < 30


def test_stream_errors_come_in_order(bs_file: Path, cli: str, tmp_path: Path) -> None:
    bad = _corrupt_layer(cli, bs_file, tmp_path / "bad.bs", 3)
    model = _core.LocalModel.open(str(bad))
    for read_ahead in (0, 1, 5):
        stream = model.stream(read_ahead=read_ahead)
        got = []
        with pytest.raises(Exception) as e:
            while (layer := stream.next()) is not None:
                got.append(layer.index)
        assert got == [0, 1, 2], read_ahead
        assert _code(e) == "DATA_LOSS"
        assert "encoder.layer.3" in str(e.value) or "layer 3" in str(e.value), str(e.value)
        # It stays failed.
        with pytest.raises(Exception) as e:
            stream.next()
        assert _code(e) == "DATA_LOSS"
        stream.close()


# ---------------------------------------------------------------------------- Hub (fake)


@pytest.fixture(scope="module")
def fake_hub(sharded_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    if not FAKE_HUB.is_file():
        pytest.skip(f"{FAKE_HUB} not present")
    data = tmp_path_factory.mktemp("hubdata")
    shutil.copytree(sharded_dir, data / "test" / "minilm-bs")
    (data / "test" / "plain").mkdir()
    shutil.copyfile(CORPUS, data / "test" / "plain" / "model.safetensors")
    try:
        hub = FakeHubProcess(data, tmp_path_factory.mktemp("hubrun"), start_timeout=20)
    except FakeHubStartError as e:
        pytest.fail(f"the fake Hub did not start (it runs on any machine with python3): {e}")
    yield hub
    hub.stop()


@pytest.fixture
def hub_env(fake_hub: FakeHubProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for var in ("HF_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return cache


def _snapshot_files(cache: Path) -> list[str]:
    snaps = cache / "models--test--minilm-bs" / "snapshots"
    return sorted(p.name for p in snaps.glob("*/*")) if snaps.is_dir() else []


def test_open_hub_downloads_then_serves_offline(fake_hub: FakeHubProcess, hub_env: Path,
                                                 original: Original,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model = _core.LocalModel.open_hub("test/minilm-bs", threads=2)
    assert re.fullmatch(r"hf://test/minilm-bs@[0-9a-f]{40}", model.path), model.path
    assert _snapshot_files(hub_env) == [
        "model-00001-of-00002.safetensors.bs", "model-00002-of-00002.safetensors.bs",
        "model.safetensors.index.json"]
    assert model.layer_count() == 6
    _check_all_layers(model, original)
    # Offline: the cache only, no request.
    requests = fake_hub.stats()["requests"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = _core.LocalModel.open_hub(f"hf://test/minilm-bs@{model.path[-40:]}")
    assert again.path == model.path
    _check_all_layers(again, original)
    assert fake_hub.stats()["requests"] == requests


def test_open_hub_without_download_reads_ranges(fake_hub: FakeHubProcess, hub_env: Path,
                                                original: Original) -> None:
    model = _core.LocalModel.open_hub("hf://test/minilm-bs@main", download=False)
    _check_all_layers(model, original)
    assert _snapshot_files(hub_env) == []


def test_open_hub_errors(fake_hub: FakeHubProcess, hub_env: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Exception) as e:
        _core.LocalModel.open_hub("test/plain")
    assert _code(e) == "FAILED_PRECONDITION"
    assert "test/plain" in str(e.value) and "no .bs files" in str(e.value)
    assert "not a BigSmall-compressed model" in str(e.value)
    with pytest.raises(Exception) as e:
        _core.LocalModel.open_hub("test/missing")
    assert _code(e) == "NOT_FOUND"
    with pytest.raises(Exception) as e:
        _core.LocalModel.open_hub("not a repo")
    assert _code(e) == "INVALID_ARGUMENT"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception) as e:  # an empty cache
        _core.LocalModel.open_hub("test/minilm-bs")
    assert _code(e) == "NOT_FOUND"
