// SPDX-License-Identifier: Apache-2.0
// Small, careful file and fd I/O: full reads and writes that retry on EINTR,
// and atomic publication of a file (temp, fsync, rename, fsync directory).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "cryo/error.h"
#include "cryo/unique_fd.h"

namespace cryo {

// Writes all of `data` to `fd` (retrying short writes and EINTR).
Status WriteAll(int fd, std::string_view data);
// Reads up to `buf.size()` bytes, fewer only at end of file. Returns the count.
Result<size_t> ReadFull(int fd, std::span<char> buf);
// Reads `fd` to end of file.
Result<std::string> ReadToEnd(int fd);

Result<UniqueFd> OpenFile(const std::string& path, int flags, mode_t mode = 0);
Result<std::string> ReadFileToString(const std::string& path);
// Publishes `data` at `path` atomically: a crash leaves either the old file or
// the new one, never a mix. The file gets `mode`; the directory must exist.
Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode = 0600);
// mkdir -p with `mode` for every directory it creates.
Status MakeDirs(const std::string& path, mode_t mode = 0700);
// rm -rf; a missing path is not an error.
Status RemoveTree(const std::string& path);

// A pipe, both ends close-on-exec: {read end, write end}.
Result<std::pair<UniqueFd, UniqueFd>> MakePipe();

}  // namespace cryo
