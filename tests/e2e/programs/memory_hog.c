// SPDX-License-Identifier: Apache-2.0
//   memory_hog MIB [mixed|random [SEED]]
// Holds MIB MiB of anonymous memory filled with pseudo-random bytes (fixed
// seed, 1 unless given: the same content in every run; with "mixed", the
// upper half is compressible text instead), prints "ready", then waits. On
// SIGUSR1 it maps 64 KiB more in the middle of its address space (between
// two halves of its memory), fills it, and prints "grown": pages added in the
// middle of the pages image, for the deduplication test. On SIGUSR2 it
// checks every byte of its memory against what it wrote and prints "intact"
// or "damaged at OFFSET" (a restore that lost or misplaced pages).
//   memory_hog MIB mixed|random SEED fork   also forks a child that shares
// the memory (copy-on-write) and waits.
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t grow, check;
static void OnUsr1(int sig) {
  (void)sig;
  grow = 1;
}
static void OnUsr2(int sig) {
  (void)sig;
  check = 1;
}

static void Fill(unsigned char* p, size_t n, uint64_t seed) {
  uint64_t x = seed;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    for (int b = 0; b < 8; ++b) p[i + b] = (unsigned char)(x >> (8 * b));
  }
}

// The offset of the first byte that Fill(p, n, seed) would not have written,
// or -1.
static long Differs(const unsigned char* p, size_t n, uint64_t seed) {
  uint64_t x = seed;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    for (int b = 0; b < 8; ++b) {
      if (p[i + b] != (unsigned char)(x >> (8 * b))) return (long)(i + b);
    }
  }
  return -1;
}

static const char kText[] = "cryo keeps your work when the machine goes away. ";

int main(int argc, char** argv) {
  size_t half = (size_t)(argc > 1 ? atol(argv[1]) : 256) << 19;  // MiB / 2
  // Reserve a hole between the two halves so new pages land in the middle.
  size_t hole = 1 << 20;
  unsigned char* base = mmap(NULL, 2 * half + hole, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return 1;
  unsigned char* low = base;
  unsigned char* high = base + half + hole;
  mprotect(low, half, PROT_READ | PROT_WRITE);
  mprotect(high, half, PROT_READ | PROT_WRITE);
  uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
  Fill(low, half, seed * 2 - 1);
  int mixed = argc > 2 && strcmp(argv[2], "mixed") == 0;
  if (mixed) {
    for (size_t i = 0; i < half; ++i) high[i] = (unsigned char)kText[i % (sizeof kText - 1)];
  } else {
    Fill(high, half, seed * 2);
  }
  // "fork": a child shares all of it, copy-on-write, and waits.
  if (argc > 4 && strcmp(argv[4], "fork") == 0 && fork() == 0) {
    for (;;) pause();
  }
  int grown = 0;
  signal(SIGUSR1, OnUsr1);
  signal(SIGUSR2, OnUsr2);
  printf("ready\n");
  fflush(stdout);
  for (;;) {
    pause();
    if (grow) {
      grow = 0;
      unsigned char* mid = base + half + hole / 2;
      mprotect(mid, 64 << 10, PROT_READ | PROT_WRITE);
      Fill(mid, 64 << 10, 3);
      grown = 1;
      printf("grown\n");
      fflush(stdout);
    }
    if (check) {
      check = 0;
      long bad = Differs(low, half, seed * 2 - 1);
      if (bad < 0 && mixed) {
        for (size_t i = 0; i < half && bad < 0; ++i) {
          if (high[i] != (unsigned char)kText[i % (sizeof kText - 1)])
            bad = (long)(half + hole + i);
        }
      } else if (bad < 0) {
        long at = Differs(high, half, seed * 2);
        if (at >= 0) bad = (long)(half + hole) + at;
      }
      if (bad < 0 && grown) {
        long at = Differs(base + half + hole / 2, 64 << 10, 3);
        if (at >= 0) bad = (long)(half + hole / 2) + at;
      }
      if (bad < 0) {
        printf("intact\n");
      } else {
        printf("damaged at %ld\n", bad);
      }
      fflush(stdout);
    }
  }
}
