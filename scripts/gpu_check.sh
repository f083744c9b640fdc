#!/usr/bin/env bash
# The one prepared GPU-side check: everything that needs a GPU, in one call
# (under 8 minutes on one H200), ending with a short table.
#
#   Here (no GPU needed):  scripts/gpu_check.sh build     -> builds and stages .devbin/, and
#                          packs it as .devbin.tar.xz (what the device tool carries: 64 MiB)
#   On the GPU machine:    scripts/gpu_check.sh run OUT   -> tests + benchmarks, results in OUT/
#                          (unpacks .devbin.tar.xz first when .devbin/ is not there)
#   The device call:       run(command="scripts/gpu_check.sh run $OUT", carry=[".devbin.tar.xz"])
#   Both, without a GPU:   GPU_CHECK_BACKEND=emulated scripts/gpu_check.sh run OUT
#                          (a dry run of the script itself through the emulated device)
#
# `build` compiles the CUDA kernels for sm_90 (H100/H200) and stages the test,
# daemon, client and benchmark binaries with their shared libraries (the GPU
# machine has no -dev packages) plus the real-corpus .bs files. `run` needs
# only a CUDA driver, python3 with numpy, and the staged files.
#
# Steps of `run` (each one's failure is reported; the rest still run):
#   1. device info; CUDA IPC between two processes (bigsmall-gpu-probe --ipc-selftest:
#      prints exactly what CUDA said if the sandbox refuses it)
#   2. GPU tests: kernels vs CPU reference bit for bit (every dtype/mode, fresh random
#      inputs, the real corpus), the DeviceApi on real CUDA, the device backend
#   3. the daemon's cuda backend end to end: bigsmall-client stream --device cuda:0 --verify
#      (real corpus and an 8B-shaped model), two client processes sharing layers through
#      real CUDA IPC (one decode per layer)
#   4. benchmarks: decode kernels per kernel and per chunk size vs the D2D roofline
#      (gpu_bench), page cache -> GPU end to end vs the best uncompressed baseline
#      (gpu_e2e_bench)
#   5. Python: the wheel (built here with the sm_90 kernels, for this machine's
#      python3: cpXY) in a venv over the GPU machine's torch/sentence-transformers
#      (--system-site-packages), and scripts/python_check.py with --device cuda
#      through bigsmalld --gpu-backend cuda: MiniLM (BF16) embeddings from weights
#      delivered in process, by the daemon, and streamed, bit-identical to the
#      original's. SKIP with the reason when that python3 has no torch with CUDA or
#      the wheel's tag does not fit it (emulated dry run: --device cpu, the daemon's
#      emulated backend).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=.devbin

case "${1:-}" in
build)
  # GPU_CHECK_CUDA=OFF GPU_CHECK_BUILD_DIR=build: a CUDA-free staging for a
  # dry run of `run` with GPU_CHECK_BACKEND=emulated.
  bdir=${GPU_CHECK_BUILD_DIR:-build-cuda}
  cmake -S . -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBIGSMALL_CUDA="${GPU_CHECK_CUDA:-ON}" \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
  targets=(kernels_test device_api_test codec_test daemon_pipeline_test daemon_device_backend_test
           gpu_bench gpu_e2e_bench bigsmall bigsmalld bigsmall-client bigsmall-gpu-probe)
  cmake --build "$bdir" -j "${JOBS:-$(nproc)}" --target "${targets[@]}"
  rm -rf "$stage" && mkdir -p "$stage/lib"
  bins=()
  for t in "${targets[@]}"; do
    f=$(find "$bdir" -type f -name "$t" -perm -u+x | head -1)
    [[ -n $f ]] || { echo "gpu_check build: $t not built" >&2; exit 1; }
    bins+=("$f")
  done
  cp "${bins[@]}" "$stage/"
  strip -s "$stage"/* 2>/dev/null || true
  # Shared libraries except the C library itself and the CUDA driver.
  ldd "${bins[@]}" | awk '/=>/ {print $3}' | sort -u |
    grep -vE '/(libc|libm|libpthread|libdl|librt|libcuda|ld-linux[^/]*)\.so' |
    xargs -r -I{} cp -L {} "$stage/lib/"
  strip -s "$stage"/lib/* 2>/dev/null || true
  # The real corpus, within the device tool's 64 MiB carry: MiniLM's BF16
  # conversion (derived from its FP32 weights) as a whole sentence-transformers
  # directory (config, tokenizer, pooling; dtype bfloat16 in config.json),
  # carried compressed (minilm-bf16-st.bs: 30 MB instead of 45). `run` restores
  # it with bigsmall decompress (checked against its stored hashes): the
  # Python check's original, and, its encoder layers only, the corpus tests'
  # .safetensors (compressed again in every mode).
  cache=${BIGSMALL_CACHE:-$HOME/.cache/bigsmall/corpus}
  if [[ -f $cache/minilm-bf16.safetensors && -f $cache/minilm-dir/modules.json ]]; then
    mdir=$(mktemp -d /tmp/minilm-bf16-st.XXXXXX)
    (cd "$cache/minilm-dir" && tar --exclude=./model.safetensors --exclude=./.complete -cf - .) |
      tar -C "$mdir" -xf -
    cp "$cache/minilm-bf16.safetensors" "$mdir/model.safetensors"
    python3 - "$mdir/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["torch_dtype"] = c["dtype"] = "bfloat16"  # transformers 4 reads torch_dtype, 5 dtype
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
    "$bdir/cli/bigsmall" compress "$mdir" -o "$stage/minilm-bf16-st.bs" --force -q
    rm -rf "$mdir"
  fi
  # The Python package as wheels (cpXY) for the interpreters in
  # GPU_CHECK_PYTHONS (default: python3, and pyenv's 3.10 and 3.12 where
  # they are here: the GPU machine's Python is not known in advance; each
  # wheel is about 4.5 MiB of the carry), with the kernels for sm_90
  # (GPU_CHECK_CUDA=OFF: without), each in its own build directory
  # (install_python.sh's environment: ccache, the CMake build reused).
  if command -v ccache >/dev/null; then
    export CCACHE_BASEDIR=$PWD CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache \
           CMAKE_CUDA_COMPILER_LAUNCHER=ccache
  fi
  pythons=${GPU_CHECK_PYTHONS:-python3 $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[02].*/bin/python3 2>/dev/null)}
  declare -A built=()
  for py in $pythons; do
    tag=$("$py" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")' 2>/dev/null) ||
      continue
    [[ -n ${built[$tag]:-} ]] && continue
    built[$tag]=1
    # -C cmake.define: scikit-build-core does not pass CMAKE_CUDA_ARCHITECTURES
    # from the environment (CMake reads CUDAARCHS only when the cache has none).
    # (--config-settings, not -C: older pips know only the long form.) Only
    # python3's wheel is required; another one that fails is left out.
    BIGSMALL_CUDA=${GPU_CHECK_CUDA:-ON} CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-$(nproc)} \
      "$py" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$stage/wheels" \
      --config-settings=build-dir="$PWD/build/python-gpu-$tag${GPU_CHECK_CUDA:+-$GPU_CHECK_CUDA}" \
      --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90 . ||
      { [[ $py != python3 ]] || exit 1; echo "gpu_check build: no $tag wheel ($py failed)" >&2; }
  done
  # The extensions' shared libraries the staged binaries did not bring.
  for wheel in "$stage"/wheels/bigsmall-*.whl; do
    wx=$(mktemp -d /tmp/gpu_check_wheel.XXXXXX)
    python3 -m zipfile -e "$wheel" "$wx"
    ldd "$wx"/bigsmall/_core*.so | awk '/=>/ {print $3}' | sort -u |
      grep -vE '/(libc|libm|libpthread|libdl|librt|libcuda|ld-linux[^/]*)\.so' |
      while read -r l; do [[ -f $stage/lib/$(basename "$l") ]] || cp -L "$l" "$stage/lib/"; done
    rm -rf "$wx"
  done
  strip -s "$stage"/lib/* 2>/dev/null || true
  du -sh "$stage"
  # Packed: the staged binaries and their libraries (libcurl and its TLS,
  # Kerberos and LDAP libraries came with the Hub source) are over the
  # device tool's 64 MiB carry as plain files; xz takes them to about a third.
  # The 64 MiB is for the working tree that travels and the carry together:
  # over it, the extra wheels go (the last first; python3's stays).
  tree_bytes=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null |
               awk '{s += $1} END {print s + 0}')
  while :; do
    rm -f "$stage.tar.xz"
    tar -C "$stage" -cf - . | xz -6 -T0 > "$stage.tar.xz"
    ls -la "$stage.tar.xz"
    size=$(stat -c %s "$stage.tar.xz")
    total_mib=$(( (size + tree_bytes) / 1048576 ))
    echo "gpu_check build: $stage.tar.xz $((size / 1048576)) MiB + the working tree" \
         "$((tree_bytes / 1048576)) MiB = $total_mib MiB of the device tool's 64"
    ((total_mib < 63)) && break
    mapfile -t ws < <(ls -t "$stage"/wheels/bigsmall-*.whl 2>/dev/null)
    if ((${#ws[@]} < 2)); then
      echo "gpu_check build: $total_mib MiB, over the device tool's 64 MiB" >&2
      exit 1
    fi
    mine=$(python3 -c 'import sys; print(f"-cp{sys.version_info.major}{sys.version_info.minor}-")')
    for w in "${ws[@]}"; do
      if [[ $w != *"$mine"* ]]; then
        echo "gpu_check build: over the carry: dropping $(basename "$w")" >&2
        rm -f "$w"
        break
      fi
    done
  done
  ;;
run)
  out=${2:?usage: gpu_check.sh run OUT_DIR}
  if [[ ! -d $stage && -f $stage.tar.xz ]]; then
    mkdir -p "$stage"
    # python3's tarfile (lzma) needs no xz binary on the GPU machine.
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$stage.tar.xz" "$stage" || tar -C "$stage" -xJf "$stage.tar.xz" ||
      { echo "gpu_check run: cannot unpack $stage.tar.xz" >&2; exit 1; }
  fi
  out=$(mkdir -p "$out" && cd "$out" && pwd)
  backend=${GPU_CHECK_BACKEND:-cuda}
  set +e  # one call on a lent machine: run every step, report each failure
  failures=0
  summary="$out/summary.md"
  printf '| step | result | figures |\n|---|---|---|\n' > "$summary"
  row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3" >> "$summary"; }
  # step NAME CMD...: runs CMD with its output in $out/NAME.log (and on stdout).
  step() {
    local name=$1; shift
    local start=$SECONDS
    "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    if [[ $rc -ne 0 ]]; then
      echo "STEP FAILED ($rc): $name: $*"
      failures=$((failures + 1))
      row "$name" "FAILED (rc $rc)" "${took}s; see $name.log"
    else
      row "$name" "ok" "${took}s${STEP_FIGURES:+; $STEP_FIGURES}"
    fi
    STEP_FIGURES=""
    return 0
  }
  ldpath=${LD_LIBRARY_PATH:-}  # the machine's own (the Python step puts its libraries first)
  export LD_LIBRARY_PATH=$PWD/$stage/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export BIGSMALL_GOLDEN_DIR=$PWD/tests/golden/valid
  work=$(mktemp -d /dev/shm/gpu_check.XXXXXX)
  models=$work/models
  mkdir -p "$models"
  trap 'rm -rf "$work"; [[ -n ${daemon_pid:-} ]] && kill "$daemon_pid" 2>/dev/null' EXIT
  # The real corpus (staged by `build` as a .bs directory): the Python
  # check's original, and its encoder layers for the corpus tests (the 23 MB
  # embedding left out, as before: the tests' subset).
  corpus=$work/minilm-bf16-layers.safetensors
  minilm=$work/minilm-bf16-st
  if [[ -d $stage/minilm-bf16-st.bs ]] &&
     "$stage/bigsmall" decompress "$stage/minilm-bf16-st.bs" -o "$minilm" -q &&
     python3 - "$minilm/model.safetensors" "$corpus" <<'PY'
import sys
sys.path.insert(0, "bench")
import st_io
src, dst = sys.argv[1:]
keep = [(n, d, s, a) for n, d, s, a in st_io.iter_tensors(src) if ".layer." in n]
st_io.write_safetensors(dst, keep, {"derived": "all-MiniLM-L6-v2 BF16 (converted from FP32), encoder layers only"})
PY
  then
    export BIGSMALL_CORPUS_BF16=$corpus BIGSMALL_CORPUS_SUBSET=1
  else
    echo "gpu_check run: no real corpus (the corpus tests skip it)"
  fi

  echo "== 1. device"
  if [[ $backend == cuda ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current \
      --format=csv | tee "$out/gpu.txt"
    lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$out/gpu.txt"
  fi
  probe_flags=()
  [[ $backend == emulated ]] && probe_flags=(--emulated)
  step probe "$stage/bigsmall-gpu-probe" "${probe_flags[@]}"
  step cuda_ipc "$stage/bigsmall-gpu-probe" --ipc-selftest "${probe_flags[@]}"

  echo "== 2. GPU tests"
  step kernels_test "$stage/kernels_test" --gtest_brief=1 --gtest_output=xml:"$out/kernels_test.xml"
  step device_api_test "$stage/device_api_test" --gtest_brief=1
  step daemon_pipeline_test "$stage/daemon_pipeline_test" --gtest_brief=1
  step daemon_device_backend_test "$stage/daemon_device_backend_test" --gtest_brief=1
  step codec_test "$stage/codec_test" --gtest_brief=1

  echo "== 3. data: 8B-shaped synthetic BF16 (speed only) + the real corpus"
  jobs=$(nproc)
  shape=(--layers "${GPU_CHECK_LAYERS:-32}" --hidden 4096 --intermediate 14336 --vocab 128256 --kv-dim 1024)
  [[ $backend == emulated ]] && shape=(--layers 2 --hidden 512 --intermediate 1408 --vocab 4096 --kv-dim 128)
  step gen_llm python3 bench/gen_llm.py --out "$work/llm8b.safetensors" "${shape[@]}" --jobs "$jobs" --force
  STEP_FIGURES="$(du -h "$work/llm8b.safetensors" 2>/dev/null | cut -f1) BF16 to --inference"
  step compress "$stage/bigsmall" compress "$work/llm8b.safetensors" --inference -o "$models/llm8b.bs" --force -q
  if [[ -f $corpus ]]; then
    for mode in inference balanced storage; do
      flag=""; [[ $mode != balanced ]] && flag=--$mode
      step "compress_minilm_$mode" "$stage/bigsmall" compress "$corpus" $flag \
        -o "$models/minilm-bf16-layers.$mode.bs" --force -q
    done
  fi

  echo "== 4. the daemon's $backend backend end to end"
  sock=$work/d.sock
  "$stage/bigsmalld" --socket "$sock" --shm-dir "$work/shm" --model-dir "$models" \
    --gpu-backend "$backend" --gpu-memory "${GPU_CHECK_GPU_MEMORY:-40G}" --log-level info \
    > "$out/bigsmalld.log" 2>&1 &
  daemon_pid=$!
  client() { "$stage/bigsmall-client" --socket "$sock" "$@"; }
  for i in $(seq 1 100); do [[ -S $sock ]] && break; sleep 0.1; done
  # stream NAME MODEL: every tensor to the GPU and checked there; the client's
  # summary line (layers, bytes, GB/s, first layer ms) goes in the table.
  stream() {
    local name=$1 model=$2
    step "$name" client stream "$model" --device cuda:0 --verify --non-layer
    STEP_FIGURES=""
    local last
    last=$(tail -1 "$out/$name.log")
    sed -i "\$s#| ok | \(.*\) |\$#| ok | \1; ${last//#/} |#" "$summary"
  }
  for f in "$models"/minilm*.bs; do
    stream "stream_$(basename "$f" .bs)" "$f"
  done
  stream stream_llm8b_verify "$models/llm8b.bs"
  # Two processes at once on the same model, from an empty cache: both verify
  # every tensor, and the daemon decoded each layer once (through real CUDA
  # IPC the second process maps the first one's layers).
  decodes() { client stats --json | python3 -c 'import json,sys; print(sum(m.get("layer_decodes",0) for m in json.load(sys.stdin).get("models",[])))'; }
  two() {
    client evict >/dev/null || return 1
    local before after
    before=$(decodes)
    client stream "$models/llm8b.bs" --device cuda:0 --verify --non-layer > "$out/two_a.log" 2>&1 & local a=$!
    client stream "$models/llm8b.bs" --device cuda:0 --verify --non-layer > "$out/two_b.log" 2>&1 & local b=$!
    wait $a; local ra=$?; wait $b; local rb=$?
    tail -1 "$out/two_a.log"; tail -1 "$out/two_b.log"
    after=$(decodes)
    client stats --json > "$out/stats_after_two.json"
    local handles
    handles=$(grep -c ' verified$' "$out/two_a.log")
    echo "layer decodes for two processes: $((after - before)) (handles per process: $handles)"
    [[ $ra -eq 0 && $rb -eq 0 && $((after - before)) -eq $handles ]]
  }
  step two_processes_share two
  kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null; daemon_pid=""

  echo "== 5. benchmarks"
  md="$out/gpu_bench.md"
  : > "$md"
  if [[ $backend == cuda ]]; then
  for f in "$models/llm8b.bs" "$models/minilm-bf16-layers.inference.bs"; do
    [[ -f $f ]] || continue
    for batch in 1 8; do
      step "gpu_bench_$(basename "$f" .bs)_b$batch" "$stage/gpu_bench" "$f" --repeat 5 --batch "$batch" --markdown "$md"
    done
  done
  if [[ -f $corpus ]]; then
    step gpu_bench_chunk_sizes "$stage/gpu_bench" --chunk-curve "$corpus" --markdown "$md"
  fi
  else
    row gpu_bench "skipped" "the kernel benchmark times CUDA kernels: needs --gpu-backend cuda"
  fi
  step gpu_e2e_bench "$stage/gpu_e2e_bench" --input "$work/llm8b.safetensors" --bs "$models/llm8b.bs" \
    --bigsmalld "$stage/bigsmalld" --gpu-backend "$backend" --work "$work" --out "$out/gpu_e2e.md"

  echo "== 6. Python: the MiniLM check through the daemon"
  # The wheel in a venv over this machine's torch and sentence-transformers,
  # and scripts/python_check.py against the restored original: in process,
  # through bigsmalld (its $backend backend) and streamed, bit-identical.
  pydev=cuda
  [[ $backend == emulated ]] && pydev=cpu
  py=${GPU_CHECK_PYTHON:-python3}
  wheels=("$stage"/wheels/bigsmall-*.whl)
  wheel=""
  pyskip=""
  if [[ ! -f ${wheels[0]} ]]; then
    pyskip="no wheel staged ($stage/wheels)"
  elif [[ ! -d $minilm ]]; then
    pyskip="no MiniLM staged ($stage/minilm-bf16-st.bs)"
  elif ! command -v "$py" >/dev/null; then
    pyskip="no $py"
  else
    # The wheel that fits this python (first line), else why none can run.
    pyout=$("$py" - "$pydev" "${wheels[@]}" 2>"$out/python_probe.log" <<'PY' | tail -1
import os, sys
dev, wheels = sys.argv[1], sys.argv[2:]
try:
    from packaging.tags import sys_tags
except ImportError:
    try:
        from pip._vendor.packaging.tags import sys_tags
    except ImportError:
        sys_tags = None
here = ({(t.interpreter, t.abi, t.platform) for t in sys_tags()} if sys_tags else
        {(f"cp{sys.version_info.major}{sys.version_info.minor}",) * 2 + ("linux_x86_64",)})
ver = sys.version.split()[0]
fit, tags = None, []
for w in wheels:
    tag = os.path.basename(w)[:-4].split("-")[-3:]  # python, abi, platform
    tags.append(tag[0])
    if any((p, a, pl) in here for p in tag[0].split(".") for a in tag[1].split(".")
           for pl in tag[2].split(".")):
        fit = w
        break
if fit is None:
    print(f"wheels are {', '.join(tags)}; the GPU machine has Python {ver}"); sys.exit()
for m in ("torch", "sentence_transformers"):
    try:
        __import__(m)
    except Exception as e:
        print(f"python {ver} cannot import {m}: {type(e).__name__}: {e}"); sys.exit()
import torch
if dev == "cuda" and not torch.cuda.is_available():
    print(f"torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda})")
    sys.exit()
print(fit)
PY
) || pyout="$py failed the checks: $(tail -1 "$out/python_probe.log")"
    if [[ -f $pyout ]]; then wheel=$pyout; else pyskip=${pyout:-"$py printed nothing"}; fi
  fi
  if [[ -n $pyskip ]]; then
    echo "python_check skipped: $pyskip"
    row python_check "SKIP" "${pyskip//|/\/}"
  else
    # The staged libstdc++ (Debian 12, GCC 12) only when this machine's is
    # older: torch and its extensions may need a newer one.
    pylib=$work/pylib
    mkdir -p "$pylib"
    syslibstd=$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null |
      awk '/libstdc\+\+\.so\.6 .*x86-64/ {print $NF; exit}')
    [[ -n $syslibstd ]] && ! grep -qa GLIBCXX_3.4.30 "$syslibstd" && syslibstd=""
    for l in "$PWD/$stage"/lib/*; do
      case $(basename "$l") in libstdc++.so*|libgcc_s.so*) [[ -n $syslibstd ]] && continue ;; esac
      ln -s "$l" "$pylib/"
    done
    pyrun() {
      local venv=$work/pyvenv how
      if "$py" -m venv --system-site-packages "$venv" &&
         "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps "$wheel"; then
        how="venv"
      else
        # No ensurepip (python3-venv) there: the wheel unpacked on PYTHONPATH.
        rm -rf "$venv"; mkdir -p "$venv/site"
        "$py" -m zipfile -e "$wheel" "$venv/site" || return 1
        ln -s "$(command -v "$py")" "$venv/python"
        export PYTHONPATH=$venv/site${PYTHONPATH:+:$PYTHONPATH}
        how="unpacked on PYTHONPATH (no venv)"
      fi
      local pybin=$venv/bin/python
      [[ -x $pybin ]] || pybin=$venv/python
      echo "bigsmall wheel $(basename "$wheel"): $how; $("$pybin" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())')"
      mkdir -p "$work/pymodels"
      cp -r "$stage/minilm-bf16-st.bs" "$work/pymodels/"
      local psock=$work/py.sock
      "$stage/bigsmalld" --socket "$psock" --shm-dir "$work/pyshm" --model-dir "$work/pymodels" \
        --gpu-backend "$backend" --gpu-memory 4G --log-level info > "$out/bigsmalld_python.log" 2>&1 &
      daemon_pid=$!
      for _ in $(seq 1 100); do [[ -S $psock ]] && break; sleep 0.1; done
      LD_LIBRARY_PATH=$pylib${ldpath:+:$ldpath} HF_HUB_OFFLINE=1 "$pybin" scripts/python_check.py \
        "$work/pymodels/minilm-bf16-st.bs" --original "$minilm" --daemon "$psock" --device "$pydev"
      local rc=$?
      kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null; daemon_pid=""
      return $rc
    }
    step python_check pyrun
    ok=$(grep -c "identical to the original's" "$out/python_check.log")
    sed -i "\$s#| \(.*\) |\$#| \1; $ok/4 paths identical (--device $pydev, daemon $backend) |#" "$summary"
  fi

  echo
  echo "gpu_check: $failures step(s) failed ($backend backend)"
  [[ -f $out/gpu_e2e.md ]] && cat "$out/gpu_e2e.md"
  [[ -s $md ]] && { echo; cat "$md"; }
  echo
  cat "$summary"
  [[ $failures -eq 0 ]]
  ;;
*)
  echo "usage: $0 build | run OUT_DIR" >&2
  exit 2
  ;;
esac
