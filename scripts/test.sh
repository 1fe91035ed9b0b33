#!/usr/bin/env bash
# Installs dependencies, builds kvring and runs every test:
#   1. Release build (-O2 -g), full ctest suite.
#   2. ASan+UBSan build, full ctest suite.
#   3. TSan build of the ring, transport, index, controller, client-library, HTTP API and
#      ZeroMQ front tests (libzmq's own hand-overs suppressed: tests/tsan.supp).
#   4. libFuzzer build (clang) of the decoder, a short fuzzing run from the
#      golden vectors (the corpus replay itself is part of ctest above).
# Usage: bash scripts/test.sh            (from the repository root)
#        KVRING_SKIP_DEPS=1 ...          skip apt-get (already installed)
#        KVRING_FUZZ_SECONDS=N ...       fuzzing time (default 20; 0 skips)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${KVRING_SKIP_DEPS:-0}" != 1 ]; then
  bash scripts/install-deps.sh
fi

jobs="${KVRING_JOBS:-2}"

run_suite() {  # name, build dir, extra cmake args...
  local name=$1 dir=$2
  shift 2
  echo "=== ${name}: configure and build (${dir})"
  cmake -S . -B "${dir}" "$@" > "${dir}.configure.log" 2>&1 || { cat "${dir}.configure.log"; exit 1; }
  cmake --build "${dir}" -j"${jobs}"
  echo "=== ${name}: ctest"
  (cd "${dir}" && ctest -j"${jobs}" --output-on-failure --timeout 600)
}

mkdir -p build
run_suite "release" build/release -DCMAKE_BUILD_TYPE=Release
run_suite "asan+ubsan" build/asan -DCMAKE_BUILD_TYPE=Debug -DKVRING_SANITIZE=address,undefined \
  -DKVRING_BUILD_BENCH=OFF

echo "=== tsan: rings and the other threaded code (ThreadSanitizer)"
cmake -S . -B build/tsan -DCMAKE_BUILD_TYPE=Debug -DKVRING_SANITIZE=thread -DKVRING_BUILD_BENCH=OFF \
  > build/tsan.configure.log 2>&1 || { cat build/tsan.configure.log; exit 1; }
cmake --build build/tsan -j"${jobs}" --target spin_wait_test ring_test segment_test transport_test index_test controller_test controller_commands_test client_test \
  http_api_test kvringd kvring_cli shm_worker_tool
(cd build/tsan && ctest -j"${jobs}" --output-on-failure --timeout 600 -R '^(SpinWait|Ring|Segment|Transport|Processes|Names|ChunkIndex|Controller|Client|HttpApi|python_zmq_front)')

fuzz_seconds="${KVRING_FUZZ_SECONDS:-20}"
if [ "${fuzz_seconds}" != 0 ]; then
  echo "=== fuzz: libFuzzer decoder, ${fuzz_seconds}s from the golden vectors"
  cmake -S . -B build/fuzz -DCMAKE_CXX_COMPILER=clang++ -DKVRING_BUILD_FUZZ=ON \
    -DKVRING_BUILD_TESTS=OFF -DKVRING_BUILD_BENCH=OFF > build/fuzz.configure.log 2>&1 \
    || { cat build/fuzz.configure.log; exit 1; }
  cmake --build build/fuzz -j"${jobs}" --target fuzz_decode
  scratch=$(mktemp -d)
  trap 'rm -rf "${scratch}"' EXIT
  ./build/fuzz/fuzz_decode -max_total_time="${fuzz_seconds}" -max_len=4096 -rss_limit_mb=2048 \
    -print_final_stats=1 "${scratch}" tests/data/lmcache-msgspec fuzz/corpus/decode 2>&1 | tail -n 4
fi
echo "=== all test suites passed"
