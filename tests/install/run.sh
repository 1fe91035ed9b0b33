#!/usr/bin/env bash
# Installs the build in $1 into a scratch root (DESTDIR: files with absolute
# destinations such as /etc/kvring land there too), builds tests/install/user.cc
# out of tree with find_package(kvring) and with pkg-config, and runs both
# against a kvringd from that prefix. Usage: run.sh <build dir> <this dir> <c++ compiler>
set -euo pipefail
build=$1 here=$2 cxx=$3
# shellcheck source=../support/scratch.sh
source "$(dirname "$0")/../support/scratch.sh"
scratch install-test
configured_prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "${build}/CMakeCache.txt")
prefix="${work}/root${configured_prefix}"
DESTDIR="${work}/root" cmake --install "${build}" > "${work}/install.log"
for f in bin/kvringd bin/kvring include/kvring/client/client.h lib/libkvring_client.[as]* lib/cmake/kvring/kvringConfig.cmake \
         lib/cmake/kvring/kvringConfigVersion.cmake lib/pkgconfig/kvring.pc; do
  found=$(find "${prefix}" -path "${prefix}/${f%%/*}*" -name "$(basename "$f")" | head -1)
  [[ -n "${found}" ]] || { echo "not installed: ${f}"; find "${prefix}"; exit 1; }
done

# find_package(kvring)
cmake -S "${here}" -B "${work}/user" -DCMAKE_CXX_COMPILER="${cxx}" -DCMAKE_PREFIX_PATH="${prefix}" \
      -DCMAKE_BUILD_TYPE=Release > "${work}/configure.log" || { cat "${work}/configure.log"; exit 1; }
cmake --build "${work}/user" > "${work}/build.log" 2>&1 || { cat "${work}/build.log"; exit 1; }
# pkg-config
pcdir=$(dirname "$(find "${prefix}" -name kvring.pc | head -1)")
# shellcheck disable=SC2046
"${cxx}" -O1 "${here}/user.cc" -o "${work}/user-pc" \
  $(PKG_CONFIG_PATH="${pcdir}" pkg-config --cflags --libs --static kvring) \
  -Wl,-rpath,"$(PKG_CONFIG_PATH="${pcdir}" pkg-config --variable=libdir kvring)"  # a shared build's layers, off the default path

name="install-test-$$"
"${prefix}/bin/kvringd" --name "${name}" 2> "${work}/kvringd.log" &
daemon=$!
"${work}/user/kvring_user" "${name}"
"${work}/user-pc" "${name}"
"${prefix}/bin/kvring" stats --name "${name}" --json > "${work}/stats.json"
grep -q '"workers"' "${work}/stats.json"
echo "installed package: find_package and pkg-config programs found each other's chunks through ${prefix}/bin/kvringd"
