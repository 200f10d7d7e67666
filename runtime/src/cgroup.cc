// SPDX-License-Identifier: Apache-2.0
#include "cryo/cgroup.h"

#include <fcntl.h>
#include <linux/kcmp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <optional>
#include <thread>

#include "cryo/file_util.h"
#include "cryo/process.h"

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

std::string ProcFile(pid_t pid, const char* name) {
  return "/proc/" + std::to_string(pid) + "/" + name;
}

// The size of `pid`'s address space (field 23 of /proc/PID/stat); 0 when it
// has none (a zombie) or is gone.
uint64_t VirtualSize(pid_t pid) { return ProcStatField(pid, 23).value_or(0); }

bool SameAddressSpace(pid_t a, pid_t b) { return ::syscall(SYS_kcmp, a, b, KCMP_VM, 0, 0) == 0; }

// Two of `pids` that share one address space, if any. Processes that do
// have the same size, so kcmp() compares only those.
std::optional<std::pair<pid_t, pid_t>> SharingAddressSpace(const std::vector<pid_t>& pids) {
  std::vector<std::pair<uint64_t, pid_t>> by_size;
  for (pid_t pid : pids) {
    if (uint64_t size = VirtualSize(pid); size != 0) by_size.emplace_back(size, pid);
  }
  std::sort(by_size.begin(), by_size.end());
  for (size_t i = 0; i < by_size.size(); ++i) {
    for (size_t j = i + 1; j < by_size.size() && by_size[j].first == by_size[i].first; ++j) {
      if (SameAddressSpace(by_size[i].second, by_size[j].second)) {
        return std::pair{by_size[i].second, by_size[j].second};
      }
    }
  }
  return std::nullopt;
}

std::string Describe(pid_t pid) {
  auto comm = ReadFileToString(ProcFile(pid, "comm"));
  std::string name = comm ? *comm : "?";
  while (!name.empty() && name.back() == '\n') name.pop_back();
  return std::to_string(pid) + " (" + name + ")";
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

Result<std::string> Cgroup::PathFor(std::string_view name) {
  auto base = Base();
  if (!base) return std::unexpected(base.error());
  return base->first + "/" + std::string(name);
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

Result<bool> Cgroup::IsFullyFrozen() const {
  if (version_ == Version::kV1Freezer) {
    auto state = ReadFileToString(path_ + "/freezer.state");
    if (!state) return std::unexpected(state.error());
    return state->starts_with("FROZEN");
  }
  auto events = ReadFileToString(path_ + "/cgroup.events");
  if (!events) return std::unexpected(events.error());
  return events->find("frozen 1") != std::string::npos;
}

Status Cgroup::Freeze() { return WriteFreezer(true); }

Status Cgroup::Thaw() { return WriteFreezer(false); }

Status Cgroup::WriteFreezer(bool frozen) {
  bool v1 = version_ == Version::kV1Freezer;
  std::string file = path_ + (v1 ? "/freezer.state" : "/cgroup.freeze");
  auto fd = OpenFile(file, O_WRONLY);
  if (!fd) return std::unexpected(fd.error());
  if (v1) return WriteAll(fd->get(), frozen ? "FROZEN" : "THAWED");
  return WriteAll(fd->get(), frozen ? "1" : "0");
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

Result<bool> CgroupTraced(const std::string& path) {
  auto pids = CgroupPids(path);
  if (!pids) return std::unexpected(pids.error());
  for (pid_t pid : *pids) {
    auto status = ReadFileToString(ProcFile(pid, "status"));
    if (!status) continue;  // gone
    size_t at = status->find("\nTracerPid:");
    if (at == std::string::npos) continue;
    pid_t tracer = 0;
    const char* p = status->data() + at + 11;
    while (*p == ' ' || *p == '\t') ++p;
    std::from_chars(p, status->data() + status->size(), tracer);
    if (tracer != 0) return true;
  }
  return false;
}

Result<std::chrono::milliseconds> FreezeForDump(const std::string& path,
                                                std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  auto adopted = Cgroup::Adopt(path);
  if (!adopted) return std::unexpected(adopted.error());
  // Not ours to remove, whatever happens here.
  struct Borrowed {
    Cgroup& cgroup;
    ~Borrowed() { (void)cgroup.Release(); }
  } borrowed{*adopted};
  Cgroup& cgroup = borrowed.cgroup;
  auto start = Clock::now();
  auto deadline = start + timeout;
  auto fail = [&](Error error) -> Result<std::chrono::milliseconds> {
    (void)cgroup.Thaw();
    return std::unexpected(std::move(error));
  };
  std::string sharers;  // the processes that shared an address space
  for (int round = 0;; ++round) {
    if (auto s = cgroup.Freeze(); !s) return fail(s.error().WithContext("freeze " + path));
    // The v1 freezer can stall in FREEZING; asking again now and then helps
    // (as CRIU does).
    auto asked = Clock::now();
    for (;;) {
      auto frozen = cgroup.IsFullyFrozen();
      if (!frozen) return fail(frozen.error().WithContext("freeze " + path));
      if (*frozen) break;
      if (Clock::now() >= deadline) {
        return fail(Error(ErrorKind::kUnavailable,
                          "the job did not freeze within " + std::to_string(timeout.count()) +
                              " ms (a process stuck in the kernel, such as on a hung NFS "
                              "server?); it runs on"));
      }
      if (Clock::now() - asked > std::chrono::milliseconds(100)) {
        if (auto s = cgroup.Freeze(); !s) return fail(s.error().WithContext("freeze " + path));
        asked = Clock::now();
      }
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    auto pids = cgroup.Pids();
    if (!pids) return fail(pids.error().WithContext("freeze " + path));
    auto sharing = SharingAddressSpace(*pids);
    if (!sharing) {
      return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    }
    sharers = Describe(sharing->first) + " and " + Describe(sharing->second);
    // Let the vfork() child reach its exec, then try again: a little later
    // each round, so that a slow child is not stopped at the same place.
    if (auto s = cgroup.Thaw(); !s) return std::unexpected(s.error().WithContext("thaw " + path));
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(1 + round, 50)));
  }
  return Fail(ErrorKind::kUnavailable,
              "processes " + sharers + " kept sharing one address space for " +
                  std::to_string(timeout.count()) +
                  " ms (a vfork() child that does not exec, or clone(CLONE_VM)); CRIU cannot "
                  "checkpoint that, so the job runs on unchanged; try again once the child has "
                  "exec'd or exited");
}

std::string Cgroup::Release() { return std::exchange(path_, std::string()); }

}  // namespace cryo
