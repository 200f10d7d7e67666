// SPDX-License-Identifier: Apache-2.0
#include "unix_listener.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <thread>

namespace cryo {
namespace {

sockaddr_un Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  return addr;
}

}  // namespace

UnixListener::UnixListener(std::string path, UniqueFd fd)
    : path_(std::move(path)), fd_(std::move(fd)), wake_(::eventfd(0, EFD_CLOEXEC)) {}

UnixListener::~UnixListener() { Stop(); }

Result<std::unique_ptr<UnixListener>> UnixListener::Create(const std::string& path, int backlog) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Fail(ErrorKind::kInvalidArgument, "socket path too long: " + path);
  }
  ::unlink(path.c_str());  // a stale socket of a dead cryod
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return SysFail("socket");
  sockaddr_un addr = Address(path);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return SysFail("bind " + path);
  if (::chmod(path.c_str(), 0666) != 0) return SysFail("chmod " + path);
  if (::listen(fd.get(), backlog) != 0) return SysFail("listen " + path);
  return std::unique_ptr<UnixListener>(new UnixListener(path, std::move(fd)));
}

void UnixListener::AcceptLoop(const std::function<void(UniqueFd)>& serve) {
  while (!stopping_) {
    pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) continue;
    if (fds[1].revents) break;
    int client = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    std::thread([serve, conn = UniqueFd(client)]() mutable { serve(std::move(conn)); }).detach();
  }
}

void UnixListener::Stop() {
  if (stopping_.exchange(true)) return;
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
  ::unlink(path_.c_str());
}

bool UnixSocketAnswers(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr = Address(path);
  return ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
}

}  // namespace cryo
