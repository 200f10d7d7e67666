// SPDX-License-Identifier: Apache-2.0
#include "cryo/unique_fd.h"

#include <unistd.h>

#include <cerrno>

namespace cryo {

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) {
    // close() may fail with EINTR, but the fd is gone either way on Linux.
    int saved = errno;
    ::close(fd_);
    errno = saved;
  }
  fd_ = fd;
}

}  // namespace cryo
