#!/usr/bin/env bash
# The main job on the embedded default: a small real model (sentence-transformers
# all-MiniLM-L6-v2, FP32, from PyPI) is compressed, verified, served by
# bigsmalld, streamed layer by layer by a client that re-hashes every tensor,
# and decompressed back to the identical directory. Prints ratio and speed.
# Usage: scripts/demo.sh [MODEL_DIR_OR_FILE]   (default: the MiniLM directory)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${JOBS:-$(nproc)}

bash scripts/install_deps.sh >/dev/null
echo "== building (Release)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs" --target bigsmall bigsmalld bigsmall-client bigsmall-gpu-probe >/dev/null

cache=${BIGSMALL_CACHE:-$HOME/.cache/bigsmall/corpus}
python3 bench/corpus.py --cache "$cache" --no-extra >/dev/null
model=${1:-$cache/minilm}
work=$(mktemp -d /tmp/bigsmall-demo.XXXXXX)
daemon_pid=""
cleanup() {
  [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

bs="$work/model.bs"
echo "== compress $model"
build/cli/bigsmall compress "$model" -o "$bs"
build/cli/bigsmall info "$bs" | head -n 20
echo "== verify (every tensor hash + byte comparison with the original)"
build/cli/bigsmall verify "$bs" --against "$model"

# The GPU path: the machine's GPU when it has one, else the emulated device
# (the same daemon code; the CPU runs the kernels' decode functions).
gpu=emulated
build/kernels/bigsmall-gpu-probe >/dev/null 2>&1 && gpu=cuda
echo "== serve with bigsmalld (GPU backend: $gpu) and stream every layer to a client"
sock="$work/bigsmall.sock"
build/daemon/bigsmalld --socket "$sock" --shm-dir "$work/shm" --model-dir "$work" \
  --gpu-backend "$gpu" --gpu-memory 1G --drain-seconds 2 --log-level warn &
daemon_pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
echo "-- host memory (the client re-hashes each tensor, XXH3-128)"
build/client/bigsmall-client --socket "$sock" stream "$bs" --verify --non-layer
echo "-- GPU memory, cuda:0 ($gpu; every tensor's device checksum computed on the device)"
build/client/bigsmall-client --socket "$sock" stream "$bs" --device cuda:0 --verify --non-layer
build/client/bigsmall-client --socket "$sock" stats
kill -TERM "$daemon_pid" && wait "$daemon_pid" && daemon_pid=""

echo "== decompress and compare"
build/cli/bigsmall decompress "$bs" -o "$work/restored"
if [[ -d $model ]]; then
  diff -r "$model" "$work/restored" && echo "restored directory is identical to $model"
else
  cmp "$model" "$work/restored" && echo "restored file is identical to $model"
fi
echo "demo OK"
