"""The real-model check (issue 9): MiniLM through transformers and sentence-transformers.

The corpus model sentence-transformers/all-MiniLM-L6-v2 (BIGSMALL_CORPUS_DIR, offline) is
compressed with bigsmall.compress (the directory -> a .bs directory, model.safetensors -> a .bs
file). Models whose weights come from bigsmall -- from_pretrained in process, from_pretrained
through a private bigsmalld, StreamingLoader layer by layer (in process and through the daemon)
-- must compute embeddings BIT-identical (torch.equal) to the original's on fixed sentences, with
exactly the original's state-dict keys, dtypes and shapes. The BF16 copy of the corpus
(minilm-bf16.safetensors, DERIVED from the FP32 original by rounding) is checked the same way
against its own uncompressed file.

Every weight goes into a model whose parameters were first overwritten with NaN, so a weight
that bigsmall did not deliver cannot pass as the original's. Keys: the safetensors names are
those of the transformers model (BertModel, `model[0].auto_model` of the SentenceTransformer);
the file also holds `embeddings.position_ids`, a non-persistent buffer of today's BertModel that
transformers' loader drops (PreTrainedModel._adjust_missing_and_unexpected_keys): the helpers
below drop exactly the keys that are such buffers (checking their values equal the buffers) and
load the rest with strict=True.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")
sentence_transformers = pytest.importorskip(
    "sentence_transformers", reason="sentence-transformers is not installed")
from safetensors.torch import load_file  # noqa: E402

import bigsmall  # noqa: E402
from bigsmall import _daemon_proc  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
# The fixed sentences and the embedding helpers: one definition, shared with the demo's check.
from python_check import SENTENCES, auto_model, encode, poison  # noqa: E402

_CACHE = Path(os.environ.get("BIGSMALL_CACHE", Path.home() / ".cache/bigsmall/corpus"))
MODEL_DIR = Path(os.environ.get("BIGSMALL_CORPUS_DIR", _CACHE / "minilm-dir"))
BF16_FILE = Path(os.environ.get("BIGSMALL_CORPUS_BF16", _CACHE / "minilm-bf16.safetensors"))

def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (bench/corpus.py makes it; set BIGSMALL_CORPUS_DIR / "
                    "BIGSMALL_CORPUS_BF16)")
    return path


@pytest.fixture(scope="module", autouse=True)
def _deterministic():
    """Bit-identity needs the same kernels in the same order on both sides: one thread."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def offline(monkeypatch_module):
    """No network; and no $BIGSMALL_SOCKET, so that daemon=None means in process."""
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch_module.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch_module.delenv("BIGSMALL_SOCKET", raising=False)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, offline):
    """{"dir": the .bs directory, "file": model.safetensors as a .bs file, "bf16": the BF16 copy}."""
    _need(MODEL_DIR / "model.safetensors", "the MiniLM corpus directory")
    root = tmp_path_factory.mktemp("models")
    out = {"dir": root / "minilm.bs", "file": root / "minilm.safetensors.bs"}
    bigsmall.compress(str(MODEL_DIR), str(out["dir"]))
    bigsmall.compress(str(MODEL_DIR / "model.safetensors"), str(out["file"]))
    if BF16_FILE.exists():
        out["bf16"] = root / "minilm-bf16.safetensors.bs"
        bigsmall.compress(str(BF16_FILE), str(out["bf16"]))
    return out


@pytest.fixture(scope="module")
def daemon(compressed):
    """A private bigsmalld serving the compressed models' directory; stopped at the end."""
    with _daemon_proc.DaemonProcess(model_dirs=[compressed["dir"].parent]) as proc:
        yield proc.socket


@pytest.fixture(scope="module")
def original():
    _need(MODEL_DIR / "model.safetensors", "the MiniLM corpus directory")
    return load_file(str(MODEL_DIR / "model.safetensors"))


@pytest.fixture(scope="module")
def st_model(offline):
    """One SentenceTransformer (the original's tokenizer, pooling, normalisation), shared: each
    check NaN-poisons its transformer's weights, then loads the ones under test."""
    _need(MODEL_DIR / "model.safetensors", "the MiniLM corpus directory")
    model = sentence_transformers.SentenceTransformer(str(MODEL_DIR), device="cpu")
    model.eval()
    return model


@pytest.fixture(scope="module")
def reference(st_model):
    """The original's embeddings: the model as sentence-transformers loaded it from the original
    directory (before any test reloads its weights)."""
    return encode(st_model)


def dropped_buffers(module: torch.nn.Module, keys) -> set[str]:
    """Keys of a checkpoint that are non-persistent buffers of `module` (not in its state_dict):
    what transformers' loader ignores (e.g. BertModel's embeddings.position_ids)."""
    persistent = set(module.state_dict().keys())
    buffers = {name for name, _ in module.named_buffers()}
    return {k for k in keys if k in buffers and k not in persistent}


def check_state_dict(module: torch.nn.Module, weights: dict) -> dict:
    """Asserts `weights` covers `module`'s state dict exactly (keys, dtypes, shapes), the extra keys
    being only non-persistent buffers with the buffers' own values; returns the dict to load."""
    expected = module.state_dict()
    extra = dropped_buffers(module, weights.keys())
    buffers = dict(module.named_buffers())
    for k in extra:
        assert torch.equal(weights[k], buffers[k]), f"{k}: the file's buffer differs from the model's"
    to_load = {k: v for k, v in weights.items() if k not in extra}
    missing, unexpected = set(expected) - set(to_load), set(to_load) - set(expected)
    assert not missing and not unexpected, f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
    for k, v in to_load.items():
        assert (v.dtype, tuple(v.shape)) == (expected[k].dtype, tuple(expected[k].shape)), k
    return to_load


def load_exact(module: torch.nn.Module, weights: dict) -> None:
    """Poisons `module`, then loads `weights` with strict=True (see check_state_dict)."""
    to_load = check_state_dict(module, weights)
    poison(module)
    result = module.load_state_dict(to_load, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result


def assert_same_tensors(got: dict, want: dict) -> None:
    """Same names, dtypes, shapes and bytes (compared as bytes: NaN-safe, -0.0 vs 0.0 differ)."""
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        assert g.device.type == "cpu", k
        assert (g.dtype, tuple(g.shape)) == (w.dtype, tuple(w.shape)), k
        gb = g.contiguous().reshape(-1).view(torch.uint8)
        wb = w.contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(gb, wb), f"{k}: bytes differ"


def assert_bit_identical(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert not torch.isnan(want).any()
    assert torch.equal(got, want), f"embeddings differ: max |d| = {(got - want).abs().max().item()}"


def streamed_into(module: torch.nn.Module, loader) -> dict[str, int]:
    """Fills `module`'s state dict layer by layer from a StreamingLoader, each tensor copied into
    its parameter as its layer arrives (the layer's tensors dropped before the next one comes).
    Returns {key: layer index it came in (-1: non-layer)}."""
    target = module.state_dict()
    buffers = dict(module.named_buffers())
    seen: dict[str, int] = {}

    def take(index: int, tensors: dict) -> None:
        for name, tensor in tensors.items():
            assert name not in seen, f"{name} delivered twice (layers {seen[name]} and {index})"
            seen[name] = index
            if name not in target and name in buffers:  # a non-persistent buffer (position_ids)
                assert torch.equal(tensor, buffers[name]), name
                continue
            assert name in target, f"unexpected tensor {name}"
            dst = target[name]
            assert (tensor.dtype, tuple(tensor.shape)) == (dst.dtype, tuple(dst.shape)), name
            with torch.no_grad():
                dst.copy_(tensor)

    poison(module)
    take(-1, loader.load_non_layer_tensors())
    layers = []
    for index, tensors in loader.iter_layers():
        layers.append(index)
        take(index, tensors)
        del tensors
    assert layers == list(range(loader.layer_count()))
    missing = set(target) - set(seen)
    assert not missing, f"never delivered: {sorted(missing)}"
    return seen


# ------------------------------------------------------------------------------------------ tests


def test_original_embeddings_are_deterministic(st_model, reference, original):
    """The premise of a bit-identity check: the same weights give the same bits again."""
    load_exact(auto_model(st_model), original)
    assert_bit_identical(encode(st_model), reference)
    assert reference.shape == (len(SENTENCES), 384)


@pytest.mark.parametrize("kind", ["dir", "file"])
@pytest.mark.parametrize("through", ["in-process", "daemon"])
def test_from_pretrained_sentence_transformers(kind, through, compressed, request, st_model,
                                               reference, original):
    sock = request.getfixturevalue("daemon") if through == "daemon" else False
    weights = bigsmall.from_pretrained(str(compressed[kind]), device="cpu", daemon=sock)
    assert_same_tensors(weights, original)
    load_exact(auto_model(st_model), weights)
    del weights
    assert_bit_identical(encode(st_model), reference)


@pytest.mark.parametrize("kind", ["dir", "file"])
@pytest.mark.parametrize("through", ["in-process", "daemon"])
def test_streaming_loader_layer_by_layer(kind, through, compressed, request, st_model, reference,
                                         original):
    sock = request.getfixturevalue("daemon") if through == "daemon" else False
    with bigsmall.StreamingLoader(str(compressed[kind]), device="cpu", daemon=sock) as loader:
        assert loader.layer_count() == 6  # MiniLM-L6
        seen = streamed_into(auto_model(st_model), loader)
    assert sorted(seen) == sorted(original)
    for l in range(6):  # each encoder layer's tensors came in its own layer
        assert {k for k, i in seen.items() if i == l} == {
            k for k in original if k.startswith(f"encoder.layer.{l}.")}
    assert_bit_identical(encode(st_model), reference)


@pytest.fixture(scope="module")
def hf_reference(offline):
    """transformers on its own: AutoModel.from_pretrained(original dir), its state dict, and its
    last hidden states on the tokenized sentences."""
    _need(MODEL_DIR / "model.safetensors", "the MiniLM corpus directory")
    tok = transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR))
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    model = transformers.AutoModel.from_pretrained(str(MODEL_DIR)).eval()
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    return {"batch": batch, "class": type(model), "state_dict": model.state_dict(), "hidden": hidden}


@pytest.mark.parametrize("through", ["in-process", "daemon"])
def test_transformers_from_pretrained_state_dict(through, compressed, request, hf_reference):
    """transformers' own loader: BertModel.from_pretrained(None, config=..., state_dict=bigsmall's)
    on a model built from the .bs directory's config, against AutoModel.from_pretrained(original)."""
    sock = request.getfixturevalue("daemon") if through == "daemon" else False
    weights = bigsmall.from_pretrained(str(compressed["dir"]), device="cpu", daemon=sock)
    # Each weight is cloned: transformers may keep the tensor it is given as the parameter
    # (the daemon's are read-only views of its shared memory).
    weights = {k: v.clone() for k, v in weights.items()}
    config = transformers.AutoConfig.from_pretrained(str(compressed["dir"]))
    # BertModel: the Auto classes want a path, a state_dict wants none.
    model_class = getattr(transformers, config.architectures[0])
    assert model_class is hf_reference["class"]
    torch.manual_seed(1234)
    model, info = model_class.from_pretrained(
        None, config=config, state_dict=weights, output_loading_info=True)
    model.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"] and not info["error_msgs"], info

    got_sd, want_sd = model.state_dict(), hf_reference["state_dict"]
    assert list(got_sd) == list(want_sd)
    assert_same_tensors(got_sd, want_sd)
    with torch.inference_mode():
        hidden = model(**hf_reference["batch"]).last_hidden_state
    assert_bit_identical(hidden, hf_reference["hidden"])


@pytest.fixture(scope="module")
def bf16(compressed, offline):
    """DERIVED data: the BF16 copy of MiniLM (FP32 rounded to BF16), in a BF16 model on the CPU,
    and the embeddings of its own uncompressed file's weights."""
    if "bf16" not in compressed:
        pytest.skip(f"the derived BF16 copy is not at {BF16_FILE} (bench/corpus.py makes it)")
    weights = load_file(str(BF16_FILE))
    assert weights["encoder.layer.0.attention.self.query.weight"].dtype == torch.bfloat16
    model = sentence_transformers.SentenceTransformer(str(MODEL_DIR), device="cpu")
    model.to(torch.bfloat16).eval()
    load_exact(auto_model(model), weights)
    want = encode(model)
    assert want.dtype == torch.bfloat16
    return {"model": model, "weights": weights, "embeddings": want, "bs": compressed["bf16"]}


@pytest.mark.parametrize("through", ["in-process", "daemon"])
def test_bf16_derived_copy(through, bf16, request):
    """The derived BF16 copy: from_pretrained and StreamingLoader against its own original."""
    sock = request.getfixturevalue("daemon") if through == "daemon" else False
    model = bf16["model"]
    got = bigsmall.from_pretrained(str(bf16["bs"]), device="cpu", daemon=sock)
    assert_same_tensors(got, bf16["weights"])
    load_exact(auto_model(model), got)
    del got
    assert_bit_identical(encode(model), bf16["embeddings"])

    with bigsmall.StreamingLoader(str(bf16["bs"]), device="cpu", daemon=sock) as loader:
        streamed_into(auto_model(model), loader)
    assert_bit_identical(encode(model), bf16["embeddings"])


def test_python_check_script(compressed, daemon):
    """scripts/python_check.py (the demo's last step) passes on the real model, every path."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/python_check.py"), str(compressed["dir"]),
         "--original", str(MODEL_DIR), "--daemon", daemon],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("in-process", "daemon", "streaming"))]
    assert len(lines) == 4 and all(" identical " in l for l in lines), proc.stdout


def test_python_check_script_fails_on_one_flipped_bit(compressed, tmp_path, capsys, monkeypatch):
    """The check is not vacuous: a model one bit away from the original (the lowest mantissa bit
    of one weight) is reported on every path, with a non-zero exit."""
    weights = load_file(str(MODEL_DIR / "model.safetensors"))
    flat = weights["encoder.layer.3.attention.output.dense.weight"].view(-1).view(torch.int32)
    flat[7] ^= 1
    from safetensors.torch import save_file  # noqa: PLC0415

    flipped = tmp_path / "flipped.safetensors"
    save_file(weights, str(flipped), metadata={"format": "pt"})
    bs = tmp_path / "flipped.safetensors.bs"
    bigsmall.compress(str(flipped), str(bs))

    spec = importlib.util.spec_from_file_location("python_check", ROOT / "scripts/python_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    monkeypatch.setattr(sys, "argv", ["python_check.py", str(bs), "--original", str(MODEL_DIR)])
    assert check.main() == 1
    out = capsys.readouterr().out
    failed = [l for l in out.splitlines() if " FAILED: " in l and "embeddings differ" in l]
    labels = [l.split(" FAILED: ")[0].strip() for l in failed]
    assert labels == ["in-process", "streaming in-process"], out
