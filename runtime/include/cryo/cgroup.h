// SPDX-License-Identifier: Apache-2.0
// A job's cgroup: the set of processes cryo freezes as a whole. Lives in the
// v1 freezer hierarchy when the machine has one (hybrid or legacy mode), else
// in the cgroup2 hierarchy; either way under a `cryo/` directory.
#pragma once

#include <sys/types.h>

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

class Cgroup {
 public:
  enum class Version { kV1Freezer, kV2 };

  // Creates <root>/cryo/<name>. The returned object owns the directory and
  // removes it on destruction unless Release()d.
  static Result<Cgroup> Create(std::string_view name);
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
  // Lets a frozen cgroup run again.
  Status Thaw();
  // SIGKILLs every process in the cgroup, then removes it.
  Status KillAndRemove();
  // Gives up ownership: the directory outlives this object.
  std::string Release();

 private:
  Cgroup(std::string path, Version version) : path_(std::move(path)), version_(version) {}
  std::string path_;
  Version version_;
};

}  // namespace cryo
