"""The Hub through the package, against the fake Hub (tests/hub/fake_hub.py; no network):
compress_for_hub of a Hub model, upload_to_hub of the result, then from_pretrained and
StreamingLoader of owner/repo[@rev] in process and through bigsmalld, and offline from the cache."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import bigsmall
from conftest import daemon_process, digest
from fake_hub_process import FakeHubProcess, FakeHubStartError

TOKEN = "hf_fake_token_for_tests"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, minilm_path):
    """The fake Hub serving acme/minilm (the MiniLM safetensors), with HF_* pointing at it."""
    root = tmp_path_factory.mktemp("hub")
    repo = root / "data" / "acme" / "minilm"
    repo.mkdir(parents=True)
    shutil.copyfile(minilm_path, repo / "model.safetensors")
    (repo / "config.json").write_text('{"model_type": "bert"}\n')
    try:
        fake = FakeHubProcess(root / "data", root, tokens=[TOKEN])
    except FakeHubStartError as e:
        pytest.fail(str(e))
    env = {"HF_ENDPOINT": fake.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_CACHE": str(root / "cache"),
           "HF_HOME": str(root / "hf-home"), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("BIGSMALL_SOCKET", raising=False)
        yield {"fake": fake, "root": root, "env": env}
    fake.stop()


@pytest.fixture(scope="module")
def uploaded(hub):
    """compress_for_hub("acme/minilm") uploaded to fake-user/minilm-bs."""
    out = hub["root"] / "minilm.bs"
    summary = bigsmall.compress_for_hub("acme/minilm", out, revision="main")
    assert out.is_dir() and any(out.glob("*.bs")), summary
    assert (out / "README.md").is_file()
    result = bigsmall.upload_to_hub(out, "fake-user/minilm-bs", commit_message="bigsmall test")
    assert result["repo"] == "fake-user/minilm-bs" and len(result["commit"]) == 40, result
    return "fake-user/minilm-bs"


@pytest.fixture(scope="module")
def want(minilm_path):
    st = pytest.importorskip("safetensors.torch")
    return digest(st.load_file(str(minilm_path)))


def test_compress_for_hub_errors(hub, tmp_path):
    with pytest.raises(bigsmall.NotFoundError):
        bigsmall.compress_for_hub("acme/no-such-model", tmp_path / "x")
    with pytest.raises(bigsmall.InvalidArgumentError):
        bigsmall.compress_for_hub("acme/minilm@main", tmp_path / "y", revision="v2")


def test_from_pretrained_a_hub_name_in_process(uploaded, want):
    assert digest(bigsmall.from_pretrained(uploaded, daemon=False)) == want
    assert digest(bigsmall.from_pretrained(uploaded, revision="main", daemon=False)) == want
    assert digest(bigsmall.from_pretrained(f"hf://{uploaded}@main", daemon=False)) == want
    got = {}
    with bigsmall.StreamingLoader(uploaded, daemon=False) as loader:
        assert loader.layer_count() == 6
        got.update(loader.load_non_layer_tensors())
        for _, tensors in loader.iter_layers():
            got.update(tensors)
    assert digest(got) == want


def test_a_repo_without_bs_files_says_so(hub):
    with pytest.raises(bigsmall.FailedPreconditionError):
        bigsmall.from_pretrained("acme/minilm", daemon=False)


def test_offline_from_the_cache(uploaded, want, monkeypatch):
    bigsmall.from_pretrained(uploaded, daemon=False)  # cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert digest(bigsmall.from_pretrained(uploaded, daemon=False)) == want


def test_from_pretrained_a_hub_name_through_the_daemon(uploaded, want, models_root, hub):
    with daemon_process([models_root], hub=True, env=dict(os.environ)) as proc:
        assert digest(bigsmall.from_pretrained(uploaded, daemon=proc.socket)) == want
        got = {}
        with bigsmall.StreamingLoader(uploaded, daemon=proc.socket, copy=True) as loader:
            got.update(loader.load_non_layer_tensors())
            for _, tensors in loader.iter_layers():
                got.update(tensors)
        assert digest(got) == want
