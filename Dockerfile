# bigsmalld + the bigsmall CLI in one image (Debian 12, like the build machine).
# Build:  docker build -t bigsmall .
# Run:    docker run --ipc=host -v /models:/models:ro -v /run/bigsmall:/run/bigsmall bigsmall
# (--ipc=host: clients on the host map the daemon's layer memory; CUDA IPC needs it too.)
FROM debian:12 AS build
WORKDIR /src
COPY scripts/install_deps.sh scripts/install_deps.sh
RUN bash scripts/install_deps.sh
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBIGSMALL_CUDA=OFF \
 && cmake --build build --target bigsmall bigsmalld bigsmall-client \
 && install -m 0755 build/cli/bigsmall build/daemon/bigsmalld build/client/bigsmall-client /usr/local/bin/

FROM debian:12-slim
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libzstd1 libxxhash0 liburing2 libcurl4 libspdlog1.10 \
      libprometheus-cpp-pull1.0 libprometheus-cpp-core1.0 ca-certificates \
      libabsl20220623 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system bigsmall && useradd --system --gid bigsmall --no-create-home bigsmall \
 && mkdir -p /run/bigsmall /etc/bigsmall && chown bigsmall:bigsmall /run/bigsmall
COPY --from=build /usr/local/bin/ /usr/local/bin/
COPY deploy/bigsmalld.example.json /etc/bigsmall/bigsmalld.json
USER bigsmall
ENV BIGSMALL_SOCKET=/run/bigsmall/bigsmall.sock
ENTRYPOINT ["/usr/local/bin/bigsmalld"]
CMD ["--config", "/etc/bigsmall/bigsmalld.json"]
