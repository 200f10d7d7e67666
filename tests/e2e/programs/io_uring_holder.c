// SPDX-License-Identifier: Apache-2.0
// Holds an io_uring instance, which CRIU cannot dump: a checkpoint must fail
// cleanly and leave this program running.
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
  struct io_uring_params params;
  memset(&params, 0, sizeof params);
  int fd = (int)syscall(__NR_io_uring_setup, 8, &params);
  printf(fd >= 0 ? "ready\n" : "no io_uring\n");
  fflush(stdout);
  for (unsigned long n = 0;; ++n) {
    printf("alive %lu\n", n);
    fflush(stdout);
    usleep(20000);
  }
}
