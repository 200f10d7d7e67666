// SPDX-License-Identifier: Apache-2.0
// A job as cryod remembers it, and the on-disk job table.
//
// State directory layout (owned by cryod, 0700, root):
//   <state>/jobs/<id>/job.json   the JobRecord, replaced atomically
//   <state>/jobs/<id>/output.log the job's stdout and stderr (job_log.h)
//   <state>/jobs/<id>/exit.json  written once by cryo-monitor when the job ends
//   <state>/jobs/<id>/monitor.log diagnostics of cryo-monitor
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cryo/error.h"

namespace cryo {

enum class JobState {
  kStarting,  // cryod is starting it; a record left in this state means cryod died
  kRunning,
  kExited,
  kLost,          // its monitor vanished without recording an end
  kCheckpointed,  // ended by `cryo checkpoint --stop` after a durable checkpoint
};

std::string_view JobStateName(JobState state);

// What a SIGTERM to the job does (the LD_PRELOAD shim and cryod together).
enum class OnSigterm {
  kCheckpoint,            // checkpoint the job, then end it; the program never sees it
  kCheckpointAndForward,  // checkpoint, then deliver it to the program
  kForward,               // deliver it, nothing else
};
std::string_view OnSigtermName(OnSigterm mode);
std::optional<OnSigterm> ParseOnSigterm(std::string_view name);

struct JobRecord {
  std::string id;    // unique forever, names the job's directory
  std::string name;  // unique among live jobs
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::string cwd;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  int64_t created_unix_ms = 0;
  int64_t ended_unix_ms = 0;
  JobState state = JobState::kStarting;
  std::string cgroup;  // absolute path of the job's cgroup directory
  // Processes on the host. Start times (from /proc/PID/stat) tell a live
  // process from a later one that reused its pid.
  pid_t monitor_pid = 0;
  uint64_t monitor_start_time = 0;
  pid_t init_pid = 0;
  uint64_t init_start_time = 0;
  pid_t pid = 0;                 // the program
  std::optional<int> exit_code;  // 128+N for death by signal N
  // CRIU inherit-fd keys of the pipes the job writes its stdout/stderr to.
  std::string stdout_key;
  std::string stderr_key;
  std::string restored_from;        // checkpoint id this job was restored from
  std::string last_checkpoint;      // id of its newest checkpoint
  bool stop_on_checkpoint = false;  // a --stop checkpoint is under way
  OnSigterm on_sigterm = OnSigterm::kCheckpoint;
  std::string notice;  // shown by `cryo ps`: e.g. a SIGTERM checkpoint that failed
};

std::string EncodeJobRecord(const JobRecord& job);
Result<JobRecord> DecodeJobRecord(std::string_view json);

// How a job ended, as cryo-monitor records it.
struct JobExit {
  int exit_code = 0;
  int64_t ended_unix_ms = 0;
};
std::string EncodeJobExit(const JobExit& exit);
Result<JobExit> DecodeJobExit(std::string_view json);

// The job table: one directory per job below `<state_dir>/jobs`.
// Not thread-safe; cryod serialises access.
class JobTable {
 public:
  explicit JobTable(std::string state_dir) : state_dir_(std::move(state_dir)) {}

  std::string JobDir(std::string_view id) const;
  std::string LogPath(std::string_view id) const { return JobDir(id) + "/output.log"; }
  std::string ExitPath(std::string_view id) const { return JobDir(id) + "/exit.json"; }

  // Creates the job's directory (0700) and writes its record.
  Status Create(const JobRecord& job);
  // Replaces the record atomically.
  Status Save(const JobRecord& job);
  // Every readable record; unreadable ones are reported in `skipped`.
  Result<std::vector<JobRecord>> LoadAll(std::vector<Error>* skipped) const;
  // The exit record, or nullopt if the job has not ended.
  Result<std::optional<JobExit>> ReadExit(std::string_view id) const;
  // Deletes the job's directory.
  Status Remove(std::string_view id);

 private:
  std::string state_dir_;
};

// A fresh random job id (16 hex digits).
std::string NewJobId();
// Whether `name` may name a job: 1-64 of [A-Za-z0-9_.-], not starting with '.' or '-'.
bool IsValidJobName(std::string_view name);

}  // namespace cryo
