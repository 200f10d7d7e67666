// SPDX-License-Identifier: Apache-2.0
// Prints "ready", waits for SIGTERM; its own handler prints "handler ran"
// and the program exits 0. Proves that signals reach the program's handler.
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t got_term;

static void OnTerm(int sig) {
  (void)sig;
  got_term = 1;
}

int main(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = OnTerm;
  sigaction(SIGTERM, &sa, NULL);
  printf("ready\n");
  fflush(stdout);
  while (!got_term) pause();
  printf("handler ran\n");
  return 0;
}
