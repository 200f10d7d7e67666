// SPDX-License-Identifier: Apache-2.0
// SIGTERM interception. The shim keeps its own handler installed for
// SIGTERM and remembers what the program asked for (its "disposition") in
// its own memory: sigaction() and signal() are interposed and answer with
// the program's view. A SIGTERM then goes to cryod as a report; cryod
// checkpoints the job and either stops it (the program's handler never
// runs) or sends the signal back marked as forwarded, and only then does
// the shim apply the program's disposition.
//
// Signal masks are not touched: a thread that blocks SIGTERM does not get
// it, as without cryo. A program that blocks SIGTERM everywhere and takes
// it with signalfd or sigwait* gets the same treatment there: the
// interposed read() and sigwait functions report it instead of returning
// it.
//
// A program that ignores SIGTERM (SIG_IGN) keeps ignoring it, and no
// checkpoint is taken: it chose not to be stopped by SIGTERM.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "shim.h"

namespace cryo::shim {
namespace {

// The program's disposition, double-buffered so the handler reads a
// consistent copy without locking. Writers hold g_disposition_mu with all
// signals blocked.
struct sigaction g_slots[2];
std::atomic<int> g_current{0};
// A delivery consumed an SA_RESETHAND disposition: it is SIG_DFL now.
std::atomic<bool> g_reset_pending{false};
pthread_mutex_t g_disposition_mu = PTHREAD_MUTEX_INITIALIZER;

// The SIGTERM that was reported, handed to the program's handler when
// cryod forwards it (the forwarded one is cryod's own SI_QUEUE signal).
siginfo_t g_reported_info;
std::atomic<bool> g_have_reported_info{false};

// Nesting of our handler in this thread (SA_NODEFER lets it nest).
__thread int t_handler_depth __attribute__((tls_model("initial-exec")));

// signalfds whose mask includes SIGTERM, as fd + 1 (0: free slot).
constexpr int kMaxSignalfds = 64;
std::atomic<int> g_signalfds[kMaxSignalfds];
std::atomic<int> g_signalfd_count{0};

struct sigaction ProgramDisposition() {
  struct sigaction a = g_slots[g_current.load(std::memory_order_acquire)];
  if (g_reset_pending.load(std::memory_order_relaxed)) {
    memset(&a, 0, sizeof a);
    a.sa_handler = SIG_DFL;
  }
  return a;
}

void SetProgramDisposition(const struct sigaction& act) {
  int next = 1 - g_current.load(std::memory_order_relaxed);
  g_slots[next] = act;
  g_current.store(next, std::memory_order_release);
  g_reset_pending.store(false, std::memory_order_relaxed);
}

bool IsForwarded(const siginfo_t* info) {
  return info && info->si_code == SI_QUEUE &&
         reinterpret_cast<uint64_t>(info->si_value.sival_ptr) == kForwardValue;
}

bool IsForwarded(const signalfd_siginfo& info) {
  return info.ssi_code == SI_QUEUE && info.ssi_ptr == kForwardValue;
}

// Gives SIGTERM to the program as the kernel would have. Runs in our
// handler, with SIGTERM blocked unless the program asked for SA_NODEFER.
void DeliverToProgram(siginfo_t* info, void* context) {
  struct sigaction d = ProgramDisposition();
  if (d.sa_handler == SIG_IGN) return;
  if (d.sa_handler == SIG_DFL) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    g_real.sigaction(SIGTERM, &dfl, nullptr);
    // Pending until this handler returns, then the default action ends
    // the process, killed by SIGTERM as it would have been.
    syscall(SYS_tgkill, getpid(), gettid(), SIGTERM);
    return;
  }
  if (d.sa_flags & SA_RESETHAND) g_reset_pending.store(true, std::memory_order_relaxed);
  if (g_have_reported_info.load(std::memory_order_acquire)) info = &g_reported_info;
  sigset_t old;
  pthread_sigmask(SIG_BLOCK, &d.sa_mask, &old);
  if (d.sa_flags & SA_SIGINFO) {
    d.sa_sigaction(SIGTERM, info, context);
  } else {
    d.sa_handler(SIGTERM);
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

void OnSigterm(int, siginfo_t* info, void* context) {
  int saved_errno = errno;
  if (IsForwarded(info)) {
    DeliverToProgram(info, context);
  } else if (t_handler_depth == 0) {
    ++t_handler_depth;
    if (info) {
      g_reported_info = *info;
      g_have_reported_info.store(true, std::memory_order_release);
    }
    if (!ReportTerm(0)) DeliverToProgram(info, context);
    --t_handler_depth;
  }
  errno = saved_errno;
}

// Installs the real handler matching the program's disposition: ours for
// SIG_DFL and handlers (with the program's mask and restart behaviour),
// SIG_IGN for SIG_IGN (so it also survives exec, as the kernel does it).
int InstallFor(const struct sigaction& program) {
  struct sigaction ours;
  memset(&ours, 0, sizeof ours);
  if (program.sa_handler == SIG_IGN) {
    ours.sa_handler = SIG_IGN;
  } else if (program.sa_handler == SIG_DFL) {
    ours.sa_sigaction = OnSigterm;
    ours.sa_flags = SA_SIGINFO | SA_RESTART;
  } else {
    ours.sa_sigaction = OnSigterm;
    ours.sa_flags = SA_SIGINFO | (program.sa_flags & (SA_RESTART | SA_ONSTACK | SA_NODEFER));
    ours.sa_mask = program.sa_mask;
  }
  return g_real.sigaction(SIGTERM, &ours, nullptr);
}

bool IsTrackedSignalfd(int fd) {
  for (auto& slot : g_signalfds) {
    if (slot.load(std::memory_order_relaxed) == fd + 1) return true;
  }
  return false;
}

void TrackSignalfd(int fd) {
  if (IsTrackedSignalfd(fd)) return;
  for (auto& slot : g_signalfds) {
    int expected = 0;
    if (slot.compare_exchange_strong(expected, fd + 1)) {
      g_signalfd_count.fetch_add(1);
      return;
    }
  }
}

void UntrackSignalfd(int fd) {
  for (auto& slot : g_signalfds) {
    int expected = fd + 1;
    if (slot.compare_exchange_strong(expected, 0)) g_signalfd_count.fetch_sub(1);
  }
}

// read() of a signalfd that may return SIGTERM: SIGTERMs cryod takes are
// removed. If nothing else was read and nothing more is pending, the read
// fails as one interrupted by a signal (EINTR; EAGAIN on a non-blocking
// fd): blocking instead would hang a program that polled the fd first and
// now expects its read to return.
ssize_t ReadSignalfd(int fd, void* buf, size_t count, ssize_t (*next)(int, void*, size_t, size_t),
                     size_t buflen) {
  for (;;) {
    ssize_t n = next(fd, buf, count, buflen);
    if (n <= 0 || n % sizeof(signalfd_siginfo) != 0) return n;
    char* records = static_cast<char*>(buf);
    size_t kept = 0;
    for (size_t i = 0; i < static_cast<size_t>(n) / sizeof(signalfd_siginfo); ++i) {
      signalfd_siginfo info;
      memcpy(&info, records + i * sizeof info, sizeof info);
      if (info.ssi_signo == SIGTERM && !IsForwarded(info) && ReportTerm(kFromSignalfd)) continue;
      memmove(records + kept * sizeof info, &info, sizeof info);
      ++kept;
    }
    if (kept > 0) return static_cast<ssize_t>(kept * sizeof(signalfd_siginfo));
    struct pollfd pending = {fd, POLLIN, 0};
    if (poll(&pending, 1, 0) == 1) continue;
    errno = (fcntl(fd, F_GETFL) & O_NONBLOCK) ? EAGAIN : EINTR;
    return -1;
  }
}

ssize_t PlainRead(int fd, void* buf, size_t count, size_t) { return g_real.read(fd, buf, count); }
ssize_t CheckedRead(int fd, void* buf, size_t count, size_t buflen) {
  return g_real.read_chk(fd, buf, count, buflen);
}

// sigwaitinfo/sigtimedwait: a SIGTERM cryod takes is not returned.
template <typename Wait>
int WaitForSignal(const sigset_t* set, siginfo_t* info, Wait wait) {
  siginfo_t local;
  siginfo_t* out = info ? info : &local;
  for (;;) {
    int sig = wait(out);
    if (sig != SIGTERM || IsForwarded(out) || !ReportTerm(kFromSignalfd)) return sig;
    (void)set;
  }
}

bool WantsSigterm(const sigset_t* set) {
  return Intercepting() && set && sigismember(set, SIGTERM) == 1;
}

__attribute__((constructor)) void Initialize() {
  ResolveRealFunctions();
  const char* path = getenv(kEnvSocket);
  if (!path || !*path || strlen(path) >= sizeof g_settings.socket_path) return;
  memcpy(g_settings.socket_path, path, strlen(path) + 1);
  const char* mode = getenv(kEnvMode);
  if (mode && strcmp(mode, "forward") == 0) {
    g_settings.mode = Mode::kForward;
  } else if (mode && strcmp(mode, "checkpoint-and-forward") == 0) {
    g_settings.mode = Mode::kCheckpointAndForward;
  } else {
    g_settings.mode = Mode::kCheckpoint;
  }
  g_settings.active = true;
  InstallForkHandlers();
  if (!Intercepting()) return;
  // An inherited SIG_IGN stays (the program, or its parent, chose it).
  struct sigaction current;
  memset(&current, 0, sizeof current);
  g_real.sigaction(SIGTERM, nullptr, &current);
  SetProgramDisposition(current);
  if (current.sa_handler != SIG_IGN) InstallFor(current);
}

// sigaction(SIGTERM, ...) while intercepting: the program's disposition is
// kept in our memory. Out of line, so that sigaction() for every other
// signal stays a comparison and a jump.
[[gnu::noinline, gnu::cold]] int SigtermSigaction(const struct sigaction* act,
                                                  struct sigaction* old) {
  if (!act) {  // a query: the double buffer needs no lock
    if (old) *old = ProgramDisposition();
    return 0;
  }
  sigset_t all, saved_mask;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &saved_mask);
  pthread_mutex_lock(&g_disposition_mu);
  struct sigaction previous = ProgramDisposition();
  int r = InstallFor(*act);
  int error = errno;
  if (r == 0) SetProgramDisposition(*act);
  pthread_mutex_unlock(&g_disposition_mu);
  pthread_sigmask(SIG_SETMASK, &saved_mask, nullptr);
  if (r != 0) {
    errno = error;
    return r;
  }
  if (old) *old = previous;
  return 0;
}

}  // namespace
}  // namespace cryo::shim

using namespace cryo::shim;

// The interposed and exported functions; everything else stays hidden.
#pragma GCC visibility push(default)
extern "C" {

int sigaction(int sig, const struct sigaction* act, struct sigaction* old) noexcept {
  if (__builtin_expect(g_real.sigaction == nullptr, 0)) ResolveRealFunctions();
  if (__builtin_expect(sig != SIGTERM, 1) || !Intercepting()) {
    return g_real.sigaction(sig, act, old);
  }
  return SigtermSigaction(act, old);
}

// glibc's signal() calls its internal sigaction, so it is interposed too,
// with the same (BSD) semantics.
sighandler_t signal(int sig, sighandler_t handler) noexcept {
  if (!g_real.sigaction) ResolveRealFunctions();
  struct sigaction act, old;
  memset(&act, 0, sizeof act);
  act.sa_handler = handler;
  act.sa_flags = SA_RESTART;
  sigemptyset(&act.sa_mask);
  if (sig > 0 && sig < NSIG) sigaddset(&act.sa_mask, sig);
  if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

int signalfd(int fd, const sigset_t* mask, int flags) noexcept {
  if (!g_real.signalfd) ResolveRealFunctions();
  int r = g_real.signalfd(fd, mask, flags);
  if (r >= 0 && Intercepting()) {
    if (WantsSigterm(mask)) {
      TrackSignalfd(r);
    } else {
      UntrackSignalfd(r);
    }
  }
  return r;
}

ssize_t read(int fd, void* buf, size_t count) {
  if (__builtin_expect(g_real.read == nullptr, 0)) ResolveRealFunctions();
  if (__builtin_expect(g_signalfd_count.load(std::memory_order_relaxed) == 0, 1) ||
      !IsTrackedSignalfd(fd)) {
    return g_real.read(fd, buf, count);
  }
  return ReadSignalfd(fd, buf, count, PlainRead, 0);
}

ssize_t __read_chk(int fd, void* buf, size_t count, size_t buflen) {
  if (__builtin_expect(g_real.read_chk == nullptr, 0)) ResolveRealFunctions();
  if (__builtin_expect(g_signalfd_count.load(std::memory_order_relaxed) == 0, 1) ||
      !IsTrackedSignalfd(fd)) {
    return g_real.read_chk(fd, buf, count, buflen);
  }
  return ReadSignalfd(fd, buf, count, CheckedRead, buflen);
}

int close(int fd) {
  if (__builtin_expect(g_real.close == nullptr, 0)) ResolveRealFunctions();
  if (__builtin_expect(g_signalfd_count.load(std::memory_order_relaxed) != 0, 0)) {
    UntrackSignalfd(fd);
  }
  return g_real.close(fd);
}

int sigwaitinfo(const sigset_t* set, siginfo_t* info) {
  if (!g_real.sigwaitinfo) ResolveRealFunctions();
  if (!WantsSigterm(set)) return g_real.sigwaitinfo(set, info);
  return WaitForSignal(set, info, [set](siginfo_t* out) { return g_real.sigwaitinfo(set, out); });
}

int sigtimedwait(const sigset_t* set, siginfo_t* info, const struct timespec* timeout) {
  if (!g_real.sigtimedwait) ResolveRealFunctions();
  if (!WantsSigterm(set)) return g_real.sigtimedwait(set, info, timeout);
  return WaitForSignal(
      set, info, [set, timeout](siginfo_t* out) { return g_real.sigtimedwait(set, out, timeout); });
}

// glibc's sigwait() calls its internal sigtimedwait: interposed for the
// same reason as signal().
int sigwait(const sigset_t* set, int* sig) {
  if (!g_real.sigtimedwait) ResolveRealFunctions();
  for (;;) {
    siginfo_t info;
    int r = sigtimedwait(set, &info, nullptr);
    if (r > 0) {
      *sig = r;
      return 0;
    }
    if (errno != EINTR) return errno;
  }
}

}  // extern "C"
#pragma GCC visibility pop
