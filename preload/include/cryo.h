/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cryo.h: the C API for programs that cooperate with cryo. Usable from C and
 * C++. Nothing to link: the functions live in libcryo_preload.so, which
 * `cryo run` injects into every process of a job. The declarations below
 * are weak, so a program built with this header also runs without cryo:
 * cryo_is_active() is then 0 and the other calls fail with ENOSYS.
 *
 * Checkpoints (from `cryo checkpoint`, a SIGTERM under --on-sigterm
 * checkpoint, or cryo_checkpoint()) go like this for a process that used
 * the API:
 *   1. before_checkpoint hooks run, in registration order, on a thread of
 *      the shim (not a signal handler: they may lock and allocate);
 *   2. the shim waits until no cryo_hold() is in force, for at most
 *      CRYO_HOLD_BOUND_MS, then lets the job be frozen and dumped (cryod
 *      itself waits at most CRYO_PREPARE_BOUND_MS for a process to be ready,
 *      so a preemption deadline is never missed because of a hold);
 *   3. in the original process, if it keeps running, after_resume hooks
 *      run in reverse registration order; in a process restored from that
 *      checkpoint, after_restore hooks run in reverse registration order.
 * cryo_hold() called while a checkpoint is between steps 2 and 3 waits
 * until step 3 is over, so a held section never straddles a checkpoint.
 *
 * A fork()ed child starts with no holds and no connection; hooks
 * registered before the fork stay registered in the child.
 */
#ifndef CRYO_H_
#define CRYO_H_

#include <errno.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CRYO_HOLD_BOUND_MS 10000
#define CRYO_PREPARE_BOUND_MS 15000

/* What cryo_checkpoint() returns on success. */
#define CRYO_CHECKPOINTED 0 /* the original process, after its checkpoint */
#define CRYO_RESTORED 1     /* a process restored from that checkpoint */

typedef void (*cryo_hook)(void* arg);

/* Implemented by libcryo_preload.so; use the inline functions below. */
int cryo_shim_is_active(void) __attribute__((weak));
int cryo_shim_checkpoint(char* id, unsigned long id_size) __attribute__((weak));
int cryo_shim_hold(void) __attribute__((weak));
int cryo_shim_release(void) __attribute__((weak));
int cryo_shim_add_hook(int event, cryo_hook hook, void* arg) __attribute__((weak));

#define CRYO_BEFORE_CHECKPOINT 0
#define CRYO_AFTER_RESUME 1
#define CRYO_AFTER_RESTORE 2

/* 1 when running under cryo (the shim is loaded and knows its cryod). */
static inline int cryo_is_active(void) { return cryo_shim_is_active ? cryo_shim_is_active() : 0; }

/*
 * Checkpoints the whole job and waits for the result: CRYO_CHECKPOINTED in
 * the original, CRYO_RESTORED when a restore of that checkpoint returns
 * here. -1 with errno on failure (ENOSYS: not under cryo; EIO: the
 * checkpoint failed, the reason is in cryod's log and `cryo ps`; ECONNRESET:
 * cryod went away). Must not be called from a hook or a signal handler.
 */
static inline int cryo_checkpoint(void) {
  if (!cryo_shim_checkpoint) {
    errno = ENOSYS;
    return -1;
  }
  return cryo_shim_checkpoint(0, 0);
}

/* The same, also copying the checkpoint's id (NUL-terminated) to `id`. */
static inline int cryo_checkpoint_id(char* id, unsigned long id_size) {
  if (!cryo_shim_checkpoint) {
    errno = ENOSYS;
    return -1;
  }
  return cryo_shim_checkpoint(id, id_size);
}

/* Holds off checkpoints until the matching cryo_release(); nests. 0 or -1. */
static inline int cryo_hold(void) {
  if (!cryo_shim_hold) {
    errno = ENOSYS;
    return -1;
  }
  return cryo_shim_hold();
}

static inline int cryo_release(void) {
  if (!cryo_shim_release) {
    errno = ENOSYS;
    return -1;
  }
  return cryo_shim_release();
}

/* Hook registration: at most 32 hooks per event. 0, or -1 with errno. */
static inline int cryo_hook_add(int event, cryo_hook hook, void* arg) {
  if (!cryo_shim_add_hook) {
    errno = ENOSYS;
    return -1;
  }
  return cryo_shim_add_hook(event, hook, arg);
}
static inline int cryo_before_checkpoint(cryo_hook hook, void* arg) {
  return cryo_hook_add(CRYO_BEFORE_CHECKPOINT, hook, arg);
}
static inline int cryo_after_resume(cryo_hook hook, void* arg) {
  return cryo_hook_add(CRYO_AFTER_RESUME, hook, arg);
}
static inline int cryo_after_restore(cryo_hook hook, void* arg) {
  return cryo_hook_add(CRYO_AFTER_RESTORE, hook, arg);
}

#ifdef __cplusplus
}
#endif

#endif /* CRYO_H_ */
