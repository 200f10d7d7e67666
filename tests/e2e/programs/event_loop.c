// SPDX-License-Identifier: Apache-2.0
//   event_loop [periodic]
// eventfd + timerfd + signalfd in one epoll loop. A timerfd expires every
// 20 ms: by default a one-shot timer the loop arms again after each expiry
// (as event loops with a timer queue do), with "periodic" a timer with a
// 20 ms interval. For each expiry the program counts a tick, prints
// "tick N" and adds 1 to an eventfd that nothing reads, so the eventfd's
// value is the number of ticks not yet drained. On SIGUSR1 (through the
// signalfd) it turns on its interest in the eventfd; the next epoll round
// reads it and prints "eventfd V ticks N" (V must equal the ticks since the
// last drain, else "BROKEN"). After a restore the ticks go on (the timerfd
// still fires) and the eventfd still holds the ticks counted before the
// checkpoint.
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

static int Epoll(int ep, int op, int fd, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.fd = fd};
  return epoll_ctl(ep, op, fd, &ev);
}

int main(int argc, char** argv) {
  int periodic = argc > 1 && strcmp(argv[1], "periodic") == 0;
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  if (sigprocmask(SIG_BLOCK, &usr1, NULL) != 0) return 1;
  int sig = signalfd(-1, &usr1, 0);
  int timer = timerfd_create(CLOCK_MONOTONIC, 0);
  int event = eventfd(0, EFD_NONBLOCK);
  int ep = epoll_create1(0);
  if (sig < 0 || timer < 0 || event < 0 || ep < 0) return 1;
  struct itimerspec next = {{0, periodic ? 20 * 1000 * 1000 : 0}, {0, 20 * 1000 * 1000}};
  if (timerfd_settime(timer, 0, &next, NULL) != 0) return 1;
  // The eventfd is registered with no interest until a drain is asked for.
  if (Epoll(ep, EPOLL_CTL_ADD, timer, EPOLLIN) != 0 ||
      Epoll(ep, EPOLL_CTL_ADD, sig, EPOLLIN) != 0 || Epoll(ep, EPOLL_CTL_ADD, event, 0) != 0) {
    return 1;
  }
  uint64_t ticks = 0, drained = 0;
  for (;;) {
    struct epoll_event ready[4];
    int n = epoll_wait(ep, ready, 4, -1);
    for (int i = 0; i < n; ++i) {
      int fd = ready[i].data.fd;
      if (fd == timer) {
        uint64_t expiries;
        if (read(timer, &expiries, sizeof expiries) != sizeof expiries) continue;
        if (!periodic && timerfd_settime(timer, 0, &next, NULL) != 0) return 1;
        for (uint64_t e = 0; e < expiries; ++e) {
          ++ticks;
          uint64_t one = 1;
          if (write(event, &one, sizeof one) != sizeof one) return 1;
          printf("tick %llu\n", (unsigned long long)ticks);
        }
      } else if (fd == sig) {
        struct signalfd_siginfo info;
        if (read(sig, &info, sizeof info) != sizeof info) continue;
        if (Epoll(ep, EPOLL_CTL_MOD, event, EPOLLIN) != 0) return 1;
      } else if (fd == event) {
        uint64_t value;
        if (read(event, &value, sizeof value) != sizeof value) continue;
        printf("eventfd %llu ticks %llu%s\n", (unsigned long long)value, (unsigned long long)ticks,
               value == ticks - drained ? "" : " BROKEN");
        drained = ticks;
        if (Epoll(ep, EPOLL_CTL_MOD, event, 0) != 0) return 1;
      }
    }
    fflush(stdout);
  }
}
