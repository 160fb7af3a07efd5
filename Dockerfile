# The passthrough agent image where a Docker engine and Docker Hub are at hand:
# `docker build -t passthrough .`. The image the tests run and the DaemonSet names is built
# without either by `cargo xtask image` (see the README's "Installing"); this file is not
# tested.
#
# The build stage runs `cargo xtask setup` (LLVM 22 from Debian bookworm-security, nightly
# rust-src, bpf-linker), then builds the agent, whose build script compiles the eBPF programs
# into the binary. The image holds only that binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo xtask setup \
 && cargo build --release --locked --package passthrough-user --bin passthrough

FROM debian:bookworm-slim
COPY --from=build /src/target/release/passthrough /usr/local/bin/passthrough
# The agent needs root inside its pod for bpffs and cgroup attachment; the DaemonSet limits
# it to the capabilities it uses (deploy/kubernetes/passthrough.yaml).
ENTRYPOINT ["/usr/local/bin/passthrough"]
