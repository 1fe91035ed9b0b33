#!/usr/bin/env bash
# Installs dependencies, builds kvring and runs the main job.
# Today the main job decodes bundled LMCache messages (real msgspec bytes)
# and shows the round trip back to identical bytes; the live controller demo
# replaces it once kvringd lands.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${KVRING_SKIP_DEPS:-0}" != 1 ]; then
  bash scripts/install-deps.sh
fi
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build/release -j"${KVRING_JOBS:-2}" --target kvring_cli

kvring=./build/release/kvring
vectors=tests/data/lmcache-msgspec
echo "--- kvring decode: LMCache messages encoded by real msgspec"
for f in RegisterMsg__typical BatchedKVOperationMsg__small BatchedP2PLookupRetMsg__hit \
         HeartbeatRetMsg__full_sync; do
  "${kvring}" decode "${vectors}/${f}.msgpack"
done
echo "--- kvring encode: back to msgpack, compared with msgspec's bytes"
"${kvring}" decode "${vectors}/BatchedKVOperationMsg__small.msgpack" | "${kvring}" encode > /tmp/kvring-demo.msgpack
cmp /tmp/kvring-demo.msgpack "${vectors}/BatchedKVOperationMsg__small.msgpack" && echo "identical bytes"
echo "--- kvring chunk-hash: LMCache's token chunk hashes (CPython builtin hash, PYTHONHASHSEED=123)"
echo "[$(seq -s, 0 599)]" | "${kvring}" chunk-hash --chunk-size 256 --python-hash-seed 123
