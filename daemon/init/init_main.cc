// SPDX-License-Identifier: Apache-2.0
// cryo-init: pid 1 of a job's PID namespace.
//
//   cryo-init PROGRAM [ARGS...]      (fd 3: the exec-report pipe, if open)
//
// The first process of a PID namespace ignores every signal it has no
// handler for, and the namespace dies with it; so the user's program is not
// that process. cryo-init starts the program (found in PATH like a shell
// would) as a session leader, forwards every catchable signal to it, reaps
// every orphan in the namespace, and exits with the program's status (128+N
// when the program died of signal N), which takes the rest of the namespace
// down with it.
//
// If the program cannot be started, "<errno> <message>" goes to fd 3 and
// cryo-init exits 127. fd 3 is closed once the program runs, so its reader
// sees end of file exactly when the start succeeded.
//
// Deliberately tiny and free of libcryo: it is mapped into every job and
// every checkpoint.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace {

constexpr int kReportFd = 3;

[[noreturn]] void ReportAndExit(int err, const char* what, const char* program) {
  char message[512];
  int n;
  if (err == ENOENT && std::strchr(program, '/') == nullptr) {
    n = std::snprintf(message, sizeof message, "%d program '%s' not found in PATH", err, program);
  } else {
    n = std::snprintf(message, sizeof message, "%d %s '%s': %s", err, what, program,
                      std::strerror(err));
  }
  if (n > 0)
    (void)!::write(kReportFd, message,
                   static_cast<size_t>(n) < sizeof message ? n : sizeof message - 1);
  ::_exit(127);
}

int StatusToExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 255;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: cryo-init PROGRAM [ARGS...]\n");
    return 2;
  }
  // Signals are taken synchronously with sigwaitinfo: no handler, no races.
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, nullptr);
  // The program's exec closes the report fd; a failure writes to it.
  (void)fcntl(kReportFd, F_SETFD, FD_CLOEXEC);

  pid_t child = fork();
  if (child < 0) ReportAndExit(errno, "fork for", argv[1]);
  if (child == 0) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setsid();
    execvp(argv[1], argv + 1);
    ReportAndExit(errno, "exec", argv[1]);
  }
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
