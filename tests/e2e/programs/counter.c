// SPDX-License-Identifier: Apache-2.0
// Single-threaded state: prints "count N" every 20 ms, N counting up from 0
// in memory. After a restore it must go on from where it was, not from 0.
#include <stdio.h>
#include <time.h>

int main(void) {
  struct timespec tick = {0, 20 * 1000 * 1000};
  for (unsigned long n = 0;; ++n) {
    printf("count %lu\n", n);
    fflush(stdout);
    nanosleep(&tick, NULL);
  }
}
