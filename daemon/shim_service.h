// SPDX-License-Identifier: Apache-2.0
// cryod's side of the LD_PRELOAD shim (protocol: cryo/shim_protocol.h).
//
// Listens on the shim socket (0666: any process may connect; a connection
// counts only if the kernel says its process is in a running job's
// cgroup, and then it acts on that job alone). Two things arrive there:
//   - SIGTERM reports. The reports of one job that arrive together (a
//     process-group signal) make one checkpoint: with --on-sigterm
//     checkpoint the job is stopped by it; with checkpoint-and-forward, or
//     when the checkpoint fails, every reporting process then gets its
//     SIGTERM back, marked so that its shim hands it to the program.
//   - API connections (cryo.h): told before and after every checkpoint of
//     their job (CheckpointParticipants), and able to request one.
//
// Thread-safe. One thread per connection; checkpoints run on their own
// threads.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "checkpoints.h"
#include "cryo/error.h"
#include "cryo/shim_protocol.h"
#include "cryo/unique_fd.h"
#include "supervisor.h"
#include "unix_listener.h"

namespace cryo {

class ShimService final : public CheckpointParticipants {
 public:
  // Binds `socket_path`; a stale socket there is replaced.
  static Result<std::unique_ptr<ShimService>> Listen(const std::string& socket_path,
                                                     Supervisor& supervisor,
                                                     CheckpointService& checkpoints);
  ~ShimService() override;

  // Accepts connections on a thread of its own until destruction.
  void Start();

  std::vector<uint64_t> Prepare(const JobRecord& job) override;
  void Resumed(const JobRecord& job, int status, const std::string& id) override;
  void Restored(const JobRecord& job, std::vector<std::pair<UniqueFd, uint64_t>> sockets,
                const std::string& id) override;

 private:
  struct Connection;
  struct TermEvent {
    std::vector<UniqueFd> reporters;  // pidfds of the processes that reported
  };

  ShimService(std::unique_ptr<UnixListener> listener, Supervisor& supervisor,
              CheckpointService& checkpoints);
  void Serve(UniqueFd fd);
  void OnTermReport(const JobRecord& job, const shim::Message& report, UniqueFd conn,
                    UniqueFd pidfd);
  void CheckpointOnTerm(JobRecord job);
  void ServeApi(const JobRecord& job, std::shared_ptr<Connection> conn);
  void OnCheckpointRequest(const JobRecord& job, std::shared_ptr<Connection> conn, uint64_t seq);
  std::vector<std::shared_ptr<Connection>> ConnectionsOf(const std::string& job_id);
  void Drop(const std::shared_ptr<Connection>& conn);

  std::unique_ptr<UnixListener> listener_;
  Supervisor& supervisor_;
  CheckpointService& checkpoints_;
  std::thread acceptor_;

  std::mutex mu_;
  std::condition_variable ready_;  // a kReady arrived or a connection closed
  std::multimap<std::string, std::shared_ptr<Connection>> connections_;  // by job id
  std::map<std::string, TermEvent> terms_;  // job id -> SIGTERM being handled
  uint64_t next_prepare_ = 1;
};

}  // namespace cryo
