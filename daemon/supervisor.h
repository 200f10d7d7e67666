// SPDX-License-Identifier: Apache-2.0
// The job supervisor of cryod: starts jobs (through cryo-monitor), knows
// them, signals and forgets them, keeps the job table on disk and re-adopts
// live jobs after a restart. Every public method checks that the caller may
// act on the job: its owner or root.
//
// Thread-safe: the control server calls it from one thread per client.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cryo/daemon.pb.h"
#include "cryo/error.h"
#include "cryo/job.h"
#include "cryo/unique_fd.h"

namespace cryo {

// Who is asking, as the kernel says (SO_PEERCRED, SO_PEERGROUPS).
struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  std::vector<gid_t> groups;
  bool is_root() const { return uid == 0; }
};

class Supervisor {
 public:
  // Loads the job table from `state_dir`, re-adopts jobs whose monitors still
  // run, and records the end of those that ended while cryod was away.
  // `monitor_path` is the cryo-monitor executable.
  static Result<std::unique_ptr<Supervisor>> Create(std::string state_dir,
                                                    std::string monitor_path);
  ~Supervisor();  // stops watching; the jobs themselves keep running

  // Starts a job as `caller`. Returns once the program runs (or failed to).
  Result<JobRecord> Run(const Caller& caller, const proto::RunRequest& request);
  // The caller's jobs (root: all), running ones only unless `all`.
  std::vector<JobRecord> List(const Caller& caller, bool all);
  // The job named `name`, if the caller may see it.
  Result<JobRecord> Find(const Caller& caller, std::string_view name);
  // Sends `signal` to the job (its init forwards it to the program).
  Result<JobRecord> Kill(const Caller& caller, std::string_view name, int signal);
  // Forgets an ended job (with `force`, kills a running one first).
  Result<JobRecord> Remove(const Caller& caller, std::string_view name, bool force);

  // Starts a job restored from a checkpoint (times are set here, and
  // `job.id` unless the caller chose it): `job` carries name, owner,
  // argv, env and cwd from the verified manifest; `monitor_args` tell
  // cryo-monitor how to restore (see daemon/monitor).
  // `fds` ({monitor fd, our fd}) are passed to cryo-monitor as well.
  Result<JobRecord> StartRestored(const Caller& caller, JobRecord job,
                                  std::vector<std::string> monitor_args,
                                  std::vector<std::pair<int, int>> fds = {});
  // Marks the running job `name` as being checkpointed (one at a time); with
  // `stop`, its end will be recorded as `checkpointed`.
  Result<JobRecord> BeginCheckpoint(const Caller& caller, std::string_view name, bool stop);
  // Ends what BeginCheckpoint began; `checkpoint_id` empty means it failed.
  void EndCheckpoint(const std::string& id, const std::string& checkpoint_id);
  bool IsCheckpointing(const std::string& id);

  // The current record of job `id` (not access-checked: for the server's
  // follow-up of a job it has already checked).
  std::optional<JobRecord> Get(const std::string& id);
  // Waits until job `id` is no longer starting/running, or `timeout` passed.
  // Returns whether it ended.
  bool WaitForEnd(const std::string& id, std::chrono::milliseconds timeout);

  const JobTable& table() const { return table_; }

  // Jobs started from now on get the LD_PRELOAD shim at `preload_path`,
  // talking to cryod's shim socket at `shim_socket`.
  void EnableShim(std::string preload_path, std::string shim_socket);
  // The running job process `pid` (a host pid) belongs to, by its cgroup.
  // A job's program runs before cryod has read its start report: for a
  // job still starting this waits up to `timeout` for it to run.
  std::optional<JobRecord> JobOfProcess(pid_t pid, std::chrono::milliseconds timeout);
  // Sets the job's notice (shown by `cryo ps`); empty clears it.
  void SetNotice(const std::string& id, const std::string& notice);

 private:
  Supervisor(std::string state_dir, std::string monitor_path);
  Result<JobRecord> Launch(const Caller& caller, JobRecord job,
                           std::vector<std::string> monitor_args, const std::string& conflict_hint,
                           std::vector<std::pair<int, int>> fds = {});
  // cryo-monitor arguments that give a fresh program the shim.
  std::vector<std::string> ShimArgs(const JobRecord& job) const;
  void Adopt(JobRecord& job);
  // Applies the job's exit.json to `job` if there is one; returns whether.
  bool RecordEnd(JobRecord& job, std::string_view when);
  void MarkLost(JobRecord& job);
  void RecoverFromInterruptedCheckpoint(JobRecord& job);
  void Watch(const JobRecord& job, UniqueFd pidfd);
  void WatchLoop();
  void OnMonitorExit(const std::string& id);
  void ReapChildren();
  JobRecord* FindLocked(std::string_view name);
  Status CheckAccess(const Caller& caller, const JobRecord& job, std::string_view action) const;
  bool IsLive(const JobRecord& job) const;

  JobTable table_;
  std::string monitor_path_;
  std::string preload_path_;  // empty: no shim
  std::string shim_socket_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::map<std::string, JobRecord> jobs_;   // by id
  std::map<int, std::string> watched_;      // pidfd -> job id
  std::map<std::string, UniqueFd> pidfds_;  // job id -> pidfd of its monitor
  std::set<std::string> checkpointing_;     // ids of jobs being checkpointed
  UniqueFd epoll_;
  UniqueFd wake_;     // eventfd: stop the watch loop
  UniqueFd sigchld_;  // signalfd: reap children
  std::thread watcher_;
  // Thaw jobs a CRIU of the previous cryod may still freeze; last, so they
  // stop before the rest goes.
  std::vector<std::jthread> thaw_guards_;
};

}  // namespace cryo
