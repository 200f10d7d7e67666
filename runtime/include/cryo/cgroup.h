// SPDX-License-Identifier: Apache-2.0
// A job's cgroup: the set of processes cryo freezes as a whole. Lives in the
// v1 freezer hierarchy when the machine has one (hybrid or legacy mode), else
// in the cgroup2 hierarchy; either way under a `cryo/` directory.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "cryo/error.h"

namespace cryo {

// Every process in the cgroup directory `path`.
Result<std::vector<pid_t>> CgroupPids(const std::string& path);

// Thaws the job cgroup at `path` if it is frozen; returns whether it was.
// Leaves the directory alone.
Result<bool> ThawIfFrozen(const std::string& path);

// Whether a process of the cgroup at `path` is being traced (ptrace): a CRIU
// holds it.
Result<bool> CgroupTraced(const std::string& path);

// Freezes the job cgroup at `path` at a moment when no two of its processes
// share an address space, for CRIU to dump; returns how long that took.
// A vfork() child that has not exec'd yet shares its parent's, and the
// parent then waits in a state CRIU cannot seize: CRIU would give up on the
// whole dump after its timeout. Any shell running commands is in that state
// now and then, so when the freeze catches one the cgroup runs for a moment
// and is frozen again, until `timeout`. Blocks; on failure the cgroup is left
// thawed and the error names the processes.
Result<std::chrono::milliseconds> FreezeForDump(const std::string& path,
                                                std::chrono::milliseconds timeout);

class Cgroup {
 public:
  enum class Version { kV1Freezer, kV2 };

  // Creates <root>/cryo/<name>. The returned object owns the directory and
  // removes it on destruction unless Release()d.
  static Result<Cgroup> Create(std::string_view name);
  // The path Create(name) makes (nothing is created).
  static Result<std::string> PathFor(std::string_view name);
  // Takes ownership of an existing job cgroup directory (made by Create).
  static Result<Cgroup> Adopt(std::string path);

  Cgroup(Cgroup&& other) noexcept;
  Cgroup& operator=(Cgroup&& other) noexcept;
  Cgroup(const Cgroup&) = delete;
  Cgroup& operator=(const Cgroup&) = delete;
  ~Cgroup();

  const std::string& path() const { return path_; }
  Version version() const { return version_; }
  // Writing "0" here moves the writing process into the cgroup.
  std::string procs_file() const { return path_ + "/cgroup.procs"; }
  // Every process in the cgroup.
  Result<std::vector<pid_t>> Pids() const;
  // Removes the directory, waiting up to ~1 s for the last processes to leave.
  Status Remove();
  // Whether the cgroup is frozen (v1 freezer.state, v2 cgroup.freeze).
  Result<bool> IsFrozen() const;
  // Whether every process in the cgroup is frozen (v1 FROZEN, not FREEZING;
  // v2 "frozen 1" in cgroup.events).
  Result<bool> IsFullyFrozen() const;
  // Asks the kernel to freeze the cgroup; IsFullyFrozen() says when it has.
  Status Freeze();
  // Lets a frozen cgroup run again.
  Status Thaw();
  // SIGKILLs every process in the cgroup, then removes it.
  Status KillAndRemove();
  // Gives up ownership: the directory outlives this object.
  std::string Release();

 private:
  Cgroup(std::string path, Version version) : path_(std::move(path)), version_(version) {}
  // Writes the freezer's state file (freezer.state or cgroup.freeze).
  Status WriteFreezer(bool frozen);
  std::string path_;
  Version version_;
};

}  // namespace cryo
