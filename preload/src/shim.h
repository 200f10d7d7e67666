// SPDX-License-Identifier: Apache-2.0
// Internals of libcryo_preload.so shared by its files. The shim runs inside
// arbitrary programs: no C++ library beyond header-only parts, no
// exceptions, no allocation, and only async-signal-safe calls on paths a
// signal handler takes.
#pragma once

#include <signal.h>
#include <stdint.h>
#include <sys/types.h>

#include "cryo/shim_protocol.h"

namespace cryo::shim {

enum class Mode { kForward, kCheckpoint, kCheckpointAndForward };

// Read from the environment by the library's constructor, then read-only.
struct Settings {
  bool active = false;  // loaded by cryod (CRYO_SHIM_SOCKET is set)
  Mode mode = Mode::kCheckpoint;
  char socket_path[108] = {};
};
extern Settings g_settings;

// Whether SIGTERM is being turned into checkpoints in this process.
inline bool Intercepting() { return g_settings.active && g_settings.mode != Mode::kForward; }

// The next definitions of the functions the shim interposes (libc's).
struct RealFunctions {
  int (*sigaction)(int, const struct sigaction*, struct sigaction*);
  ssize_t (*read)(int, void*, size_t);
  ssize_t (*read_chk)(int, void*, size_t, size_t);
  int (*close)(int);
  int (*signalfd)(int, const sigset_t*, int);
  int (*sigwaitinfo)(const sigset_t*, siginfo_t*);
  int (*sigtimedwait)(const sigset_t*, siginfo_t*, const struct timespec*);
};
extern RealFunctions g_real;
// Looks the real functions up (dlsym); called by the constructor and, in
// case another library's constructor calls a wrapper first, by wrappers.
void ResolveRealFunctions();

// Async-signal-safe helpers over raw system calls.
int64_t NowMs();
Message MakeMessage(Type type);
int ConnectToCryod();  // a new connection to cryod's shim socket, or -1
bool SendMessage(int fd, const Message& message);
bool ReceiveMessage(int fd, Message* message);  // blocks
void CloseFd(int fd);

// Tells cryod a SIGTERM arrived. True when cryod took it: it checkpoints
// the job, then stops it or forwards the signal according to the mode.
// False (cryod unreachable, or refused): the caller delivers the signal to
// the program itself. Async-signal-safe; blocks at most a few seconds.
bool ReportTerm(uint32_t flags);

// Starts the API side after fork() in the child (see api.cc).
void InstallForkHandlers();

}  // namespace cryo::shim
