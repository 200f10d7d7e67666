// SPDX-License-Identifier: Apache-2.0
// The shim's side of the shim protocol (runtime/include/cryo/shim_protocol.h),
// on raw system calls so that a signal handler can use it.
#include <dlfcn.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

#include "shim.h"

namespace cryo::shim {

Settings g_settings;
RealFunctions g_real;

namespace {

// How long a report waits for cryod's answer before the signal goes to the
// program as if cryo were not there.
constexpr int kAnswerTimeoutMs = 5000;

template <typename T>
void Resolve(T*& slot, const char* name) {
  if (!slot) slot = reinterpret_cast<T*>(dlsym(RTLD_NEXT, name));
}

}  // namespace

void ResolveRealFunctions() {
  Resolve(g_real.sigaction, "sigaction");
  Resolve(g_real.read, "read");
  Resolve(g_real.read_chk, "__read_chk");
  Resolve(g_real.close, "close");
  Resolve(g_real.signalfd, "signalfd");
  Resolve(g_real.sigwaitinfo, "sigwaitinfo");
  Resolve(g_real.sigtimedwait, "sigtimedwait");
}

int64_t NowMs() {
  struct timespec ts = {};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

Message MakeMessage(Type type) {
  Message m;
  memset(&m, 0, sizeof m);
  m.magic = kMagic;
  m.version = kVersion;
  m.type = type;
  return m;
}

void CloseFd(int fd) { syscall(SYS_close, fd); }

int ConnectToCryod() {
  if (!g_settings.active) return -1;
  int fd = static_cast<int>(syscall(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd < 0) return -1;
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, g_settings.socket_path, sizeof addr.sun_path);
  long r;
  do {
    r = syscall(SYS_connect, fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    CloseFd(fd);
    return -1;
  }
  return fd;
}

bool SendMessage(int fd, const Message& message) {
  const char* p = reinterpret_cast<const char*>(&message);
  size_t left = sizeof message;
  while (left > 0) {
    long n = syscall(SYS_sendto, fd, p, left, MSG_NOSIGNAL, nullptr, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    left -= static_cast<size_t>(n);
  }
  return true;
}

bool ReceiveMessage(int fd, Message* message) {
  char* p = reinterpret_cast<char*>(message);
  size_t left = sizeof *message;
  while (left > 0) {
    long n = syscall(SYS_read, fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    left -= static_cast<size_t>(n);
  }
  return message->magic == kMagic && message->version == kVersion;
}

bool ReportTerm(uint32_t flags) {
  Message m = MakeMessage(kTermReport);
  m.time_ms = NowMs();
  m.flags = flags;
  int fd = ConnectToCryod();
  if (fd < 0) return false;
  bool ok = SendMessage(fd, m);
  unsigned char answer = 0;
  if (ok) {
    struct pollfd p = {fd, POLLIN, 0};
    int r;
    do {
      r = poll(&p, 1, kAnswerTimeoutMs);
    } while (r < 0 && errno == EINTR);
    ok = r == 1 && syscall(SYS_read, fd, &answer, 1) == 1;
  }
  // cryod waits for this close before it freezes the job, so no socket of
  // a report is ever part of a checkpoint.
  CloseFd(fd);
  return ok && answer == kAccepted;
}

}  // namespace cryo::shim
