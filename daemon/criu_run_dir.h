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
// another kernel, clears it). CRIU's default is /run, which is not tmpfs
// everywhere; where it is not, every CRIU run probes again (~25 ms) and
// also leaves a temp file that keeps it from ever caching. tools/setup.sh
// builds CRIU with this directory instead; /dev/shm is tmpfs on every
// Linux system.
inline constexpr std::string_view kCriuRunDir = "/dev/shm/cryo-criu";

// Makes `dir` a directory only root can write, for CRIU (running as root)
// to trust what it reads there. /dev/shm is writable by everyone: anything
// else already at `dir` (another user's directory, a symbolic link, a
// file) is moved aside to a name beside it first. Fails if `dir` still is
// not root's own afterwards.
Status PrepareCriuRunDir(const std::string& dir);

}  // namespace cryo
