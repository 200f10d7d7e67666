// SPDX-License-Identifier: Apache-2.0
#include "criu_run_dir.h"

#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "cryo/log.h"

namespace cryo {
namespace {

// CRIU writes criu.kdat.tmp and renames it within microseconds; one older
// than this was left by a CRIU that died in between.
constexpr time_t kStaleTempSeconds = 60;

// Whether `st` is a directory that only root can write to.
bool IsRootsOwnDirectory(const struct stat& st) {
  return S_ISDIR(st.st_mode) && st.st_uid == 0 && (st.st_mode & 022) == 0;
}

bool OnTmpfs(const std::string& path) {
  struct statfs fs {};
  return ::statfs(path.c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC;
}

}  // namespace

Result<bool> PrepareCriuRunDir(const std::string& dir) {
  size_t slash = dir.find_last_of('/');
  if (dir.empty() || dir[0] != '/' || slash == dir.size() - 1) {
    return Fail(ErrorKind::kInvalidArgument, "not an absolute directory path: " + dir);
  }
  std::string parent(dir, 0, std::max<size_t>(slash, 1));
  struct stat st {};
  if (::stat(parent.c_str(), &st) != 0) return SysFail("stat " + parent);
  if (!IsRootsOwnDirectory(st)) {
    return Fail(ErrorKind::kPermissionDenied,
                parent +
                    " can be written by others than root: CRIU's kernel cache cannot be "
                    "kept safely in " +
                    dir);
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return SysFail("create " + dir);
  if (::lstat(dir.c_str(), &st) != 0) return SysFail("stat " + dir);
  if (!S_ISDIR(st.st_mode) || st.st_uid != 0) {
    return Fail(ErrorKind::kFailedPrecondition,
                dir + " is not a directory of root's: remove it and start cryod again");
  }
  if ((st.st_mode & 07777) != 0700 && ::chmod(dir.c_str(), 0700) != 0) {
    return SysFail("make " + dir + " root's only");
  }
  if (!OnTmpfs(dir)) {
    // Stays until a reboot, shared by every cryod: CRIU's cache is the
    // machine's, not a daemon's.
    if (::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "mode=0700,size=1m") != 0) {
      LogWarn(
          "CRIU will probe the kernel on every run (~20 ms each): cannot mount a tmpfs "
          "for its cache",
          {{"dir", dir}, {"error", std::strerror(errno)}});
      return false;
    }
    // What we mounted must be what we checked: root's, 0700.
    if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != 0 ||
        (st.st_mode & 077) != 0) {
      return Fail(ErrorKind::kInternal, "the tmpfs mounted on " + dir + " is not root's only");
    }
  }
  std::string temp = dir + "/criu.kdat.tmp";
  if (::lstat(temp.c_str(), &st) == 0 && st.st_mtime + kStaleTempSeconds < ::time(nullptr)) {
    (void)::unlink(temp.c_str());
  }
  return true;
}

}  // namespace cryo
