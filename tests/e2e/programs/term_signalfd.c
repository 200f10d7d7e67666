// SPDX-License-Identifier: Apache-2.0
// A program that blocks SIGTERM in all its threads and reads it from a
// signalfd. It prints "tick N" every 20 ms, N counting up from 0 in
// memory. When it reads SIGTERM it writes "handler ran" to FILE, prints
// "handler ran" and exits 0. Two shapes, both common:
//   thread: a worker thread counts; the main thread blocks in read() on
//           the signalfd;
//   poll:   one event loop: poll() on the (blocking) signalfd with a 20 ms
//           timeout counts on every timeout and reads when it is readable.
//
//   term_signalfd FILE thread|poll
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

static unsigned long ticks;

static void Tick(void) {
  printf("tick %lu\n", ticks++);
  fflush(stdout);
}

static void* Count(void* arg) {
  (void)arg;
  struct timespec tick = {0, 20 * 1000 * 1000};
  for (;;) {
    Tick();
    nanosleep(&tick, NULL);
  }
  return NULL;
}

// True when `fd` gave SIGTERM.
static int ReadTerm(int fd) {
  struct signalfd_siginfo info;
  ssize_t n = read(fd, &info, sizeof info);
  return n == (ssize_t)sizeof info && info.ssi_signo == SIGTERM;
}

int main(int argc, char** argv) {
  if (argc != 3 || (strcmp(argv[2], "thread") != 0 && strcmp(argv[2], "poll") != 0)) {
    fprintf(stderr, "usage: term_signalfd FILE thread|poll\n");
    return 2;
  }
  // Blocked before any thread starts: every thread inherits the mask.
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, NULL);
  int fd = signalfd(-1, &term, SFD_CLOEXEC);
  if (fd < 0) {
    perror("signalfd");
    return 1;
  }
  if (strcmp(argv[2], "thread") == 0) {
    pthread_t worker;
    pthread_create(&worker, NULL, Count, NULL);
    while (!ReadTerm(fd)) {
    }
  } else {
    for (;;) {
      struct pollfd p = {fd, POLLIN, 0};
      if (poll(&p, 1, 20) == 1 && ReadTerm(fd)) break;
      Tick();
    }
  }
  int out = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (out >= 0) {
    (void)!write(out, "handler ran\n", 12);
    close(out);
  }
  printf("handler ran\n");
  fflush(stdout);
  return 0;
}
