// SPDX-License-Identifier: Apache-2.0
#include "supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cryo/cgroup.h"
#include "cryo/file_util.h"
#include "cryo/log.h"
#include "cryo/process.h"
#include "cryo/shim_protocol.h"

namespace cryo {
namespace {

// What a start report (see cryo-monitor) says.
struct StartReport {
  pid_t init_pid = 0;
  uint64_t init_start_time = 0;
  pid_t pid = 0;
  std::string stdout_key, stderr_key;
};

std::vector<std::string> MonitorArgv(const std::string& dir,
                                     const std::vector<std::string>& extra) {
  std::vector<std::string> argv{"cryo-monitor", dir};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

Result<StartReport> ParseStartReport(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) {
    return Fail(ErrorKind::kInternal,
                "cryo-monitor ended without a start report (see its monitor.log)");
  }
  if (j.contains("error")) {
    int err = j.value("errno", 0);
    std::string message = j.value("error", std::string("unknown error"));
    if (err != 0) return std::unexpected(Error(SysFail("", err).error().kind(), message));
    return Fail(ErrorKind::kInternal, message);
  }
  return StartReport{j.value("init_pid", 0), j.value("init_start_time", uint64_t{0}),
                     j.value("pid", 0), j.value("stdout_key", ""), j.value("stderr_key", "")};
}

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    }
    i += n;
  }
  return true;
}

// Waits (bounded) for a process we gave up on to end, through its pidfd.
void AwaitExit(int pidfd, int timeout_ms) {
  pollfd p{pidfd, POLLIN, 0};
  ::poll(&p, 1, timeout_ms);
}

}  // namespace

Supervisor::Supervisor(std::string state_dir, std::string monitor_path)
    : table_(std::move(state_dir)), monitor_path_(std::move(monitor_path)) {}

Result<std::unique_ptr<Supervisor>> Supervisor::Create(std::string state_dir,
                                                       std::string monitor_path) {
  if (auto s = MakeDirs(state_dir + "/jobs", 0700); !s) return std::unexpected(s.error());
  std::unique_ptr<Supervisor> sup(new Supervisor(std::move(state_dir), std::move(monitor_path)));

  // SIGCHLD goes to a signalfd; the caller's other threads inherit the mask.
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  ::pthread_sigmask(SIG_BLOCK, &chld, nullptr);
  sup->sigchld_.reset(::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK));
  sup->epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  sup->wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!sup->sigchld_.valid() || !sup->epoll_.valid() || !sup->wake_.valid()) {
    return SysFail("set up the job watcher");
  }
  for (int fd : {sup->sigchld_.get(), sup->wake_.get()}) {
    epoll_event ev{EPOLLIN, {.fd = fd}};
    ::epoll_ctl(sup->epoll_.get(), EPOLL_CTL_ADD, fd, &ev);
  }

  std::vector<Error> skipped;
  auto jobs = sup->table_.LoadAll(&skipped);
  if (!jobs) return std::unexpected(jobs.error());
  for (const auto& e : skipped)
    LogWarn("skipping unreadable job record", {{"error", e.ToString()}});
  {
    std::lock_guard lock(sup->mu_);
    for (auto& job : *jobs) {
      sup->Adopt(job);
      sup->jobs_[job.id] = job;
    }
  }
  sup->ReapChildren();
  sup->watcher_ = std::thread([s = sup.get()] { s->WatchLoop(); });
  return sup;
}

Supervisor::~Supervisor() {
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
  if (watcher_.joinable()) watcher_.join();
}

static std::unexpected<Error> NoSuchJob(std::string_view name) {
  return Fail(ErrorKind::kNotFound,
              "no job named '" + std::string(name) + "' (see 'cryo ps --all')");
}

bool Supervisor::IsLive(const JobRecord& job) const {
  return job.state == JobState::kStarting || job.state == JobState::kRunning;
}

bool Supervisor::RecordEnd(JobRecord& job, std::string_view when) {
  auto ended = table_.ReadExit(job.id);
  if (!ended || !*ended) return false;
  job.state = job.stop_on_checkpoint ? JobState::kCheckpointed : JobState::kExited;
  job.exit_code = (*ended)->exit_code;
  job.ended_unix_ms = (*ended)->ended_unix_ms;
  job.pid = 0;
  std::string what = job.stop_on_checkpoint ? "job stopped after its checkpoint" : "job exited";
  if (!when.empty()) what += " " + std::string(when);
  LogInfo(what, {{"job", job.name}, {"exit_code", std::to_string(*job.exit_code)}});
  return true;
}

void Supervisor::Adopt(JobRecord& job) {
  if (!IsLive(job)) return;
  if (!RecordEnd(job, "while cryod was away")) {
    auto pidfd = OpenPidFd(job.monitor_pid, job.monitor_start_time);
    if (pidfd && job.state == JobState::kRunning) {
      LogInfo("re-adopted running job", {{"job", job.name}, {"pid", std::to_string(job.pid)}});
      RecoverFromInterruptedCheckpoint(job);
      Watch(job, std::move(*pidfd));
      return;
    }
    // Its monitor is gone without a word (or cryod died while starting it).
    MarkLost(job);
  }
  if (auto s = table_.Save(job); !s)
    LogError("cannot save job record", {{"error", s.error().ToString()}});
}

void Supervisor::RecoverFromInterruptedCheckpoint(JobRecord& job) {
  // A cryod that died during a checkpoint may leave the job frozen (CRIU
  // normally thaws it when its caller goes away, but do not rely on it) and
  // a --stop that never happened recorded.
  if (job.stop_on_checkpoint) {
    job.stop_on_checkpoint = false;
    if (auto s = table_.Save(job); !s)
      LogError("cannot save job record", {{"error", s.error().ToString()}});
  }
  auto thawed = ThawIfFrozen(job.cgroup);
  if (!thawed) {
    // No cgroup (any more) is nothing frozen: not worth an error.
    if (thawed.error().kind() != ErrorKind::kNotFound) {
      LogError("cannot thaw job", {{"job", job.name}, {"error", thawed.error().ToString()}});
    }
    return;
  }
  if (*thawed) {
    LogWarn("thawed a job left frozen by an interrupted checkpoint", {{"job", job.name}});
  }
  // The previous cryod's CRIU may still hold the job: it fails at its next
  // word to the dead cryod and then leaves the job as it found it, frozen
  // (cryod freezes jobs for their dump), before it lets go. One that was
  // starting up may not hold it yet. Watch the job a while and thaw it
  // whenever no CRIU holds it.
  if (!*thawed && !CgroupTraced(job.cgroup).value_or(false)) return;
  thaw_guards_.emplace_back(
      [this, id = job.id, name = job.name, cgroup = job.cgroup](std::stop_token stop) {
        using Clock = std::chrono::steady_clock;
        auto quiet_until = Clock::now() + std::chrono::seconds(5);
        auto give_up = Clock::now() + std::chrono::seconds(60);
        while (!stop.stop_requested() && Clock::now() < give_up) {
          bool held = CgroupTraced(cgroup).value_or(false) || IsCheckpointing(id);
          if (held) {
            quiet_until = Clock::now() + std::chrono::seconds(5);
          } else if (Clock::now() >= quiet_until) {
            break;
          } else if (auto t = ThawIfFrozen(cgroup); t && *t) {
            LogWarn("thawed a job a CRIU of the previous cryod left frozen", {{"job", name}});
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
      });
}

void Supervisor::MarkLost(JobRecord& job) {
  // Nobody holds the job's output pipes or can learn its exit status any
  // more: say so rather than pretend, and leave no unsupervised processes.
  job.state = JobState::kLost;
  job.ended_unix_ms = UnixMillis();
  job.pid = 0;
  LogWarn("job lost: its monitor is gone and left no exit status; ending what remains of it",
          {{"job", job.name}});
  if (job.cgroup.empty()) return;
  if (auto cgroup = Cgroup::Adopt(job.cgroup)) {
    if (auto s = cgroup->KillAndRemove(); !s) {
      LogError("cannot end a lost job", {{"job", job.name}, {"error", s.error().ToString()}});
    }
  }
}

void Supervisor::Watch(const JobRecord& job, UniqueFd pidfd) {
  epoll_event ev{EPOLLIN, {.fd = pidfd.get()}};
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, pidfd.get(), &ev);
  watched_[pidfd.get()] = job.id;
  pidfds_[job.id] = std::move(pidfd);
}

void Supervisor::WatchLoop() {
  for (;;) {
    epoll_event events[16];
    int n = ::epoll_wait(epoll_.get(), events, 16, -1);
    if (n < 0 && errno != EINTR) {
      LogError("job watcher failed", {{"error", std::strerror(errno)}});
      return;
    }
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == wake_.get()) return;
      if (fd == sigchld_.get()) {
        ReapChildren();
        continue;
      }
      std::string id;
      {
        std::lock_guard lock(mu_);
        auto it = watched_.find(fd);
        if (it == watched_.end()) continue;
        id = it->second;
      }
      OnMonitorExit(id);
    }
  }
}

void Supervisor::ReapChildren() {
  signalfd_siginfo si;
  while (::read(sigchld_.get(), &si, sizeof si) == sizeof si) {
  }
  // cryod is a child subreaper: monitors and anything orphaned below it.
  int status;
  while (::waitpid(-1, &status, WNOHANG) > 0) {
  }
}

void Supervisor::OnMonitorExit(const std::string& id) {
  std::lock_guard lock(mu_);
  auto pfd = pidfds_.find(id);
  if (pfd != pidfds_.end()) {
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, pfd->second.get(), nullptr);
    watched_.erase(pfd->second.get());
    pidfds_.erase(pfd);
  }
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  JobRecord& job = it->second;
  if (!RecordEnd(job, "")) MarkLost(job);
  if (auto s = table_.Save(job); !s)
    LogError("cannot save job record", {{"error", s.error().ToString()}});
  changed_.notify_all();
}

JobRecord* Supervisor::FindLocked(std::string_view name) {
  JobRecord* found = nullptr;
  for (auto& [id, job] : jobs_) {
    if (job.name != name) continue;
    if (IsLive(job)) return &job;
    if (found == nullptr || job.created_unix_ms > found->created_unix_ms) found = &job;
  }
  return found;
}

Status Supervisor::CheckAccess(const Caller& caller, const JobRecord& job,
                               std::string_view action) const {
  if (caller.is_root() || caller.uid == job.uid) return {};
  return Fail(ErrorKind::kPermissionDenied,
              "job '" + job.name + "' belongs to another user; only its owner or root may " +
                  std::string(action) + " it");
}

Result<JobRecord> Supervisor::Run(const Caller& caller, const proto::RunRequest& request) {
  if (request.argv().empty() || request.argv(0).empty()) {
    return Fail(ErrorKind::kInvalidArgument, "nothing to run: give a program after '--'");
  }
  if (request.cwd().empty() || request.cwd()[0] != '/') {
    return Fail(ErrorKind::kInvalidArgument, "the working directory must be an absolute path");
  }
  // Records are JSON: bytes that are not UTF-8 cannot be kept faithfully.
  for (const auto* list : {&request.argv(), &request.env()}) {
    for (const auto& item : *list) {
      if (!IsValidUtf8(item)) {
        return Fail(ErrorKind::kInvalidArgument,
                    "arguments and environment must be valid UTF-8 (not: '" + item + "')");
      }
    }
  }
  if (!IsValidUtf8(request.cwd()) || !IsValidUtf8(request.name())) {
    return Fail(ErrorKind::kInvalidArgument, "the working directory and name must be valid UTF-8");
  }
  for (const auto& e : request.env()) {
    if (e.find('=') == std::string::npos || e[0] == '=') {
      return Fail(ErrorKind::kInvalidArgument,
                  "bad environment entry '" + e + "' (expected KEY=VALUE)");
    }
  }
  JobRecord job;
  job.id = NewJobId();
  job.name = request.name().empty() ? "job-" + job.id.substr(0, 8) : request.name();
  job.argv.assign(request.argv().begin(), request.argv().end());
  job.env.assign(request.env().begin(), request.env().end());
  job.cwd = request.cwd();
  job.uid = caller.uid;
  job.gid = caller.gid;
  job.groups = caller.groups;
  if (!request.on_sigterm().empty()) {
    auto mode = ParseOnSigterm(request.on_sigterm());
    if (!mode) {
      return Fail(ErrorKind::kInvalidArgument,
                  "unknown --on-sigterm '" + request.on_sigterm() +
                      "' (use checkpoint, checkpoint-and-forward or forward)");
    }
    job.on_sigterm = *mode;
  }
  std::string hint = "choose another --name, or stop it with 'cryo kill " + job.name + "'";
  auto shim_args = ShimArgs(job);
  return Launch(caller, std::move(job), std::move(shim_args), hint);
}

void Supervisor::EnableShim(std::string preload_path, std::string shim_socket) {
  std::lock_guard lock(mu_);
  preload_path_ = std::move(preload_path);
  shim_socket_ = std::move(shim_socket);
}

std::vector<std::string> Supervisor::ShimArgs(const JobRecord& job) const {
  if (preload_path_.empty()) return {};
  // The shim goes first; a preload of the user's own stays after it.
  std::string preload = "LD_PRELOAD=" + preload_path_;
  for (const auto& e : job.env) {
    if (e.starts_with("LD_PRELOAD=") && e.size() > 11) preload += ":" + e.substr(11);
  }
  return {"--env", preload,
          "--env", std::string(shim::kEnvSocket) + "=" + shim_socket_,
          "--env", std::string(shim::kEnvMode) + "=" + std::string(OnSigtermName(job.on_sigterm))};
}

std::optional<JobRecord> Supervisor::JobOfProcess(pid_t pid, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  std::string needle = std::to_string(pid);
  auto holds_pid = [&](const JobRecord& job) {
    if ((job.state != JobState::kRunning && job.state != JobState::kStarting) || job.cgroup.empty())
      return false;
    auto procs = ReadFileToString(job.cgroup + "/cgroup.procs");
    std::istringstream lines(procs ? *procs : "");
    for (std::string line; std::getline(lines, line);) {
      if (line == needle) return true;
    }
    return false;
  };
  auto match = std::find_if(jobs_.begin(), jobs_.end(),
                            [&](const auto& entry) { return holds_pid(entry.second); });
  if (match == jobs_.end()) return std::nullopt;
  std::string id = match->first;
  // The program runs before Launch has read the start report.
  changed_.wait_for(lock, timeout, [&] {
    auto it = jobs_.find(id);
    return it == jobs_.end() || it->second.state != JobState::kStarting;
  });
  auto it = jobs_.find(id);
  if (it == jobs_.end() || it->second.state != JobState::kRunning) return std::nullopt;
  return it->second;
}

void Supervisor::SetNotice(const std::string& id, const std::string& notice) {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  it->second.notice = notice;
  if (auto s = table_.Save(it->second); !s)
    LogError("cannot save job record", {{"error", s.error().ToString()}});
}

Result<JobRecord> Supervisor::StartRestored(const Caller& caller, JobRecord job,
                                            std::vector<std::string> monitor_args,
                                            std::vector<std::pair<int, int>> fds) {
  if (job.id.empty()) job.id = NewJobId();
  return Launch(caller, std::move(job), std::move(monitor_args),
                "restore it under another name with --name, or stop the running one first",
                std::move(fds));
}

Result<JobRecord> Supervisor::Launch(const Caller& caller, JobRecord job,
                                     std::vector<std::string> monitor_args,
                                     const std::string& conflict_hint,
                                     std::vector<std::pair<int, int>> fds) {
  if (!IsValidJobName(job.name)) {
    return Fail(ErrorKind::kInvalidArgument,
                "invalid job name '" + job.name + "': use 1-64 letters, digits, '_', '.', '-'");
  }
  job.created_unix_ms = UnixMillis();
  job.state = JobState::kStarting;
  std::optional<Cgroup> cgroup;
  {
    std::lock_guard lock(mu_);
    if (JobRecord* old = FindLocked(job.name)) {
      if (IsLive(*old)) {
        return Fail(ErrorKind::kAlreadyExists,
                    "a job named '" + job.name + "' is already running (" + conflict_hint + ")");
      }
      if (!caller.is_root() && old->uid != caller.uid) {
        return Fail(ErrorKind::kAlreadyExists,
                    "the name '" + job.name + "' is taken by another user's job");
      }
      // A new run replaces the ended job of the same name.
      (void)table_.Remove(old->id);
      jobs_.erase(old->id);
    }
    auto made = Cgroup::Create(job.id);
    if (!made) return std::unexpected(made.error().WithContext("start job '" + job.name + "'"));
    cgroup.emplace(std::move(*made));
    job.cgroup = cgroup->path();
    if (auto s = table_.Create(job); !s)
      return std::unexpected(s.error().WithContext("start job '" + job.name + "'"));
    jobs_[job.id] = job;  // reserves the name
  }

  auto forget = [&](Error e) -> Result<JobRecord> {
    std::lock_guard lock(mu_);
    jobs_.erase(job.id);
    (void)table_.Remove(job.id);
    changed_.notify_all();
    return std::unexpected(std::move(e));
  };
  std::string dir = table_.JobDir(job.id);
  auto devnull = OpenFile("/dev/null", O_RDWR);
  auto monitor_log = OpenFile(dir + "/monitor.log", O_WRONLY | O_CREAT | O_APPEND, 0600);
  auto report = MakePipe();
  if (!devnull || !monitor_log || !report)
    return forget(Error(ErrorKind::kIo, "cannot prepare the job's files"));
  std::vector<std::pair<int, int>> monitor_fds = {
      {0, devnull->get()}, {1, devnull->get()}, {2, monitor_log->get()}, {3, report->second.get()}};
  monitor_fds.insert(monitor_fds.end(), fds.begin(), fds.end());
  auto monitor = Spawn({.path = monitor_path_,
                        .argv = MonitorArgv(dir, monitor_args),
                        .env = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
                        .fds = monitor_fds});
  report->second.reset();
  if (!monitor) return forget(monitor.error().WithContext("start job '" + job.name + "'"));
  auto report_text = ReadToEnd(report->first.get());
  auto started = ParseStartReport(report_text ? *report_text : "");
  if (!started) {
    AwaitExit(monitor->pidfd.get(), 5000);  // its cgroup must be empty before removal
    return forget(started.error().WithContext("start job '" + job.name + "'"));
  }
  job.state = JobState::kRunning;
  job.monitor_pid = monitor->pid;
  job.monitor_start_time = ProcessStartTime(monitor->pid).value_or(0);
  job.init_pid = started->init_pid;
  job.init_start_time = started->init_start_time;
  job.pid = started->pid;
  job.stdout_key = started->stdout_key;
  job.stderr_key = started->stderr_key;
  (void)cgroup->Release();  // the monitor owns it now

  std::lock_guard lock(mu_);
  jobs_[job.id] = job;
  changed_.notify_all();
  if (auto s = table_.Save(job); !s)
    LogError("cannot save job record", {{"error", s.error().ToString()}});
  Watch(job, std::move(monitor->pidfd));
  LogInfo("job started", {{"job", job.name},
                          {"uid", std::to_string(job.uid)},
                          {"pid", std::to_string(job.pid)},
                          {"command", job.argv[0]}});
  return job;
}

std::vector<JobRecord> Supervisor::List(const Caller& caller, bool all) {
  std::lock_guard lock(mu_);
  std::vector<JobRecord> out;
  for (const auto& [id, job] : jobs_) {
    if (!caller.is_root() && job.uid != caller.uid) continue;
    if (!all && !IsLive(job)) continue;
    out.push_back(job);
  }
  std::sort(out.begin(), out.end(), [](const JobRecord& a, const JobRecord& b) {
    return a.created_unix_ms < b.created_unix_ms;
  });
  return out;
}

Result<JobRecord> Supervisor::Find(const Caller& caller, std::string_view name) {
  std::lock_guard lock(mu_);
  JobRecord* job = FindLocked(name);
  if (job == nullptr) {
    return NoSuchJob(name);
  }
  if (auto s = CheckAccess(caller, *job, "see"); !s) return std::unexpected(s.error());
  return *job;
}

Result<JobRecord> Supervisor::Kill(const Caller& caller, std::string_view name, int signal) {
  std::lock_guard lock(mu_);
  JobRecord* job = FindLocked(name);
  if (job == nullptr) {
    return NoSuchJob(name);
  }
  if (auto s = CheckAccess(caller, *job, "signal"); !s) return std::unexpected(s.error());
  if (!IsLive(*job)) {
    return Fail(ErrorKind::kFailedPrecondition, "job '" + job->name + "' is not running (" +
                                                    std::string(JobStateName(job->state)) + ")");
  }
  auto pidfd = OpenPidFd(job->init_pid, job->init_start_time);
  if (!pidfd)
    return Fail(ErrorKind::kFailedPrecondition, "job '" + job->name + "' is already ending");
  if (auto s = SignalPidFd(pidfd->get(), signal); !s) {
    return std::unexpected(s.error().WithContext("signal job '" + job->name + "'"));
  }
  LogInfo("job signalled", {{"job", job->name},
                            {"signal", std::to_string(signal)},
                            {"by_uid", std::to_string(caller.uid)}});
  return *job;
}

Result<JobRecord> Supervisor::Remove(const Caller& caller, std::string_view name, bool force) {
  std::unique_lock lock(mu_);
  JobRecord* job = FindLocked(name);
  if (job == nullptr) {
    return NoSuchJob(name);
  }
  if (auto s = CheckAccess(caller, *job, "remove"); !s) return std::unexpected(s.error());
  std::string id = job->id;
  if (IsLive(*job)) {
    if (!force) {
      return Fail(ErrorKind::kFailedPrecondition,
                  "job '" + job->name + "' is running; stop it first ('cryo kill " + job->name +
                      "') or use 'cryo rm --force " + job->name + "'");
    }
    if (auto pidfd = OpenPidFd(job->init_pid, job->init_start_time))
      (void)SignalPidFd(pidfd->get(), SIGKILL);
    bool ended = changed_.wait_for(lock, std::chrono::seconds(10), [&] {
      auto it = jobs_.find(id);
      return it == jobs_.end() || !IsLive(it->second);
    });
    if (!ended)
      return Fail(ErrorKind::kFailedPrecondition,
                  "job '" + std::string(name) + "' did not end after SIGKILL");
  }
  auto it = jobs_.find(id);
  if (it == jobs_.end())
    return Fail(ErrorKind::kNotFound, "job '" + std::string(name) + "' is already removed");
  JobRecord removed = it->second;
  if (auto s = table_.Remove(id); !s)
    return std::unexpected(s.error().WithContext("remove job '" + removed.name + "'"));
  jobs_.erase(it);
  LogInfo("job removed", {{"job", removed.name}});
  return removed;
}

Result<JobRecord> Supervisor::BeginCheckpoint(const Caller& caller, std::string_view name,
                                              bool stop) {
  std::lock_guard lock(mu_);
  JobRecord* job = FindLocked(name);
  if (job == nullptr) {
    return NoSuchJob(name);
  }
  if (auto s = CheckAccess(caller, *job, "checkpoint"); !s) return std::unexpected(s.error());
  if (job->state != JobState::kRunning) {
    return Fail(ErrorKind::kFailedPrecondition, "job '" + job->name + "' is not running (" +
                                                    std::string(JobStateName(job->state)) +
                                                    "); only running jobs can be checkpointed");
  }
  if (!checkpointing_.insert(job->id).second) {
    return Fail(ErrorKind::kFailedPrecondition,
                "job '" + job->name + "' is being checkpointed already; wait for it to finish");
  }
  if (stop) {
    job->stop_on_checkpoint = true;
    if (auto s = table_.Save(*job); !s) {
      checkpointing_.erase(job->id);
      job->stop_on_checkpoint = false;
      return std::unexpected(s.error());
    }
  }
  return *job;
}

void Supervisor::EndCheckpoint(const std::string& id, const std::string& checkpoint_id) {
  std::lock_guard lock(mu_);
  checkpointing_.erase(id);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  JobRecord& job = it->second;
  if (!checkpoint_id.empty()) job.last_checkpoint = checkpoint_id;
  // A failed --stop checkpoint leaves the job running: it must not be
  // reported as checkpointed when it ends later.
  if (checkpoint_id.empty() && IsLive(job)) job.stop_on_checkpoint = false;
  if (auto s = table_.Save(job); !s) {
    LogError("cannot save job record", {{"error", s.error().ToString()}});
  }
  changed_.notify_all();
}

bool Supervisor::IsCheckpointing(const std::string& id) {
  std::lock_guard lock(mu_);
  return checkpointing_.contains(id);
}

std::optional<JobRecord> Supervisor::Get(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::nullopt;
  return it->second;
}

bool Supervisor::WaitForEnd(const std::string& id, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return changed_.wait_for(lock, timeout, [&] {
    auto it = jobs_.find(id);
    return it == jobs_.end() || !IsLive(it->second);
  });
}

}  // namespace cryo
