// SPDX-License-Identifier: Apache-2.0
// cryo-init: pid 1 of a job's PID namespace.
//
//   cryo-init --uid U --gid G --groups G1,G2,... --cwd DIR -- PROGRAM [ARGS...]
//   fd 3: the start-report pipe; fd 4: the program's environment, NUL-separated
//
// The first process of a PID namespace ignores every signal it has no
// handler for, and the namespace dies with it; so the user's program is not
// that process. cryo-init starts the program (found in the program's PATH
// like a shell would) as a session leader with the owner's credentials and
// working directory, forwards every catchable signal to it, reaps every
// orphan in the namespace, and exits with the program's status (128+N when
// it died of signal N), which takes the rest of the namespace down with it.
//
// cryo-init itself keeps root's credentials: CRIU's parasite must mount a
// /proc for the namespace from inside the tree's root task, which an
// unprivileged task may not. It therefore runs no code of the user's: it is
// started by cryo-monitor with a fixed environment and "/" as cwd, and the
// user's environment only becomes `environ` in the child, after it dropped
// privileges, right before exec.
//
// If the program cannot be started, "<errno> <message>" goes to fd 3 and
// cryo-init exits 127. fd 3 is closed once the program runs, so its reader
// sees end of file exactly when the start succeeded.
//
// Deliberately tiny and free of libcryo: it is mapped into every job and
// every checkpoint.
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int kReportFd = 3;
constexpr int kEnvFd = 4;

struct Spec {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  const char* cwd = "/";
  char** argv = nullptr;  // the program's argv, NULL-terminated
};

[[noreturn]] void ReportAndExit(int err, const char* what, const char* subject) {
  char message[1024];
  int n;
  if (err == ENOENT && std::strcmp(what, "exec") == 0 && std::strchr(subject, '/') == nullptr) {
    n = std::snprintf(message, sizeof message, "%d program '%s' not found in PATH", err, subject);
  } else {
    n = std::snprintf(message, sizeof message, "%d %s '%s': %s", err, what, subject,
                      std::strerror(err));
  }
  if (n > 0) {
    size_t len =
        static_cast<size_t>(n) < sizeof message ? static_cast<size_t>(n) : sizeof message - 1;
    (void)!write(kReportFd, message, len);
  }
  _exit(127);
}

bool ParseArgs(int argc, char** argv, Spec* spec) {
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--") {
      if (i + 1 >= argc) return false;
      spec->argv = argv + i + 1;
      return true;
    }
    if (i + 1 >= argc) return false;
    const char* value = argv[++i];
    if (flag == "--uid") {
      spec->uid = static_cast<uid_t>(std::strtoul(value, nullptr, 10));
    } else if (flag == "--gid") {
      spec->gid = static_cast<gid_t>(std::strtoul(value, nullptr, 10));
    } else if (flag == "--groups") {
      for (const char* p = value; *p != '\0';) {
        char* end;
        spec->groups.push_back(static_cast<gid_t>(std::strtoul(p, &end, 10)));
        p = *end == ',' ? end + 1 : end;
        if (end == p && *p != '\0') return false;
      }
    } else if (flag == "--cwd") {
      spec->cwd = value;
    } else {
      return false;
    }
  }
  return false;
}

// The program's environment from fd 4 (until end of file).
std::vector<char*> ReadEnvironment() {
  std::string data;
  char buf[65536];
  ssize_t n;
  while ((n = read(kEnvFd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) data.append(buf, static_cast<size_t>(n));
  }
  close(kEnvFd);
  std::vector<char*> env;
  for (size_t start = 0; start < data.size();) {
    size_t end = data.find('\0', start);
    if (end == std::string::npos) end = data.size();
    env.push_back(strdup(data.substr(start, end - start).c_str()));
    start = end + 1;
  }
  env.push_back(nullptr);
  return env;
}

// In the child: become the owner, enter the cwd, exec. Only returns on error.
[[noreturn]] void ExecProgram(const Spec& spec, std::vector<char*>& env) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  setsid();
  if (setgroups(spec.groups.size(), spec.groups.data()) != 0)
    ReportAndExit(errno, "setgroups for", spec.argv[0]);
  if (setgid(spec.gid) != 0) ReportAndExit(errno, "setgid for", spec.argv[0]);
  if (setuid(spec.uid) != 0) ReportAndExit(errno, "setuid for", spec.argv[0]);
  if (chdir(spec.cwd) != 0) ReportAndExit(errno, "enter working directory", spec.cwd);
  // From here on the user's environment: execvp looks PROGRAM up in its PATH.
  environ = env.data();
  execvp(spec.argv[0], spec.argv);
  ReportAndExit(errno, "exec", spec.argv[0]);
}

int StatusToExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 255;
}

}  // namespace

int main(int argc, char** argv) {
  Spec spec;
  if (!ParseArgs(argc, argv, &spec)) {
    std::fprintf(stderr,
                 "usage: cryo-init --uid U --gid G --groups LIST --cwd DIR -- PROGRAM [ARGS...]\n");
    return 2;
  }
  std::vector<char*> env = ReadEnvironment();
  // Signals are taken synchronously with sigwaitinfo: no handler, no races.
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, nullptr);
  // The program's exec closes the report fd; a failure writes to it.
  (void)fcntl(kReportFd, F_SETFD, FD_CLOEXEC);

  pid_t child = fork();
  if (child < 0) ReportAndExit(errno, "fork for", spec.argv[0]);
  if (child == 0) ExecProgram(spec, env);
  close(kReportFd);

  for (;;) {
    siginfo_t info;
    int sig = sigwaitinfo(&all, &info);
    if (sig < 0) continue;  // EINTR
    if (sig != SIGCHLD) {
      kill(child, sig);  // the program may be gone already: nothing to do then
      continue;
    }
    // Reap everything that ended: the program and any orphan reparented here.
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      if (pid == child) return StatusToExitCode(status);
    }
  }
}
