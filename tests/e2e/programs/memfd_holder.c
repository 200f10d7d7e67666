// SPDX-License-Identifier: Apache-2.0
//   memfd_holder MIB
// Writes MIB MiB of pseudo-random bytes into a memfd it never maps (so they
// are not in its resident memory, though CRIU dumps them), prints "ready",
// then prints "count N" every 20 ms. On SIGUSR1 it reads the memfd back and
// prints "intact" or "BROKEN".
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t check;
static void OnUsr1(int sig) {
  (void)sig;
  check = 1;
}

// Block b of the content: 64 KiB from a xorshift seeded by b.
static void Block(uint64_t b, unsigned char* out, size_t n) {
  uint64_t x = 0x9e3779b97f4a7c15 ^ (b + 1);
  for (size_t i = 0; i < n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    for (int k = 0; k < 8; ++k) out[i + k] = (unsigned char)(x >> (8 * k));
  }
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const size_t kBlock = 64 << 10;
  size_t blocks = (size_t)atol(argv[1]) * 16;
  int fd = memfd_create("data", 0);
  if (fd < 0) return 1;
  static unsigned char buf[64 << 10], got[64 << 10];
  for (size_t b = 0; b < blocks; ++b) {
    Block(b, buf, kBlock);
    if (write(fd, buf, kBlock) != (ssize_t)kBlock) return 1;
  }
  signal(SIGUSR1, OnUsr1);
  printf("ready\n");
  fflush(stdout);
  struct timespec tick = {0, 20 * 1000 * 1000};
  for (unsigned long n = 0;; ++n) {
    if (check) {
      check = 0;
      int ok = 1;
      for (size_t b = 0; b < blocks && ok; ++b) {
        Block(b, buf, kBlock);
        ok = pread(fd, got, kBlock, (off_t)(b * kBlock)) == (ssize_t)kBlock &&
             memcmp(buf, got, kBlock) == 0;
      }
      printf("%s\n", ok ? "intact" : "BROKEN");
    }
    printf("count %lu\n", n);
    fflush(stdout);
    nanosleep(&tick, NULL);
  }
}
