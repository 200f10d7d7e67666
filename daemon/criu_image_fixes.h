// SPDX-License-Identifier: Apache-2.0
// Corrections cryod makes to the images CRIU dumped, before it stores them,
// for CRIU bugs that would otherwise break the restored program.
#pragma once

#include <string>
#include <string_view>

#include "cryo/error.h"

namespace cryo {

// The file name CRIU gives the image of every open file description.
inline constexpr std::string_view kCriuFilesImage = "files.img";

// A periodic timerfd that had expired, unread, when it was dumped. CRIU
// takes its state from /proc/PID/fdinfo, where such a timer shows
// it_value (0, 0): the kernel re-arms a periodic timer only when it is read.
// CRIU 4.2 then restores it with timerfd_settime(it_value 0), which disarms
// it: the pending expirations are delivered, then it never fires again
// (CRIU issue #3162). Such a timer is armed again for one interval from the
// restore, as it would have been had the program read it.
//
// The fix applies to a timerfd entry with a relative timer (no
// TFD_TIMER_ABSTIME, which CRIU re-bases on the clock itself), it_value 0,
// a non-zero it_interval and at least one expiration pending (`ticks`). A
// timer disarmed by the program has no ticks (timerfd_settime resets them),
// and a one-shot timer has no interval: both stay as they are.
//
// Takes a whole files.img (two magic words, then u32-length-prefixed
// file_entry messages) and returns it with every such entry corrected, and
// in `*fixed` how many were (0: the image is returned unchanged). kCorrupt
// if it is not such an image.
Result<std::string> RearmExpiredPeriodicTimerfds(std::string_view files_image, int* fixed);

// Applies the corrections to the images in `images_dir`, rewriting a file
// only when something changed (atomically, mode 0600). Returns the number
// of corrections made; a directory without files.img needs none.
Result<int> FixDumpedImages(const std::string& images_dir);

}  // namespace cryo
