// SPDX-License-Identifier: Apache-2.0
// The directory CRIU's parasite makes in a dumped task's working directory.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string_view>

#include "cryo/error.h"

namespace cryo {

// When the /proc of a dumped PID namespace's root task is not that
// namespace's (a job's tasks see the host's), CRIU's parasite mounts a
// procfs of its own on this directory, made in the root task's working
// directory (a relative path), and removes it right after. For a job the
// root task is cryo-init, whose cwd is "/" (root's, never a directory the
// user controls: the parasite mounts there as root), so every dump on the
// machine uses /proc.crtools. Two at the same moment collide on it, as does
// any dump after a CRIU killed between the two steps left it behind: the
// parasite's mkdir fails with EEXIST and the whole dump fails, before any
// image is written.
inline constexpr std::string_view kCriuProcDir = "proc.crtools";

// Whether a failed dump failed that way (CRIU 4.2's log line, which the
// error carries).
bool IsCriuProcDirCollision(const Error& dump_error);

// Removes kCriuProcDir from the working directory of `root_task` (the
// task whose directory CRIU's parasite uses) if it is an empty directory
// last changed more than `age` ago (a collision with a running dump's is
// never that old; rmdir leaves a non-empty or mounted one alone). True if
// it removed one; false also when the task is gone.
bool RemoveStaleCriuProcDir(pid_t root_task, std::chrono::seconds age);

}  // namespace cryo
