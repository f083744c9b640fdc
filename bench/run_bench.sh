#!/usr/bin/env bash
# Codec benchmark over the real corpus: our three modes, the per-tensor entropy
# floor, zstd -3/-19 (in codec_bench) and ZipNN (pip), measured in one run on
# this machine. Writes bench/results/BENCHMARKS.md and the raw JSON beside it.
# Usage: bench/run_bench.sh [--quick]   (--quick: skip zstd -19 and ZipNN's slow files)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
bash scripts/install_deps.sh >/dev/null
python3 -c "import zipnn" 2>/dev/null || python3 -m pip install --quiet zipnn
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target codec_bench >/dev/null
cache=${BIGSMALL_CACHE:-$HOME/.cache/bigsmall/corpus}
python3 bench/corpus.py --cache "$cache" >/dev/null
files=(minilm/model.safetensors khmer-ocr-crnn-fp32.safetensors pocketnet-fold0-fp32.safetensors
       minilm-bf16.safetensors minilm-fp16.safetensors minilm-fp8e4m3.safetensors
       minilm-fp32-upcast-from-bf16.safetensors)
paths=()
for f in "${files[@]}"; do paths+=("$cache/$f"); done
mkdir -p bench/results
extra=()
[[ $quick == --quick ]] && extra+=(--skip-zstd19)
echo "== codec_bench (ours, floor, zstd)"
build/bench/codec_bench --repeat 3 "${extra[@]}" --json-out bench/results/codec.json "${paths[@]}"
echo "== ZipNN"
python3 bench/zipnn_bench.py --repeat 3 "${paths[@]}" > bench/results/zipnn.jsonl
python3 bench/make_table.py --corpus "$cache/corpus.json" bench/results/codec.json bench/results/zipnn.jsonl \
  > bench/results/BENCHMARKS.md
cat bench/results/BENCHMARKS.md
