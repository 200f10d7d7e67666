// SPDX-License-Identifier: Apache-2.0
#include "harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace cryo::testing {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> MergedEnv(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  for (const auto& kv : extra) {
    std::string key = kv.substr(0, kv.find('=') + 1);
    std::erase_if(env, [&](const std::string& e) { return e.starts_with(key); });
    env.push_back(kv);
  }
  return env;
}

// fork + exec with pipes for stdout/stderr and the requested credentials.
pid_t Launch(const std::vector<std::string>& argv, const CommandOptions& o, int* out, int* err) {
  int po[2], pe[2];
  if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  std::vector<std::string> env = MergedEnv(o.env);
  std::vector<char*> av, ev;
  for (const auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
  av.push_back(nullptr);
  for (const auto& e : env) ev.push_back(const_cast<char*>(e.c_str()));
  ev.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(po[1], 1);
    dup2(pe[1], 2);
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    if (o.as.uid != 0) {
      if (setgroups(o.as.groups.size(), o.as.groups.data()) != 0 || setgid(o.as.gid) != 0 ||
          setuid(o.as.uid) != 0) {
        _exit(120);
      }
    }
    if (!o.cwd.empty() && chdir(o.cwd.c_str()) != 0) _exit(121);
    execve(av[0], av.data(), ev.data());
    _exit(122);
  }
  close(po[1]);
  close(pe[1]);
  *out = po[0];
  *err = pe[0];
  return pid;
}

int DecodeStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

std::string CryoBinary() { return CRYO_TEST_BIN_DIR "/cryo"; }
std::string CryodBinary() { return CRYO_TEST_BIN_DIR "/cryod"; }
std::string TestProgram(const std::string& name) {
  return std::string(CRYO_TEST_PROGRAMS_DIR "/") + name;
}
std::string CriuBinary() { return CRYO_TEST_CRIU; }

CommandResult RunCommand(const std::vector<std::string>& argv, const CommandOptions& options) {
  BackgroundCommand cmd(argv, options);
  return cmd.Finish(std::chrono::seconds(60));
}

BackgroundCommand::BackgroundCommand(const std::vector<std::string>& argv,
                                     const CommandOptions& options) {
  pid_ = Launch(argv, options, &out_, &err_);
}

BackgroundCommand::~BackgroundCommand() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_ >= 0) close(out_);
  if (err_ >= 0) close(err_);
}

void BackgroundCommand::Pump(int timeout_ms) {
  pollfd fds[2] = {{out_, POLLIN, 0}, {err_, POLLIN, 0}};
  if (poll(fds, 2, timeout_ms) <= 0) return;
  char buf[65536];
  for (int i = 0; i < 2; ++i) {
    if (fds[i].revents == 0) continue;
    int& fd = i == 0 ? out_ : err_;
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      (i == 0 ? result_.out : result_.err).append(buf, static_cast<size_t>(n));
    } else {
      close(fd);
      fd = -1;
    }
  }
}

bool BackgroundCommand::WaitForOutput(const std::string& marker,
                                      std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (result_.out.find(marker) == std::string::npos) {
    if (std::chrono::steady_clock::now() >= deadline || (out_ < 0 && err_ < 0)) return false;
    Pump(50);
  }
  return true;
}

void BackgroundCommand::Signal(int sig) { kill(pid_, sig); }

CommandResult BackgroundCommand::Finish(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while ((out_ >= 0 || err_ >= 0) && std::chrono::steady_clock::now() < deadline) Pump(100);
  int status = 0;
  if (out_ >= 0 || err_ >= 0) kill(pid_, SIGKILL);  // timed out
  waitpid(pid_, &status, 0);
  pid_ = -1;
  result_.exit_code = DecodeStatus(status);
  return result_;
}

bool WaitUntil(const std::function<bool()>& probe, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!probe()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

Cryod::Cryod(std::vector<std::string> extra_args) : extra_args_(std::move(extra_args)) {
  // Monitors of a killed cryod become ours: reap them, no zombies.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  char tmpl[] = "/tmp/cryo-e2e.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp");
  dir_ = tmpl;
  chmod(dir_.c_str(), 0755);  // other uids must reach the socket
  state_dir_ = dir_ + "/state";
  socket_ = dir_ + "/cryod.sock";
  // Other uids run a copy of cryo from here: the checkout may sit in a
  // directory only root can enter.
  std::filesystem::copy_file(CryoBinary(), dir_ + "/cryo");
  chmod((dir_ + "/cryo").c_str(), 0755);
  Start();
}

void Cryod::Start() {
  int ready[2];
  if (pipe(ready) != 0) throw std::runtime_error("pipe");
  pid_ = fork();
  if (pid_ == 0) {
    int log = open((dir_ + "/cryod.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(log, 1);
    dup2(log, 2);
    close(ready[0]);
    std::string fd = std::to_string(ready[1]);
    std::string bin = CryodBinary();
    std::vector<std::string> args{"cryod",    "--state-dir", state_dir_,
                                  "--socket", socket_,       "--ready-fd",
                                  fd,         "--log-level", "debug"};
    // The suite runs a second time with every restore's memory through
    // userfaultfd (tests/e2e/CMakeLists.txt).
    if (const char* lazy = getenv("CRYO_TEST_LAZY_RESTORE"); lazy != nullptr && *lazy != '\0') {
      args.insert(args.end(), {"--lazy-restore", lazy});
    }
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  close(ready[1]);
  pollfd p{ready[0], POLLIN, 0};
  char buf[16] = {};
  bool ok = poll(&p, 1, 15000) == 1 && read(ready[0], buf, sizeof buf) > 0;
  close(ready[0]);
  if (!ok) throw std::runtime_error("cryod did not become ready:\n" + DaemonLog());
}

void Cryod::Kill9() {
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

void Cryod::Stop() {
  kill(pid_, SIGTERM);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

std::string Cryod::Scratch() const { return dir_; }

std::string Cryod::MemoryScratch() const {
  std::string log = DaemonLog();
  std::smatch m;
  std::string last;
  std::regex re("memory_scratch=([^ \n]+)");
  for (auto it = std::sregex_iterator(log.begin(), log.end(), re); it != std::sregex_iterator();
       ++it) {
    last = (*it)[1];
  }
  return last == "off" ? "" : last;
}

std::string Cryod::DaemonLog() const { return Slurp(dir_ + "/cryod.log"); }

void Cryod::KillJobs() {
  // Every process in the cgroups of our jobs, and their monitors: ours only.
  std::vector<pid_t> monitors;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(state_dir_ + "/jobs", ec)) {
    auto j = nlohmann::json::parse(Slurp(entry.path() / "job.json"), nullptr, false);
    if (!j.is_object()) continue;
    std::istringstream procs(Slurp(j.value("cgroup", std::string()) + "/cgroup.procs"));
    for (pid_t pid; procs >> pid;) kill(pid, SIGKILL);
    if (j.value("monitor_pid", 0) > 0) monitors.push_back(j.value("monitor_pid", 0));
  }
  for (pid_t m : monitors) {
    WaitUntil([&] {
      while (waitpid(-1, nullptr, WNOHANG) > 0) {
      }
      return kill(m, 0) != 0;
    });
  }
}

Cryod::~Cryod() {
  KillJobs();
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  while (waitpid(-1, nullptr, WNOHANG) > 0) {
  }
  std::error_code ec;
  if (std::string memory = MemoryScratch(); memory.starts_with("/dev/shm/cryo-")) {
    std::filesystem::remove_all(memory, ec);
  }
  std::filesystem::remove_all(dir_, ec);
}

std::vector<std::string> Cryod::CryoArgv(const std::vector<std::string>& args) const {
  std::vector<std::string> argv{CryoBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

CommandOptions Cryod::WithSocket(CommandOptions options) const {
  options.env.push_back("CRYO_SOCKET=" + socket_);
  return options;
}

CommandResult Cryod::Cryo(const std::vector<std::string>& args,
                          const CommandOptions& options) const {
  return RunCommand(CryoArgv(args), WithSocket(options));
}

nlohmann::json Cryod::Ps(bool all, const As& as) const {
  std::vector<std::string> args{"ps", "--json"};
  if (all) args.push_back("--all");
  auto r = Cryo(args, {.as = as});
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (r.exit_code != 0 || !j.is_array()) {
    throw std::runtime_error("cryo ps failed (" + std::to_string(r.exit_code) + "): " + r.err);
  }
  return j;
}

nlohmann::json Cryod::Job(const std::string& name) const {
  for (const auto& j : Ps()) {
    if (j["name"] == name) return j;
  }
  return nullptr;
}

}  // namespace cryo::testing
