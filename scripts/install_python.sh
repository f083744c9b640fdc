#!/usr/bin/env bash
# Installs the Python package into a plain virtual environment, the way a
# user does (the wheel `pip wheel .` builds: scikit-build-core runs this
# repo's CMake), plus what its tests need (torch from PyPI, safetensors,
# transformers, sentence-transformers, pytest).
#   scripts/install_python.sh [VENV]     (default: build/venv)
# Environment: BIGSMALL_CUDA (ON/OFF/AUTO, default AUTO: kernels when nvcc is
# found), PIP_EXTRA (more packages, resolved together with torch: e.g. "vllm",
# which pins its own torch), PY (the Python that makes the venv, default
# python3). ccache is used when installed; the CMake build directory is kept
# in build/python, so a second venv (or a rerun) reuses the same build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${1:-build/venv}
py=${PY:-python3}
[[ -x $venv/bin/python ]] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# What the tests need first (torch is large; pip's cache makes reruns quick).
# shellcheck disable=SC2086
"${pip[@]}" install --quiet torch safetensors transformers sentence-transformers pytest numpy xxhash ${PIP_EXTRA:-}
if command -v ccache >/dev/null; then
  export CCACHE_BASEDIR=$root CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache \
         CMAKE_CUDA_COMPILER_LAUNCHER=ccache
fi
export CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-$(nproc)}
wheels=build/wheels
rm -rf "$wheels"
"${pip[@]}" wheel --quiet --no-deps -w "$wheels" -Cbuild-dir="$root/build/python" .
wheel=$(ls "$wheels"/bigsmall-*.whl)
"${pip[@]}" install --quiet --force-reinstall --no-deps "$wheel"
"$venv/bin/python" -c "import bigsmall, sys; print('installed bigsmall', bigsmall.__version__, 'in', sys.prefix)"
