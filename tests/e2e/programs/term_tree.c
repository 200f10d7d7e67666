// SPDX-License-Identifier: Apache-2.0
// A process tree: forks N children that each exec PROGRAM ARGS (another
// program, so the shim must survive fork and exec), prints "child PID" for
// each, then prints "tick N" every 20 ms with N counting up from 0. It keeps
// the default SIGTERM disposition and stays in its process group with its
// children, so a process-group SIGTERM reaches all of them at once.
//
//   term_tree N PROGRAM [ARGS...]
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: term_tree N PROGRAM [ARGS...]\n");
    return 2;
  }
  int children = atoi(argv[1]);
  for (int i = 0; i < children; ++i) {
    pid_t pid = fork();
    if (pid < 0) {
      perror("fork");
      return 1;
    }
    if (pid == 0) {
      execvp(argv[2], argv + 2);
      perror("exec");
      _exit(127);
    }
    printf("child %d\n", (int)pid);
    fflush(stdout);
  }
  struct timespec tick = {0, 20 * 1000 * 1000};
  for (unsigned long n = 0;; ++n) {
    printf("tick %lu\n", n);
    fflush(stdout);
    nanosleep(&tick, NULL);
  }
}
