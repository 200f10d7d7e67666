// SPDX-License-Identifier: Apache-2.0
// The cryo.h API. A process that uses it gets one connection to cryod
// (opened at the first call) and one shim thread that reads it: cryod's
// kPrepare runs the before_checkpoint hooks, waits for holds and answers
// kReady; kResumed and kRestored run the after hooks and wake a waiting
// cryo_checkpoint(). Programs that never call the API have neither.
//
// The connection survives checkpoints: CRIU dumps it as an external unix
// socket and a restore puts a fresh socket from the restoring cryod in its
// place (same descriptor number), where the shim thread, restored in its
// read(), finds kRestored.
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cerrno>

#include "../include/cryo.h"
#include "shim.h"

namespace cryo::shim {
namespace {

constexpr int kMaxHooks = 32;
constexpr int kEvents = 3;
constexpr int kMaxReconnectDelayMs = 30000;

struct Hook {
  cryo_hook fn;
  void* arg;
};

// Everything below is guarded by `mu` except where said.
struct Api {
  pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t cv;  // CLOCK_MONOTONIC, set up by InstallForkHandlers
  pthread_mutex_t write_mu = PTHREAD_MUTEX_INITIALIZER;  // one writer at a time on fd
  int fd = -1;
  bool thread_started = false;
  int holds = 0;
  bool in_checkpoint = false;  // kReady sent, kResumed/kRestored not yet seen
  uint64_t next_seq = 1;
  uint64_t pending_seq = 0;  // a cryo_checkpoint() waiting for its answer
  bool pending_done = false;
  bool pending_restored = false;
  int pending_status = 0;
  char pending_id[kTextBytes] = {};
  Hook hooks[kEvents][kMaxHooks] = {};
  int hook_count[kEvents] = {};
};
Api g_api;

void InitCondition() {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&g_api.cv, &attr);
  pthread_condattr_destroy(&attr);
}

struct timespec DeadlineIn(int ms) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  t.tv_sec += ms / 1000;
  t.tv_nsec += static_cast<long>(ms % 1000) * 1000000;
  if (t.tv_nsec >= 1000000000) {
    t.tv_sec += 1;
    t.tv_nsec -= 1000000000;
  }
  return t;
}

bool Send(int fd, const Message& m) {
  pthread_mutex_lock(&g_api.write_mu);
  bool ok = SendMessage(fd, m);
  pthread_mutex_unlock(&g_api.write_mu);
  return ok;
}

// Runs the hooks of `event` outside the lock: forwards for
// before_checkpoint, backwards for the others.
void RunHooks(int event) {
  pthread_mutex_lock(&g_api.mu);
  int n = g_api.hook_count[event];
  Hook hooks[kMaxHooks];
  memcpy(hooks, g_api.hooks[event], sizeof hooks);
  pthread_mutex_unlock(&g_api.mu);
  if (event == CRYO_BEFORE_CHECKPOINT) {
    for (int i = 0; i < n; ++i) hooks[i].fn(hooks[i].arg);
  } else {
    for (int i = n - 1; i >= 0; --i) hooks[i].fn(hooks[i].arg);
  }
}

// Opens the connection and has cryod register it (kHello, answered with
// kHello). Called with `mu` held. Returns the fd or -1.
int Connect() {
  int fd = ConnectToCryod();
  if (fd < 0) return -1;
  Message hello = MakeMessage(kHello);
  struct stat st;
  if (fstat(fd, &st) == 0) hello.inode = st.st_ino;
  Message answer;
  if (!SendMessage(fd, hello) || !ReceiveMessage(fd, &answer) || answer.type != kHello) {
    CloseFd(fd);
    return -1;
  }
  return fd;
}

void Disconnected(int fd) {
  pthread_mutex_lock(&g_api.mu);
  if (g_api.fd == fd) {
    CloseFd(fd);
    g_api.fd = -1;
  }
  g_api.in_checkpoint = false;
  if (g_api.pending_seq != 0 && !g_api.pending_done) {
    g_api.pending_done = true;
    g_api.pending_status = ECONNRESET;
  }
  pthread_cond_broadcast(&g_api.cv);
  pthread_mutex_unlock(&g_api.mu);
}

void OnPrepare(int fd, const Message& m) {
  RunHooks(CRYO_BEFORE_CHECKPOINT);
  pthread_mutex_lock(&g_api.mu);
  struct timespec deadline = DeadlineIn(CRYO_HOLD_BOUND_MS);
  while (g_api.holds > 0) {
    if (pthread_cond_timedwait(&g_api.cv, &g_api.mu, &deadline) == ETIMEDOUT) break;
  }
  g_api.in_checkpoint = true;
  pthread_mutex_unlock(&g_api.mu);
  Message ready = MakeMessage(kReady);
  ready.seq = m.seq;
  Send(fd, ready);
}

void OnOver(const Message& m) {
  bool restored = m.type == kRestored;
  pthread_mutex_lock(&g_api.mu);
  g_api.in_checkpoint = false;
  pthread_cond_broadcast(&g_api.cv);
  pthread_mutex_unlock(&g_api.mu);
  RunHooks(restored ? CRYO_AFTER_RESTORE : CRYO_AFTER_RESUME);
  if (!restored) return;
  // A cryo_checkpoint() that was waiting when the checkpoint was taken
  // returns "restored" in the restored process.
  pthread_mutex_lock(&g_api.mu);
  if (g_api.pending_seq != 0 && !g_api.pending_done) {
    g_api.pending_done = true;
    g_api.pending_restored = true;
    g_api.pending_status = 0;
    memcpy(g_api.pending_id, m.text, sizeof g_api.pending_id);
    pthread_cond_broadcast(&g_api.cv);
  }
  pthread_mutex_unlock(&g_api.mu);
}

void OnCheckpointDone(const Message& m) {
  pthread_mutex_lock(&g_api.mu);
  if (m.seq == g_api.pending_seq && !g_api.pending_done) {
    g_api.pending_done = true;
    g_api.pending_status = m.status;
    memcpy(g_api.pending_id, m.text, sizeof g_api.pending_id);
    pthread_cond_broadcast(&g_api.cv);
  }
  pthread_mutex_unlock(&g_api.mu);
}

void* ShimThread(void*) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  int delay_ms = 500;
  for (;;) {
    pthread_mutex_lock(&g_api.mu);
    int fd = g_api.fd;
    if (fd < 0) {
      fd = g_api.fd = Connect();
      if (fd >= 0) delay_ms = 500;
    }
    pthread_mutex_unlock(&g_api.mu);
    if (fd < 0) {
      struct timespec pause = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
      nanosleep(&pause, nullptr);
      delay_ms = delay_ms * 2 > kMaxReconnectDelayMs ? kMaxReconnectDelayMs : delay_ms * 2;
      continue;
    }
    Message m;
    if (!ReceiveMessage(fd, &m)) {
      Disconnected(fd);
      continue;
    }
    m.text[kTextBytes - 1] = '\0';
    switch (m.type) {
      case kPrepare:
        OnPrepare(fd, m);
        break;
      case kResumed:
      case kRestored:
        OnOver(m);
        break;
      case kCheckpointDone:
        OnCheckpointDone(m);
        break;
      default:
        break;
    }
  }
  return nullptr;
}

// Makes sure the connection and the shim thread exist. 0, or -1 with errno.
int EnsureStarted() {
  if (!g_settings.active) {
    errno = ENOSYS;
    return -1;
  }
  pthread_mutex_lock(&g_api.mu);
  if (g_api.fd < 0) g_api.fd = Connect();
  int fd = g_api.fd;
  if (fd >= 0 && !g_api.thread_started) {
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    g_api.thread_started = pthread_create(&thread, &attr, ShimThread, nullptr) == 0;
    pthread_attr_destroy(&attr);
  }
  bool ok = fd >= 0 && g_api.thread_started;
  pthread_mutex_unlock(&g_api.mu);
  if (!ok) {
    errno = ECONNREFUSED;
    return -1;
  }
  return 0;
}

void BeforeFork() {
  pthread_mutex_lock(&g_api.mu);
  pthread_mutex_lock(&g_api.write_mu);
}

void AfterForkInParent() {
  pthread_mutex_unlock(&g_api.write_mu);
  pthread_mutex_unlock(&g_api.mu);
}

// The child has no shim thread and must not share the parent's
// connection: it starts afresh, keeping the registered hooks.
void AfterForkInChild() {
  pthread_mutex_init(&g_api.mu, nullptr);
  pthread_mutex_init(&g_api.write_mu, nullptr);
  InitCondition();
  if (g_api.fd >= 0) CloseFd(g_api.fd);
  g_api.fd = -1;
  g_api.thread_started = false;
  g_api.holds = 0;
  g_api.in_checkpoint = false;
  g_api.pending_seq = 0;
  g_api.pending_done = false;
}

}  // namespace

void InstallForkHandlers() {
  InitCondition();
  pthread_atfork(BeforeFork, AfterForkInParent, AfterForkInChild);
}

}  // namespace cryo::shim

using namespace cryo::shim;

// The interposed and exported functions; everything else stays hidden.
#pragma GCC visibility push(default)
extern "C" {

int cryo_shim_is_active(void) { return g_settings.active ? 1 : 0; }

int cryo_shim_checkpoint(char* id, unsigned long id_size) {
  if (EnsureStarted() != 0) return -1;
  pthread_mutex_lock(&g_api.mu);
  if (g_api.pending_seq != 0) {
    pthread_mutex_unlock(&g_api.mu);
    errno = EBUSY;
    return -1;
  }
  uint64_t seq = g_api.next_seq++;
  g_api.pending_seq = seq;
  g_api.pending_done = false;
  g_api.pending_restored = false;
  g_api.pending_status = 0;
  int fd = g_api.fd;
  pthread_mutex_unlock(&g_api.mu);

  Message request = MakeMessage(kCheckpointRequest);
  request.seq = seq;
  bool sent = fd >= 0 && Send(fd, request);

  pthread_mutex_lock(&g_api.mu);
  if (!sent && !g_api.pending_done) {
    g_api.pending_done = true;
    g_api.pending_status = ECONNRESET;
  }
  while (!g_api.pending_done) pthread_cond_wait(&g_api.cv, &g_api.mu);
  int status = g_api.pending_status;
  bool restored = g_api.pending_restored;
  if (id && id_size > 0) {
    size_t n = strnlen(g_api.pending_id, sizeof g_api.pending_id);
    if (n >= id_size) n = id_size - 1;
    memcpy(id, g_api.pending_id, n);
    id[n] = '\0';
  }
  g_api.pending_seq = 0;
  pthread_mutex_unlock(&g_api.mu);
  if (status != 0) {
    errno = status;
    return -1;
  }
  return restored ? CRYO_RESTORED : CRYO_CHECKPOINTED;
}

int cryo_shim_hold(void) {
  if (EnsureStarted() != 0) return -1;
  pthread_mutex_lock(&g_api.mu);
  while (g_api.in_checkpoint) pthread_cond_wait(&g_api.cv, &g_api.mu);
  ++g_api.holds;
  pthread_mutex_unlock(&g_api.mu);
  return 0;
}

int cryo_shim_release(void) {
  pthread_mutex_lock(&g_api.mu);
  if (g_api.holds == 0) {
    pthread_mutex_unlock(&g_api.mu);
    errno = EINVAL;
    return -1;
  }
  --g_api.holds;
  pthread_cond_broadcast(&g_api.cv);
  pthread_mutex_unlock(&g_api.mu);
  return 0;
}

int cryo_shim_add_hook(int event, cryo_hook hook, void* arg) {
  if (event < 0 || event >= kEvents || hook == nullptr) {
    errno = EINVAL;
    return -1;
  }
  pthread_mutex_lock(&g_api.mu);
  if (g_api.hook_count[event] == kMaxHooks) {
    pthread_mutex_unlock(&g_api.mu);
    errno = ENOSPC;
    return -1;
  }
  g_api.hooks[event][g_api.hook_count[event]++] = {hook, arg};
  pthread_mutex_unlock(&g_api.mu);
  // cryod only asks processes it knows about before a checkpoint.
  return EnsureStarted();
}

}  // extern "C"
#pragma GCC visibility pop
