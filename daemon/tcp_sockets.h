// SPDX-License-Identifier: Apache-2.0
// Whether a job holds TCP sockets, which decides how CRIU dumps it.
#pragma once

#include <sys/types.h>

#include <vector>

#include "cryo/error.h"

namespace cryo {

// Whether any of `pids` has a TCP socket (IPv4 or IPv6, in any state) open:
// an fd of /proc/PID/fd that is a socket listed in /proc/PID/net/tcp or
// tcp6 (the process's own network namespace). Only then does a dump need
// CRIU's tcp_established and its network lock, which drops the job's
// packets while it is dumped and restored, so that no peer sees a reset.
// The lock costs CRIU 170 ms of a dump (the job frozen all along) and 30 ms
// of a restore on this project's VM, for nothing when there is no
// connection to keep. The processes must not run meanwhile (a frozen job),
// or the answer can be stale at once. An error if a process cannot be read
// (it ended, say): callers then lock, as if there were sockets.
Result<bool> HoldsTcpSockets(const std::vector<pid_t>& pids);

}  // namespace cryo
