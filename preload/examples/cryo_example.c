// SPDX-License-Identifier: Apache-2.0
// cryo_example: a program that cooperates with cryo through cryo.h.
//
// It registers two hooks per event (A then B), keeps a critical section
// out of checkpoints with cryo_hold()/cryo_release(), checkpoints itself
// with cryo_checkpoint() and counts "tick N" every 100 ms. Under cryo a
// checkpoint prints
//   before A, before B                  (registration order)
//   after_resume B, after_resume A      (reverse order, in the original)
//   after_restore B, after_restore A    (reverse order, in a restored copy)
// Without cryo it says so and runs all the same: nothing to link, the
// cryo.h functions are weak.
//
//   cryo_example [--hold MS] [--no-checkpoint] [--forever]
//     --hold MS        hold checkpoints off for MS ms (default 100), printing
//                      "critical K" every 100 ms in between
//     --no-checkpoint  do not call cryo_checkpoint() at start
//     --forever        count forever instead of 5 ticks
// SIGUSR1 makes it call cryo_checkpoint() (again).
#include <cryo.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void Say(const char* what, void* hook_name) {
  printf("%s %s\n", what, (const char*)hook_name);
  fflush(stdout);
}
static void Before(void* name) { Say("before", name); }
static void AfterResume(void* name) { Say("after_resume", name); }
static void AfterRestore(void* name) { Say("after_restore", name); }

static void Sleep(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

static void Checkpoint(void) {
  char id[64];
  int r = cryo_checkpoint_id(id, sizeof id);
  if (r == CRYO_CHECKPOINTED) {
    printf("checkpoint %s taken, continuing\n", id);
  } else if (r == CRYO_RESTORED) {
    printf("restored from checkpoint %s\n", id);
  } else {
    printf("no checkpoint: %s\n", strerror(errno));
  }
  fflush(stdout);
}

static volatile sig_atomic_t checkpoint_requested;
static void OnUsr1(int sig) {
  (void)sig;
  checkpoint_requested = 1;
}

int main(int argc, char** argv) {
  long hold_ms = 100;
  int checkpoint = 1, forever = 0;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--hold") == 0 && i + 1 < argc) {
      hold_ms = atol(argv[++i]);
    } else if (strcmp(argv[i], "--no-checkpoint") == 0) {
      checkpoint = 0;
    } else if (strcmp(argv[i], "--forever") == 0) {
      forever = 1;
    } else {
      fprintf(stderr, "usage: cryo_example [--hold MS] [--no-checkpoint] [--forever]\n");
      return 2;
    }
  }
  printf(cryo_is_active() ? "cryo is active\n" : "cryo is not active: no checkpoints\n");
  fflush(stdout);
  // Before-hooks run in registration order, after-hooks in reverse.
  static char a[] = "A", b[] = "B";
  cryo_before_checkpoint(Before, a);
  cryo_before_checkpoint(Before, b);
  cryo_after_resume(AfterResume, a);
  cryo_after_resume(AfterResume, b);
  cryo_after_restore(AfterRestore, a);
  cryo_after_restore(AfterRestore, b);
  signal(SIGUSR1, OnUsr1);

  // No checkpoint is taken between hold and release (for at most
  // CRYO_HOLD_BOUND_MS): a checkpoint requested meanwhile waits.
  int held = cryo_hold() == 0;
  if (held) {
    printf("holding\n");
  } else {
    printf("not holding: %s\n", strerror(errno));
  }
  for (long k = 0; k * 100 < hold_ms; ++k) {
    printf("critical %ld\n", k);
    fflush(stdout);
    Sleep(100);
  }
  printf("releasing\n");
  fflush(stdout);
  if (held) cryo_release();

  if (checkpoint) Checkpoint();
  for (unsigned long n = 0; forever || n < 5; ++n) {
    if (checkpoint_requested) {
      checkpoint_requested = 0;
      Checkpoint();
    }
    printf("tick %lu\n", n);
    fflush(stdout);
    Sleep(100);
  }
  return 0;
}
