// SPDX-License-Identifier: Apache-2.0
// Multi-threaded state: four workers add to a shared total under a mutex and
// signal a condition variable; the main thread waits on it and prints
// "total N" (N only grows). Also checks the invariant total == sum of the
// per-worker counts, and says "BROKEN" if a restore ever breaks it.
#include <pthread.h>
#include <stdio.h>
#include <time.h>

enum { kWorkers = 4 };
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static unsigned long total, per_worker[kWorkers];

static void* Work(void* arg) {
  long i = (long)arg;
  struct timespec tick = {0, 5 * 1000 * 1000};
  for (;;) {
    pthread_mutex_lock(&mu);
    ++total;
    ++per_worker[i];
    pthread_cond_signal(&changed);
    pthread_mutex_unlock(&mu);
    nanosleep(&tick, NULL);
  }
  return NULL;
}

int main(void) {
  pthread_t t[kWorkers];
  for (long i = 0; i < kWorkers; ++i) pthread_create(&t[i], NULL, Work, (void*)i);
  unsigned long printed = 0;
  for (;;) {
    pthread_mutex_lock(&mu);
    while (total < printed + 20) pthread_cond_wait(&changed, &mu);
    unsigned long sum = 0;
    for (int i = 0; i < kWorkers; ++i) sum += per_worker[i];
    printed = total;
    printf("total %lu%s\n", total, sum == total ? "" : " BROKEN");
    fflush(stdout);
    pthread_mutex_unlock(&mu);
  }
}
