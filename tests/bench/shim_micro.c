// SPDX-License-Identifier: Apache-2.0
// Microbenchmark for the shim's overhead: the calls it interposes (read,
// close, sigaction) and signal delivery, in a tight loop. Prints the
// elapsed seconds.
//   shim_micro ITERATIONS
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handled;
static void OnUsr1(int sig) { handled += sig > 0; }

int main(int argc, char** argv) {
  long n = argc > 1 ? atol(argv[1]) : 200000;
  int zero = open("/dev/zero", O_RDONLY);
  if (zero < 0) return 1;
  struct sigaction act = {0};
  act.sa_handler = OnUsr1;
  sigaction(SIGUSR1, &act, NULL);
  char buf[64];
  struct timespec start, end;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (long i = 0; i < n; ++i) {
    if (read(zero, buf, sizeof buf) != sizeof buf) return 1;
    close(dup(zero));
    struct sigaction old;
    sigaction(SIGUSR1, NULL, &old);
    raise(SIGUSR1);
  }
  clock_gettime(CLOCK_MONOTONIC, &end);
  printf("%.6f\n", (double)(end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9);
  return handled == n ? 0 : 1;
}
