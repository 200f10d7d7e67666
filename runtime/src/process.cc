// SPDX-License-Identifier: Apache-2.0
#include "cryo/process.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cstdlib>
#include <string>

#include "cryo/file_util.h"

namespace cryo {

Result<uint64_t> ProcStatField(pid_t pid, int field) {
  auto stat = ReadFileToString("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return std::unexpected(stat.error());
  // Field 2 (comm) may hold spaces and parentheses: count from the last ')'.
  size_t pos = stat->rfind(')');
  if (pos == std::string::npos)
    return Fail(ErrorKind::kCorrupt, "bad /proc stat for " + std::to_string(pid));
  // After ") " come fields 3, 4, ...
  if (pos + 2 > stat->size()) return Fail(ErrorKind::kCorrupt, "short /proc stat");
  std::string_view rest = std::string_view(*stat).substr(pos + 2);
  for (int f = 3; f < field; ++f) {
    size_t sp = rest.find(' ');
    if (sp == std::string_view::npos) return Fail(ErrorKind::kCorrupt, "short /proc stat");
    rest.remove_prefix(sp + 1);
  }
  uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), value);
  if (ec != std::errc())
    return Fail(ErrorKind::kCorrupt, "bad field " + std::to_string(field) + " in /proc stat");
  return value;
}

Result<uint64_t> ProcessStartTime(pid_t pid) { return ProcStatField(pid, 22); }

Result<std::vector<pid_t>> ChildPids(pid_t pid) {
  std::string task_dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(task_dir.c_str());
  if (d == nullptr) return SysFail("open " + task_dir);
  std::vector<pid_t> out;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    auto text = ReadFileToString(task_dir + "/" + e->d_name + "/children");
    if (!text) continue;  // the thread ended meanwhile
    std::string_view s = *text;
    while (!s.empty()) {
      pid_t child = 0;
      auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), child);
      if (ec != std::errc()) break;
      out.push_back(child);
      s.remove_prefix(static_cast<size_t>(ptr - s.data()));
      while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
    }
  }
  ::closedir(d);
  return out;
}

Result<UniqueFd> OpenPidFd(pid_t pid, uint64_t start_time) {
  if (pid <= 0) return Fail(ErrorKind::kNotFound, "no process");
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return SysFail("pidfd_open " + std::to_string(pid));
  UniqueFd owned(fd);
  // Checked after opening: the pidfd now pins the process we compare.
  auto started = ProcessStartTime(pid);
  if (!started || *started != start_time) {
    return Fail(ErrorKind::kNotFound, "process " + std::to_string(pid) + " is gone");
  }
  return owned;
}

Status SignalPidFd(int pidfd, int signal) {
  if (::syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0) != 0) {
    return SysFail("send signal " + std::to_string(signal));
  }
  return {};
}

bool HasCapability(int cap) {
  auto status = ReadFileToString("/proc/self/status");
  if (!status) return false;
  size_t pos = status->find("CapEff:");
  if (pos == std::string::npos) return false;
  uint64_t mask = std::strtoull(status->c_str() + pos + 7, nullptr, 16);
  return cap >= 0 && cap < 64 && (mask >> cap) & 1;
}

int64_t UnixMillis() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

}  // namespace cryo

namespace cryo {
namespace {

// Async-signal-safe pieces for the child between clone3 and execve.
[[noreturn]] void ChildFail(int error_fd, int err) {
  (void)!::write(error_fd, &err, sizeof err);
  ::_exit(127);
}

}  // namespace

Result<Spawned> Spawn(const SpawnOptions& options) {
  // Everything the child needs is prepared here: it may not allocate.
  std::vector<char*> argv;
  for (const auto& a : options.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : options.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  constexpr size_t kMaxFds = 64;
  if (options.fds.size() > kMaxFds) {
    return Fail(ErrorKind::kInvalidArgument, "too many fds for " + options.path);
  }
  int max_target = -1;
  bool is_target[kMaxFds + 1] = {};
  for (const auto& [target, source] : options.fds) {
    if (target < 0 || target > static_cast<int>(kMaxFds)) {
      return Fail(ErrorKind::kInvalidArgument,
                  "child fd " + std::to_string(target) + " out of range");
    }
    max_target = std::max(max_target, target);
    is_target[target] = true;
  }

  auto error_pipe = MakePipe();
  if (!error_pipe) return std::unexpected(error_pipe.error());
  auto& [error_r, error_w] = *error_pipe;

  // The child is born into its cgroup (CLONE_INTO_CGROUP): moving it there
  // afterwards waits for the cgroup lock, some 15 ms for a cgroup's first
  // process (a restore's CRIU). Where the kernel cannot (cgroup v1, say),
  // the child moves itself.
  UniqueFd cgroup_dir;
  if (!options.cgroup_procs.empty()) {
    std::string dir = options.cgroup_procs.substr(0, options.cgroup_procs.rfind('/'));
    cgroup_dir.reset(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  }
  int pidfd = -1;
  clone_args args{};
  args.flags = CLONE_PIDFD;
  args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  args.exit_signal = SIGCHLD;
  if (cgroup_dir.valid()) {
    args.flags |= CLONE_INTO_CGROUP;
    args.cgroup = static_cast<uint64_t>(cgroup_dir.get());
  }
  long pid = ::syscall(SYS_clone3, &args, sizeof args);
  if (pid < 0 && cgroup_dir.valid() && errno != EAGAIN && errno != ENOMEM) {
    args.flags &= ~static_cast<uint64_t>(CLONE_INTO_CGROUP);
    args.cgroup = 0;
    pid = ::syscall(SYS_clone3, &args, sizeof args);
  }
  if (pid < 0) return SysFail("clone3 for " + options.path);
  const bool in_cgroup = (args.flags & CLONE_INTO_CGROUP) != 0;
  if (pid == 0) {
    int efd = error_w.get();
    // Move the error pipe and every source fd above all targets, so that
    // dup2 onto a target never clobbers a source not yet placed.
    int floor = std::max(max_target + 1, 3) + 1;
    efd = ::fcntl(efd, F_DUPFD_CLOEXEC, floor);
    if (efd < 0) ::_exit(127);
    int moved[kMaxFds];
    size_t n = options.fds.size();
    for (size_t i = 0; i < n; ++i) {
      moved[i] = ::fcntl(options.fds[i].second, F_DUPFD_CLOEXEC, floor);
      if (moved[i] < 0) ChildFail(efd, errno);
    }
    for (size_t i = 0; i < n; ++i) {
      if (::dup2(moved[i], options.fds[i].first) < 0) ChildFail(efd, errno);
    }
    // Close everything else except the error pipe (closed by exec itself).
    for (int fd = 0; fd <= max_target; ++fd) {
      if (!is_target[fd]) ::close(fd);
    }
    if (max_target + 1 < efd) ::close_range(static_cast<unsigned>(max_target + 1), efd - 1, 0);
    ::close_range(static_cast<unsigned>(efd + 1), ~0U, 0);
    if (!options.cgroup_procs.empty() && !in_cgroup) {
      int cg = ::open(options.cgroup_procs.c_str(), O_WRONLY | O_CLOEXEC);
      if (cg < 0 || ::write(cg, "0", 1) != 1) ChildFail(efd, errno);
      ::close(cg);
    }
    if (options.own_process_group && ::setpgid(0, 0) != 0) ChildFail(efd, errno);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(options.path.c_str(), argv.data(), envp.data());
    ChildFail(efd, errno);
  }
  UniqueFd owned_pidfd(pidfd);
  error_w.reset();
  int child_errno = 0;
  auto got =
      ReadFull(error_r.get(), std::span(reinterpret_cast<char*>(&child_errno), sizeof child_errno));
  if (got && *got == sizeof child_errno) {
    int status;
    ::waitpid(static_cast<pid_t>(pid), &status, 0);
    return SysFail("start " + options.path, child_errno);
  }
  return Spawned{static_cast<pid_t>(pid), std::move(owned_pidfd)};
}

}  // namespace cryo
