// SPDX-License-Identifier: Apache-2.0
#include "criu_run_dir.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_NOREPLACE
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <ctime>

namespace cryo {
namespace {

// Whether `st` is a directory only root can write to.
bool IsRootsOwn(const struct stat& st) {
  return S_ISDIR(st.st_mode) && st.st_uid == 0 && (st.st_mode & 022) == 0;
}

}  // namespace

Status PrepareCriuRunDir(const std::string& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) == 0) {
    if (IsRootsOwn(st)) return {};
    // Not ours: out of the way, to a fresh name beside it.
    for (int attempt = 0;; ++attempt) {
      char suffix[64];
      std::snprintf(suffix, sizeof suffix, ".not-cryo-%ld-%d-%d",
                    static_cast<long>(std::time(nullptr)), static_cast<int>(::getpid()), attempt);
      std::string aside = dir + suffix;
      if (::renameat2(AT_FDCWD, dir.c_str(), AT_FDCWD, aside.c_str(), RENAME_NOREPLACE) == 0) break;
      if (errno != EEXIST || attempt == 99) {
        return SysFail("move " + dir + " (not a directory of root's) aside to " + aside);
      }
    }
  } else if (errno != ENOENT) {
    return SysFail("stat " + dir);
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return SysFail("create " + dir);
  if (::lstat(dir.c_str(), &st) != 0) return SysFail("stat " + dir);
  if (!IsRootsOwn(st)) {
    return Fail(ErrorKind::kPermissionDenied,
                dir +
                    " is not a directory of root's, and someone made it again as it was "
                    "replaced: remove it and start cryod again");
  }
  return {};
}

}  // namespace cryo
