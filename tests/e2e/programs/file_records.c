// SPDX-License-Identifier: Apache-2.0
//   file_records PATH
// Open regular files with offsets: one fd writes fixed-size records
// "record 00000000\n", numbered from 0, at its own file offset (no
// O_APPEND); a second fd on the same file trails it, reads each record
// back, lseek()s back over it and reads it again. Every 20 ms it prints
// "record N" once both fds agree that record N sits at offset N * 16.
// After a restore the numbers go on and the file has no gap, duplicate or
// overwrite; anything else prints "BROKEN" and a reason.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { kRecord = 16 };

static void Broken(const char* what, unsigned long n) {
  printf("BROKEN %s at record %lu\n", what, n);
  fflush(stdout);
  exit(1);
}

// Reads one record at `fd`'s offset and returns its number (or -1).
static long ReadRecord(int fd) {
  char buf[kRecord + 1] = {0};
  if (read(fd, buf, kRecord) != kRecord) return -1;
  if (strncmp(buf, "record ", 7) != 0 || buf[kRecord - 1] != '\n') return -1;
  return strtol(buf + 7, NULL, 10);
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  int w = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int r = open(argv[1], O_RDONLY);
  if (w < 0 || r < 0) return 1;
  struct timespec tick = {0, 20 * 1000 * 1000};
  for (unsigned long n = 0;; ++n) {
    off_t at = (off_t)n * kRecord;
    if (lseek(w, 0, SEEK_CUR) != at) Broken("write offset", n);
    char buf[kRecord + 1];
    snprintf(buf, sizeof buf, "record %08lu\n", n);
    if (write(w, buf, kRecord) != kRecord) Broken("write", n);
    if (lseek(r, 0, SEEK_CUR) != at) Broken("read offset", n);
    if (ReadRecord(r) != (long)n) Broken("read", n);
    if (lseek(r, -kRecord, SEEK_CUR) != at) Broken("lseek", n);
    if (ReadRecord(r) != (long)n) Broken("reread", n);
    printf("record %lu\n", n);
    fflush(stdout);
    nanosleep(&tick, NULL);
  }
}
