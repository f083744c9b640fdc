"""The public API in process: from_pretrained, StreamingLoader, iter_weights, the CLI's
operations (compress, decompress, info, verify), Hub helpers' errors offline, the tools."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bigsmall
from bigsmall import loader as loader_mod
from conftest import MINILM_DIR, tensor_bytes

LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


@pytest.fixture(scope="module")
def minilm_ref(minilm_path):
    st = pytest.importorskip("safetensors.torch")
    return st.load_file(str(minilm_path))


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g, w), name


# ------------------------------------------------------------------------------ from_pretrained

def test_from_pretrained_a_file(minilm_bs, minilm_ref, no_daemon_env):
    got = bigsmall.from_pretrained(minilm_bs)
    assert_same(got, minilm_ref)
    assert all(t.device.type == "cpu" for t in got.values())
    # str and Path alike; the tensors are this process's memory: writable
    got2 = bigsmall.from_pretrained(str(minilm_bs), device="cpu", daemon=False, threads=1)
    assert_same(got2, minilm_ref)
    t = got2["embeddings.word_embeddings.weight"]
    t.add_(1)
    assert not torch.equal(t, minilm_ref["embeddings.word_embeddings.weight"])


def test_from_pretrained_a_directory_of_shards(minilm_dir_bs, no_daemon_env):
    st = pytest.importorskip("safetensors.torch")
    want = st.load_file(str(MINILM_DIR / "model.safetensors"))
    assert_same(bigsmall.from_pretrained(minilm_dir_bs), want)


def test_from_pretrained_errors(tmp_path, minilm_path, minilm_bs, no_daemon_env):
    with pytest.raises(bigsmall.NotFoundError):
        bigsmall.from_pretrained(tmp_path / "missing.bs")
    with pytest.raises(FileNotFoundError):
        bigsmall.from_pretrained(str(tmp_path / "missing.bs"))
    # not a .bs file
    with pytest.raises(bigsmall.BigSmallError):
        bigsmall.from_pretrained(minilm_path)
    # a truncated file
    cut = tmp_path / "cut.bs"
    cut.write_bytes(minilm_bs.read_bytes()[: minilm_bs.stat().st_size // 2])
    with pytest.raises(bigsmall.DataLossError):
        bigsmall.from_pretrained(cut)
    # a flipped byte inside a layer: the hash check
    bad = tmp_path / "bad.bs"
    raw = bytearray(minilm_bs.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(bigsmall.DataLossError):
        bigsmall.from_pretrained(bad)
    with pytest.raises(bigsmall.InvalidArgumentError, match="Hub names only"):
        bigsmall.from_pretrained(minilm_bs, revision="main")
    with pytest.raises(bigsmall.InvalidArgumentError):
        bigsmall.from_pretrained(minilm_bs, device="tpu")
    with pytest.raises(ValueError):
        bigsmall.from_pretrained(minilm_bs, device="not a device")
    with pytest.raises(bigsmall.InvalidArgumentError):
        bigsmall.from_pretrained(minilm_bs, daemon=3.5)
    with pytest.raises(bigsmall.InvalidArgumentError):
        bigsmall.from_pretrained("")


def test_bigsmall_socket_routes_to_the_daemon(minilm_bs, monkeypatch, tmp_path):
    """daemon=None follows $BIGSMALL_SOCKET; daemon=False ignores it."""
    monkeypatch.setenv("BIGSMALL_SOCKET", str(tmp_path / "nobody.sock"))
    assert loader_mod._resolve_daemon(None) == str(tmp_path / "nobody.sock")
    assert loader_mod._resolve_daemon(False) is None
    assert bigsmall.from_pretrained(minilm_bs, daemon=False)
    monkeypatch.delenv("BIGSMALL_SOCKET")
    assert loader_mod._resolve_daemon(None) is None


def test_source_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = loader_mod._resolve_source
    assert (r("owner/repo", None).hub, r("owner/repo", None).name) == (True, "owner/repo")
    assert r("owner/repo", "v1").name == "owner/repo@v1"
    assert r("owner/repo@v1", "v1").name == "owner/repo@v1"
    with pytest.raises(bigsmall.InvalidArgumentError):
        r("owner/repo@v1", "v2")
    assert r("hf://owner/repo", "abc").name == "hf://owner/repo@abc"
    assert r("hf://owner/repo@main", None).hub
    # local paths win, as in the CLI
    assert not r("model.bs", None).hub
    assert r("model.bs", None).name == str(tmp_path / "model.bs")
    (tmp_path / "owner").mkdir()
    assert not r("owner/repo", None).hub
    assert not r(Path("other/repo"), None).hub  # os.PathLike is always a path
    assert not r("/abs/path", None).hub
    assert not r("./a/b", None).hub


def test_a_hub_name_offline_touches_no_network(tmp_path, monkeypatch, no_daemon_env):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(bigsmall.BigSmallError) as info:
        bigsmall.from_pretrained("nobody-here/no-such-model", revision="main")
    assert "no-such-model" in info.value.message
    with pytest.raises(bigsmall.BigSmallError):
        bigsmall.compress_for_hub("nobody-here/no-such-model", tmp_path / "out")


# ------------------------------------------------------------------------------ StreamingLoader

@pytest.mark.parametrize("read_ahead", [0, 1, 3])
def test_streaming_loader_order_count_and_non_layer(minilm_bs, minilm_ref, read_ahead,
                                                    no_daemon_env):
    got = {}
    with bigsmall.StreamingLoader(minilm_bs, read_ahead=read_ahead) as loader:
        assert loader.layer_count() == 6
        assert loader.has_non_layer() and not loader.through_daemon
        non_layer = loader.load_non_layer_tensors()
        assert non_layer and not any(LAYER.match(n) for n in non_layer)
        got.update(non_layer)
        order = []
        previous = None
        for index, tensors in loader.iter_layers():
            if previous is not None:
                assert previous == {}, "the previous layer's dict is emptied before the next"
            order.append(index)
            assert tensors and {int(LAYER.match(n).group(1)) for n in tensors} == {index}
            got.update(tensors)
            previous = tensors
        assert order == list(range(6))
    assert_same(got, minilm_ref)


def test_streaming_loader_layers_stop_early_and_restart(minilm_bs, no_daemon_env):
    with bigsmall.StreamingLoader(minilm_bs) as loader:
        for index, _ in loader.iter_layers():
            if index == 2:
                break
        assert [i for i, _ in loader.iter_layers()] == list(range(6))
        assert loader.load_non_layer_tensors().keys() == loader.load_non_layer_tensors().keys()


def test_streaming_loader_close(minilm_bs, no_daemon_env):
    loader = bigsmall.StreamingLoader(minilm_bs)
    kept = loader.load_non_layer_tensors()
    loader.close()
    loader.close()  # idempotent
    with pytest.raises(bigsmall.FailedPreconditionError):
        loader.layer_count()
    with pytest.raises(bigsmall.FailedPreconditionError):
        next(iter(loader.iter_layers()))
    assert all(tensor_bytes(t) for t in kept.values() if t.numel())  # still valid


def test_streaming_loader_errors(tmp_path, no_daemon_env):
    with pytest.raises(bigsmall.NotFoundError):
        bigsmall.StreamingLoader(tmp_path / "missing.bs")


def test_a_decode_error_surfaces_in_the_loop(minilm_bs, tmp_path, no_daemon_env):
    """A corrupt late layer: the earlier layers arrive, then DataLossError."""
    info = bigsmall.info(minilm_bs)
    bad = tmp_path / "late.bs"
    raw = bytearray(minilm_bs.read_bytes())
    raw[int(len(raw) * 0.9)] ^= 0xFF
    bad.write_bytes(bytes(raw))
    seen = []
    with pytest.raises(bigsmall.DataLossError):
        with bigsmall.StreamingLoader(bad, read_ahead=0) as loader:
            for index, _ in loader.iter_layers():
                seen.append(index)
    assert info and seen == list(range(len(seen)))


def test_iter_weights(minilm_bs, minilm_ref, no_daemon_env):
    names, got = [], {}
    for name, tensor in bigsmall.iter_weights(minilm_bs):
        names.append(name)
        got[name] = tensor
    assert len(names) == len(set(names))
    assert_same(got, minilm_ref)
    first_layer = next(i for i, n in enumerate(names) if LAYER.match(n))
    assert not any(LAYER.match(n) for n in names[:first_layer])
    layer_numbers = [int(LAYER.match(n).group(1)) for n in names[first_layer:]]
    assert layer_numbers == sorted(layer_numbers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_in_process(minilm_bs, minilm_ref, no_daemon_env):
    got = bigsmall.from_pretrained(minilm_bs, device="cuda", daemon=False)
    assert all(t.is_cuda for t in got.values())
    assert_same({k: v.cpu() for k, v in got.items()}, minilm_ref)
    with bigsmall.StreamingLoader(minilm_bs, device="cuda:0", daemon=False) as loader:
        for _, tensors in loader.iter_layers():
            assert all(t.device == torch.device("cuda", 0) for t in tensors.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a process without CUDA")
def test_cuda_without_cuda_is_failed_precondition(minilm_bs, no_daemon_env):
    with pytest.raises(bigsmall.FailedPreconditionError, match="no CUDA"):
        bigsmall.from_pretrained(minilm_bs, device="cuda", daemon=False)
    with pytest.raises(bigsmall.FailedPreconditionError, match="no CUDA"):
        bigsmall.StreamingLoader(minilm_bs, device="cuda:0", daemon=False)


# ------------------------------------------------------------------------------ the CLI's operations

def test_compress_decompress_info_verify(tmp_path, minilm_path):
    out = tmp_path / "m.bs"
    summary = bigsmall.compress(minilm_path, out, mode="inference", threads=2)
    assert {"input", "output", "mode", "input_bytes", "output_bytes", "ratio"} <= set(summary)
    assert summary["mode"] == "inference" and Path(summary["output"]) == out and out.is_file()
    assert summary["input_bytes"] == minilm_path.stat().st_size
    with pytest.raises(bigsmall.AlreadyExistsError):
        bigsmall.compress(minilm_path, out)
    with pytest.raises(FileExistsError):
        bigsmall.compress(str(minilm_path), str(out), mode="storage")
    assert bigsmall.compress(minilm_path, out, mode="storage", force=True)["mode"] == "storage"
    with pytest.raises(bigsmall.InvalidArgumentError):
        bigsmall.compress(minilm_path, tmp_path / "x.bs", mode="fastest")

    meta = bigsmall.info(out)
    assert isinstance(meta, dict) and meta
    detailed = bigsmall.info(out, tensors=True)
    assert len(str(detailed)) > len(str(meta))

    assert isinstance(bigsmall.verify(out), dict)
    assert isinstance(bigsmall.verify(out, against=minilm_path), dict)

    back = tmp_path / "back.safetensors"
    bigsmall.decompress(out, back)
    assert back.read_bytes() == minilm_path.read_bytes()
    with pytest.raises(bigsmall.AlreadyExistsError):
        bigsmall.decompress(out, back)
    bigsmall.decompress(out, back, force=True, threads=1)

    with pytest.raises(bigsmall.NotFoundError):
        bigsmall.compress(tmp_path / "missing.safetensors", tmp_path / "y.bs")
    bad = tmp_path / "bad.bs"
    raw = bytearray(out.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(bigsmall.DataLossError):
        bigsmall.verify(bad)


def test_default_output_names(tmp_path, minilm_path):
    src = tmp_path / "model.safetensors"
    src.write_bytes(minilm_path.read_bytes())
    summary = bigsmall.compress(src)
    assert Path(summary["output"]) == tmp_path / "model.safetensors.bs"
    src.unlink()
    bigsmall.decompress(tmp_path / "model.safetensors.bs")
    assert src.read_bytes() == minilm_path.read_bytes()


# ------------------------------------------------------------------------------ the package

def test_tools_are_installed():
    for name in ("bigsmall", "bigsmalld", "bigsmall-client"):
        path = bigsmall.tool_path(name)
        assert os.path.isfile(path) and os.access(path, os.X_OK)
    assert bigsmall.daemon_binary() == bigsmall.tool_path("bigsmalld")
    with pytest.raises(bigsmall.InvalidArgumentError):
        bigsmall.tool_path("rm")
    version = subprocess.run([bigsmall.tool_path("bigsmall"), "--version"], check=True,
                             capture_output=True, text=True).stdout
    assert bigsmall.__version__ in version


def test_public_names():
    for name in bigsmall.__all__:
        assert hasattr(bigsmall, name), name
    for name in ("from_pretrained", "StreamingLoader", "iter_weights", "compress", "decompress",
                 "info", "verify", "compress_for_hub", "upload_to_hub"):
        assert callable(getattr(bigsmall, name)) and getattr(bigsmall, name).__doc__


def test_import_touches_no_network():
    """`import bigsmall` opens no socket and resolves no name (an audit hook would see it)."""
    code = (
        "import sys\n"
        "seen = []\n"
        "def hook(event, args):\n"
        "    if event.startswith('socket.') and event != 'socket.__new__' or event == 'http.client.connect':\n"
        "        seen.append(event)\n"
        "sys.addaudithook(hook)\n"
        "import bigsmall, bigsmall.hub, bigsmall.loader\n"
        "print(repr(seen))\n"
    )
    env = dict(os.environ)
    env.pop("BIGSMALL_SOCKET", None)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env=env, timeout=120).stdout.strip().splitlines()[-1]
    assert out == "[]"
