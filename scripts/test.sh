#!/usr/bin/env bash
# Installs dependencies, builds kvring and runs every test, each build from
# its preset in CMakePresets.json (build/<preset>):
#   1. release: -O2 -g, full ctest suite (the installed package and the .deb included).
#   2. shared: the layers as shared objects, installed and used by an out-of-tree program.
#   3. asan: ASan+UBSan, full ctest suite.
#   4. tsan: TSan build of the ring, transport, index, controller, client-library, HTTP API,
#      cluster and ZeroMQ front tests (libzmq's own hand-overs suppressed: tests/tsan.supp).
#   5. libFuzzer build (clang) of the decoder and of the cluster's decoders,
#      a short fuzzing run of each from its seeds (the corpus replays
#      themselves are part of ctest above).
# Usage: bash scripts/test.sh            (from the repository root)
#        KVRING_SKIP_DEPS=1 ...          skip apt-get (already installed)
#        KVRING_FUZZ_SECONDS=N ...       fuzzing time (default 20; 0 skips)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${KVRING_SKIP_DEPS:-0}" != 1 ]; then
  bash scripts/install-deps.sh
fi

jobs="${KVRING_JOBS:-2}"

run_preset() {  # preset: configure, build and (unless it is fuzz) test
  local preset=$1
  echo "=== ${preset}: configure and build (build/${preset})"
  mkdir -p build
  cmake --preset "${preset}" > "build/${preset}.configure.log" 2>&1 || { cat "build/${preset}.configure.log"; exit 1; }
  cmake --build --preset "${preset}" -j"${jobs}"
  if [ "${preset}" != fuzz ] && [ "${preset}" != shared ]; then
    echo "=== ${preset}: ctest"
    ctest --preset "${preset}" -j"${jobs}"
  fi
}

run_preset release
run_preset shared  # no ctest of its own: the installed-package test below
echo "=== shared: the installed package with the layers as shared objects"
bash tests/install/run.sh build/shared tests/install c++
run_preset asan
run_preset tsan   # libzmq's own hand-overs suppressed: tests/tsan.supp

fuzz_seconds="${KVRING_FUZZ_SECONDS:-20}"
if [ "${fuzz_seconds}" != 0 ]; then
  run_preset fuzz
  echo "=== fuzz: libFuzzer decoder, ${fuzz_seconds}s from the golden vectors"
  scratch=$(mktemp -d)
  trap 'rm -rf "${scratch}"' EXIT
  ./build/fuzz/fuzz_decode -max_total_time="${fuzz_seconds}" -max_len=4096 -rss_limit_mb=2048 \
    -print_final_stats=1 "${scratch}" tests/data/lmcache-msgspec fuzz/corpus/decode 2>&1 | tail -n 4
  echo "=== fuzz: libFuzzer cluster decoders (delta messages, leases), ${fuzz_seconds}s"
  mkdir -p "${scratch}/delta"
  ./build/fuzz/fuzz_delta -max_total_time="${fuzz_seconds}" -max_len=4096 -rss_limit_mb=2048 \
    -print_final_stats=1 "${scratch}/delta" fuzz/corpus/delta 2>&1 | tail -n 4
fi
echo "=== all test suites passed"
