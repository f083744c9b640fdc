"""Memory bounds, measured: peak RSS of a fresh process loading the LLM-shaped synthetic model
(12 layers x 14.2 MB BF16 + 3.1 MB outside them, 173 MB; conftest.llm_bs).

* StreamingLoader.iter_layers, keeping nothing: the peak over the RSS before the loop stays
  under 4 layers (the layer the loop holds, the one decoded ahead (read_ahead=1), the one
  being decoded and its compressed bytes), far below the model.
* from_pretrained holds the model: its peak is about the model's size (at least 95% of it, at
  most the model plus 3 layers).
Each probe runs in its own process (tests/python/_memory_probe.py) so that nothing else this
session allocated counts; the peak is reset to the current RSS just before loading.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("_memory_probe.py")
MB = 1e6


def probe(mode: str, path: Path, socket: str = "") -> dict:
    env = dict(os.environ)
    env.pop("BIGSMALL_SOCKET", None)
    args = [sys.executable, str(PROBE), mode, str(path)] + ([socket] if socket else [])
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["growth"] = out["peak"] - out["base"]
    print(f"\n[memory] {mode} {out['through']}: peak +{out['growth'] / MB:.1f} MB over "
          f"{out['base'] / MB:.1f} MB (model {out['model_bytes'] / MB:.1f} MB) in {out['seconds']:.2f} s")
    return out


@pytest.fixture(scope="module")
def llm(llm_bs):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc (clear_refs, VmHWM) to measure peak RSS")
    return llm_bs


def test_streaming_loader_in_process_is_bounded_by_a_few_layers(llm):
    out = probe("stream", llm)
    assert out["layers"] == 12
    assert out["growth"] < 4 * out["layer_bytes"], out
    assert out["growth"] < out["model_bytes"] / 3, out


def test_from_pretrained_holds_the_model(llm):
    stream = probe("stream", llm)
    full = probe("from_pretrained", llm)
    assert full["model_bytes"] == stream["model_bytes"]
    assert full["growth"] >= 0.95 * full["model_bytes"], full
    assert full["growth"] <= full["model_bytes"] + 3 * stream["layer_bytes"], full


def test_streaming_loader_keeping_every_layer_holds_the_model(llm):
    """The bound is on what the loader holds: a caller that keeps the layers holds the model."""
    out = probe("stream-keep", llm)
    assert out["growth"] >= 0.9 * (out["model_bytes"] - out["layer_bytes"]), out


def test_streaming_loader_through_the_daemon_is_bounded(llm, bs_daemon):
    """Through bigsmalld the layers are the daemon's shared memory, mapped into this process;
    its pages count in this process's RSS only while mapped and touched."""
    out = probe("stream", llm, bs_daemon.socket)
    assert out["layers"] == 12
    assert out["growth"] < 4 * out["layer_bytes"], out


def test_reference_safetensors_load_file(llm):
    """For the report: safetensors.torch.load_file of the uncompressed file, same run."""
    pytest.importorskip("safetensors")
    original = llm.with_name("llm.safetensors")
    out = probe("load_file", original)
    assert out["growth"] >= 0.9 * out["model_bytes"]
