#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Overhead of the LD_PRELOAD shim (libcryo_preload.so), as a job's
# processes have it: active (CRYO_SHIM_SOCKET set) and intercepting SIGTERM.
# Each workload runs with and without the shim, interleaved, REPS times;
# medians and the ratio are printed. Target: within 1% (ratio <= 1.01).
#   tests/bench/shim_bench.sh [BUILD_DIR]     (default: build)
# Workloads: shim_micro (read, close, sigaction, signal delivery in a loop),
# gzip of a 200 MiB file (half random, half zeros) to /dev/null, and a
# Python loop.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build}
reps=${REPS:-7}
shim="$build/libexec/cryo/libcryo_preload.so"
[[ -f $shim ]] || { echo "no $shim: build first" >&2; exit 1; }
work=$(mktemp -d /tmp/cryo-shim-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

cc -O2 -o "$work/shim_micro" "$top/tests/bench/shim_micro.c"
head -c $((100 << 20)) /dev/urandom >"$work/data"
head -c $((100 << 20)) /dev/zero >>"$work/data"

# CPU seconds (user + system) one run of the workload takes: the shim's
# cost is CPU spent in the process, and CPU time is far less disturbed than
# wall time by the other tenants of a virtual machine.
run() {
  local TIMEFORMAT='%U %S' t
  t=$({ time "$@" >/dev/null 2>&1; } 2>&1)
  echo "${t% *} + ${t#* }" | bc -l
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

bench() {
  local name=$1
  shift
  local plain=() shimmed=()
  local with=(env LD_PRELOAD="$shim" CRYO_SHIM_SOCKET="$work/absent.sock" CRYO_ON_SIGTERM=checkpoint)
  # Alternating order (ABBA) so that drifts hit both sides alike.
  for i in $(seq "$reps"); do
    if ((i % 2)); then
      plain+=("$(run env -u LD_PRELOAD "$@")")
      shimmed+=("$(run "${with[@]}" "$@")")
    else
      shimmed+=("$(run "${with[@]}" "$@")")
      plain+=("$(run env -u LD_PRELOAD "$@")")
    fi
  done
  local p s
  p=$(printf '%s\n' "${plain[@]}" | median)
  s=$(printf '%s\n' "${shimmed[@]}" | median)
  printf '%-10s without %8.3f s   with shim %8.3f s   ratio %.4f\n' "$name" "$p" "$s" \
    "$(echo "$s / $p" | bc -l)"
}

echo "shim overhead in CPU seconds (user+sys), $reps repetitions each, medians (target ratio <= 1.01)"
bench micro "$work/shim_micro" 300000
bench gzip gzip -c -1 "$work/data"
bench python python3 -c 'sum(i * i for i in range(15000000))'
