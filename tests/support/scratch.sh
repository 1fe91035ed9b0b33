# Sourced by the shell tests (tests/install, tests/package): `scratch NAME`
# makes $work, a scratch folder removed on exit, and stops the daemon whose
# pid is in $daemon (if any) on exit, cleanly (SIGTERM) and waited for.
scratch() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/kvring-$1.XXXXXX")
  daemon=""
  trap scratch_cleanup EXIT
}
scratch_cleanup() {
  if [[ -n "${daemon}" ]]; then kill -TERM "${daemon}" 2>/dev/null || true; wait "${daemon}" 2>/dev/null || true; fi
  rm -rf "${work}"
}
