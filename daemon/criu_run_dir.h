// SPDX-License-Identifier: Apache-2.0
// The directory where CRIU keeps its cache of kernel facts.
#pragma once

#include <string>
#include <string_view>

#include "cryo/error.h"

namespace cryo {

// CRIU probes the kernel (kerndat) as each run starts, some probes running
// iptables, and caches the answers in a file under the directory its build
// names (RUNDIR), if that is on tmpfs (so that a reboot, perhaps into
// another kernel, clears it). CRIU's default is /run itself, which is not
// tmpfs everywhere (not on this VM): every CRIU run then probes again, ~20
// ms, once per dump or restore (and its feature checks). CRIU runs
// as root and trusts the file (vdso offsets, the zero page's pfn, feature
// flags), so the directory must be writable by root only, its parent too:
// tools/setup.sh builds CRIU with this one.
inline constexpr std::string_view kCriuRunDir = "/run/cryo-criu";

// Makes `dir` a directory of root's, mode 0700, on tmpfs: it mounts a small
// tmpfs there if it is not on one already. Fails if `dir` or its parent
// could be written by others, or `dir` is something else than a directory
// (only root can have put it there: cryod refuses to guess). Returns whether
// CRIU can keep its cache there (false: the mount failed, and CRIU runs
// without a cache, as safely). Also removes a temp file a CRIU killed while
// saving its cache left, which would keep every later CRIU from saving it.
Result<bool> PrepareCriuRunDir(const std::string& dir);

}  // namespace cryo
