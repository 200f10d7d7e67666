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
//   cryo-monitor JOB_DIR --restore IMAGES_DIR --criu CRIU [--stream 1] [--tcp 0]
//   [--stdout-key K] [--stderr-key K] [--lazy-pages FD]
//
// brings a checkpointed job back instead: CRIU restores the tree as this
// process's child (rst_sibling) into the job's cgroup, with fresh pipes in
// place of the dumped stdout/stderr pipes (inherit-fd keys K), and of the
// shim's API sockets (--inherit KEY=FD, an fd cryod passed). --tcp 0: the
// job was dumped without CRIU's tcp_established and network lock (it had no
// TCP socket), and is restored so. --lazy-pages FD: the images lack the
// lazy pages (cryo/lazy_pages.h); cryod fills them in when asked on the
// socket FD, at CRIU's post-restore notification, before any restored task
// runs. If that fails (a cryod that dies meanwhile included), CRIU kills the
// tree: it never runs with holes in its memory, and the start report says
// why.
//
//   --env KEY=VALUE   (fresh start) adds to the program's environment: the
//                     LD_PRELOAD shim and its settings
//
// Start report on fd 3, one JSON object, then the fd is closed:
//   {"init_pid":N,"init_start_time":T,"pid":P,"stdout_key":K,"stderr_key":K}  it runs
//   {"errno":E,"error":"message"}                    it does not
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cryo/cgroup.h"
#include "cryo/checkpointer.h"
#include "cryo/file_util.h"
#include "cryo/job.h"
#include "cryo/job_log.h"
#include "cryo/lazy_pages.h"
#include "cryo/log.h"
#include "cryo/process.h"
#include "cryo/unique_fd.h"

namespace cryo {
namespace {

constexpr int kStartReportFd = 3;

struct Pipes {
  UniqueFd out_r, out_w, err_r, err_w, report_r, report_w, env_r, env_w;
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
// In the forked child, which is pid 1 of the new PID namespace: enter the
// cgroup, become a session leader, take the pipes as stdio, exec cryo-init.
// cryo-init stays root (CRIU must mount a /proc for the namespace from
// inside it) but gets a clean environment and "/" as cwd; it drops to the
// owner's credentials in the child that runs the program, whose environment
// arrives on fd 4. Only returns on error.
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
      ::dup2(p.err_w.get(), 2) < 0 || ::dup2(p.report_w.get(), 3) < 0 ||
      ::dup2(p.env_r.get(), 4) < 0) {
    fail(errno, "set up stdio");
  }
  p.report_w.reset(::fcntl(3, F_DUPFD_CLOEXEC, 5));  // for fail(); fd 3 is cryo-init's
  std::string groups;
  for (gid_t g : job.groups) groups += (groups.empty() ? "" : ",") + std::to_string(g);
  std::vector<std::string> args{"cryo-init",
                                "--uid",
                                std::to_string(job.uid),
                                "--gid",
                                std::to_string(job.gid),
                                "--groups",
                                groups,
                                "--cwd",
                                job.cwd,
                                "--"};
  args.insert(args.end(), job.argv.begin(), job.argv.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  char path_env[] = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
  char* envp[] = {path_env, nullptr};

  // The monitor ignores some signals and blocks SIGCHLD; the job must not inherit that.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) ::sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  if (::chdir("/") != 0) fail(errno, "chdir /");
  ::execve(init_path.c_str(), argv.data(), envp);
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

struct Mode {
  std::string job_dir;
  std::string restore_images;  // empty: start the program fresh
  bool stream = false;         // cryod serves the images there (image streamer)
  int lazy_pages_fd = -1;      // to ask cryod to fill the lazy pages
  bool tcp = true;             // as dumped: with tcp_established and a network lock
  std::string criu;
  std::string stdout_key, stderr_key;
  // More inherit-fd replacements for a restore (the shim's API sockets):
  // key and an fd cryod passed us.
  std::vector<std::pair<std::string, int>> inherit;
  // KEY=VALUE entries added to (or replacing in) the program's environment.
  std::vector<std::string> env;
};

// `env` with `extra` entries replacing those of the same key, or added.
std::vector<std::string> MergeEnvironment(std::vector<std::string> env,
                                          const std::vector<std::string>& extra) {
  for (const auto& kv : extra) {
    std::string key = kv.substr(0, kv.find('=') + 1);
    std::erase_if(env, [&](const std::string& e) { return e.starts_with(key); });
    env.push_back(kv);
  }
  return env;
}

std::string PipeKey(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return "";
  return "pipe:[" + std::to_string(st.st_ino) + "]";
}

// Starts the job: a fresh program, or a restore. Returns init's pid, or
// reports the failure itself and returns 0.
pid_t StartJob(const Mode& mode, const JobRecord& job, const std::string& init_path, Pipes& p) {
  if (!mode.restore_images.empty()) {
    auto criu = CreateCriuCheckpointer(mode.criu);
    if (!criu) {
      Report({{"errno", 0}, {"error", criu.error().ToString()}});
      return 0;
    }
    std::vector<std::pair<std::string, int>> inherit;
    if (!mode.stdout_key.empty()) inherit.push_back({mode.stdout_key, p.out_w.get()});
    if (!mode.stderr_key.empty() && mode.stderr_key != mode.stdout_key) {
      inherit.push_back({mode.stderr_key, p.err_w.get()});
    }
    inherit.insert(inherit.end(), mode.inherit.begin(), mode.inherit.end());
    // The lazy memory is filled by cryod while CRIU holds every task in
    // its restorer: the job never runs, nor faults, before all is in.
    std::function<Status()> post_restore;
    if (mode.lazy_pages_fd >= 0) {
      post_restore = [fd = mode.lazy_pages_fd] { return AskToFillLazyMemory(fd); };
    }
    auto pid = (*criu)->Restore({.images_dir = mode.restore_images,
                                 .inherit_fds = inherit,
                                 .cgroup_procs = job.cgroup + "/cgroup.procs",
                                 .tcp_established = mode.tcp,
                                 .stream = mode.stream,
                                 .lazy_pages = mode.lazy_pages_fd >= 0,
                                 .post_restore = post_restore});
    // The shim's sockets now live in the restored program; without our
    // copies, cryod sees the program's close as an end of file.
    for (const auto& [key, fd] : mode.inherit) UniqueFd{fd}.reset();
    if (mode.lazy_pages_fd >= 0) UniqueFd{mode.lazy_pages_fd}.reset();
    if (!pid) {
      Report({{"errno", 0}, {"error", pid.error().ToString()}});
      return 0;
    }
    return *pid;
  }
  // The next child is pid 1 of a new PID namespace.
  if (::unshare(CLONE_NEWPID) != 0) {
    Report({{"errno", errno},
            {"error", std::string("unshare(CLONE_NEWPID): ") + std::strerror(errno)}});
    return 0;
  }
  pid_t init = ::fork();
  if (init < 0) {
    Report({{"errno", errno}, {"error", std::string("fork: ") + std::strerror(errno)}});
    return 0;
  }
  if (init == 0) BecomeJobInit(job, init_path, p);
  p.report_w.reset();
  p.env_r.reset();
  // The program's environment, NUL-separated, read by cryo-init before it
  // starts the program (a failed write means cryo-init already failed).
  std::string env;
  for (const auto& e : MergeEnvironment(job.env, mode.env)) env.append(e).push_back('\0');
  (void)WriteAll(p.env_w.get(), env);
  p.env_w.reset();
  std::string failure = ReadInitReport(p.report_r.get());
  if (!failure.empty()) {
    int err = std::atoi(failure.c_str());
    std::string message = failure.substr(std::min(failure.find(' ') + 1, failure.size()));
    Report({{"errno", err}, {"error", message}});
    int status;
    ::waitpid(init, &status, 0);
    return 0;
  }
  return init;
}

int Run(const Mode& mode) {
  const std::string& job_dir = mode.job_dir;
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
  for (auto* pair : {&p.out_r, &p.err_r, &p.report_r, &p.env_r}) {
    auto made = MakePipe();
    if (!made) {
      Report({{"errno", made.error().sys_errno()}, {"error", made.error().ToString()}});
      return 1;
    }
    *pair = std::move(made->first);
    (pair == &p.out_r      ? p.out_w
     : pair == &p.err_r    ? p.err_w
     : pair == &p.report_r ? p.report_w
                           : p.env_w) = std::move(made->second);
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

  std::string stdout_key = PipeKey(p.out_w.get());
  std::string stderr_key = PipeKey(p.err_w.get());
  pid_t init = StartJob(mode, *job, init_path, p);
  p.out_w.reset();
  p.err_w.reset();
  p.report_w.reset();
  if (init == 0) return 1;
  int status = 0;
  pid_t program = 0;
  if (auto kids = ChildPids(init); kids && !kids->empty()) program = kids->front();
  auto init_start = ProcessStartTime(init);
  Report({{"init_pid", init},
          {"init_start_time", init_start ? *init_start : 0},
          {"pid", program},
          {"stdout_key", stdout_key},
          {"stderr_key", stderr_key}});

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
      // Reap everything: init, and CRIU's process after a restore.
      int st;
      pid_t pid;
      while ((pid = ::waitpid(-1, &st, WNOHANG)) > 0) {
        if (pid == init) {
          status = st;
          init_alive = false;
        }
      }
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
  cryo::Mode mode;
  bool ok = argc >= 2;
  if (ok) mode.job_dir = argv[1];
  for (int i = 2; ok && i < argc; i += 2) {
    std::string flag = argv[i];
    if (i + 1 >= argc) {
      ok = false;
    } else if (flag == "--restore") {
      mode.restore_images = argv[i + 1];
    } else if (flag == "--criu") {
      mode.criu = argv[i + 1];
    } else if (flag == "--lazy-pages") {
      mode.lazy_pages_fd = std::atoi(argv[i + 1]);
    } else if (flag == "--stream") {
      mode.stream = std::string_view(argv[i + 1]) == "1";
    } else if (flag == "--tcp") {
      mode.tcp = std::string_view(argv[i + 1]) != "0";
    } else if (flag == "--stdout-key") {
      mode.stdout_key = argv[i + 1];
    } else if (flag == "--stderr-key") {
      mode.stderr_key = argv[i + 1];
    } else if (flag == "--env" && std::strchr(argv[i + 1], '=') != nullptr) {
      mode.env.emplace_back(argv[i + 1]);
    } else if (flag == "--inherit" && std::strrchr(argv[i + 1], '=') != nullptr) {
      std::string spec = argv[i + 1];
      size_t eq = spec.rfind('=');
      mode.inherit.push_back({spec.substr(0, eq), std::atoi(spec.c_str() + eq + 1)});
    } else {
      ok = false;
    }
  }
  if (!ok) {
    std::fprintf(
        stderr, "usage: cryo-monitor JOB_DIR [--restore DIR --criu PATH ...] (started by cryod)\n");
    return 2;
  }
  // Survive whatever happens to cryod and its terminal.
  ::setsid();
  for (int sig : {SIGHUP, SIGINT, SIGTERM, SIGPIPE, SIGQUIT}) ::signal(sig, SIG_IGN);
  return cryo::Run(mode);
}
