#!/usr/bin/env bash
# Installs kvring's build and test dependencies from Debian 12 packages.
# Idempotent: re-running only refreshes the package lists and confirms the set.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libboost-dev            # 1.74: Interprocess (shared memory)
  libmsgpack-cxx-dev      # reference decoder: benchmark baseline and cross-check tests
  libxxhash-dev
  libgtest-dev libgmock-dev
  libbenchmark-dev
  libabsl-dev             # absl::flat_hash_map: the index's baseline in bench/
  nats-server libnats-dev # NATS JetStream: the cluster layer (kvringd --cluster) and its tests
  libzmq3-dev cppzmq-dev  # ZeroMQ: LMCache's transport (kvringd's ZeroMQ front), the baseline in bench/
  python3 python3-zmq python3-msgpack python3-pytest  # LMCache-style Python workers in tests/python
  python3-dev pybind11-dev python3-numpy              # the kvring Python module (python/), its tests and benchmark
  libcli11-dev            # command-line parsing
  nlohmann-json3-dev      # JSON for the CLI and the control records
  libspdlog-dev           # kvringd's log
  curl                    # the demo calls the HTTP API with it
  help2man                # man pages from --help
  dpkg-dev file systemd   # the .deb: cpack's shlibdeps (dpkg-shlibdeps, file); systemd-analyze checks the unit
  clang libclang-rt-14-dev # libFuzzer target and sanitizer builds
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${packages[@]}"
