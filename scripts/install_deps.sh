#!/usr/bin/env bash
# Installs every system package BigSmall needs to build and test (Debian 12).
# Idempotent: safe to run on every CI run. Needs root (or sudo).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git python3 python3-pip python3-venv python3-dev
  libabsl-dev libzstd-dev zstd libxxhash-dev nlohmann-json3-dev libcli11-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libcurl4-openssl-dev liburing-dev prometheus-cpp-dev libspdlog-dev libsystemd-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-14 libclang-rt-14-dev
  ccache
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  echo "install_deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install_deps: all packages present"
fi

# Python side (corpus script, benchmarks): numpy only; ZipNN is optional and
# installed by bench/run_bench.sh when benchmarking.
if ! python3 -c "import numpy" 2>/dev/null; then
  echo "install_deps: installing numpy"
  # pip for a user Python (pyenv, venv); Debian's package for the system one
  # (PEP 668 refuses pip there).
  python3 -m pip install --quiet numpy 2>/dev/null ||
    { [[ $(id -u) -ne 0 ]] && SUDO=sudo || SUDO=""; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-numpy; }
fi

# huggingface_hub: tests/hub/fake_hub_check.py checks the fake Hub (the one the
# hub/ tests run against) with it. pip for a user Python; for Debian's own
# python3 (PEP 668, and Debian 12 has no package) pip with --break-system-packages
# (--user when not root).
HF_HUB_SPEC='huggingface_hub>=0.30,<3'
if ! python3 -c "import huggingface_hub" 2>/dev/null; then
  echo "install_deps: installing $HF_HUB_SPEC"
  python3 -m pip install --quiet "$HF_HUB_SPEC" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "$HF_HUB_SPEC" 2>/dev/null ||
    python3 -m pip install --quiet --user --break-system-packages "$HF_HUB_SPEC"
fi
