#!/usr/bin/env bash
# CPU contention (issue 19): kvring load with one worker, then with
# instances x tp workers (default 4 x 2 = 8 on this 2-core machine), against
# one kvringd, REPEATS times; prints each run and the medians.
# Usage: bench/contention.sh [BUILD_DIR] [REPEATS] [-- extra kvringd flags]
# e.g.   bench/contention.sh build/release 5 -- --nice -10
set -euo pipefail
build=${1:-build/release}
repeats=${2:-3}
shift $(( $# >= 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
name="contention-$$"
"${build}/kvringd" --name "${name}" --stats-interval 0 "$@" 2>/dev/null &
daemon=$!
trap 'kill ${daemon} 2>/dev/null; wait ${daemon} 2>/dev/null || true' EXIT
for _ in $(seq 100); do "${build}/kvring" stats --name "${name}" >/dev/null 2>&1 && break; sleep 0.05; done
single=() many=() p99=()
for r in $(seq "${repeats}"); do
  s=$("${build}/kvring" load --name "${name}" --instances 1 --tp 1 --seconds 3 --json)
  m=$("${build}/kvring" load --name "${name}" --instances "${INSTANCES:-4}" --tp "${TP:-2}" --seconds 5 --json)
  read -r so <<<"$(/usr/bin/python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["controller_kv_ops_per_s"])' "$s")"
  read -r mo mp <<<"$(/usr/bin/python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["controller_kv_ops_per_s"], d["p2p_p99_us"])' "$m")"
  echo "run ${r}: single ${so} ops/s; ${INSTANCES:-4}x${TP:-2}: ${mo} ops/s ($(/usr/bin/python3 -c "print(f'{${mo}/${so}:.0%}')") of single), lookup p99 ${mp} us"
  single+=("${so}") many+=("${mo}") p99+=("${mp}")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median: single $(median "${single[@]}") ops/s; contended $(median "${many[@]}") ops/s; lookup p99 $(median "${p99[@]}") us"
