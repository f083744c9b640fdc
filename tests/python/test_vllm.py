"""vLLM's ``--load-format bigsmall`` (bigsmall.vllm_plugin) against vLLM's own classes.

The tests that need vLLM, which is not in the default test environment,
skip there, saying so (the entry point, the import and the error without
vLLM are checked everywhere). Where vLLM is installed, e.g.::

    /work/venv-vllm/bin/python -m pytest tests/python/test_vllm.py

What runs, each vLLM part in a fresh child process (this file run as a
script: vLLM's plugin loader, its platform and torch.distributed are
per-process state, and a child gives a clean peak RSS):

* without vLLM, importing the plugin works and using it raises an
  ImportError that says vLLM is needed;
* the entry point ``vllm.general_plugins: bigsmall`` names
  ``bigsmall.vllm_plugin:register``; vLLM's own ``load_general_plugins``
  registers the load format (``get_model_loader`` returns our loader),
  ``register`` is idempotent, importing the plugin imports no vLLM;
* the MiniLM model of the corpus (BERT, real weights, FP32) compressed with
  ``bigsmall.compress`` and built by vLLM (``EngineArgs`` ->
  ``VllmConfig`` on vLLM's CPU platform, gloo world of 1, ``get_model``: the
  whole load path, post-processing included): every tensor of the model's
  state dict equals, bit for bit, what vLLM's DefaultModelLoader makes from
  the uncompressed safetensors;
* a SYNTHETIC Llama-shaped model (random BF16 weights, GQA) with tensor
  parallelism 2 (two ranks, gloo): each rank's parameters (its own shards)
  after our loader's ``load_weights``, in process and through a private
  bigsmalld shared by both ranks, equal the DefaultModelLoader's bit for bit;
  the daemon decoded each layer once for both ranks; in process, the peak
  RSS grows by less than half the checkpoint (layer by layer).
  (vLLM's CPU post-processing of BF16 linear layers needs vLLM's CPU ops,
  which a CUDA build of vLLM lacks, so the Llama check stops after
  ``load_weights``: parameters are compared as vLLM's loaders left them.)

Peak RSS during each load (VmHWM, reset before the load) is printed.
"""
from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAVE_VLLM,
    reason="vLLM is not installed in this Python (it pins its own torch, so it lives in "
           "a venv of its own: scripts/test.sh stage 8 runs this file in build/venv-vllm; "
           "by hand: PIP_EXTRA=vllm==0.33.0 scripts/install_python.sh VENV, then VENV/bin/python "
           "-m pytest tests/python/test_vllm.py)")

CORPUS_DIR = Path(os.environ.get("BIGSMALL_CORPUS_DIR",
                                 "/root/.cache/bigsmall/corpus/minilm-dir"))
CHILD_TIMEOUT_S = 300

# The synthetic Llama: small enough for CI-ish time, large enough that the
# checkpoint (~205 MB BF16) dwarfs a layer (6.4 MB).
LLAMA = {"layers": 32, "hidden": 512, "intermediate": 1408, "vocab": 4096,
         "heads": 8, "kv_heads": 4}


# ---------------------------------------------------------------- child side
# Run as `python test_vllm.py <json spec>`; writes its results as JSON to
# spec["out"].

def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak_rss() -> bool:
    try:  # Linux >= 4.0: "5" resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _tensor_hash(t: Any) -> str:
    import torch

    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def _child_registry(spec: dict) -> dict:
    """vLLM's plugin loader finds and runs our entry point."""
    import logging
    import types

    from vllm.config.load import LoadConfig
    from vllm.model_executor import model_loader as ml
    from vllm.plugins import load_general_plugins

    before = "bigsmall" in ml._LOAD_FORMAT_TO_MODEL_LOADER
    load_general_plugins()
    loader = ml.get_model_loader(LoadConfig(load_format="bigsmall"))
    cls = type(loader)

    # A second register() (another plugin load, a user call) neither warns
    # nor replaces the class.
    records: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    vllm_logger = logging.getLogger("vllm.model_executor.model_loader")
    handler = Catch(level=logging.WARNING)
    vllm_logger.addHandler(handler)
    import bigsmall.vllm_plugin as plugin

    plugin.register()
    plugin.register()
    vllm_logger.removeHandler(handler)

    errors = {}
    for name, extra in {"unknown_key": {"threads": 4}, "bad_socket": {"socket": 3},
                        "bad_device": {"device": "tpu"}}.items():
        try:
            ml.get_model_loader(LoadConfig(load_format="bigsmall",
                                           model_loader_extra_config=extra))
            errors[name] = None
        except ValueError as e:
            errors[name] = str(e)
    not_compressed = None
    try:
        loader.download_model(types.SimpleNamespace(model=spec["plain_dir"], revision=None))
    except ValueError as e:
        not_compressed = str(e)
    return {
        "registered_before_plugins": before,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "bases": [f"{b.__module__}.{b.__qualname__}" for b in cls.__mro__],
        "same_class_after_register": ml._LOAD_FORMAT_TO_MODEL_LOADER["bigsmall"] is cls,
        "warnings": records,
        "errors": errors,
        "not_compressed": not_compressed,
    }


def _child_load(spec: dict) -> dict:
    """Builds the model once per load in spec["loads"] and hashes its state dict."""
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model, get_model_loader
    from vllm.utils.torch_utils import set_default_torch_dtype

    tp, rank = spec["tp"], spec["rank"]
    distributed = False
    results: dict[str, Any] = {}
    for load in spec["loads"]:
        args = EngineArgs(model=load["model"], load_format=load["load_format"],
                          model_loader_extra_config=load.get("extra") or {},
                          dtype=spec["dtype"], enforce_eager=True, skip_tokenizer_init=True,
                          tensor_parallel_size=tp,
                          distributed_executor_backend="mp" if tp > 1 else None)
        config = args.create_engine_config()
        model_config = config.model_config
        with set_current_vllm_config(config):
            if not distributed:
                init_distributed_environment(
                    world_size=tp, rank=rank, local_rank=rank, backend="gloo",
                    distributed_init_method=f"file://{spec['init_file']}")
                initialize_model_parallel(tp, 1)
                distributed = True
            loader = get_model_loader(config.load_config)
            gc.collect()
            if spec["mode"] == "get_model":
                # vLLM's whole path: create, load_weights, post-processing.
                rss_before = _rss_kib("VmRSS")
                reset = _reset_peak_rss()
                started = time.perf_counter()
                model = get_model(vllm_config=config)
            else:
                with set_default_torch_dtype(model_config.dtype), torch.device("cpu"):
                    model = loader.create_model(vllm_config=config, model_config=model_config)
                # Touch the parameters' pages (x * 1 == x) so that the peak
                # below is what the loader adds, not the first touch of the
                # (torch.empty) parameters that any loader does.
                with torch.no_grad():
                    for param in model.parameters():
                        param.mul_(1)
                gc.collect()
                rss_before = _rss_kib("VmRSS")
                reset = _reset_peak_rss()
                started = time.perf_counter()
                loader.load_weights(model, model_config)
            seconds = time.perf_counter() - started
            peak = _rss_kib("VmHWM")
            # What the RSS is made of once loaded: private memory, mapped
            # files (safetensors mmap), shared memory (bigsmalld's layers).
            kinds = {k: _rss_kib(k) for k in ("RssAnon", "RssFile", "RssShmem")}
        gc.collect()
        # bigsmall's C++ buffers still alive (decoded layers, daemon leases):
        # none once the load is over.
        live_buffers = None
        if "bigsmall._core" in sys.modules:
            live_buffers = sys.modules["bigsmall._core"]._test_live_buffers()
        state = model.state_dict()
        results[load["label"]] = {
            "loader": type(loader).__name__,
            "seconds": seconds,
            "rss_before_kib": rss_before,
            "peak_rss_kib": peak if reset else None,
            "rss_after_kib": kinds,
            "live_buffers_after": live_buffers,
            "hashes": {name: _tensor_hash(t) for name, t in state.items()},
            "shapes": {name: list(t.shape) for name, t in state.items()},
            "dtypes": {name: str(t.dtype) for name, t in state.items()},
        }
        del model, state, loader
        gc.collect()
    return results


def _child_main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # vLLM's CPU platform
    os.environ["HF_HUB_OFFLINE"] = "1"
    if spec["kind"] == "registry":
        result = _child_registry(spec)
    else:
        result = _child_load(spec)
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------- parent side

def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BIGSMALL_SOCKET", None)  # each load says where it reads from
    env["VLLM_TARGET_DEVICE"] = "cpu"
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.update(extra or {})
    return env


def _start_child(spec: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, __file__, json.dumps(spec)],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                env=_child_env(), cwd=str(Path(__file__).parent))


def _finish_children(children: list[tuple[subprocess.Popen, dict, Path]]) -> list[dict]:
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    results = []
    try:
        for proc, spec, log in children:
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"vLLM child did not finish in {CHILD_TIMEOUT_S} s:\n"
                            f"{log.read_text(errors='replace')[-4000:]}")
            if code != 0:
                pytest.fail(f"vLLM child exited with {code}:\n"
                            f"{log.read_text(errors='replace')[-6000:]}")
            results.append(json.loads(Path(spec["out"]).read_text()))
    finally:
        for proc, _, _ in children:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    return results


def _run_child(spec: dict, tmp: Path) -> dict:
    log = tmp / f"child-{spec['kind']}.log"
    return _finish_children([(_start_child(spec, log), spec, log)])[0]


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def _report(title: str, result: dict) -> None:
    for label, r in result.items():
        growth = None if r["peak_rss_kib"] is None else r["peak_rss_kib"] - r["rss_before_kib"]
        after = ", ".join(f"{k} {_mib(v)}" for k, v in r["rss_after_kib"].items())
        print(f"[{title}] {label:<16} {r['loader']:<20} {r['seconds']:.2f} s  "
              f"RSS before {_mib(r['rss_before_kib'])}, peak {_mib(r['peak_rss_kib'])} "
              f"(+{_mib(growth)}); after: {after}; live bigsmall buffers "
              f"{r['live_buffers_after']}")


def _assert_same_tensors(result: dict, reference: str, others: list[str]) -> None:
    ref = result[reference]
    assert ref["loader"] == "DefaultModelLoader"
    assert len(ref["hashes"]) > 0
    for label in others:
        got = result[label]
        assert got["loader"] == "BigSmallModelLoader", label
        assert got["shapes"] == ref["shapes"], label
        assert got["dtypes"] == ref["dtypes"], label
        differ = sorted(n for n in ref["hashes"] if got["hashes"][n] != ref["hashes"][n])
        assert not differ, (
            f"{label}: {len(differ)} tensors differ from the default loader's: {differ[:8]}")


@pytest.fixture(scope="module")
def bigsmall_pkg():
    import bigsmall

    return bigsmall


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="bs-vllm-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def minilm(bigsmall_pkg, workdir) -> tuple[Path, Path]:
    """(the uncompressed MiniLM directory, its compressed copy)."""
    if not (CORPUS_DIR / "config.json").is_file():
        pytest.skip(f"the MiniLM corpus model is not at {CORPUS_DIR} (BIGSMALL_CORPUS_DIR)")
    dst = workdir / "minilm.bs"
    bigsmall_pkg.compress(str(CORPUS_DIR), str(dst))
    return CORPUS_DIR, dst


def _write_synthetic_llama(out: Path) -> None:
    """SYNTHETIC weights (seeded Gaussians, BF16) in HF Llama layout."""
    import torch
    from safetensors.torch import save_file

    c = LLAMA
    hidden, inter, head_dim = c["hidden"], c["intermediate"], c["hidden"] // c["heads"]
    kv = c["kv_heads"] * head_dim
    gen = torch.Generator().manual_seed(1234)

    def rand(*shape: int, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.05 + mean).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": rand(c["vocab"], hidden),
               "model.norm.weight": rand(hidden, mean=1.0),
               "lm_head.weight": rand(c["vocab"], hidden)}
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": rand(hidden, mean=1.0),
            p + "self_attn.q_proj.weight": rand(hidden, hidden),
            p + "self_attn.k_proj.weight": rand(kv, hidden),
            p + "self_attn.v_proj.weight": rand(kv, hidden),
            p + "self_attn.o_proj.weight": rand(hidden, hidden),
            p + "post_attention_layernorm.weight": rand(hidden, mean=1.0),
            p + "mlp.gate_proj.weight": rand(inter, hidden),
            p + "mlp.up_proj.weight": rand(inter, hidden),
            p + "mlp.down_proj.weight": rand(hidden, inter),
        })
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": inter,
        "num_attention_heads": c["heads"], "num_key_value_heads": c["kv_heads"],
        "num_hidden_layers": c["layers"], "vocab_size": c["vocab"],
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "torch_dtype": "bfloat16", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2,
    }
    (out / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def llama(bigsmall_pkg, workdir) -> tuple[Path, Path]:
    """(the synthetic Llama directory, its compressed copy)."""
    src = workdir / "llama-synthetic"
    _write_synthetic_llama(src)
    dst = workdir / "llama-synthetic.bs"
    bigsmall_pkg.compress(str(src), str(dst))
    return src, dst


# ---------------------------------------------------------------- tests

def test_entry_point_names_register():
    from importlib.metadata import entry_points

    import bigsmall.vllm_plugin as plugin

    eps = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "bigsmall"]
    assert len(eps) == 1, "the installed bigsmall declares one vllm.general_plugins entry point"
    assert eps[0].value == "bigsmall.vllm_plugin:register"
    assert eps[0].load() is plugin.register


def test_without_vllm_using_the_plugin_is_a_clear_import_error():
    # vLLM made unimportable in a child (sys.modules[name] = None).
    code = ("import sys\n"
            "sys.modules['vllm'] = None\n"
            "import bigsmall.vllm_plugin as p\n"
            "for use in (p.register, lambda: p.BigSmallModelLoader):\n"
            "    try:\n"
            "        use()\n"
            "    except ImportError as e:\n"
            "        print('ImportError:', e)\n"
            "    else:\n"
            "        print('no error')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_child_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout
    for line in lines:
        assert line.startswith("ImportError: bigsmall's vLLM loader (--load-format bigsmall) "
                               "needs vLLM: `pip install vllm`"), line


def test_importing_the_plugin_imports_no_vllm():
    code = ("import sys, bigsmall.vllm_plugin as p; "
            "assert p.LOAD_FORMAT == 'bigsmall'; "
            "print(sorted(m for m in sys.modules if m == 'vllm' or m.startswith('vllm.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_child_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@needs_vllm
def test_vllm_plugin_loader_registers_the_load_format(workdir):
    plain = workdir / "plain-model"
    plain.mkdir(exist_ok=True)
    (plain / "model.safetensors").write_bytes(b"")
    result = _run_child({"kind": "registry", "plain_dir": str(plain),
                         "out": str(workdir / "registry.json")}, workdir)
    assert result["registered_before_plugins"] is False
    assert result["class"] == "bigsmall.vllm_plugin.BigSmallModelLoader"
    assert ("vllm.model_executor.model_loader.base_loader.BaseModelLoader"
            in result["bases"])
    assert result["same_class_after_register"] is True
    assert not [w for w in result["warnings"] if "already registered" in w], result["warnings"]
    assert "Unexpected extra config keys" in result["errors"]["unknown_key"]
    assert "socket" in result["errors"]["bad_socket"]
    assert "device" in result["errors"]["bad_device"]
    assert result["not_compressed"] is not None and "bigsmall compress" in result["not_compressed"]


@needs_vllm
def test_minilm_bert_get_model_bit_identical_to_default_loader(minilm, workdir):
    """The real MiniLM model (vLLM's BertEmbeddingModel), vLLM's get_model."""
    plain, compressed = minilm
    spec = {"kind": "load", "mode": "get_model", "tp": 1, "rank": 0, "dtype": "float32",
            "init_file": str(workdir / "init-bert"), "out": str(workdir / "bert.json"),
            "loads": [
                {"label": "default", "model": str(plain), "load_format": "safetensors"},
                {"label": "bigsmall", "model": str(compressed), "load_format": "bigsmall",
                 "extra": {"socket": False}},
            ]}
    result = _run_child(spec, workdir)
    _report("MiniLM/BERT get_model", result)
    _assert_same_tensors(result, "default", ["bigsmall"])
    assert result["bigsmall"]["live_buffers_after"] == 0, result["bigsmall"]
    # Not only equal to each other: the real bytes (an untouched tensor).
    from safetensors import safe_open

    with safe_open(str(plain / "model.safetensors"), framework="pt") as f:
        want = _tensor_hash(f.get_tensor("embeddings.LayerNorm.weight"))
    assert result["bigsmall"]["hashes"]["model.embeddings.LayerNorm.weight"] == want


@needs_vllm
def test_synthetic_llama_tensor_parallel_2_bit_identical(llama, workdir, bigsmall_pkg):
    """SYNTHETIC Llama weights; TP=2 over gloo: each rank's shards, in process
    and through one bigsmalld the two ranks share."""
    from bigsmall._daemon_proc import DaemonProcess

    plain, compressed = llama
    init = workdir / "init-llama-tp2"
    with DaemonProcess(model_dirs=[workdir]) as daemon:
        children = []
        for rank in range(2):
            spec = {"kind": "load", "mode": "load_weights", "tp": 2, "rank": rank,
                    "dtype": "bfloat16", "init_file": str(init),
                    "out": str(workdir / f"llama-rank{rank}.json"),
                    "loads": [
                        {"label": "default", "model": str(plain), "load_format": "safetensors"},
                        {"label": "bigsmall", "model": str(compressed),
                         "load_format": "bigsmall", "extra": {"socket": False}},
                        {"label": "bigsmall_daemon", "model": str(compressed),
                         "load_format": "bigsmall", "extra": {"socket": daemon.socket}},
                    ]}
            log = workdir / f"child-llama-rank{rank}.log"
            children.append((_start_child(spec, log), spec, log))
        results = _finish_children(children)
        stats = daemon.client().stats()
    print(f"[Llama TP2] bigsmalld stats after both ranks: "
          f"{ {k: v for k, v in stats.items() if not isinstance(v, (dict, list))} }")
    # One decoded copy for both ranks: the daemon decoded every layer (and
    # the non-layer group) once; the other rank's requests were cache hits
    # (or waited on the load in flight). Its budget evicts nothing here.
    assert stats["cache_evictions"] == 0, stats
    assert stats["layer_decodes"] == LLAMA["layers"] + 1, stats
    checkpoint = (plain / "model.safetensors").stat().st_size
    for rank, result in enumerate(results):
        _report(f"Llama TP2 rank {rank}", result)
        _assert_same_tensors(result, "default", ["bigsmall", "bigsmall_daemon"])
        # In process, layer by layer: the peak grows by a few layers, never by
        # the checkpoint (205 MB here; a layer is 6.4 MB, the non-layer
        # tensors 8.4 MB). The default loader's mmap grows it by about the
        # file; through the daemon the peak counts the daemon's shared pages
        # mapped into the rank (no private copy: RssShmem is 0 afterwards).
        for label in ("bigsmall", "bigsmall_daemon"):
            assert result[label]["live_buffers_after"] == 0, (label, result[label])
        r = result["bigsmall"]
        if r["peak_rss_kib"] is not None:
            growth = (r["peak_rss_kib"] - r["rss_before_kib"]) * 1024
            assert growth < checkpoint / 2, (
                f"rank {rank}: peak RSS grew {growth} B while loading a {checkpoint} B checkpoint")
    # Each rank holds its own shard: half the vocabulary rows, different bytes.
    shapes = results[0]["default"]["shapes"]
    assert shapes["model.embed_tokens.weight"] == [LLAMA["vocab"] // 2, LLAMA["hidden"]]
    assert shapes["model.layers.0.mlp.down_proj.weight"] == [LLAMA["hidden"],
                                                             LLAMA["intermediate"] // 2]
    for name in ("model.layers.0.self_attn.qkv_proj.weight", "model.embed_tokens.weight"):
        assert results[0]["bigsmall"]["hashes"][name] != results[1]["bigsmall"]["hashes"][name]
    # Replicated tensors are the file's bytes on both ranks.
    from safetensors import safe_open

    with safe_open(str(plain / "model.safetensors"), framework="pt") as f:
        want = _tensor_hash(f.get_tensor("model.norm.weight"))
    for result in results:
        assert result["bigsmall_daemon"]["hashes"]["model.norm.weight"] == want


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv))
