// SPDX-License-Identifier: Apache-2.0
// The control server: accepts clients on cryod's unix socket, learns who
// they are from the kernel (SO_PEERCRED), reads one request each and
// dispatches it to the supervisor. One thread per client.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "checkpoints.h"
#include "cryo/error.h"
#include "cryo/unique_fd.h"
#include "supervisor.h"
#include "unix_listener.h"

namespace cryo {

class ControlServer {
 public:
  // Binds `socket_path` (mode 0666: every user may connect, the kernel tells
  // who they are). Refuses if another cryod answers there.
  static Result<std::unique_ptr<ControlServer>> Listen(const std::string& socket_path,
                                                       Supervisor& supervisor,
                                                       CheckpointService& checkpoints);
  ~ControlServer();

  // Accepts clients until Stop(). Blocks.
  void Serve();
  // Makes Serve() return and removes the socket. Callable from any thread.
  void Stop();

 private:
  ControlServer(std::unique_ptr<UnixListener> listener, Supervisor& supervisor,
                CheckpointService& checkpoints);

  std::unique_ptr<UnixListener> listener_;
  Supervisor& supervisor_;
  CheckpointService& checkpoints_;
};

}  // namespace cryo
