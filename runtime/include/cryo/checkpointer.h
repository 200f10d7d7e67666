// SPDX-License-Identifier: Apache-2.0
// Checkpointer: dumps and restores a process tree. The real implementation
// drives CRIU through its RPC (`criu swrk`), started with an absolute path,
// a controlled environment and no default configuration files
// (--no-default-config: /etc/criu/default.conf could name scripts or plugins
// CRIU would run as root); never `criu service`.
//
// Blocking: Dump and Restore return when CRIU is done. Not thread-safe per
// object; use one per operation.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cryo/error.h"
#include "cryo/process.h"

namespace cryo {

struct DumpOptions {
  pid_t pid = 0;           // root of the tree: the job's init
  std::string images_dir;  // an existing, empty directory
  std::string work_dir;    // CRIU's log goes here (not among the images)
  // The job's cgroup, frozen as a whole for the dump: by CRIU, unless it is
  // frozen already (FreezeForDump); then CRIU leaves it frozen afterwards.
  std::string freeze_cgroup;
  bool leave_running = true;  // false: CRIU kills the tree once committed
  bool tcp_established = true;
  std::vector<std::string> external;  // CRIU "external" resources
};

struct RestoreOptions {
  std::string images_dir;
  std::string work_dir;  // CRIU's log goes here
  // fds of the caller that replace resources of the dumped tree, by CRIU's
  // inherit-fd key ("pipe:[1234]"): the caller keeps ownership.
  std::vector<std::pair<std::string, int>> inherit_fds;
  // CRIU joins this cgroup (its cgroup.procs file) before restoring, so the
  // restored tree lands there; CRIU itself does not manage cgroups.
  std::string cgroup_procs;
  bool tcp_established = true;
  // CRIU reads the images from an image streamer listening in images_dir
  // (cryo/image_streamer.h) instead of files. CRIU 4.2 streams only from its
  // command line, so this runs `criu restore` rather than swrk.
  bool stream = false;
  // Pages CRIU's pagemaps mark lazy are left out (the images may have holes
  // there) and registered with userfaultfds CRIU sends to lazy-pages.socket
  // in the work directory (cryo/lazy_pages.h).
  bool lazy_pages = false;
  // Called at CRIU's post-restore notification: every task waits in CRIU's
  // restorer, its memory mapped. An error makes CRIU kill the tree and fail
  // the restore with that error.
  std::function<Status()> post_restore;
};

// Called at CRIU's post-dump notification: the images are complete and the
// tree is still frozen. Success lets CRIU finish (kill the tree, or let it
// run); an error makes CRIU resume the tree and fail the dump.
using CommitFn = std::function<Status()>;

class Checkpointer {
 public:
  virtual ~Checkpointer() = default;
  // "4.2.1" or similar. Asks CRIU once per binary in this process (again
  // when the file at the path changes).
  virtual Result<std::string> Version() = 0;
  virtual Status Dump(const DumpOptions& options, const CommitFn& commit) = 0;
  // Restores the tree as a child of the calling process (rst_sibling);
  // returns the pid of its root.
  virtual Result<pid_t> Restore(const RestoreOptions& options) = 0;
  // Whether this machine can restore lazily (CRIU's feature check: a kernel
  // with userfaultfd and its non-cooperative events).
  virtual Result<bool> SupportsLazyPages() = 0;
};

// The CRIU at `criu_path` (absolute). Fails if there is no executable file
// there; whether it runs, the first Version(), Dump or Restore tells.
Result<std::unique_ptr<Checkpointer>> CreateCriuCheckpointer(const std::string& criu_path);

}  // namespace cryo
