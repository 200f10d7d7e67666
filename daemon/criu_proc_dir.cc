// SPDX-License-Identifier: Apache-2.0
#include "criu_proc_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>
#include <string>

#include "cryo/unique_fd.h"

namespace cryo {

bool IsCriuProcDirCollision(const Error& dump_error) {
  // criu/pie/parasite.c, get_proc_fd(): "Can't create a directory (%d)"
  // with -EEXIST.
  return dump_error.message().find("Can't create a directory (-17)") != std::string::npos;
}

bool RemoveStaleCriuProcDir(pid_t root_task, std::chrono::seconds age) {
  // The task's working directory itself, whatever path led there: the name
  // below is one fixed component, so nothing is resolved through a path the
  // job controls.
  std::string cwd = "/proc/" + std::to_string(root_task) + "/cwd";
  UniqueFd dir(::open(cwd.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid()) return false;
  const std::string name(kCriuProcDir);
  struct stat st;
  if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode) ||
      std::time(nullptr) - st.st_mtime < age.count()) {
    return false;
  }
  return ::unlinkat(dir.get(), name.c_str(), AT_REMOVEDIR) == 0;
}

}  // namespace cryo
