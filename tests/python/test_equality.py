"""In process and through bigsmalld give the same tensors: every tensor hashed (sha256 of its
bytes, with its dtype and shape), for from_pretrained, StreamingLoader and iter_weights, on the
MiniLM model (a file and a directory of shards) and the every-dtype model."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

import bigsmall
from bigsmall import dtypes
from conftest import assert_equal_to_reference, daemon_process, digest


def streamed(path, **kwargs) -> dict:
    got = {}
    with bigsmall.StreamingLoader(path, **kwargs) as loader:
        got.update(loader.load_non_layer_tensors())
        order = []
        for index, tensors in loader.iter_layers():
            order.append(index)
            # through the daemon, zero-copy views hold leases (the window): keep copies
            got.update({k: dtypes.retag(v, v.clone()) for k, v in tensors.items()}
                       if kwargs.get("daemon") else tensors)
        assert order == list(range(loader.layer_count()))
    return got


@pytest.fixture(params=["file", "dir", "dtypes"])
def model(request):
    if request.param == "file":
        return request.getfixturevalue("minilm_bs")
    if request.param == "dir":
        return request.getfixturevalue("minilm_dir_bs")
    return request.getfixturevalue("dtype_model").compressed


def test_from_pretrained_daemon_equals_in_process(model, bs_daemon, no_daemon_env):
    local = digest(bigsmall.from_pretrained(model, daemon=False))
    assert local
    assert digest(bigsmall.from_pretrained(model, daemon=bs_daemon.socket)) == local
    assert digest(bigsmall.from_pretrained(model, daemon=bs_daemon.socket, copy=True)) == local


def test_streaming_loader_daemon_equals_in_process(model, bs_daemon, no_daemon_env):
    local = digest(streamed(model, daemon=False))
    assert local == digest(bigsmall.from_pretrained(model, daemon=False))
    assert digest(streamed(model, daemon=bs_daemon.socket)) == local
    assert digest(streamed(model, daemon=bs_daemon.socket, read_ahead=0)) == local


def test_iter_weights_daemon_equals_in_process(minilm_bs, bs_daemon, no_daemon_env):
    local = {name: digest({name: t})[name] for name, t in bigsmall.iter_weights(minilm_bs, daemon=False)}
    remote = {name: digest({name: t})[name]
              for name, t in bigsmall.iter_weights(minilm_bs, daemon=bs_daemon.socket)}
    assert remote == local


def test_bigsmall_socket_selects_the_daemon(minilm_bs, bs_daemon, monkeypatch):
    monkeypatch.setenv("BIGSMALL_SOCKET", bs_daemon.socket)
    with bigsmall.StreamingLoader(minilm_bs) as loader:
        assert loader.through_daemon
    with bigsmall.StreamingLoader(minilm_bs, daemon=False) as loader:
        assert not loader.through_daemon
    assert digest(bigsmall.from_pretrained(minilm_bs)) == digest(
        bigsmall.from_pretrained(minilm_bs, daemon=False))


def test_daemon_argument_forms(minilm_bs, bs_daemon, monkeypatch):
    """daemon= a str, an os.PathLike, a DaemonClient, or True (the client's default socket)."""
    from pathlib import Path
    want = digest(bigsmall.from_pretrained(minilm_bs, daemon=False))
    monkeypatch.delenv("BIGSMALL_SOCKET", raising=False)
    assert digest(bigsmall.from_pretrained(minilm_bs, daemon=Path(bs_daemon.socket))) == want
    client = bs_daemon.client()
    assert digest(bigsmall.from_pretrained(minilm_bs, daemon=client)) == want
    with bigsmall.StreamingLoader(minilm_bs, daemon=client) as loader:
        assert loader.through_daemon and loader.layer_count() == 6
    monkeypatch.setenv("BIGSMALL_SOCKET", bs_daemon.socket)
    assert digest(bigsmall.from_pretrained(minilm_bs, daemon=True)) == want
    with pytest.raises(bigsmall.InvalidArgumentError):
        bigsmall.from_pretrained(minilm_bs, daemon="")


def test_every_dtype_through_the_daemon(dtype_model, bs_daemon):
    assert_equal_to_reference(bigsmall.from_pretrained(dtype_model.compressed, daemon=bs_daemon.socket),
                              dtype_model.tensors)


def test_a_small_max_window_falls_back_to_copies(minilm_bs, models_root, caplog, no_daemon_env):
    """A daemon whose --max-window is below the model's layer count: from_pretrained copies
    each layer (and says so) instead of holding every lease; same bytes."""
    with daemon_process([models_root], max_window=2, window=2) as proc:
        with caplog.at_level(logging.INFO, logger="bigsmall"):
            got = bigsmall.from_pretrained(minilm_bs, daemon=proc.socket)
        assert "copying each layer" in caplog.text, caplog.text
        assert digest(got) == digest(bigsmall.from_pretrained(minilm_bs, daemon=False))
        # copies are this process's own, writable memory
        t = got["embeddings.word_embeddings.weight"]
        t.add_(1)
        # the stream's window (read_ahead + 1 = 4 > 2) falls back to the daemon's default
        assert digest(streamed(minilm_bs, daemon=proc.socket, read_ahead=3)) == digest(
            bigsmall.from_pretrained(minilm_bs, daemon=False))


def test_a_model_larger_than_the_cache_budget_is_copied(llm_bs, models_root, caplog,
                                                        no_daemon_env):
    """The daemon cannot hold a model larger than its cache budget leased at once:
    from_pretrained copies each layer (and says so); same bytes."""
    with daemon_process([models_root], cache_budget="64M") as proc:
        with caplog.at_level(logging.INFO, logger="bigsmall"):
            got = bigsmall.from_pretrained(llm_bs, daemon=proc.socket)
        assert "larger than bigsmalld's cache budget" in caplog.text, caplog.text
        assert digest(got) == digest(bigsmall.from_pretrained(llm_bs, daemon=False))


def test_a_model_larger_than_the_gpu_budget_is_copied(llm_bs, models_root, caplog,
                                                      no_daemon_env):
    """The same for a device session: the GPU's budget (--gpu-memory) counts there."""
    with daemon_process([models_root], gpu_backend="emulated", cache_budget="1G",
                        gpu_memory="64M") as proc:
        with caplog.at_level(logging.INFO, logger="bigsmall"):
            got = bigsmall.from_pretrained(llm_bs, device="cuda", daemon=proc.socket)
        assert "larger than bigsmalld's cache budget (67108864)" in caplog.text, caplog.text
        assert digest(got) == digest(bigsmall.from_pretrained(llm_bs, daemon=False))


def test_zero_copy_tensors_outlive_the_call(minilm_bs, bs_daemon, no_daemon_env):
    """The daemon's call (and so the leases) lives as long as any tensor of it does."""
    import gc
    want = digest(bigsmall.from_pretrained(minilm_bs, daemon=False))
    keep = {}
    with bigsmall.StreamingLoader(minilm_bs, daemon=bs_daemon.socket, read_ahead=0) as loader:
        for index, tensors in loader.iter_layers():
            keep = {k: v[...] for k, v in tensors.items()}  # views only
            break  # the loop ends early: the stream is cancelled once no tensor holds it
    sd = bigsmall.from_pretrained(minilm_bs, daemon=bs_daemon.socket)
    views = {k: v.view(-1)[:] for k, v in sd.items()}
    del sd, loader
    gc.collect()
    # other streams reuse the daemon's memory meanwhile
    for _ in range(2):
        bigsmall.from_pretrained(minilm_bs, daemon=bs_daemon.socket, copy=True)
    got = {k: v for k, v in views.items()}
    assert {k: d[2] for k, d in digest(got).items()} == {k: d[2] for k, d in want.items()}
    assert {k: d[2] for k, d in digest(keep).items()} == {k: want[k][2] for k in keep}


def _wait_for_leases(client, want: int, timeout: float = 10.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while client.stats()["active_leases"] != want:
        if time.monotonic() > deadline:
            pytest.fail(f"active_leases {client.stats()['active_leases']}, not {want}, "
                        f"after {timeout} s")
        time.sleep(0.01)


def test_daemon_tensors_hold_their_leases_until_freed(minilm_bs, models_root, no_daemon_env):
    """Zero-copy through the daemon: the non-layer tensors and from_pretrained's hold their
    groups' leases while they live, and release them when freed; copies hold none."""
    import gc
    with daemon_process([models_root]) as proc:
        client = proc.client()
        with bigsmall.StreamingLoader(minilm_bs, daemon=proc.socket) as loader:
            non_layer = loader.load_non_layer_tensors()
            _wait_for_leases(client, 1)
            del non_layer
            gc.collect()
            _wait_for_leases(client, 0)
            kept = bigsmall.StreamingLoader(minilm_bs, daemon=proc.socket,
                                            copy=True).load_non_layer_tensors()
            _wait_for_leases(client, 0)
            assert kept
        sd = bigsmall.from_pretrained(minilm_bs, daemon=proc.socket)
        _wait_for_leases(client, 7)
        one = sd["encoder.layer.3.output.dense.weight"][0]  # a view keeps its layer
        del sd
        gc.collect()
        _wait_for_leases(client, 1)
        del one
        gc.collect()
        _wait_for_leases(client, 0)


def test_keeping_more_layers_than_the_window_says_so(minilm_bs, bs_daemon, no_daemon_env):
    with bigsmall.StreamingLoader(minilm_bs, daemon=bs_daemon.socket, read_ahead=0) as loader:
        kept = []
        with pytest.raises(bigsmall.FailedPreconditionError, match="copy=True"):
            for _, tensors in loader.iter_layers():
                kept.append(dict(tensors))
    with bigsmall.StreamingLoader(minilm_bs, daemon=bs_daemon.socket, read_ahead=0,
                                  copy=True) as loader:
        kept = [dict(t) for _, t in loader.iter_layers()]
    assert len(kept) == 6


def test_daemon_tensors_are_read_only(minilm_bs, bs_daemon):
    """Writing through a zero-copy daemon tensor faults (the module says so): checked in a child."""
    code = (
        "import sys, bigsmall\n"
        "sd = bigsmall.from_pretrained(sys.argv[1], daemon=sys.argv[2])\n"
        "print('loaded', flush=True)\n"
        "sd['embeddings.word_embeddings.weight'].add_(1)\n"
        "print('wrote', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(minilm_bs), bs_daemon.socket],
                          capture_output=True, text=True, timeout=120)
    assert "loaded" in proc.stdout, proc.stderr
    assert "wrote" not in proc.stdout
    assert proc.returncode == -11, (proc.returncode, proc.stderr[-2000:])


def test_device_session_through_the_emulated_gpu(minilm_bs, emulated_daemon, no_daemon_env):
    """device="cuda" through a daemon with --gpu-backend emulated: the daemon decodes on its
    emulated GPU; same bytes (host copies where this process has no CUDA)."""
    want = digest(bigsmall.from_pretrained(minilm_bs, daemon=False))
    got = bigsmall.from_pretrained(minilm_bs, device="cuda", daemon=emulated_daemon.socket)
    expected_type = "cuda" if torch.cuda.is_available() else "cpu"
    assert {t.device.type for t in got.values()} == {expected_type}
    assert digest(got) == want
    assert digest(streamed(minilm_bs, device="cuda", daemon=emulated_daemon.socket)) == want


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a process without CUDA")
def test_cuda_without_cuda_through_a_daemon_without_gpu(minilm_bs, bs_daemon, no_daemon_env):
    with pytest.raises(bigsmall.FailedPreconditionError, match="no CUDA"):
        bigsmall.from_pretrained(minilm_bs, device="cuda", daemon=bs_daemon.socket)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_session_on_a_real_gpu(minilm_bs, models_root, no_daemon_env):
    want = digest(bigsmall.from_pretrained(minilm_bs, daemon=False))
    with daemon_process([models_root], gpu_backend="cuda", gpu_memory="1G") as proc:
        got = bigsmall.from_pretrained(minilm_bs, device="cuda", daemon=proc.socket)
        assert all(t.is_cuda for t in got.values())
        assert digest(got) == want
        assert digest(streamed(minilm_bs, device="cuda", daemon=proc.socket)) == want
