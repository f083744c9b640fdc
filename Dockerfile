# bigsmalld, bigsmall and bigsmall-client with the CUDA kernels, on Debian 12.
#
#   docker build -t bigsmall .
#   docker run --gpus all --runtime nvidia --ipc=host --stop-timeout 15 \
#     -v /models:/models:ro -v /run/bigsmall:/run/bigsmall -v bigsmall-cache:/var/cache/bigsmall \
#     bigsmall
#
# --ipc=host: clients outside the container map the daemon's layer memory
# (/dev/shm/bigsmall) and open its CUDA IPC handles. --stop-timeout longer than
# drain_seconds (10): SIGTERM drains running streams before the exit.
#
# Docker cannot run on the machines this repository is built and tested on
# (no daemon, no network to image registries): this file is never built by CI.
# What it does is kept to steps CI does run, so that a green CI covers it:
#   - the build stage runs scripts/install_deps.sh, the very script CI runs
#     (test.sh stage 1), then the Release configure + build + install of
#     test.sh stage 5 (CUDA ON, default CMAKE_CUDA_ARCHITECTURES);
#   - the runtime stage's package list is checked against what the built
#     binaries load (ldd, dpkg -S) by deploy/check_image.sh, and this file is
#     linted with hadolint, both in CI.
#
# CUDA toolkit choice: Debian 12 + NVIDIA's own Debian 12 CUDA apt repository
# (cuda-nvcc, cuda-cudart-dev, pinned). NVIDIA's CUDA devel images are Ubuntu
# (or RHEL-family) only; on Ubuntu 22.04 scripts/install_deps.sh's package
# names do not exist (libabsl20220623, libgrpc++ 1.51, ...) and the binaries
# would be built against other library versions than the ones CI tests. Here
# the dependency step is the repo's script, unchanged, and only nvcc is added:
# the same release (13.0, nvcc 13.0.88) as the build machines' toolkit.
#
# The CUDA runtime: the kernels link cudart statically (kernels/CMakeLists.txt:
# CUDA::cudart_static; ldd of bigsmalld shows no libcudart), so the runtime
# stage carries no CUDA library at all. The driver (libcuda.so.1, which cudart
# loads at run time) and the /dev/nvidia* nodes come from the host through the
# NVIDIA container runtime (NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES
# below). Without them the daemon serves host memory only (gpu_backend auto).

ARG DEBIAN_TAG=12

# ---------------------------------------------------------------------------
FROM debian:${DEBIAN_TAG} AS build

ARG CUDA_VERSION=13.0
ARG CUDA_NVCC_VERSION=13.0.88-1
ARG CUDA_CUDART_VERSION=13.0.96-1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# 1. Build dependencies: the repo's own script, as CI runs it.
COPY scripts/install_deps.sh scripts/install_deps.sh
RUN bash scripts/install_deps.sh \
 && rm -rf /var/lib/apt/lists/*

# 2. nvcc and the CUDA runtime headers + static cudart (the only CUDA parts
#    the build uses: the kernels include cuda_runtime.h only).
#    The keyring package adds NVIDIA's signing key and the repository
#    (x86_64; for arm64 servers the repository is .../debian12/sbsa/).
ADD https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb /tmp/cuda-keyring.deb
RUN dpkg -i /tmp/cuda-keyring.deb \
 && rm /tmp/cuda-keyring.deb \
 && apt-get update -qq \
 && cuda_pkg=${CUDA_VERSION/./-} \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "cuda-nvcc-${cuda_pkg}=${CUDA_NVCC_VERSION}" \
      "cuda-cudart-dev-${cuda_pkg}=${CUDA_CUDART_VERSION}" \
 && rm -rf /var/lib/apt/lists/*
# The top CMakeLists.txt finds nvcc on PATH (or in /usr/local/cuda/bin).
ENV PATH=/usr/local/cuda-${CUDA_VERSION}/bin:${PATH}

# 3. The Release build of test.sh stage 5, CUDA required, then the install
#    rules (binaries and whatever else they install) into /staging. The
#    tests are built (it is the same build) but run by CI, not here: they
#    need io_uring and a large /dev/shm, which default containers refuse.
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBIGSMALL_CUDA=ON \
 && cmake --build build \
 && DESTDIR=/staging cmake --install build --prefix /usr/local --strip \
 && for t in cli/bigsmall daemon/bigsmalld client/bigsmall-client; do \
      b=/staging/usr/local/bin/${t#*/}; \
      [ -x "$b" ] || install -D -m 0755 -s "build/$t" "$b"; \
    done

# ---------------------------------------------------------------------------
FROM debian:${DEBIAN_TAG}-slim AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="bigsmall" \
      org.opencontainers.image.description="bigsmalld: lossless compressed safetensors weights (.bs), decoded into shared or GPU memory and served over gRPC on a Unix socket" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:12-slim" \
      org.opencontainers.image.documentation="docs/OPERATIONS.md"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Exactly the libraries the binaries load, by Debian package (their own
# dependencies come with them); deploy/check_image.sh fails CI when this
# list and `ldd` of the Release build disagree. ca-certificates: TLS to the
# Hugging Face Hub.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ca-certificates \
      libabsl20220623 \
      libc6 \
      libcurl4 \
      libfmt9 \
      libgcc-s1 \
      libgrpc++1.51 \
      libgrpc29 \
      libprometheus-cpp-core1.0 \
      libprometheus-cpp-pull1.0 \
      libprotobuf32 \
      libspdlog1.10 \
      libssl3 \
      libstdc++6 \
      libsystemd0 \
      liburing2 \
      libxxhash0 \
      libzstd1 \
 && rm -rf /var/lib/apt/lists/*

# The daemon's user and groups (999, as the Kubernetes manifests expect);
# bigsmall-admin: the config's admin_group (may call Evict).
RUN groupadd --system --gid 999 bigsmall \
 && groupadd --system --gid 998 bigsmall-admin \
 && useradd --system --uid 999 --gid bigsmall --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin bigsmall \
 && install -d -o bigsmall -g bigsmall -m 0755 /run/bigsmall \
 && install -d -o bigsmall -g bigsmall -m 0750 /var/cache/bigsmall /models

COPY --from=build /staging/ /
COPY deploy/bigsmalld.example.json /etc/bigsmall/bigsmalld.json

# The NVIDIA container runtime mounts the host's driver for these.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    BIGSMALL_SOCKET=/run/bigsmall/bigsmall.sock \
    HF_HUB_CACHE=/var/cache/bigsmall

# The socket directory (shared with clients: bind-mount it) and the Hub
# cache (keep it across restarts).
VOLUME ["/run/bigsmall", "/var/cache/bigsmall"]
# Prometheus /metrics (the CMD below listens on all interfaces).
EXPOSE 9464

USER 999:999

# grpc.health.v1 over the socket: 0 SERVING; 2 NOT_SERVING; 3 unreachable
# (not started yet, gone, or draining: a draining daemon refuses new
# connections); 4 unknown service.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/bigsmall-client", "--socket", "/run/bigsmall/bigsmall.sock", "health", "--timeout", "5"]

# bigsmalld drains on SIGTERM (drain_seconds), then exits 0. As PID 1 it
# still gets the signal: it blocks it and takes it with sigwait.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/bigsmalld"]
CMD ["--config", "/etc/bigsmall/bigsmalld.json", "--metrics", "0.0.0.0:9464", \
     "--hub-cache", "/var/cache/bigsmall"]
