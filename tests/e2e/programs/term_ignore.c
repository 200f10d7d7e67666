// SPDX-License-Identifier: Apache-2.0
// A program that ignores SIGTERM (SIG_IGN, set with signal()) and prints
// "tick N" every 20 ms, N counting up from 0. A SIGTERM must neither stop
// it nor get it checkpointed.
#include <signal.h>
#include <stdio.h>
#include <time.h>

int main(void) {
  signal(SIGTERM, SIG_IGN);
  struct timespec tick = {0, 20 * 1000 * 1000};
  for (unsigned long n = 0;; ++n) {
    printf("tick %lu\n", n);
    fflush(stdout);
    nanosleep(&tick, NULL);
  }
}
