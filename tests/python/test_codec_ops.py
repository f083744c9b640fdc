"""bigsmall._core's CLI operations (python/src/codec_ops.cc): compress,
decompress, verify, info, compress_hub and upload, on the MiniLM corpus and
against the fake Hub (tests/hub/fake_hub.py).

They run the CLI's own code (cli/commands.h, cli/hub_commands.h): the dicts
are what `bigsmall <command> --json` prints, the errors carry the status code
the CLI reports (compared with the CLI itself where its binary is found:
$BIGSMALL_BIN_DIR or the package's bin/).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

import bigsmall
from bigsmall import _core, errors
from fake_hub_process import FakeHubProcess, FakeHubStartError

CORPUS = Path(os.environ.get("BIGSMALL_CORPUS", "/root/.cache/bigsmall/corpus/minilm/model.safetensors"))
CORPUS_DIR = Path(os.environ.get("BIGSMALL_CORPUS_DIR", "/root/.cache/bigsmall/corpus/minilm-dir"))
CORPUS_BF16 = Path(os.environ.get("BIGSMALL_CORPUS_BF16",
                                  "/root/.cache/bigsmall/corpus/minilm-bf16.safetensors"))
FAKE_HUB = Path(__file__).resolve().parent.parent / "hub" / "fake_hub.py"
MODES = ("balanced", "storage", "inference")
MANIFEST = "bigsmall-manifest.json"
TOKEN = "hf_codecOpsTestToken0123456789"

COMPRESS_KEYS = ["ok", "command", "input", "output", "mode", "base", "input_bytes", "output_bytes", "ratio",
                 "tensors", "files", "seconds", "bytes_per_second"]
DECOMPRESS_KEYS = ["ok", "command", "input", "output", "base", "input_bytes", "output_bytes", "tensors", "files",
                   "seconds", "bytes_per_second"]
VERIFY_KEYS = ["ok", "command", "input", "against", "base", "input_bytes", "output_bytes", "tensors", "files",
               "device_checksums", "group_checksums", "seconds", "bytes_per_second"]
UPLOAD_KEYS = ["ok", "command", "input", "repo", "revision", "commit", "commit_url", "files", "lfs_files_sent",
               "lfs_files_skipped", "bytes_sent"]


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"corpus missing: {path} (set BIGSMALL_CORPUS / BIGSMALL_CORPUS_DIR)")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree(root: Path, skip: tuple = ()) -> dict:
    """{relative path: sha256} of every file beneath root."""
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(d, name), root)
            if rel not in skip:
                out[rel] = sha256(Path(d) / name)
    return out


def cli_binary() -> Optional[str]:
    try:
        return bigsmall.tool_path("bigsmall")
    except errors.NotFoundError:
        return None


def cli_json(args: list, env: Optional[dict] = None) -> tuple[int, dict]:
    """Runs `bigsmall ARGS --json`: (exit code, the JSON it printed)."""
    binary = cli_binary()
    if binary is None:
        pytest.skip("the bigsmall CLI is not installed with the package (or in $BIGSMALL_BIN_DIR)")
    p = subprocess.run([binary] + [str(a) for a in args] + ["--json"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, timeout=120)
    return p.returncode, json.loads(p.stdout)


def raises_code(code: str, fn, *args, **kwargs) -> errors.BigSmallError:
    with pytest.raises(errors.BigSmallError) as e:
        fn(*args, **kwargs)
    assert e.value.code == code, f"{e.value.code}: {e.value.message}"
    assert isinstance(e.value, errors.error_class(code))
    return e.value


@pytest.fixture(scope="module")
def minilm_bs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("minilm") / "model.safetensors.bs"
    _core.compress(str(_need(CORPUS)), str(out))
    return out


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("mode", MODES)
def test_file_round_trip_in_each_mode(tmp_path, mode):
    src = _need(CORPUS)
    bs = tmp_path / "m.bs"
    j = _core.compress(str(src), str(bs), mode=mode, threads=2)
    assert list(j) == COMPRESS_KEYS
    assert j["ok"] is True and j["command"] == "compress" and j["mode"] == mode
    assert j["input"] == str(src) and j["output"] == str(bs) and j["base"] == ""
    assert j["input_bytes"] == src.stat().st_size and j["output_bytes"] == bs.stat().st_size
    assert 0.5 < j["ratio"] < 0.95 and j["ratio"] == pytest.approx(j["output_bytes"] / j["input_bytes"])
    assert j["files"] == 1 and j["tensors"] > 100 and j["seconds"] > 0
    back = tmp_path / "m.safetensors"
    d = _core.decompress(str(bs), str(back))
    assert list(d) == DECOMPRESS_KEYS and d["command"] == "decompress"
    assert d["output_bytes"] == src.stat().st_size and d["input_bytes"] == bs.stat().st_size
    assert sha256(back) == sha256(src)


def test_default_output_names(tmp_path):
    src = tmp_path / "x.safetensors"
    shutil.copyfile(_need(CORPUS), src)
    j = _core.compress(str(src))
    assert j["output"] == str(src) + ".bs" and Path(j["output"]).is_file()
    src.unlink()
    d = _core.decompress(j["output"])
    assert d["output"] == str(src) and sha256(src) == sha256(CORPUS)


def test_directory_round_trip(tmp_path):
    src = _need(CORPUS_DIR)
    out = tmp_path / "minilm.bs"
    j = _core.compress(str(src), str(out), mode="inference")
    assert j["files"] == 1 and out.is_dir() and (out / MANIFEST).is_file()
    assert (out / "model.safetensors.bs").is_file() and (out / "tokenizer.json").is_file()
    back = tmp_path / "back"
    d = _core.decompress(str(out), str(back))
    assert d["files"] == 1
    assert tree(back) == tree(src)
    v = _core.verify(str(out), against=str(src))
    assert list(v) == VERIFY_KEYS and v["against"] == str(src)


def test_verify_and_against(minilm_bs, tmp_path):
    v = _core.verify(str(minilm_bs))
    assert list(v) == VERIFY_KEYS
    assert v["ok"] is True and v["command"] == "verify" and v["against"] == ""
    assert v["output_bytes"] == CORPUS.stat().st_size and v["files"] == 1
    assert v["device_checksums"] == v["tensors"] > 0 and v["group_checksums"] > 0
    v = _core.verify(str(minilm_bs), against=str(CORPUS), threads=1)
    assert v["against"] == str(CORPUS)
    # Against different bytes of the same layout: DATA_LOSS, as the CLI's exit 3.
    other = tmp_path / "other.safetensors"
    raw = bytearray(CORPUS.read_bytes())
    raw[-3] ^= 0x40
    other.write_bytes(raw)
    raises_code("DATA_LOSS", _core.verify, str(minilm_bs), against=str(other))


def test_info(minilm_bs):
    i = _core.info(str(minilm_bs))
    assert i["kind"] == "file" and i["mode"] == "balanced"
    assert i["original_bytes"] == CORPUS.stat().st_size and i["stored_bytes"] == minilm_bs.stat().st_size
    assert i["tensor_count"] > 100 and "F32" in json.dumps(i["dtypes"])
    assert i["ratio"] == pytest.approx(i["stored_bytes"] / i["original_bytes"])
    assert "tensors" not in i
    t = _core.info(str(minilm_bs), tensors=True)
    assert len(t["tensors"]) == i["tensor_count"]
    first = t["tensors"][0]
    assert isinstance(first["name"], str) and isinstance(first["shape"], list)
    code, cli = cli_json(["info", minilm_bs, "--tensors"])
    assert code == 0 and cli == t


def test_summaries_are_what_the_cli_prints(tmp_path):
    src = _need(CORPUS)
    mine = _core.compress(str(src), str(tmp_path / "a.bs"), mode="storage")
    code, cli = cli_json(["compress", src, "-o", tmp_path / "b.bs", "--storage"])
    assert code == 0
    assert list(cli) == list(mine)
    for key in ("ok", "command", "mode", "base", "input_bytes", "output_bytes", "ratio", "tensors", "files"):
        assert cli[key] == mine[key], key
    assert sha256(tmp_path / "a.bs") == sha256(tmp_path / "b.bs")
    code, cli = cli_json(["verify", tmp_path / "b.bs", "--against", src])
    mine = _core.verify(str(tmp_path / "b.bs"), against=str(src))
    assert code == 0 and list(cli) == list(mine)
    assert {k: v for k, v in cli.items() if k not in ("seconds", "bytes_per_second")} == \
        {k: v for k, v in mine.items() if k not in ("seconds", "bytes_per_second")}


def test_delta_with_base(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    base = _need(CORPUS_BF16)
    tensors = load_file(str(base))
    gen = torch.Generator().manual_seed(3)
    for i, name in enumerate(sorted(tensors)):
        if i % 3 == 0 and tensors[name].is_floating_point():
            t = tensors[name]
            tensors[name] = (t.float() + 1e-3 * torch.randn(t.shape, generator=gen)).to(t.dtype)
    tuned = tmp_path / "tuned.safetensors"
    save_file(tensors, str(tuned))
    bs = tmp_path / "tuned.bs"
    j = _core.compress(str(tuned), str(bs), base=str(base))
    assert j["base"] == str(base)
    plain = _core.compress(str(tuned), str(tmp_path / "plain.bs"))
    assert j["output_bytes"] < plain["output_bytes"]
    assert _core.info(str(bs))["delta"]
    # Without the base: FAILED_PRECONDITION (the CLI's exit 5).
    raises_code("FAILED_PRECONDITION", _core.decompress, str(bs), str(tmp_path / "x.safetensors"))
    raises_code("FAILED_PRECONDITION", _core.verify, str(bs))
    back = tmp_path / "back.safetensors"
    d = _core.decompress(str(bs), str(back), base=str(base))
    assert d["base"] == str(base) and sha256(back) == sha256(tuned)
    _core.verify(str(bs), against=str(tuned), base=str(base))


# ---------------------------------------------------------------- errors


def test_missing_input_is_not_found(tmp_path):
    e = raises_code("NOT_FOUND", _core.compress, str(tmp_path / "nope.safetensors"), str(tmp_path / "o.bs"))
    assert isinstance(e, FileNotFoundError)
    raises_code("NOT_FOUND", _core.decompress, str(tmp_path / "nope.bs"), str(tmp_path / "o"))
    raises_code("NOT_FOUND", _core.verify, str(tmp_path / "nope.bs"))
    raises_code("NOT_FOUND", _core.info, str(tmp_path / "nope.bs"))
    assert not (tmp_path / "o.bs").exists() and not (tmp_path / "o").exists()


def test_existing_output_needs_force(minilm_bs, tmp_path):
    out = tmp_path / "exists.bs"
    out.write_bytes(b"keep me")
    e = raises_code("ALREADY_EXISTS", _core.compress, str(CORPUS), str(out))
    assert isinstance(e, FileExistsError) and "--force" in e.message
    assert out.read_bytes() == b"keep me"
    _core.compress(str(CORPUS), str(out), force=True)
    assert out.stat().st_size > 1000
    dst = tmp_path / "exists.safetensors"
    dst.write_bytes(b"x")
    raises_code("ALREADY_EXISTS", _core.decompress, str(minilm_bs), str(dst))
    _core.decompress(str(minilm_bs), str(dst), force=True)
    assert sha256(dst) == sha256(CORPUS)
    # --force over an output of the other kind, or onto the input: INVALID_ARGUMENT (usage).
    (tmp_path / "adir").mkdir()
    raises_code("INVALID_ARGUMENT", _core.compress, str(CORPUS), str(tmp_path / "adir"), force=True)
    raises_code("INVALID_ARGUMENT", _core.decompress, str(minilm_bs), str(minilm_bs), force=True)


def test_corrupt_and_not_bs(minilm_bs, tmp_path):
    bad = tmp_path / "corrupt.bs"
    raw = bytearray(minilm_bs.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(raw)
    raises_code("DATA_LOSS", _core.verify, str(bad))
    raises_code("DATA_LOSS", _core.decompress, str(bad), str(tmp_path / "c.safetensors"))
    assert not (tmp_path / "c.safetensors").exists()  # nothing left behind
    trunc = tmp_path / "trunc.bs"
    trunc.write_bytes(bytes(raw[:100000]))
    raises_code("DATA_LOSS", _core.verify, str(trunc))
    text = tmp_path / "text.bs"
    text.write_bytes(b"this is not a .bs file at all, only some text\n" * 10)
    e = raises_code("DATA_LOSS", _core.info, str(text))
    assert ".bs" in e.message
    raises_code("DATA_LOSS", _core.decompress, str(text), str(tmp_path / "t"))


def test_bad_arguments():
    raises_code("INVALID_ARGUMENT", _core.compress, str(CORPUS), "/tmp/x.bs", mode="fast")
    raises_code("INVALID_ARGUMENT", _core.compress, str(CORPUS), "/tmp/x.bs", threads=-1)
    raises_code("INVALID_ARGUMENT", _core.verify, str(CORPUS), threads=-2)


def test_errors_match_the_cli(minilm_bs, tmp_path):
    """Each failure: the Python code is the "code" of the CLI's --json error."""
    (tmp_path / "exists.bs").write_bytes(b"x")
    text = tmp_path / "text.bs"
    text.write_bytes(b"not a bs file" * 100)
    cases = [
        (["compress", tmp_path / "nope.safetensors", "-o", tmp_path / "o.bs"],
         lambda: _core.compress(str(tmp_path / "nope.safetensors"), str(tmp_path / "o.bs"))),
        (["compress", CORPUS, "-o", tmp_path / "exists.bs"],
         lambda: _core.compress(str(CORPUS), str(tmp_path / "exists.bs"))),
        (["compress", CORPUS, "-o", CORPUS], lambda: _core.compress(str(CORPUS), str(CORPUS))),
        (["decompress", text, "-o", tmp_path / "t"], lambda: _core.decompress(str(text), str(tmp_path / "t"))),
        (["verify", minilm_bs, "--against", text], lambda: _core.verify(str(minilm_bs), against=str(text))),
        (["info", tmp_path / "nope.bs"], lambda: _core.info(str(tmp_path / "nope.bs"))),
    ]
    for args, call in cases:
        code, cli = cli_json(args)
        assert code != 0 and cli["ok"] is False, args
        with pytest.raises(errors.BigSmallError) as e:
            call()
        assert e.value.code == cli["code"], (args, e.value.code, cli)
        assert e.value.message == cli["error"], args


def test_gil_is_released(minilm_bs):
    """Another Python thread runs while verify works."""
    ticks = 0
    done = threading.Event()

    def tick():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=tick)
    t.start()
    try:
        before = ticks
        for _ in range(3):
            _core.verify(str(minilm_bs), threads=1)
        during = ticks - before
    finally:
        done.set()
        t.join()
    assert during > 20, f"the other thread ran {during} times during three verifies"


# ---------------------------------------------------------------- the Hub


def _write_safetensors(path: Path, tensors: list) -> None:
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _small_model(path: Path) -> None:
    """A small model repo: two layers of real MiniLM bytes where there is a
    corpus, a config and a README."""
    import random
    rng = random.Random(5)
    tensors = []
    for i in range(2):
        for name, n in (("attention.self.query.weight", 128 * 128), ("output.dense.bias", 128)):
            data = struct.pack(f"<{n}f", *(rng.gauss(0, 0.05) for _ in range(n)))
            tensors.append((f"encoder.layer.{i}.{name}", "F32", [n], data))
    path.mkdir(parents=True)
    _write_safetensors(path / "model.safetensors", tensors)
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2}))
    (path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory):
    if not FAKE_HUB.is_file():
        pytest.skip(f"no fake Hub at {FAKE_HUB}")
    root = tmp_path_factory.mktemp("hub")
    data = root / "data"
    _small_model(data / "alice" / "tiny")
    try:
        hub = FakeHubProcess(data, root, tokens=[TOKEN])
    except FakeHubStartError as e:
        pytest.fail(f"the fake Hub did not start (it runs on any machine with python3): {e}")
    hub.root = root
    hub.repo = data / "alice" / "tiny"
    yield hub
    hub.stop()


@pytest.fixture
def hub_env(fake_hub, tmp_path, monkeypatch):
    """The HF_* environment the Hub client reads (as huggingface_hub does)."""
    for k in list(os.environ):
        if k.startswith("HF_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return fake_hub


def test_compress_hub_upload_and_back(hub_env, tmp_path, monkeypatch):
    hub = hub_env
    out = tmp_path / "tiny.bs"
    j = _core.compress_hub("alice/tiny", str(out), mode="storage", threads=1)
    assert list(j)[:5] == ["ok", "command", "input", "output", "hub"] and j["mode"] == "storage"
    assert j["input"] == "alice/tiny" and j["output"] == str(out)
    assert j["hub"]["repo"] == "alice/tiny" and len(j["hub"]["commit"]) == 40
    assert j["hub"]["endpoint"] == hub.endpoint and j["hub"]["from_cache"] is False
    assert (out / MANIFEST).is_file() and "BigSmall" in (out / "README.md").read_text()
    back = tmp_path / "back"
    _core.decompress(str(out), str(back))
    assert tree(back) == tree(hub.repo)
    # Again: the output exists.
    raises_code("ALREADY_EXISTS", _core.compress_hub, "alice/tiny", str(out))
    # A Hub name as compress's input goes to the Hub too, as on the command line.
    j2 = _core.compress("hf://alice/tiny", str(tmp_path / "again.bs"))
    assert j2["hub"]["commit"] == j["hub"]["commit"] and j2["hub"]["from_cache"] is False

    # Upload needs a token; then publishes the directory.
    raises_code("UNAUTHENTICATED", _core.upload, str(out), "alice/tiny-bs")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    u = _core.upload(str(out), "alice/tiny-bs", commit_message="BigSmall of alice/tiny")
    assert list(u) == UPLOAD_KEYS
    assert u["repo"] == "alice/tiny-bs" and u["revision"] == "main" and len(u["commit"]) == 40
    assert u["files"] == len(os.listdir(out)) and u["lfs_files_sent"] >= 1 and u["bytes_sent"] > 0
    again = _core.upload(str(out), "alice/tiny-bs", create=False)
    assert again["lfs_files_sent"] == 0
    dev = _core.upload(str(out), "alice/tiny-bs@dev")
    assert dev["revision"] == "dev"
    raises_code("INVALID_ARGUMENT", _core.upload, str(out), "alice/tiny-bs@dev", revision="other")
    raises_code("NOT_FOUND", _core.upload, str(tmp_path / "none"), "alice/x")
    raises_code("INVALID_ARGUMENT", _core.upload, str(out / MANIFEST), "alice/x")

    # info and decompress straight from the Hub.
    i = _core.info("alice/tiny-bs")
    assert i["kind"] == "directory" and i["hub"]["repo"] == "alice/tiny-bs"
    assert i["hub"]["commit"] == u["commit"] or i["hub"]["revision"] == "main"
    local = _core.info(str(out))
    for key in ("format_version", "mode", "original_bytes", "stored_bytes", "tensor_count"):
        assert i[key] == local[key], key
    back2 = tmp_path / "back2"
    d = _core.decompress("alice/tiny-bs", str(back2))
    assert d["hub"]["repo"] == "alice/tiny-bs" and tree(back2) == tree(hub.repo)


def test_hub_errors(hub_env, tmp_path, monkeypatch):
    raises_code("NOT_FOUND", _core.compress_hub, "alice/missing", str(tmp_path / "m.bs"))
    raises_code("INVALID_ARGUMENT", _core.compress_hub, "not a repo name", str(tmp_path / "m.bs"))
    raises_code("INVALID_ARGUMENT", _core.compress_hub, "alice/tiny", str(tmp_path / "m.bs"), mode="x")
    raises_code("INVALID_ARGUMENT", _core.decompress, "alice/tiny", str(tmp_path / "d"))  # not compressed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    raises_code("FAILED_PRECONDITION", _core.upload, str(tmp_path), "alice/x")
    # Offline with an empty cache: NOT_FOUND, as the CLI's exit 4.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    e = raises_code("NOT_FOUND", _core.compress_hub, "alice/tiny", str(tmp_path / "o.bs"))
    assert "offline" in e.message.lower() or "HF_HUB_OFFLINE" in e.message
    code, cli = cli_json(["compress", "alice/tiny", "-o", tmp_path / "o.bs"], env=dict(os.environ))
    assert code == 4 and cli["code"] == "NOT_FOUND" and cli["error"] == e.message
    assert not (tmp_path / "o.bs").exists()


_DUMPABLE_PROBE = r"""
import ctypes, os, resource, sys
from bigsmall import _core
libc = ctypes.CDLL(None, use_errno=True)
PR_GET_DUMPABLE = 3
before = (libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE))
try:
    _core.info("alice/tiny")  # a Hub call that loads the token
except Exception:
    pass
after = (libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE))
print(before, after)
sys.exit(0 if before == after and after[0] == 1 else 1)
"""


def test_a_hub_call_with_a_token_leaves_the_interpreter_dumpable(hub_env):
    # The CLI disables its own core dumps and ptrace when it loads a token;
    # the library must not do that to the user's interpreter.
    env = dict(os.environ, HF_TOKEN=TOKEN)
    probe = subprocess.run([sys.executable, "-c", _DUMPABLE_PROBE], env=env,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stdout + probe.stderr
