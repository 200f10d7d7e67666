// SPDX-License-Identifier: Apache-2.0
// A pipe between a parent and its child: the child writes sequence numbers
// 0, 1, 2... into the pipe every 20 ms; the parent reads them, checks each
// is one more than the last, and prints "piped N". After a restore the
// numbers go on through the same pipe; a gap, a repeat or an end of the
// pipe prints "BROKEN".
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static int ReadAll(int fd, void* buf, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t got = read(fd, (char*)buf + done, n - done);
    if (got <= 0) return -1;
    done += (size_t)got;
  }
  return 0;
}

int main(void) {
  int p[2];
  if (pipe(p) != 0) return 1;
  pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(p[0]);
    struct timespec tick = {0, 20 * 1000 * 1000};
    for (uint64_t n = 0;; ++n) {
      if (write(p[1], &n, sizeof n) != sizeof n) return 1;
      nanosleep(&tick, NULL);
    }
  }
  close(p[1]);
  for (uint64_t expected = 0;; ++expected) {
    uint64_t n;
    if (ReadAll(p[0], &n, sizeof n) != 0) {
      printf("BROKEN the pipe ended after %llu\n", (unsigned long long)expected);
      fflush(stdout);
      return 1;
    }
    if (n != expected) {
      printf("BROKEN expected %llu, got %llu\n", (unsigned long long)expected,
             (unsigned long long)n);
      fflush(stdout);
      return 1;
    }
    printf("piped %llu\n", (unsigned long long)n);
    fflush(stdout);
  }
}
