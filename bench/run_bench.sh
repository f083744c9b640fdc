#!/usr/bin/env bash
# Codec benchmark over the real corpora (bench/corpus.py and bench/corpus2.py), against every peer,
# in one run on this machine: the per-tensor floor, our three modes, zstd -3/-19, ZipNN and the
# PyPI `bigsmall` package (ratio and 1-thread decode), library encode/decode GB/s on 1 and N
# threads, CLI compress/decompress wall time, and per tensor our worst tensor vs the best peer.
# Writes bench/results/BENCHMARKS.md and the raw JSON beside it.
#
# Usage: bench/run_bench.sh [--quick]
#   --quick: 6 files (MiniLM FP32/BF16 and 4 small corpus2 files), one repetition.
# Environment: BUILD_DIR (default build-bench; PREBUILT=DIR uses DIR's binaries as they are), BIGSMALL_CACHE / BIGSMALL_CORPUS2 (corpus caches),
#   PYPI_BIGSMALL_VENV (default /work/venv-pypi-bigsmall; created with bigsmall==4.0.0 if missing),
#   JOBS (per-tensor parallelism, default 2), RESULTS_DIR (default bench/results).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
build=${BUILD_DIR:-build-bench}
venv=${PYPI_BIGSMALL_VENV:-/work/venv-pypi-bigsmall}
jobs=${JOBS:-2}
res=${RESULTS_DIR:-bench/results}
t_start=$(date +%s)
skips=()

bash scripts/install_deps.sh >/dev/null
python3 -c "import zstandard" 2>/dev/null || python3 -m pip install --quiet "zstandard==0.25.0"
python3 -c "import zipnn" 2>/dev/null || python3 -m pip install --quiet "zipnn==0.5.4" || skips+=("ZipNN: pip install zipnn failed")
if [[ ! -x $venv/bin/python ]]; then
  # Its import name is the same as ours: it lives in its own venv, never in python3's site-packages.
  { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "bigsmall==4.0.0"; } ||
    skips+=("PyPI bigsmall: could not create $venv with bigsmall==4.0.0")
fi
if [[ -n ${PREBUILT:-} ]]; then
  build=$PREBUILT  # an existing build dir holding bench/codec_bench and cli/bigsmall (not rebuilt)
else
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBIGSMALL_CUDA=OFF "${launcher[@]}" >/dev/null
  ninja -C "$build" -j2 codec_bench bigsmall >/dev/null
fi

cache=${BIGSMALL_CACHE:-$HOME/.cache/bigsmall/corpus}
cache2=${BIGSMALL_CORPUS2:-$HOME/.cache/bigsmall/corpus2}
python3 bench/corpus.py --cache "$cache" >/dev/null
python3 bench/corpus2.py --cache "$cache2" >/dev/null

old=(minilm/model.safetensors khmer-ocr-crnn-fp32.safetensors pocketnet-fold0-fp32.safetensors
     minilm-bf16.safetensors minilm-fp16.safetensors minilm-fp8e4m3.safetensors
     minilm-fp32-upcast-from-bf16.safetensors)
mapfile -t new < <(python3 -c "import json,sys; [print(e['file']) for e in json.load(open(sys.argv[1]))['files']]" \
                   "$cache2/corpus2.json")
paths=()
repeat=3
if [[ $quick == --quick ]]; then
  repeat=1
  paths=("$cache/minilm/model.safetensors" "$cache/minilm-bf16.safetensors")
  for f in silero-vad-16k-fp32.safetensors silero-vad-16k-fp8e4m3.safetensors ddddocr-old-int8.safetensors \
           gemma3-270m-q4km-blocks.safetensors; do paths+=("$cache2/$f"); done
else
  for f in "${old[@]}"; do paths+=("$cache/$f"); done
  for f in "${new[@]}"; do paths+=("$cache2/$f"); done
fi
mkdir -p "$res"
rm -f "$res"/codec.json "$res"/zipnn.jsonl "$res"/pypi_bigsmall.jsonl "$res"/cli.jsonl "$res"/per_tensor.jsonl \
      "$res"/per_tensor_summary.json

meta() {  # meta start|end: machine, load, commit, versions -> run_meta.json
  python3 - "$1" "$res/run_meta.json" "$quick" "$venv" "${skips[@]+"${skips[@]}"}" <<'EOF'
import datetime, importlib.metadata as md, json, os, subprocess, sys
sys.path.insert(0, "bench")
import st_io
stage, path, quick, venv, skips = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
m = json.load(open(path)) if stage == "end" and os.path.exists(path) else {}
if stage == "start":
    def ver(p):
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return None
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
    pv = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                         "import importlib.metadata as m; print(m.version('bigsmall'))"],
                        capture_output=True, text=True).stdout.strip() if os.path.exists(os.path.join(venv, "bin", "python")) else None
    zs = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip()
    m.update({"when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")),
              "cpu": st_io.cpu_model(), "cores": os.cpu_count(),
              "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
              "quick": quick == "--quick", "zipnn": ver("zipnn"), "zstandard": ver("zstandard"),
              "zstd": zs.split(" v")[-1].split(",")[0] if zs else None, "pypi_bigsmall": pv,
              "load_start": os.getloadavg(), "skips": skips})
else:
    m["load_end"] = os.getloadavg()
    m["skips"] = sorted(set(m.get("skips", []) + skips))
json.dump(m, open(path, "w"), indent=1)
EOF
}
meta start

echo "== codec_bench (ours: ratio, library encode/decode 1 and N threads; floor; zstd -3)"
"$build/bench/codec_bench" --repeat "$repeat" --skip-zstd19 --json-out "$res/codec.json" "${paths[@]}"
echo "== ZipNN (whole data section)"
if python3 -c "import zipnn" 2>/dev/null; then
  python3 bench/zipnn_bench.py --repeat "$repeat" "${paths[@]}" > "$res/zipnn.jsonl"
else
  skips+=("ZipNN whole-file: zipnn not importable")
fi
echo "== PyPI bigsmall (whole file, its own venv)"
if [[ -x $venv/bin/python ]]; then
  python3 bench/pypi_bigsmall_bench.py --python "$venv/bin/python" --repeat "$([[ $quick == --quick ]] && echo 1 || echo 2)" \
    "${paths[@]}" > "$res/pypi_bigsmall.jsonl"
else
  skips+=("PyPI bigsmall whole-file: no $venv")
fi
echo "== CLI wall time (compress, decompress to tmpfs)"
python3 bench/cli_wall.py --bigsmall "$build/cli/bigsmall" --repeat "$([[ $quick == --quick ]] && echo 1 || echo 2)" \
  "${paths[@]}" > "$res/cli.jsonl"
echo "== per tensor (ours per mode vs floor, zstd -19, ZipNN, PyPI bigsmall; peers cached by tensor hash)"
python3 bench/per_tensor.py --bigsmall "$build/cli/bigsmall" --jobs "$jobs" --pypi-python "$venv/bin/python" \
  --out "$res/per_tensor.jsonl" --summary-out "$res/per_tensor_summary.json" --top 30 "${paths[@]}" \
  | tee "$res/per_tensor.txt"
meta end
python3 bench/make_table.py --results "$res" --manifest "$cache/corpus.json" --manifest "$cache2/corpus2.json" \
  > "$res/BENCHMARKS.md"
cat "$res/BENCHMARKS.md"
echo "run_bench: $(( $(date +%s) - t_start )) s"
