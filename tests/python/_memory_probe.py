"""Peak RSS of one way of loading a model, measured in a fresh process (test_memory.py runs it).

    python3 _memory_probe.py MODE PATH [SOCKET]

MODE: stream (StreamingLoader.iter_layers, touching every page of every
tensor and keeping nothing), stream-keep (the same, keeping every layer),
from_pretrained, load_file (safetensors.torch.load_file of an uncompressed
file). SOCKET: through that bigsmalld (else in process). Prints one JSON
object: base / peak RSS in bytes (the peak is reset to the current RSS just
before loading: /proc/self/clear_refs), the model's decoded bytes, its
largest layer, seconds.
"""
from __future__ import annotations

import gc
import json
import sys
import time

import torch


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def touch(tensor: torch.Tensor) -> int:
    """Reads one byte of every page of the tensor (so mapped memory is resident)."""
    if tensor.numel() == 0:
        return 0
    flat = tensor.reshape(-1).view(torch.uint8)
    return int(flat[::4096].sum()) + int(flat[-1])


def touch_all(tensors: dict) -> int:
    return sum(touch(t) for t in tensors.values())


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    socket = sys.argv[3] if len(sys.argv) > 3 else ""
    import bigsmall
    daemon = socket or False
    out: dict = {"mode": mode, "through": "daemon" if socket else "in-process"}
    if mode in ("stream", "stream-keep"):
        loader = bigsmall.StreamingLoader(path, daemon=daemon, read_ahead=1,
                                          copy=(mode == "stream-keep" and bool(socket)))
        desc = loader.describe()
        sizes = [int(g["size"]) for g in desc["layers"]]
        out["model_bytes"] = sum(sizes) + int((desc.get("non_layer") or {}).get("size", 0))
        out["layer_bytes"] = max(sizes)
        kept = []
        gc.collect()
        out["base"] = status("VmRSS")
        reset_peak()
        start = time.perf_counter()
        for _, tensors in loader.iter_layers():
            touch_all(tensors)  # no loop variable here keeps a tensor past its layer
            if mode == "stream-keep":
                kept.append(dict(tensors))
        out["seconds"] = time.perf_counter() - start
        out["layers"] = len(sizes)
        loader.close()
    elif mode == "from_pretrained":
        gc.collect()
        out["base"] = status("VmRSS")
        reset_peak()
        start = time.perf_counter()
        sd = bigsmall.from_pretrained(path, daemon=daemon)
        touch_all(sd)
        out["seconds"] = time.perf_counter() - start
        out["model_bytes"] = sum(t.numel() * t.element_size() for t in sd.values())
    elif mode == "load_file":
        from safetensors.torch import load_file
        gc.collect()
        out["base"] = status("VmRSS")
        reset_peak()
        start = time.perf_counter()
        sd = load_file(path)
        touch_all(sd)
        out["seconds"] = time.perf_counter() - start
        out["model_bytes"] = sum(t.numel() * t.element_size() for t in sd.values())
    else:
        raise SystemExit(f"unknown mode {mode}")
    out["peak"] = status("VmHWM")
    out["rss_end"] = status("VmRSS")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
