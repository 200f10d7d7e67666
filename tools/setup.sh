#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Sets up a Debian 12 machine for cryo: Debian packages, CRIU >= 4.2 built
# from Debian's source package (cached in $CRYO_CRIU_PREFIX), then builds and
# installs cryo. Idempotent: each step is skipped when its result is there.
#
#   tools/setup.sh [--skip-build]
#
# Environment: CRYO_CRIU_PREFIX (default /opt/cryo/criu), CRYO_PREFIX (where
# cryo is installed, default /usr/local), CRYO_BUILD_DIR (default ./build),
# CRYO_BUILD_TYPE (default RelWithDebInfo).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
criu_prefix=${CRYO_CRIU_PREFIX:-/opt/cryo/criu}
cryo_prefix=${CRYO_PREFIX:-/usr/local}
build_dir=${CRYO_BUILD_DIR:-$top/build}
build_type=${CRYO_BUILD_TYPE:-RelWithDebInfo}
criu_min=4.2
# CRIU caches what it learns of the kernel (kerndat) in RUNDIR, but only on
# tmpfs; /run is not tmpfs everywhere (not on this VM), and without the
# cache every CRIU run probes the kernel again (~20 ms, running iptables
# among other things). cryod makes this directory root's only and mounts a
# small tmpfs there if need be (kCriuRunDir in daemon/criu_run_dir.h).
criu_rundir=/run/cryo-criu
# What the build below does differently from CRIU's defaults; a cached CRIU
# built another way is built again.
criu_recipe="PLUGINDIR=lib/criu RUNDIR=$criu_rundir"
skip_build=0
[[ "${1:-}" == --skip-build ]] && skip_build=1

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (installs packages, CRIU and cryod)"

# --- Debian packages ---------------------------------------------------------
packages=(
  # toolchain and project libraries
  build-essential cmake pkg-config git clang-format
  libgtest-dev libgmock-dev libprotobuf-dev protobuf-compiler
  libcli11-dev nlohmann-json3-dev libsodium-dev libzstd-dev libssl-dev
  # BLAKE3's C sources (chunk names), built into cryo: bookworm has no C library
  librust-blake3-dev
  # CRIU build dependencies
  libprotobuf-c-dev protobuf-c-compiler python3-protobuf libnl-3-dev libcap-dev
  libnet1-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev
  libaio-dev libdrm-dev xz-utils
  # CRIU run time
  nftables iproute2 procps
  # benchmarks (tests/bench/shim_bench.sh counts instructions and system calls)
  bc valgrind strace
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- CRIU ---------------------------------------------------------------------
criu_ok() {
  local v
  [[ -x $criu_prefix/sbin/criu ]] || return 1
  v=$("$criu_prefix/sbin/criu" --version 2>/dev/null | sed -n 's/^Version: //p')
  [[ -n $v ]] && [[ $(printf '%s\n%s\n' "$criu_min" "$v" | sort -V | head -1) == "$criu_min" ]] &&
    [[ -f $criu_prefix/include/criu/rpc.proto ]] &&
    [[ $(cat "$criu_prefix/share/criu/cryo-recipe" 2>/dev/null) == "$criu_recipe" ]]
}

build_criu() {
  local mirror
  work=$(mktemp -d /tmp/cryo-criu.XXXXXX)  # global: the RETURN trap runs after locals are gone
  trap 'rm -rf "$work"' RETURN
  # Debian's own mirror, read from the system's configuration; bookworm's
  # and trixie's CRIU do not work on this kernel, so take unstable's source.
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [[ -n $mirror ]] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  [[ -n $mirror ]] || die "cannot find the Debian mirror in /etc/apt/sources.list.d/debian.sources"
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  echo "deb-src $mirror sid main" >"$work/sources.list"
  local apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "APT::Sandbox::User=root")
  say "fetching the CRIU source index (Debian unstable)"
  apt-get "${apt_opts[@]}" update -qq >/dev/null
  local version
  version=$(apt-get "${apt_opts[@]}" source --print-uris criu 2>/dev/null |
    sed -n "s/.*criu_\([0-9.]*\)\.orig\.tar\.[a-z]*'.*/\1/p" | head -1)
  [[ -n $version ]] || die "no CRIU source package found in Debian unstable"
  [[ $(printf '%s\n%s\n' "$criu_min" "$version" | sort -V | head -1) == "$criu_min" ]] ||
    die "Debian unstable offers CRIU $version, cryo needs >= $criu_min"
  say "downloading CRIU $version source"
  # The .debian.tar part may be missing on the mirror; only .orig is needed,
  # and apt checks it against the index's hashes.
  (cd "$work" && apt-get "${apt_opts[@]}" source --download-only criu >/dev/null 2>&1) || true
  local orig
  orig=$(ls "$work"/criu_"$version".orig.tar.* 2>/dev/null | head -1)
  [[ -n $orig ]] || die "download of criu_$version.orig.tar.* failed"
  mkdir -p "$work/src"
  tar -xf "$orig" -C "$work/src" --strip-components=1
  say "building CRIU $version (about a minute)"
  # PLUGINDIR inside the prefix: cryod never loads plugins from /usr/lib/criu.
  make -C "$work/src" -j"$(nproc)" PREFIX="$criu_prefix" PLUGINDIR="$criu_prefix/lib/criu" \
    RUNDIR="$criu_rundir" criu >"$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log"; die "CRIU build failed"; }
  # Only the binary: cryo speaks CRIU's RPC itself (no libcriu, no pycriu).
  make -C "$work/src" PREFIX="$criu_prefix" PLUGINDIR="$criu_prefix/lib/criu" \
    RUNDIR="$criu_rundir" install-criu >>"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; die "CRIU install failed"; }
  mkdir -p "$criu_prefix/include/criu" "$criu_prefix/share/criu/images" "$criu_prefix/lib/criu"
  cp "$work"/src/images/rpc.proto "$criu_prefix/include/criu/"
  cp "$work"/src/images/*.proto "$criu_prefix/share/criu/images/"
  echo "$criu_recipe" >"$criu_prefix/share/criu/cryo-recipe"
}

if criu_ok; then
  say "CRIU $("$criu_prefix/sbin/criu" --version | sed -n 's/^Version: //p') already in $criu_prefix"
else
  build_criu
  criu_ok || die "CRIU in $criu_prefix is missing or older than $criu_min after the build"
fi

# --- cryo ----------------------------------------------------------------------
if ((!skip_build)); then
  say "building cryo ($build_type) in $build_dir"
  cmake -S "$top" -B "$build_dir" -DCMAKE_BUILD_TYPE="$build_type" \
    -DCMAKE_INSTALL_PREFIX="$cryo_prefix" -DCRYO_CRIU_PREFIX="$criu_prefix" \
    -DCRYO_WERROR="${CRYO_WERROR:-ON}" ${CRYO_CMAKE_ARGS:-} >/dev/null
  cmake --build "$build_dir" -j"$(nproc)"
  cmake --install "$build_dir" >/dev/null
  say "installed cryo and cryod into $cryo_prefix"
fi
