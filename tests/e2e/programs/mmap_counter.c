// SPDX-License-Identifier: Apache-2.0
//   mmap_counter PATH
// A counter that lives in a MAP_SHARED mapping of the file PATH (created,
// one page). Every 20 ms it adds one to the counter in the mapping, writes
// "mapped N\n" as text at the start of the page (so the file shows it) and
// prints "mapped N". The file's fd is closed once mapped: after a restore
// the mapping is the only link to the file, and the count goes on from the
// value in it.
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct Page {
  char text[64];  // "mapped N\n", for whoever reads the file
  uint64_t count;
};

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || ftruncate(fd, 4096) != 0) return 1;
  struct Page* page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (page == MAP_FAILED) return 1;
  close(fd);
  struct timespec tick = {0, 20 * 1000 * 1000};
  for (;;) {
    uint64_t n = ++page->count;
    snprintf(page->text, sizeof page->text, "mapped %llu\n", (unsigned long long)n);
    printf("mapped %llu\n", (unsigned long long)n);
    fflush(stdout);
    nanosleep(&tick, NULL);
  }
}
