#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# README command 2: sets the machine up if needed (tools/setup.sh), then runs
# every check: formatting, the unit and end-to-end tests (ctest), and the
# unit tests again under AddressSanitizer + UndefinedBehaviorSanitizer.
# Exits non-zero if anything fails. .ci/run calls exactly this.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
say() { printf '\033[1m[test]\033[0m %s\n' "$*" >&2; }

[[ $(id -u) == 0 ]] || { echo "tools/test.sh: run as root (the tests start cryod)" >&2; exit 1; }

CRYO_WERROR=ON bash tools/setup.sh

say "checking formatting (clang-format)"
mapfile -t sources < <(git ls-files '*.cc' '*.h' '*.c' 2>/dev/null || find runtime daemon tools tests preload plugins -name '*.cc' -o -name '*.h' -o -name '*.c')
clang-format --dry-run --Werror "${sources[@]}"

say "unit and end-to-end tests"
ctest --test-dir build --output-on-failure -j2 --timeout 300

say "unit tests under ASan+UBSan"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCRYO_SANITIZE=ON -DCRYO_WERROR=ON >/dev/null
cmake --build build-asan -j"$(nproc)" --target runtime_unit_tests daemon_unit_tests >/dev/null
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ctest --test-dir build-asan -L unit --output-on-failure -j2
say "all tests passed"
