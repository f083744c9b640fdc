#!/usr/bin/env bash
# The one prepared GPU-side check: everything that needs a GPU, in one call.
#
#   Here (no GPU needed):  scripts/gpu_check.sh build     -> builds and stages .devbin/
#   On the GPU machine:    scripts/gpu_check.sh run OUT   -> tests + benchmarks, results in OUT/
#
# `build` compiles the CUDA kernels for sm_90 (H100/H200) and stages the test
# and benchmark binaries with their shared libraries (the GPU machine has no
# -dev packages) plus a small real-corpus .bs. `run` needs only a CUDA
# driver, python3 with numpy, and the staged files.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=.devbin

case "${1:-}" in
build)
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DBIGSMALL_CUDA=ON \
    -DBIGSMALL_BUILD_SERVICE=OFF -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
  cmake --build build-cuda -j "${JOBS:-$(nproc)}" --target kernels_test codec_test gpu_bench codec_bench bigsmall
  rm -rf "$stage" && mkdir -p "$stage/lib"
  bins=(build-cuda/kernels/kernels_test build-cuda/codec/codec_test build-cuda/bench/gpu_bench
        build-cuda/bench/codec_bench build-cuda/cli/bigsmall)
  cp "${bins[@]}" "$stage/"
  # Shared libraries except the C library itself.
  ldd "${bins[@]}" | awk '/=>/ {print $3}' | sort -u | grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' |
    xargs -r -I{} cp -L {} "$stage/lib/"
  cache=${BIGSMALL_CACHE:-$HOME/.cache/bigsmall/corpus}
  if [[ -f $cache/minilm-bf16.safetensors ]]; then
    build-cuda/cli/bigsmall compress "$cache/minilm-bf16.safetensors" --inference -o "$stage/minilm-bf16.inference.bs" --force -q
  fi
  du -sh "$stage"
  ;;
run)
  out=${2:?usage: gpu_check.sh run OUT_DIR}
  mkdir -p "$out"
  set +e  # one call on a lent machine: run every step, report each failure
  failures=0
  step() { "$@"; local rc=$?; [[ $rc -ne 0 ]] && { echo "STEP FAILED ($rc): $*"; failures=$((failures + 1)); }; return 0; }
  export LD_LIBRARY_PATH=$PWD/$stage/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
  lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed 's/Flags:.*avx512f.*/Flags: ... avx512f .../' | tee -a "$out/gpu.txt"
  echo "== tests (GPU decode bit-exact vs CPU; CPU decoders incl. AVX-512 where the CPU has it)"
  step "$stage/kernels_test" --gtest_output=xml:"$out/kernels_test.xml"
  step "$stage/codec_test" --gtest_brief=1
  echo "== benchmark data"
  step python3 bench/gen_llm.py --out /tmp/llm.safetensors --size-gb "${GPU_BENCH_GB:-4}"
  for mode in ${GPU_CHECK_MODES:-inference balanced}; do
    flag=""; [[ $mode == inference ]] && flag=--inference
    step "$stage/bigsmall" compress /tmp/llm.safetensors $flag -o /tmp/llm.$mode.bs --force -q
  done
  echo "== GPU decode (side by side with PCIe and HBM copies, same run)"
  md="$out/gpu_bench.md"
  : > "$md"
  for f in /tmp/llm.inference.bs /tmp/llm.balanced.bs "$stage/minilm-bf16.inference.bs"; do
    [[ -f $f ]] || continue
    for batch in 1 8; do step "$stage/gpu_bench" "$f" --repeat 5 --batch $batch --markdown "$md"; done
  done
  if [[ ${GPU_CHECK_CPU_BENCH:-1} == 1 ]]; then
  echo "== CPU codec on this machine's CPU (synthetic LLM file: speed only)"
  step python3 bench/gen_llm.py --out /tmp/llm-small.safetensors --size-gb 0.5
  step "$stage/codec_bench" --skip-zstd19 --repeat 2 /tmp/llm-small.safetensors
  fi
  echo "gpu_check: $failures step(s) failed"
  [[ $failures -eq 0 ]]
  ;;
*)
  echo "usage: $0 build | run OUT_DIR" >&2
  exit 2
  ;;
esac
