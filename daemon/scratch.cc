// SPDX-License-Identifier: Apache-2.0
#include "scratch.h"

#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
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

// Makes `path` (a directory in a world-writable tmpfs) ours, or says why
// not: it must end up a real directory, owned by us, 0700, so that nobody
// else can read the images or plant files in it.
Status ClaimPrivateDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) return SysFail("mkdir " + path);
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return SysFail("lstat " + path);
  if (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", st.st_mode & 07777);
    return Fail(ErrorKind::kPermissionDenied,
                path + " is not a directory of cryod's own (owner " + std::to_string(st.st_uid) +
                    ", mode " + mode + (S_ISLNK(st.st_mode) ? ", a symbolic link" : "") + ")");
  }
  return {};
}

// Removes every entry of `dir`, keeping `dir`.
Status EmptyDir(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (auto s = RemoveTree(entry.path().string()); !s) return s;
  }
  if (ec) return Fail(ErrorKind::kIo, "list " + dir + ": " + ec.message());
  return {};
}

}  // namespace

WorkDir::WorkDir(WorkDir&& other) noexcept
    : path_(std::exchange(other.path_, "")),
      owner_(other.owner_),
      reserved_(std::exchange(other.reserved_, 0)) {}

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
  if (o.memory_dir.empty()) return scratch;
  struct statfs fs {};
  if (::statfs(o.memory_dir.c_str(), &fs) != 0 || fs.f_type != TMPFS_MAGIC) {
    LogWarn("memory scratch off: not a tmpfs", {{"dir", o.memory_dir}});
    return scratch;
  }
  std::string root = o.memory_dir + "/cryo-" + o.tag;
  if (auto s = ClaimPrivateDir(root); !s) {
    LogWarn("memory scratch off", {{"error", s.error().ToString()}});
    return scratch;
  }
  if (auto s = EmptyDir(root); !s) {
    LogWarn("cannot clean the memory scratch", {{"error", s.error().ToString()}});
  }
  scratch->memory_root_ = root;
  return scratch;
}

ScratchSpace::~ScratchSpace() {
  if (!memory_root_.empty()) ::rmdir(memory_root_.c_str());
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
  if (tmpfs_free < reserved_ + bytes + kTmpfsSlack) return false;
  if (available < reserved_ + bytes + also_needed + margin) return false;
  reserved_ += bytes;
  return true;
}

void ScratchSpace::Release(uint64_t bytes) {
  std::lock_guard lock(mu_);
  reserved_ -= std::min(reserved_, bytes);
}

Result<WorkDir> ScratchSpace::Allocate(const std::string& id, uint64_t bytes,
                                       uint64_t also_needed) {
  // A reservation of at least one byte marks the directory as in memory.
  uint64_t reserve = std::max<uint64_t>(bytes, 1);
  bool memory = ReserveMemory(reserve, also_needed);
  WorkDir dir((memory ? memory_root_ : options_.disk_dir) + "/" + id, this, memory ? reserve : 0);
  if (auto s = MakeDirs(dir.images(), 0700); !s) return std::unexpected(s.error());
  return dir;
}

std::string ScratchTag(const std::string& state_dir) {
  uint64_t h = 14695981039346656037ull;  // FNV-1a: stable across builds
  for (unsigned char c : state_dir) h = (h ^ c) * 1099511628211ull;
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
  return out;
}

uint64_t EstimateImageBytes(const std::vector<pid_t>& pids) {
  // Images hold more than memory (metadata, page maps): a little extra.
  uint64_t total = 16 * kMiB;
  long page = ::sysconf(_SC_PAGESIZE);
  for (pid_t pid : pids) {
    auto statm = ReadFileToString("/proc/" + std::to_string(pid) + "/statm");
    if (!statm) continue;
    std::string_view s = *statm;
    size_t space = s.find(' ');
    if (space == std::string_view::npos) continue;
    s.remove_prefix(space + 1);
    uint64_t resident = 0;
    std::from_chars(s.data(), s.data() + s.size(), resident);
    total += resident * static_cast<uint64_t>(page);
  }
  return total;
}

}  // namespace cryo
