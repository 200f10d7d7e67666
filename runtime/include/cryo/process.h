// SPDX-License-Identifier: Apache-2.0
// Processes on the host: identity across pid reuse, and pidfds.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cryo/error.h"
#include "cryo/unique_fd.h"

namespace cryo {

// Numeric field `field` (counted from 1, as in proc(5); 3 or more) of
// /proc/PID/stat.
Result<uint64_t> ProcStatField(pid_t pid, int field);
// The start time of `pid` in clock ticks since boot (/proc/PID/stat field
// 22). A pid plus its start time names one process for the life of the boot.
Result<uint64_t> ProcessStartTime(pid_t pid);

// The direct children of `pid` (from /proc/PID/task/*/children).
Result<std::vector<pid_t>> ChildPids(pid_t pid);

// Opens a pidfd for `pid`, refusing if the process there is not the one that
// started at `start_time` (the pid was reused) or is gone.
Result<UniqueFd> OpenPidFd(pid_t pid, uint64_t start_time);

// Sends `signal` through a pidfd (immune to pid reuse).
Status SignalPidFd(int pidfd, int signal);

// Whether this process has capability `cap` (CAP_*) in its effective set.
bool HasCapability(int cap);

// Milliseconds since the Unix epoch (the wall clock).
int64_t UnixMillis();

}  // namespace cryo

namespace cryo {

struct SpawnOptions {
  std::string path;               // absolute path of the executable
  std::vector<std::string> argv;  // argv[0] included
  std::vector<std::string> env;   // the child's whole environment
  // fds the child gets: {child fd, parent fd}. Every other fd is closed.
  std::vector<std::pair<int, int>> fds;
  // If set, the child runs in this cgroup (its cgroup.procs file) from
  // birth where the kernel allows, or moves itself there before exec.
  std::string cgroup_procs;
  // The child leads a process group of its own, whose id is its pid: what
  // it forks can then be signalled with it (kill(-pid, ...)), even once it
  // is gone.
  bool own_process_group = false;
};

// A child process and its pidfd (from clone3, so no pid-reuse window).
struct Spawned {
  pid_t pid = 0;
  UniqueFd pidfd;
};

// Starts `options.path` as a child. Safe in a multi-threaded process: the
// child only calls async-signal-safe functions before execve. The child starts
// with every signal unblocked and at its default disposition. An exec failure
// is returned as an error naming the path. The caller reaps the child.
Result<Spawned> Spawn(const SpawnOptions& options);

}  // namespace cryo
