// SPDX-License-Identifier: Apache-2.0
#include "cryo/cgroup.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <thread>

#include "cryo/file_util.h"

namespace cryo {
namespace {

constexpr char kCgroupRoot[] = "/sys/fs/cgroup";

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Where job cgroups go on this machine. On a hybrid machine the v1 freezer
// is what CRIU's freeze_cgroup drives most reliably, so it wins.
Result<std::pair<std::string, Cgroup::Version>> Base() {
  std::string root = kCgroupRoot;
  if (Exists(root + "/freezer/freezer.state") || Exists(root + "/freezer/cgroup.procs")) {
    return std::pair{root + "/freezer/cryo", Cgroup::Version::kV1Freezer};
  }
  if (Exists(root + "/cgroup.controllers")) return std::pair{root + "/cryo", Cgroup::Version::kV2};
  if (Exists(root + "/unified/cgroup.controllers")) {
    return std::pair{root + "/unified/cryo", Cgroup::Version::kV2};
  }
  return Fail(ErrorKind::kUnavailable,
              "no cgroup freezer found under /sys/fs/cgroup (mount cgroup2 or the v1 freezer)");
}

}  // namespace

Result<Cgroup> Cgroup::Create(std::string_view name) {
  auto base = Base();
  if (!base) return std::unexpected(base.error());
  if (::mkdir(base->first.c_str(), 0755) != 0 && errno != EEXIST)
    return SysFail("mkdir " + base->first);
  std::string path = base->first + "/" + std::string(name);
  if (::mkdir(path.c_str(), 0755) != 0) return SysFail("create cgroup " + path);
  return Cgroup(path, base->second);
}

Result<Cgroup> Cgroup::Adopt(std::string path) {
  if (!Exists(path + "/cgroup.procs")) return Fail(ErrorKind::kNotFound, "no cgroup at " + path);
  Version v = path.find("/freezer/") != std::string::npos ? Version::kV1Freezer : Version::kV2;
  return Cgroup(std::move(path), v);
}

Cgroup::Cgroup(Cgroup&& other) noexcept : path_(other.Release()), version_(other.version_) {}

Cgroup& Cgroup::operator=(Cgroup&& other) noexcept {
  if (this != &other) {
    (void)Remove();
    version_ = other.version_;
    path_ = other.Release();
  }
  return *this;
}

Cgroup::~Cgroup() { (void)Remove(); }

Result<std::vector<pid_t>> Cgroup::Pids() const { return CgroupPids(path_); }

Result<std::vector<pid_t>> CgroupPids(const std::string& path) {
  auto text = ReadFileToString(path + "/cgroup.procs");
  if (!text) return std::unexpected(text.error());
  std::vector<pid_t> pids;
  std::string_view s = *text;
  while (!s.empty()) {
    pid_t pid = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), pid);
    if (ec != std::errc()) break;
    pids.push_back(pid);
    s.remove_prefix(static_cast<size_t>(ptr - s.data()));
    while (!s.empty() && (s.front() == '\n' || s.front() == ' ')) s.remove_prefix(1);
  }
  return pids;
}

Status Cgroup::Remove() {
  if (path_.empty()) return {};
  // The kernel refuses rmdir (EBUSY) until the last task has been reaped.
  for (int attempt = 0; attempt < 100; ++attempt) {
    if (::rmdir(path_.c_str()) == 0 || errno == ENOENT) {
      path_.clear();
      return {};
    }
    if (errno != EBUSY) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return SysFail("remove cgroup " + path_);
}

Result<bool> Cgroup::IsFrozen() const {
  bool v1 = version_ == Version::kV1Freezer;
  auto state = ReadFileToString(path_ + (v1 ? "/freezer.state" : "/cgroup.freeze"));
  if (!state) return std::unexpected(state.error());
  return v1 ? !state->starts_with("THAWED") : state->starts_with("1");
}

Status Cgroup::Thaw() {
  bool v1 = version_ == Version::kV1Freezer;
  std::string file = path_ + (v1 ? "/freezer.state" : "/cgroup.freeze");
  auto fd = OpenFile(file, O_WRONLY);
  if (!fd) return std::unexpected(fd.error());
  return WriteAll(fd->get(), v1 ? "THAWED" : "0");
}

Status Cgroup::KillAndRemove() {
  auto pids = Pids();
  if (!pids) return std::unexpected(pids.error());
  for (pid_t pid : *pids) ::kill(pid, SIGKILL);
  return Remove();
}

Result<bool> ThawIfFrozen(const std::string& path) {
  auto cgroup = Cgroup::Adopt(path);
  if (!cgroup) return std::unexpected(cgroup.error());
  auto frozen = cgroup->IsFrozen();
  Status thawed = frozen && *frozen ? cgroup->Thaw() : Status{};
  (void)cgroup->Release();  // not ours to remove
  if (!frozen) return std::unexpected(frozen.error());
  if (!thawed) return std::unexpected(thawed.error());
  return *frozen;
}

std::string Cgroup::Release() { return std::exchange(path_, std::string()); }

}  // namespace cryo
