// SPDX-License-Identifier: Apache-2.0
#include "scratch.h"

#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <string_view>

#include "cryo/file_util.h"
#include "cryo/log.h"

namespace cryo {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
// Room left on the tmpfs beyond the images.
constexpr uint64_t kTmpfsSlack = 64 * kMiB;
// Memory left available after the images (and a restored process) are in:
// at least 1 GiB, or a tenth of the machine if that is more.
constexpr uint64_t kMinMemoryMargin = 1024 * kMiB;

// The number after `field` in /proc/meminfo text, in bytes.
uint64_t MeminfoBytes(std::string_view text, std::string_view field) {
  size_t at = text.find(field);
  if (at == std::string_view::npos) return 0;
  std::string_view rest = text.substr(at + field.size());
  while (!rest.empty() && (rest.front() == ' ' || rest.front() == ':')) rest.remove_prefix(1);
  uint64_t kib = 0;
  std::from_chars(rest.data(), rest.data() + rest.size(), kib);
  return kib * 1024;
}

// Whether `path` is a real directory of ours that nobody else can enter.
bool IsPrivateDir(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == ::geteuid() &&
         (st.st_mode & 077) == 0;
}

// Images may go below `dir` only if nobody but root can replace what we make
// there: a tmpfs owned by root, sticky (as /dev/shm) or writable by root alone.
Status CheckMemoryDir(const std::string& dir) {
  struct statfs fs {};
  if (::statfs(dir.c_str(), &fs) != 0) return SysFail("memory scratch " + dir);
  if (fs.f_type != TMPFS_MAGIC) {
    return Fail(
        ErrorKind::kInvalidArgument,
        "memory scratch " + dir + " is not a tmpfs (set memory_scratch to a tmpfs, or off)");
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return SysFail("memory scratch " + dir);
  bool others_write = (st.st_mode & (S_IWGRP | S_IWOTH)) != 0;
  if (st.st_uid != 0 || (others_write && (st.st_mode & S_ISVTX) == 0)) {
    return Fail(ErrorKind::kPermissionDenied,
                "memory scratch " + dir +
                    " must be owned by root and sticky or writable by root alone (as /dev/shm is)");
  }
  return {};
}

}  // namespace

WorkDir::WorkDir(WorkDir&& other) noexcept
    : path_(std::exchange(other.path_, "")),
      owner_(other.owner_),
      in_memory_(other.in_memory_),
      reserved_(std::exchange(other.reserved_, 0)) {}

WorkDir& WorkDir::operator=(WorkDir&& other) noexcept {
  if (this != &other) {
    if (!path_.empty()) (void)RemoveTree(path_);
    if (reserved_ > 0) owner_->Release(reserved_);
    path_ = std::exchange(other.path_, "");
    owner_ = other.owner_;
    in_memory_ = other.in_memory_;
    reserved_ = std::exchange(other.reserved_, 0);
  }
  return *this;
}

WorkDir::~WorkDir() {
  if (!path_.empty()) (void)RemoveTree(path_);
  if (reserved_ > 0) owner_->Release(reserved_);
}

Result<std::unique_ptr<ScratchSpace>> ScratchSpace::Create(Options options) {
  std::unique_ptr<ScratchSpace> scratch(new ScratchSpace(std::move(options)));
  const Options& o = scratch->options_;
  if (auto s = RemoveTree(o.disk_dir); !s) {
    LogWarn("cannot clean the work directory", {{"error", s.error().ToString()}});
  }
  if (auto s = MakeDirs(o.disk_dir, 0700); !s) {
    return std::unexpected(s.error().WithContext("scratch space"));
  }
  // What a predecessor that died left in memory holds secrets: remove it,
  // if it still is the private directory we made (never follow a link).
  if (auto previous = ReadFileToString(o.record)) {
    std::string path = *previous;
    bool ours = path.find("/cryo-") != std::string::npos && path.find("..") == std::string::npos;
    if (ours && IsPrivateDir(path)) (void)RemoveTree(path);
    ::unlink(o.record.c_str());
  }
  if (o.memory_dir.empty()) return scratch;
  if (auto s = CheckMemoryDir(o.memory_dir); !s) {
    LogWarn("memory scratch off", {{"error", s.error().ToString()}});
    return scratch;
  }
  std::string templ = o.memory_dir + "/cryo-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) {
    LogWarn("memory scratch off", {{"error", SysFail("mkdtemp " + templ).error().ToString()}});
    return scratch;
  }
  if (auto s = WriteFileAtomic(o.record, templ); !s) {
    ::rmdir(templ.c_str());
    LogWarn("memory scratch off", {{"error", s.error().ToString()}});
    return scratch;
  }
  scratch->memory_root_ = templ;
  return scratch;
}

void ScratchSpace::Close() {
  if (memory_root_.empty()) return;
  (void)RemoveTree(memory_root_);
  ::unlink(options_.record.c_str());
  memory_root_.clear();
}

bool ScratchSpace::ReserveMemory(uint64_t bytes, uint64_t also_needed) {
  if (memory_root_.empty()) return false;
  struct statvfs fs {};
  if (::statvfs(memory_root_.c_str(), &fs) != 0) return false;
  auto text = ReadFileToString("/proc/meminfo");
  if (!text) return false;
  uint64_t available = MeminfoBytes(*text, "MemAvailable");
  uint64_t margin = std::max(kMinMemoryMargin, MeminfoBytes(*text, "MemTotal") / 10);
  std::lock_guard lock(mu_);
  // What other operations reserved may not be written yet: count it as gone.
  uint64_t tmpfs_free = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  uint64_t images = 0, memory = 0;
  if (__builtin_add_overflow(reserved_, bytes, &images) ||
      __builtin_add_overflow(images, also_needed, &memory) ||
      __builtin_add_overflow(memory, margin, &memory) ||
      images > tmpfs_free - std::min(tmpfs_free, kTmpfsSlack) || memory > available) {
    return false;
  }
  reserved_ = images;
  return true;
}

void ScratchSpace::Release(uint64_t bytes) {
  std::lock_guard lock(mu_);
  reserved_ -= std::min(reserved_, bytes);
}

Result<WorkDir> ScratchSpace::Allocate(const std::string& id, std::optional<uint64_t> bytes,
                                       uint64_t also_needed) {
  // An unknown size goes to disk: it could be anything.
  if (bytes && ReserveMemory(*bytes, also_needed)) {
    WorkDir dir(memory_root_ + "/" + id, this, true, *bytes);
    if (MakeDirs(dir.images(), 0700)) return dir;
  }
  WorkDir dir(options_.disk_dir + "/" + id, this, false, 0);
  if (auto s = MakeDirs(dir.images(), 0700); !s) return std::unexpected(s.error());
  return dir;
}

std::optional<uint64_t> EstimateImageBytes(const std::vector<pid_t>& pids) {
  // Images hold more than memory (metadata, page maps): a little extra.
  uint64_t total = 16 * kMiB;
  for (pid_t pid : pids) {
    auto rollup = ReadFileToString("/proc/" + std::to_string(pid) + "/smaps_rollup");
    if (!rollup) return std::nullopt;
    total += MeminfoBytes(*rollup, "\nRss:") + MeminfoBytes(*rollup, "\nSwap:");
  }
  return total;
}

}  // namespace cryo
