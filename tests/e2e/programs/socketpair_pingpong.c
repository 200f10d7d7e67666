// SPDX-License-Identifier: Apache-2.0
// A unix socketpair between a parent and its child, used both ways: every
// 20 ms the parent sends an even number N, the child checks it is 2 more
// than the last it got and answers N + 1, the parent checks the answer and
// prints "pong N+1". After a restore the exchange goes on where it was; a
// wrong number on either side, or an end of the socket, prints "BROKEN".
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/socket.h>
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

static int Broken(const char* who, uint64_t expected, uint64_t got) {
  printf("BROKEN %s expected %llu, got %llu\n", who, (unsigned long long)expected,
         (unsigned long long)got);
  fflush(stdout);
  return 1;
}

static int Child(int s) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  for (uint64_t expected = 0;; expected += 2) {
    uint64_t n;
    if (ReadAll(s, &n, sizeof n) != 0) return Broken("child (end of socket)", expected, 0);
    if (n != expected) return Broken("child", expected, n);
    ++n;
    if (write(s, &n, sizeof n) != sizeof n) return 1;
  }
}

int main(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 1;
  pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    close(sv[0]);
    return Child(sv[1]);
  }
  close(sv[1]);
  struct timespec tick = {0, 20 * 1000 * 1000};
  for (uint64_t n = 0;; n += 2) {
    if (write(sv[0], &n, sizeof n) != sizeof n) return Broken("parent (write)", n, 0);
    uint64_t answer;
    if (ReadAll(sv[0], &answer, sizeof answer) != 0)
      return Broken("parent (end of socket)", n + 1, 0);
    if (answer != n + 1) return Broken("parent", n + 1, answer);
    printf("pong %llu\n", (unsigned long long)answer);
    fflush(stdout);
    nanosleep(&tick, NULL);
  }
}
