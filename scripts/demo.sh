#!/usr/bin/env bash
# The live demo: installs dependencies, builds kvring, starts the controller
# daemon (kvringd), runs worker processes against it through shared memory
# (kvring load: admits, evicts and P2P lookups), shows the controller's
# counters and rings, and stops the daemon cleanly.
# Usage: bash scripts/demo.sh        (KVRING_SKIP_DEPS=1 skips apt-get;
#        KVRING_DEMO_SECONDS=N sets the load's duration, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${KVRING_SKIP_DEPS:-0}" != 1 ]; then
  bash scripts/install-deps.sh
fi
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build/release -j"${KVRING_JOBS:-2}" --target kvring_cli kvringd

bin=./build/release
name="demo-$$"
seconds="${KVRING_DEMO_SECONDS:-3}"
log=$(mktemp)
daemon=""
cleanup() {
  if [ -n "${daemon}" ] && kill -0 "${daemon}" 2>/dev/null; then kill -TERM "${daemon}"; wait "${daemon}" || true; fi
  rm -f "${log}"
}
trap cleanup EXIT

echo "--- starting kvringd --name ${name}"
"${bin}/kvringd" --name "${name}" --stats-interval 1 --heartbeat-interval 1 2> "${log}" &
daemon=$!
# kvring stats waits (up to --timeout) for the controller to accept clients.
"${bin}/kvring" stats --name "${name}" --timeout 5000 > /dev/null

echo "--- kvring load: 2 instances x 2 TP ranks = 4 worker processes for ${seconds} s"
load_out=$(mktemp)
"${bin}/kvring" load --name "${name}" --instances 2 --tp 2 --seconds "${seconds}" --lookup-hashes 32 > "${load_out}" &
load=$!
sleep 1  # the demo's pace: look at the rings while the workers run
echo "--- kvring inspect (while the workers run): one segment per worker, two rings each"
"${bin}/kvring" inspect --name "${name}" || true
wait "${load}"
cat "${load_out}"
rm -f "${load_out}"

echo "--- kvring stats: the controller's counters"
"${bin}/kvring" stats --name "${name}"

echo "--- stopping kvringd (SIGTERM)"
kill -TERM "${daemon}"
wait "${daemon}"
daemon=""
echo "--- kvringd's log"
cat "${log}"
if ls /dev/shm | grep -q "^kvring\.${name}\."; then
  echo "segments left behind" >&2
  exit 1
fi
echo "--- stopped cleanly, no segments left"
