#!/usr/bin/env bash
# The live demo: installs dependencies, builds kvring, starts the controller
# daemon (kvringd), runs worker processes against it through shared memory
# (kvring load: admits, evicts and P2P lookups), shows the rings, asks the
# workers for their health and clears one instance (over the rings and over
# LMCache's HTTP API), shows the controller's counters and Prometheus metrics,
# and stops the daemon cleanly.
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
"${bin}/kvringd" --name "${name}" --stats-interval 1 --heartbeat-interval 1 --http 127.0.0.1:0 2> "${log}" &
daemon=$!
# kvring stats waits (up to --timeout) for the controller to accept clients.
"${bin}/kvring" stats --name "${name}" --timeout 5000 > /dev/null
port=""
for _ in $(seq 100); do  # the HTTP side logs its port once it serves
  port=$(sed -n 's|.*HTTP API on http://127.0.0.1:\([0-9]*\)/.*|\1|p' "${log}")
  [ -n "${port}" ] && break
  sleep 0.05
done
[ -n "${port}" ] || { cat "${log}"; echo "kvringd did not start its HTTP API" >&2; exit 1; }
http="http://127.0.0.1:${port}"

echo "--- kvring load: 2 instances x 2 TP ranks = 4 worker processes for ${seconds} s"
load_out=$(mktemp)
"${bin}/kvring" load --name "${name}" --instances 2 --tp 2 --seconds "${seconds}" --lookup-hashes 32 --cache-chunks 20000 > "${load_out}" &
load=$!
sleep 1  # the demo's pace: look at the rings while the workers run
echo "--- kvring inspect (while the workers run): one segment per worker, two rings each"
"${bin}/kvring" inspect --name "${name}" || true
echo "--- kvring health --instance inst0 (HealthMsg fanned out to its workers, over the rings)"
"${bin}/kvring" health --name "${name}" --instance inst0
echo "--- POST ${http}/health and /query_worker_info (LMCache's HTTP API)"
curl -sS -X POST "${http}/health" -H 'Content-Type: application/json' -d '{"instance_id": "inst1"}'; echo
curl -sS -X POST "${http}/query_worker_info" -d '{"instance_id": "inst0", "worker_ids": [0]}'; echo
echo "--- POST ${http}/clear: inst1 drops its CPU cache; its workers evict every key"
curl -sS -X POST "${http}/clear" -d '{"instance_id": "inst1", "location": "LocalCPUBackend"}'; echo
wait "${load}"
cat "${load_out}"
rm -f "${load_out}"

echo "--- kvring stats: the controller's counters"
"${bin}/kvring" stats --name "${name}"
echo "--- GET ${http}/metrics (a few of them)"
curl -sS "${http}/metrics" | grep -E '^(lmcache:cache_controller_(kv_pool_keys|registered_workers)_count|kvring_(kv_ops|p2p_lookups|fanouts)_total|kvring_p2p_lookup_seconds_count)'

echo "--- stopping kvringd (SIGTERM)"
kill -TERM "${daemon}"
wait "${daemon}"
daemon=""
echo "--- kvringd's log"
cat "${log}"
if ! "${bin}/kvring" inspect --name "${name}" | grep -q "^no kvring segments"; then
  echo "segments left behind" >&2
  exit 1
fi
echo "--- stopped cleanly, no segments left"
