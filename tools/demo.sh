#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# README command 1: sets the machine up if needed (tools/setup.sh), starts
# cryod with a local store in a scratch directory, runs a real program under
# `cryo run`, checkpoints it, restores it (it goes on where it was), sends it
# a SIGTERM (checkpointed, then stopped), restores it again, and stops
# everything cleanly.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "tools/demo.sh: run as root (cryod runs as root)" >&2; exit 1; }
bash "$top/tools/setup.sh"
prefix=${CRYO_PREFIX:-/usr/local}
export PATH="$prefix/bin:$PATH"

work=$(mktemp -d /tmp/cryo-demo.XXXXXX)
chmod 755 "$work"
export CRYO_SOCKET="$work/cryod.sock"
cryod_pid=
cleanup() {
  cryo rm --force counter >/dev/null 2>&1 || true
  [[ -n $cryod_pid ]] && kill "$cryod_pid" 2>/dev/null && wait "$cryod_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

exec 3>"$work/ready"
cryod --state-dir "$work/state" --socket "$CRYO_SOCKET" --store "file://$work/store" \
  --ready-fd 3 2>"$work/cryod.log" &
cryod_pid=$!
exec 3>&-
for _ in $(seq 100); do [[ -s $work/ready ]] && break; sleep 0.1; done
[[ -s $work/ready ]] || { cat "$work/cryod.log"; echo "cryod did not start" >&2; exit 1; }
echo "cryod is running (pid $cryod_pid), state in $work/state, store file://$work/store"

step "cryo run -- sh -c 'echo hello from a cryo job; id -un; exit 3'"
set +e
cryo run -- sh -c 'echo hello from a cryo job; id -un; exit 3'
echo "(exit status $?)"
set -e

step "cryo run -d --name counter -- sh -c 'i=0; while :; do echo count \$i; i=\$((i+1)); sleep 0.2; done'"
cryo run -d --name counter -- sh -c 'i=0; while :; do echo count $i; i=$((i+1)); sleep 0.2; done'
sleep 1
step "cryo ps"
cryo ps
step "cryo logs counter"
cryo logs counter | tail -3
step "cryo checkpoint --stop counter"
cryo checkpoint --stop counter
step "cryo ps --all"
cryo ps --all
step "cryo restore -d counter      # it goes on counting from where it was"
cryo restore -d counter
sleep 1
cryo logs counter | head -3
step "cryo checkpoints"
cryo checkpoints
step "cryo kill counter           # a SIGTERM: cryo checkpoints the job, then stops it"
cryo kill counter
for _ in $(seq 100); do
  cryo ps --all | grep -q '^counter .*checkpointed' && break
  sleep 0.1
done
step "cryo ps --all"
cryo ps --all
step "cryo restore -d counter      # the program never saw the SIGTERM: it goes on counting"
cryo restore -d counter
sleep 1
cryo logs counter | tail -3
step "cryo kill --signal KILL counter"
cryo kill --signal KILL counter
sleep 0.3
step "cryo ps --all"
cryo ps --all
echo
echo "demo finished: cryod stops and its scratch directory $work is removed"
