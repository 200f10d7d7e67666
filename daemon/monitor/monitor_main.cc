// SPDX-License-Identifier: Apache-2.0
// cryo-monitor: the supervisor of one job, started by cryod (as root).
//
//   cryo-monitor JOB_DIR      (fd 3: the start-report pipe to cryod)
//
// It owns what must outlive cryod: the read ends of the job's stdout and
// stderr pipes, and the parenthood of the job's cryo-init (hence its exit
// status). cryod can die and come back; the job keeps running and its output
// keeps flowing into JOB_DIR/output.log. When the job ends, the monitor
// drains the pipes, writes JOB_DIR/exit.json, removes the job's cgroup and
// exits.
//
// Start report on fd 3, one JSON object, then the fd is closed:
//   {"init_pid":N,"init_start_time":T,"pid":P}      the program runs
//   {"errno":E,"error":"message"}                    it does not
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cryo/cgroup.h"
#include "cryo/file_util.h"
#include "cryo/job.h"
#include "cryo/job_log.h"
#include "cryo/log.h"
#include "cryo/process.h"
#include "cryo/unique_fd.h"

namespace cryo {
namespace {

constexpr int kStartReportFd = 3;

struct Pipes {
  UniqueFd out_r, out_w, err_r, err_w, report_r, report_w;
};

int64_t UnixNanos() {
  using namespace std::chrono;
  return duration_cast<nanoseconds>(system_clock::now().time_since_epoch()).count();
}

void Report(const nlohmann::json& j) {
  (void)WriteAll(kStartReportFd, j.dump() + "\n");
  ::close(kStartReportFd);
}

// In the forked child, which is pid 1 of the new PID namespace: enter the
// cgroup, become a session leader, take the pipes as stdio, drop to the
// owner's credentials, enter the cwd, exec cryo-init. Only returns on error.
[[noreturn]] void BecomeJobInit(const JobRecord& job, const std::string& init_path, Pipes& p) {
  auto fail = [&](int err, const std::string& what) {
    std::string msg = std::to_string(err) + " " + what + ": " + std::strerror(err);
    (void)!::write(p.report_w.get(), msg.data(), msg.size());
    ::_exit(127);
  };
  {
    auto procs = OpenFile(job.cgroup + "/cgroup.procs", O_WRONLY);
    if (!procs || !WriteAll(procs->get(), "0")) fail(errno, "join cgroup " + job.cgroup);
  }
  ::setsid();
  UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (::dup2(devnull.get(), 0) < 0 || ::dup2(p.out_w.get(), 1) < 0 ||
      ::dup2(p.err_w.get(), 2) < 0 || ::dup2(p.report_w.get(), 3) < 0) {
    fail(errno, "set up stdio");
  }
  p.report_w.reset(::fcntl(3, F_DUPFD_CLOEXEC, 4));  // for fail(); fd 3 is cryo-init's
  std::vector<char*> argv{const_cast<char*>("cryo-init")};
  for (const auto& a : job.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : job.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  // The monitor ignores some signals and blocks SIGCHLD; the job must not inherit that.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  if (::setgroups(job.groups.size(), job.groups.data()) != 0) fail(errno, "setgroups");
  if (::setgid(job.gid) != 0) fail(errno, "setgid " + std::to_string(job.gid));
  if (::setuid(job.uid) != 0) fail(errno, "setuid " + std::to_string(job.uid));
  if (::chdir(job.cwd.c_str()) != 0) fail(errno, "enter working directory '" + job.cwd + "'");
  ::execve(init_path.c_str(), argv.data(), envp.data());
  fail(errno, "exec " + init_path);
  ::_exit(127);
}

// Reads the start report of cryo-init: empty means the program runs.
std::string ReadInitReport(int fd) {
  auto text = ReadToEnd(fd);
  return text ? *text : "0 cannot read the start report";
}

// Moves what is in the pipe into the log. Returns false at end of file.
bool Pump(int pipe_fd, LogStream stream, int log_fd) {
  char buf[65536];
  ssize_t n = ::read(pipe_fd, buf, sizeof buf);
  if (n < 0) return errno == EINTR || errno == EAGAIN;
  if (n == 0) return false;
  (void)WriteAll(
      log_fd, EncodeLogRecord(stream, UnixNanos(), std::string_view(buf, static_cast<size_t>(n))));
  return true;
}

int Run(const std::string& job_dir) {
  auto text = ReadFileToString(job_dir + "/job.json");
  auto job = text ? DecodeJobRecord(*text) : std::unexpected(text.error());
  if (!job) {
    Report({{"errno", 0}, {"error", job.error().ToString()}});
    return 1;
  }
  char exe[4096];
  ssize_t len = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) {
    Report({{"errno", errno}, {"error", "cannot find cryo-monitor's own path"}});
    return 1;
  }
  std::string init_path = std::string(exe, static_cast<size_t>(len));
  init_path = init_path.substr(0, init_path.rfind('/')) + "/cryo-init";

  auto log = OpenFile(job_dir + "/output.log", O_WRONLY | O_CREAT | O_APPEND, 0600);
  if (!log) {
    Report({{"errno", log.error().sys_errno()}, {"error", log.error().ToString()}});
    return 1;
  }
  Pipes p;
  for (auto* pair : {&p.out_r, &p.err_r, &p.report_r}) {
    auto made = MakePipe();
    if (!made) {
      Report({{"errno", made.error().sys_errno()}, {"error", made.error().ToString()}});
      return 1;
    }
    *pair = std::move(made->first);
    (pair == &p.out_r   ? p.out_w
     : pair == &p.err_r ? p.err_w
                        : p.report_w) = std::move(made->second);
  }
  // Take the job's cgroup: this process removes it when the job is over.
  auto cgroup = Cgroup::Adopt(job->cgroup);
  if (!cgroup) {
    Report({{"errno", 0}, {"error", cgroup.error().ToString()}});
    return 1;
  }

  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, nullptr);
  UniqueFd sigfd(::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK));

  // The next child is pid 1 of a new PID namespace.
  if (::unshare(CLONE_NEWPID) != 0) {
    Report({{"errno", errno},
            {"error", std::string("unshare(CLONE_NEWPID): ") + std::strerror(errno)}});
    return 1;
  }
  pid_t init = ::fork();
  if (init < 0) {
    Report({{"errno", errno}, {"error", std::string("fork: ") + std::strerror(errno)}});
    return 1;
  }
  if (init == 0) BecomeJobInit(*job, init_path, p);
  p.out_w.reset();
  p.err_w.reset();
  p.report_w.reset();

  std::string failure = ReadInitReport(p.report_r.get());
  int status = 0;
  if (!failure.empty()) {
    int err = std::atoi(failure.c_str());
    std::string message = failure.substr(std::min(failure.find(' ') + 1, failure.size()));
    Report({{"errno", err}, {"error", message}});
    ::waitpid(init, &status, 0);
    return 1;
  }
  pid_t program = 0;
  if (auto kids = ChildPids(init); kids && !kids->empty()) program = kids->front();
  auto init_start = ProcessStartTime(init);
  Report({{"init_pid", init}, {"init_start_time", init_start ? *init_start : 0}, {"pid", program}});

  // Pump output until the job is gone and both pipes are at end of file.
  bool out_open = true, err_open = true, init_alive = true;
  while (out_open || err_open || init_alive) {
    pollfd fds[3] = {{out_open ? p.out_r.get() : -1, POLLIN, 0},
                     {err_open ? p.err_r.get() : -1, POLLIN, 0},
                     {init_alive ? sigfd.get() : -1, POLLIN, 0}};
    // Once init is gone every writer is gone too; the timeout only guards
    // against a writer that escaped the namespace.
    int ready = ::poll(fds, 3, init_alive ? -1 : 2000);
    if (ready < 0 && errno != EINTR) break;
    if (ready == 0) break;
    if (fds[0].revents) out_open = Pump(p.out_r.get(), LogStream::kStdout, log->get());
    if (fds[1].revents) err_open = Pump(p.err_r.get(), LogStream::kStderr, log->get());
    if (fds[2].revents) {
      signalfd_siginfo si;
      while (::read(sigfd.get(), &si, sizeof si) == sizeof si) {
      }
      if (::waitpid(init, &status, WNOHANG) == init) init_alive = false;
    }
  }
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (auto s = WriteFileAtomic(job_dir + "/exit.json", EncodeJobExit({code, UnixMillis()})); !s) {
    LogError("cannot record the job's exit", {{"job", job->name}, {"error", s.error().ToString()}});
  }
  if (auto s = cgroup->Remove(); !s) {
    LogWarn("cannot remove the job's cgroup",
            {{"job", job->name}, {"error", s.error().ToString()}});
  }
  return 0;
}

}  // namespace
}  // namespace cryo

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: cryo-monitor JOB_DIR (started by cryod)\n");
    return 2;
  }
  // Survive whatever happens to cryod and its terminal.
  ::setsid();
  for (int sig : {SIGHUP, SIGINT, SIGTERM, SIGPIPE, SIGQUIT}) ::signal(sig, SIG_IGN);
  return cryo::Run(argv[1]);
}
