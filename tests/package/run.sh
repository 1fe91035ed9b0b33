#!/usr/bin/env bash
# The Debian package as an operator gets it: cpack builds kvring_<version>_amd64.deb
# from the build in $1; the test reads its control data, unpacks it into a
# scratch root, checks what it installs (programs, unit, conffile, man pages,
# system user), runs the unpacked kvringd --version, verifies the unit, and
# starts kvringd from the scratch root with the unit's own ExecStart line
# (and the packaged config), then attaches to it with the packaged kvring.
# Usage: run.sh <build dir> <version>
set -euo pipefail
build=$1 version=$2
# shellcheck source=../support/scratch.sh
source "$(dirname "$0")/../support/scratch.sh"
scratch package-test
fail() { echo "FAIL: $*" >&2; exit 1; }

(cd "${work}" && cpack -G DEB --config "${build}/CPackConfig.cmake" -B "${work}/out" > "${work}/cpack.log" 2>&1) \
  || { cat "${work}/cpack.log"; fail "cpack"; }
deb="${work}/out/kvring_${version}_amd64.deb"
[[ -f "${deb}" ]] || { ls -R "${work}/out"; fail "no ${deb##*/}"; }

# Control data: name, version, architecture, computed shared-library dependencies.
dpkg-deb --field "${deb}" Package Version Architecture Depends > "${work}/control"
grep -qx "Package: kvring" "${work}/control" || fail "package name: $(cat "${work}/control")"
grep -qx "Version: ${version}" "${work}/control" || fail "version"
grep -qx "Architecture: amd64" "${work}/control" || fail "architecture"
grep -q "libzmq5" "${work}/control" || fail "Depends lacks libzmq5 (shlibdeps): $(cat "${work}/control")"
mkdir "${work}/control.d"
dpkg-deb --control "${deb}" "${work}/control.d"
grep -qx "/etc/kvring/kvringd.conf" "${work}/control.d/conffiles" || fail "kvringd.conf is not a conffile"
for script in postinst prerm postrm; do
  [[ -x "${work}/control.d/${script}" ]] || fail "no ${script}"
  sh -n "${work}/control.d/${script}" || fail "${script} does not parse"
done

# What it installs.
root="${work}/root"
dpkg-deb --extract "${deb}" "${root}"
for f in usr/bin/kvringd usr/bin/kvring usr/lib/systemd/system/kvringd@.service etc/kvring/kvringd.conf \
         usr/lib/sysusers.d/kvring.conf usr/share/man/man1/kvringd.1.gz usr/share/man/man1/kvring.1.gz \
         usr/include/kvring/client/client.h usr/include/kvring/version.h usr/lib/x86_64-linux-gnu/pkgconfig/kvring.pc \
         usr/lib/x86_64-linux-gnu/cmake/kvring/kvringConfig.cmake; do
  [[ -e "${root}/${f}" ]] || { (cd "${root}" && find . | sort) >&2; fail "not in the package: /${f}"; }
done
[[ -z "$(find "${root}" -path "${root}/usr/local*" -print -quit)" ]] || fail "files under /usr/local"
# Man pages generated from --help: they list the options.
zcat "${root}/usr/share/man/man1/kvringd.1.gz" | grep -q -- "monitor\\\\-ports" || fail "kvringd(1) lacks --monitor-ports"
zcat "${root}/usr/share/man/man1/kvring.1.gz" | grep -q "inspect" || fail "kvring(1) lacks inspect"

# The programs run from the package.
[[ "$("${root}/usr/bin/kvringd" --version)" == "kvringd ${version}" ]] || fail "kvringd --version"
[[ "$("${root}/usr/bin/kvring" --version)" == "kvring ${version}" ]] || fail "kvring --version"

# The Python module from the package (Debian's dist-packages), when the build has it.
if [[ -d "${root}/usr/lib/python3/dist-packages/kvring" ]]; then
  [[ "$(PYTHONPATH="${root}/usr/lib/python3/dist-packages" /usr/bin/python3 -c 'import kvring; print(kvring.__version__)')" \
     == "${version}" ]] || fail "import kvring from the package"
fi

# The unit, as systemd reads it (an instance of it, with the unpacked program).
unit="${root}/usr/lib/systemd/system/kvringd@.service"
exec_start=$(sed -n 's/^ExecStart=//p' "${unit}")
[[ -n "${exec_start}" ]] || fail "no ExecStart"
command -v systemd-analyze > /dev/null || fail "systemd-analyze not found (Debian: systemd; scripts/install-deps.sh)"
{
  mkdir -p "${work}/units"
  sed "s|/usr/bin/kvringd|${root}/usr/bin/kvringd|" "${unit}" > "${work}/units/kvringd@.service"
  # Unknown users are not an error offline; syntax, sections, directives are.
  SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "${work}/units/kvringd@pkgtest.service" \
    > "${work}/verify.log" 2>&1 || { cat "${work}/verify.log"; fail "systemd-analyze verify"; }
  if grep -Ei "unknown|invalid|ignoring|failed" "${work}/verify.log"; then fail "systemd-analyze verify complains"; fi
}

# Start kvringd exactly as the unit would (%i = the instance, no KVRINGD_OPTIONS),
# from the scratch root, with the packaged config.
name="pkgtest-$$"
cmd=${exec_start//%i/${name}}
cmd=${cmd//\/usr\/bin\//${root}/usr/bin/}
cmd=${cmd//\/etc\/kvring\//${root}/etc/kvring/}
cmd=${cmd//\$KVRINGD_OPTIONS/}
# shellcheck disable=SC2086
${cmd} 2> "${work}/kvringd.log" &
daemon=$!
# kvring waits for the controller to come up (its attach retries, bounded by --timeout).
"${root}/usr/bin/kvring" stats --name "${name}" --json --timeout 10000 > "${work}/stats.json" \
  || { cat "${work}/kvringd.log"; fail "kvring stats against the packaged kvringd"; }
grep -q '"workers"' "${work}/stats.json" || { cat "${work}/kvringd.log"; fail "kvring stats against the packaged kvringd"; }
# The packaged config was read: it accepts clients of other uids.
grep -q "other uids accepted" "${work}/kvringd.log" || { cat "${work}/kvringd.log"; fail "the config was not applied"; }
kill -TERM "${daemon}"
wait "${daemon}" || fail "kvringd did not stop cleanly on SIGTERM"
daemon=""
grep -q "stopped cleanly" "${work}/kvringd.log" || fail "no clean stop"
echo "package ${deb##*/}: control data, files, unit and config check out; kvringd ran from it"
