// SPDX-License-Identifier: Apache-2.0
// Anonymous shared memory (MAP_SHARED | MAP_ANONYMOUS) between a parent and
// its child: the child adds one to a counter in it every 20 ms; the parent
// looks every 10 ms and prints "seen N" whenever the counter changed. A
// counter that goes down prints "BROKEN". After a restore the parent must
// keep seeing the child's increments: the page is still shared, not two
// private copies.
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

int main(void) {
  uint64_t* counter = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (counter == MAP_FAILED) return 1;
  pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct timespec tick = {0, 20 * 1000 * 1000};
    for (;;) {
      __atomic_add_fetch(counter, 1, __ATOMIC_SEQ_CST);
      nanosleep(&tick, NULL);
    }
  }
  struct timespec look = {0, 10 * 1000 * 1000};
  uint64_t last = 0;
  for (;;) {
    uint64_t now = __atomic_load_n(counter, __ATOMIC_SEQ_CST);
    if (now != last) {
      printf("seen %llu%s\n", (unsigned long long)now, now < last ? " BROKEN" : "");
      fflush(stdout);
      last = now;
    }
    nanosleep(&look, NULL);
  }
}
