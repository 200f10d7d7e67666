// SPDX-License-Identifier: Apache-2.0
// The multi-threaded version of term_counter: four workers add to a shared
// total under a mutex; the main thread installs a SIGTERM handler (after
// the workers started, so any thread may be the one that receives the
// signal) and prints "tick N" every 20 ms with N the total, which only
// grows. The handler writes "handler ran" to the file named by the
// argument; the program then prints "handler ran" and exits 0.
//
//   term_threads FILE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { kWorkers = 4 };
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long total;
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

static void* Work(void* arg) {
  (void)arg;
  struct timespec tick = {0, 2 * 1000 * 1000};
  for (;;) {
    pthread_mutex_lock(&mu);
    ++total;
    pthread_mutex_unlock(&mu);
    nanosleep(&tick, NULL);
  }
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: term_threads FILE\n");
    return 2;
  }
  marker_path = argv[1];
  pthread_t t[kWorkers];
  for (long i = 0; i < kWorkers; ++i) pthread_create(&t[i], NULL, Work, NULL);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = OnTerm;
  sigaction(SIGTERM, &sa, NULL);
  struct timespec tick = {0, 20 * 1000 * 1000};
  while (!got_term) {
    pthread_mutex_lock(&mu);
    unsigned long now = total;
    pthread_mutex_unlock(&mu);
    printf("tick %lu\n", now);
    fflush(stdout);
    nanosleep(&tick, NULL);
  }
  printf("handler ran\n");
  return 0;
}
