// SPDX-License-Identifier: Apache-2.0
// A listening unix stream socket that every user may connect to (mode
// 0666: the kernel tells the server who connected), with an accept loop
// that a Stop() from any thread ends. Used by the control server and the
// shim service.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "cryo/error.h"
#include "cryo/unique_fd.h"

namespace cryo {

class UnixListener {
 public:
  // Binds `path` (replacing whatever file is there) and listens.
  static Result<std::unique_ptr<UnixListener>> Create(const std::string& path, int backlog);
  ~UnixListener();  // Stop()s and removes the socket file

  // Calls `serve` on a new detached thread for each connection, until
  // Stop(). Blocks.
  void AcceptLoop(const std::function<void(UniqueFd)>& serve);
  void Stop();
  const std::string& path() const { return path_; }

 private:
  UnixListener(std::string path, UniqueFd fd);
  std::string path_;
  UniqueFd fd_;
  UniqueFd wake_;
  std::atomic<bool> stopping_{false};
};

// Whether something accepts connections on `path`.
bool UnixSocketAnswers(const std::string& path);

}  // namespace cryo
