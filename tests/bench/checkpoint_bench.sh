#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Benchmark: `cryo checkpoint` / `cryo restore` against raw `criu dump` /
# `criu restore` of the same kind of process (half random, half
# compressible memory), to the same filesystem, side by side in one run.
# Prints each measurement, the medians and the ratios cryo/raw.
#
#   tests/bench/checkpoint_bench.sh [SIZES_MIB...]     (default: 1024 4096)
#
# Environment: REPS (default 5), CRYO_BUILD_DIR (default ./build),
# RESTORE_PAUSE (seconds both sides wait between dump and restore, default 5),
# BENCH_DIR (default /var/tmp; must not be tmpfs to compare like with like:
# the store and the raw images go there), CRYOD_ARGS (extra cryod flags,
# e.g. "--memory-scratch off" to stage cryo's images on that disk too;
# by default cryod stages them in /dev/shm when they fit).
# Targets (issue 3): frozen time <= 1.0x raw dump, total checkpoint <= 1.5x,
# restore <= 1.2x. cryod restores these processes' memory through
# userfaultfd (lazy_restore auto); a second cryod sharing the store and key,
# with --lazy-restore off, restores each checkpoint once more the other way
# (the image stream), for comparison.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${CRYO_BUILD_DIR:-$top/build}
criu=${CRYO_CRIU:-/opt/cryo/criu/sbin/criu}
reps=${REPS:-5}
sizes=("$@")
((${#sizes[@]})) || sizes=(1024 4096)
hog=$build/tests/e2e/programs/memory_hog
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 1; }
[[ -x $hog && -x $build/bin/cryod ]] || { echo "build first (tools/setup.sh)" >&2; exit 1; }

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/cryo-bench.XXXXXX")
export CRYO_SOCKET=$work/cryod.sock
cryo() { "$build/bin/cryo" "$@"; }
cryod_pid= stream_pid=
stream_socket=$work/stream.sock
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  cryo rm --force bench >/dev/null 2>&1 || true
  CRYO_SOCKET=$stream_socket cryo rm --force bench >/dev/null 2>&1 || true
  for p in $cryod_pid $stream_pid; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc -l; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
wait_ready() { for _ in $(seq 600); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.05; done; return 1; }

exec 3>"$work/ready"
"$build/bin/cryod" --state-dir "$work/state" --socket "$CRYO_SOCKET" --ready-fd 3 ${CRYOD_ARGS:-} 2>"$work/cryod.log" &
cryod_pid=$!
exec 3>&-
for _ in $(seq 100); do [[ -s $work/ready ]] && break; sleep 0.1; done
mkdir -m 0700 "$work/state-stream"
cp -p "$work/state/key" "$work/state-stream/key"
exec 3>"$work/ready-stream"
"$build/bin/cryod" --state-dir "$work/state-stream" --socket "$stream_socket" --ready-fd 3 \
  --store "file://$work/state/store" --lazy-restore off ${CRYOD_ARGS:-} 2>"$work/cryod-stream.log" &
stream_pid=$!
exec 3>&-
for _ in $(seq 100); do [[ -s $work/ready-stream ]] && break; sleep 0.1; done

# Waits for "ready" in the output that `$1` prints, then lets the machine
# settle a moment (the program just wrote its memory), alike for both sides.
settle() { for _ in $(seq 600); do "$@" | grep -q ready && break; sleep 0.05; done; sleep 1; }
# Before a restore both sides wait alike: in this VM memory freed a moment
# ago (the checkpointed process, the dump's page cache) is fast to touch
# again, but once the balloon has handed it back to the host (a few seconds)
# every first touch is a slow fault, and a restore is mostly first touches.
# Without the pause, whichever side restores sooner after its dump wins.
before_restore() { sleep "${RESTORE_PAUSE:-5}"; }

# Raw CRIU: the program as a session leader, dumped and restored by hand,
# the way cryo dumps this program: it holds no TCP socket, so neither side
# asks for tcp-established and CRIU's network lock (cryo looks, see README).
raw_rep() {
  local mib=$1 t pid
  rm -rf "$work/raw" && mkdir -p "$work/raw"
  setsid "$hog" "$mib" mixed "$seed" >"$work/raw.out" 2>&1 </dev/null &
  pid=$!
  pids+=("$pid")
  settle cat "$work/raw.out"
  t=$(now)
  "$criu" dump -t "$pid" -D "$work/raw" -o dump.log ||
    { grep Error "$work/raw/dump.log" | grep -v RLIMIT >&2; exit 1; }
  sync -f "$work/raw"
  raw_dump+=("$(elapsed "$t")")
  wait "$pid" 2>/dev/null || true
  before_restore
  t=$(now)
  "$criu" restore -D "$work/raw" -o restore.log --restore-detached --pidfile "$work/raw.pid" ||
    { grep Error "$work/raw/restore.log" | grep -v RLIMIT >&2; exit 1; }
  raw_restore+=("$(elapsed "$t")")
  kill -9 "$(cat "$work/raw.pid")" 2>/dev/null || true
  rm -f "$work/raw.pid"
  rm -rf "$work/raw"
}

# cryo: the same program as a job, checkpointed with --stop and restored.
cryo_rep() {
  local mib=$1 t json
  cryo rm --force bench >/dev/null 2>&1 || true
  cryo run -d --name bench -- "$hog" "$mib" mixed "$seed" >/dev/null
  settle cryo logs bench
  t=$(now)
  json=$(cryo checkpoint --stop --json bench)
  cryo_total+=("$(elapsed "$t")")
  # The frozen time (freeze + dump), then every phase.
  local frozen
  { read -r frozen; read -r cryo_phases; } < <(python3 -c 'import json,sys
p = json.load(sys.stdin)["phases_ms"]
print((p.get("freeze", 0) + p["dump"]) / 1000)
print(" ".join("%s %.2fs" % (k, v / 1000) for k, v in p.items()))' <<<"$json")
  cryo_frozen+=("$frozen")
  before_restore
  t=$(now)
  cryo restore -d bench >/dev/null
  cryo_restore+=("$(elapsed "$t")")
  cryo rm --force bench >/dev/null
  before_restore
  t=$(now)
  CRYO_SOCKET=$stream_socket cryo restore -d bench >/dev/null
  cryo_stream+=("$(elapsed "$t")")
  CRYO_SOCKET=$stream_socket cryo rm --force bench >/dev/null
}

printf 'filesystem of %s: %s\n' "$work" "$(stat -f -c %T "$work")"
for mib in "${sizes[@]}"; do
  raw_dump=() raw_restore=() cryo_frozen=() cryo_total=() cryo_restore=() cryo_stream=()
  for rep in $(seq "$reps"); do
    # New random memory every repetition: each checkpoint stores its random
    # half anew, as a first checkpoint does (the text half is the same).
    seed=$((rep + 1000 * mib))
    # Alternating order (ABBA), so that drifts of this VM hit both alike.
    if ((rep % 2)); then raw_rep "$mib" && cryo_rep "$mib"; else cryo_rep "$mib" && raw_rep "$mib"; fi
    printf '%5d MiB rep %d: raw dump %.2fs restore %.2fs | cryo frozen %.2fs total %.2fs restore %.2fs (streamed %.2fs)\n' \
      "$mib" "$rep" "${raw_dump[-1]}" "${raw_restore[-1]}" "${cryo_frozen[-1]}" "${cryo_total[-1]}" "${cryo_restore[-1]}" "${cryo_stream[-1]}"
    printf '%5d MiB rep %d: cryo checkpoint phases: %s\n' "$mib" "$rep" "$cryo_phases"
  done
  rd=$(median "${raw_dump[@]}") rr=$(median "${raw_restore[@]}")
  cf=$(median "${cryo_frozen[@]}") ct=$(median "${cryo_total[@]}") cr=$(median "${cryo_restore[@]}")
  cs=$(median "${cryo_stream[@]}")
  printf '%5d MiB medians: raw dump %.2fs, raw restore %.2fs; cryo frozen %.2fs (%.2fx, target <= 1.0x), total %.2fs (%.2fx, target <= 1.5x), restore %.2fs (%.2fx, target <= 1.2x); streamed restore %.2fs (%.2fx)\n' \
    "$mib" "$rd" "$rr" "$cf" "$(echo "$cf/$rd" | bc -l)" "$ct" "$(echo "$ct/$rd" | bc -l)" "$cr" "$(echo "$cr/$rr" | bc -l)" "$cs" "$(echo "$cs/$rr" | bc -l)"
done
