// SPDX-License-Identifier: Apache-2.0
// An unmodified program with its own SIGTERM handler (sigaction): prints
// "tick N" every 20 ms, N counting up from 0 in memory. Its handler writes
// "handler ran" to the file named by its argument; the program then prints
// "handler ran" and exits 0.
//
//   term_counter FILE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char* marker_path;
static volatile sig_atomic_t got_term;

static void OnTerm(int sig) {
  (void)sig;
  int fd = open(marker_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    (void)!write(fd, "handler ran\n", 12);
    close(fd);
  }
  got_term = 1;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: term_counter FILE\n");
    return 2;
  }
  marker_path = argv[1];
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = OnTerm;
  sigaction(SIGTERM, &sa, NULL);
  struct timespec tick = {0, 20 * 1000 * 1000};
  for (unsigned long n = 0; !got_term; ++n) {
    printf("tick %lu\n", n);
    fflush(stdout);
    nanosleep(&tick, NULL);
  }
  printf("handler ran\n");
  return 0;
}
