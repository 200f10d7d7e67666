// SPDX-License-Identifier: Apache-2.0
// Calls the cryo.h API once, first thing: cryo_hold() then cryo_release(),
// printing "hold ok" or "hold failed: ERROR". One call, no retry, so a
// connection cryod refuses shows.
#include <cryo.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(void) {
  if (cryo_hold() != 0) {
    printf("hold failed: %s\n", strerror(errno));
    return 1;
  }
  cryo_release();
  printf("hold ok\n");
  return 0;
}
