// SPDX-License-Identifier: Apache-2.0
// Scratch space for CRIU's image files while a checkpoint is dumped and
// stored, or while a restore is fetched and handed to CRIU. In memory (a
// private directory on a tmpfs such as /dev/shm) when the images fit there
// with room to spare, so that they never make a round trip through the
// disk; on disk under the state directory otherwise.
//
// Thread-safe: concurrent operations reserve their bytes, so two large
// checkpoints at once do not both count on the same free memory.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cryo/error.h"

namespace cryo {

class ScratchSpace;

// One operation's directory (images/ inside it). Removed, with its
// reservation released, on destruction. Move-only.
class WorkDir {
 public:
  WorkDir(WorkDir&& other) noexcept;
  WorkDir& operator=(WorkDir&& other) noexcept;  // removes the directory held so far
  ~WorkDir();
  const std::string& path() const { return path_; }
  std::string images() const { return path_ + "/images"; }
  bool in_memory() const { return in_memory_; }

 private:
  friend class ScratchSpace;
  WorkDir(std::string path, ScratchSpace* owner, bool in_memory, uint64_t reserved)
      : path_(std::move(path)), owner_(owner), in_memory_(in_memory), reserved_(reserved) {}
  std::string path_;
  ScratchSpace* owner_;
  bool in_memory_;
  uint64_t reserved_;
};

class ScratchSpace {
 public:
  struct Options {
    std::string disk_dir;    // always usable; created 0700
    std::string memory_dir;  // a tmpfs directory to make ours in; empty: none
    std::string record;      // a file of the state directory naming ours
  };
  // Prepares both places and removes what a cryod that died mid-operation
  // left there (the memory directory named in `record`, if it is still a
  // private directory of ours). Our memory directory is a fresh one with a
  // random name (mkdtemp, 0700) in memory_dir, which must be a tmpfs owned by
  // root and either sticky or writable by root alone: nobody else can then
  // replace it or anything in it. Otherwise memory scratch is off (logged).
  static Result<std::unique_ptr<ScratchSpace>> Create(Options options);

  // Removes our memory directory and its record. Only when no operation
  // runs or can start any more (the caller excludes them).
  void Close();

  // A fresh directory `id` for images of about `bytes` bytes (nullopt: not
  // known). In memory when the tmpfs has room for them and the machine's
  // available memory covers them plus `also_needed` (a restore's process
  // needs its memory too) and a margin; else on disk.
  Result<WorkDir> Allocate(const std::string& id, std::optional<uint64_t> bytes,
                           uint64_t also_needed = 0);

  // Where our memory scratch is ("" if none).
  const std::string& memory_root() const { return memory_root_; }

 private:
  friend class WorkDir;
  explicit ScratchSpace(Options options) : options_(std::move(options)) {}
  bool ReserveMemory(uint64_t bytes, uint64_t also_needed);
  void Release(uint64_t bytes);

  Options options_;
  std::string memory_root_;
  std::mutex mu_;
  uint64_t reserved_ = 0;  // guarded by mu_
};

// A guess of how many bytes CRIU's images of these processes take: their
// resident and swapped-out memory, summed (shared pages counted for each, so
// it errs high); nullopt if a process's figures cannot be read.
std::optional<uint64_t> EstimateImageBytes(const std::vector<pid_t>& pids);

}  // namespace cryo
