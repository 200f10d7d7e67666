// SPDX-License-Identifier: Apache-2.0
// Prints "count N" every 20 ms. On SIGUSR1 it vfork()s once: the child
// sleeps SECONDS (argument; 8 if none) before it execs /bin/true, so the
// parent waits in vfork() all that time (a state CRIU cannot seize while the
// child is stopped), and prints "vforked" first. A shell running external
// commands does the same, for a moment at a time.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void OnUsr1(int sig) {
  (void)sig;
  go = 1;
}

// In a function of its own, so that no variable of the loop lives across
// the vfork().
static void __attribute__((noinline)) VforkOnce(time_t seconds) {
  pid_t pid = vfork();
  if (pid == 0) {
    // Only system calls in the vfork child: it shares our memory.
    struct timespec pause = {seconds, 0};
    nanosleep(&pause, NULL);
    execl("/bin/true", "true", (char*)NULL);
    _exit(127);
  }
  if (pid > 0) waitpid(pid, NULL, 0);
}

int main(int argc, char** argv) {
  time_t seconds = argc > 1 ? (time_t)atol(argv[1]) : 8;
  signal(SIGUSR1, OnUsr1);
  struct timespec tick = {0, 20 * 1000 * 1000};
  for (unsigned long n = 0;; ++n) {
    printf("count %lu\n", n);
    fflush(stdout);
    nanosleep(&tick, NULL);
    if (go) {
      go = 0;
      printf("vforked\n");
      fflush(stdout);
      VforkOnce(seconds);
    }
  }
}
