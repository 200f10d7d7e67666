// SPDX-License-Identifier: Apache-2.0
#include "client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <signal.h>

#include <cstdlib>
#include <iostream>
#include <thread>

#include "cryo/file_util.h"
#include "cryo/protocol.h"

namespace cryo::cli {

std::string Globals::SocketPath() const {
  if (!socket.empty()) return socket;
  if (const char* env = std::getenv(kSocketEnvVar); env != nullptr && *env != '\0') return env;
  return kDefaultSocketPath;
}

Result<UniqueFd> Connect(const Globals& globals) {
  std::string path = globals.SocketPath();
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path)
    return Fail(ErrorKind::kInvalidArgument, "socket path too long: " + path);
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return SysFail("socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    return std::unexpected(
        Error(ErrorKind::kUnavailable,
              "cannot reach cryod at " + path + " (" + std::strerror(err) +
                  "); start it with 'sudo cryod', or point CRYO_SOCKET or --socket at "
                  "the socket of a running one"));
  }
  return fd;
}

Result<UniqueFd> Send(const Globals& globals, proto::Request request) {
  auto fd = Connect(globals);
  if (!fd) return fd;
  request.set_protocol_version(kProtocolVersion);
  if (auto s = WriteFrame(fd->get(), request); !s)
    return std::unexpected(s.error().WithContext("send to cryod"));
  return fd;
}

Result<proto::Response> Receive(int fd) {
  proto::Response r;
  auto got = ReadFrame(fd, &r);
  if (!got) return std::unexpected(got.error().WithContext("read from cryod"));
  if (!*got) return Fail(ErrorKind::kUnavailable, "cryod closed the connection (see its log)");
  return r;
}

Result<proto::Response> ReceiveAnswer(int fd, const ProgressFn& on_progress) {
  for (;;) {
    auto r = Receive(fd);
    if (!r || !r->has_progress()) return r;
    if (on_progress) on_progress(r->progress());
  }
}

Result<proto::Response> Call(const Globals& globals, proto::Request request,
                             const ProgressFn& on_progress) {
  auto fd = Send(globals, std::move(request));
  if (!fd) return std::unexpected(fd.error());
  auto r = ReceiveAnswer(fd->get(), on_progress);
  if (!r) return r;
  if (r->has_error()) return std::unexpected(ErrorFromProto(r->error()));
  return r;
}

int ReportError(std::string_view command, const Error& error) {
  std::cerr << "cryo " << command << ": " << error.ToString() << "\n";
  switch (error.kind()) {
    case ErrorKind::kInvalidArgument:
      return kExitUsage;
    case ErrorKind::kNotFound:
      return kExitNotFound;
    case ErrorKind::kPermissionDenied:
      return kExitPermission;
    case ErrorKind::kUnavailable:
      return kExitUnavailable;
    default:
      return kExitFailure;
  }
}

// Ctrl-C, SIGTERM, SIGHUP and SIGQUIT sent to `cryo run` go to the job, as
// they would to a program run directly; cryo run itself waits for the end.
sigset_t ForwardedSignals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&set, sig);
  return set;
}

void ForwardSignals(const Globals& globals, const std::string& name) {
  sigset_t set = ForwardedSignals();
  std::thread([globals, name, set] {
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0) continue;
      proto::Request req;
      req.mutable_kill()->set_name(name);
      req.mutable_kill()->set_signal(sig);
      (void)Call(globals, req);  // the job may have ended meanwhile
    }
  }).detach();
}

void HoldForwardedSignals() {
  sigset_t set = ForwardedSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int AttachToJob(const Globals& globals, int fd, const std::string& name, std::string_view command) {
  ForwardSignals(globals, name);
  for (;;) {
    auto r = Receive(fd);
    if (!r) {
      ReportError(command, r.error().WithContext("lost the job's output; '" + name +
                                                 "' may still run (cryo logs -f " + name + ")"));
      return kExitRunFailed;
    }
    if (r->has_output()) {
      WriteOutput(r->output());
    } else if (r->has_exited()) {
      if (r->exited().checkpointed()) {
        // Stopped to be resumed later: say how, and end like a program
        // that SIGTERM ended, which is what the sender asked for.
        std::cerr << "cryo " << command << ": job '" << name
                  << "' was checkpointed and stopped; resume it with 'cryo restore " << name
                  << "'\n";
        return 128 + SIGTERM;
      }
      return r->exited().exit_code();
    } else if (r->has_error()) {
      ReportError(command, ErrorFromProto(r->error()));
      return kExitRunFailed;
    }
  }
}

void WriteOutput(const proto::Output& output) {
  int fd = output.stream() == proto::Output::STREAM_STDERR ? STDERR_FILENO : STDOUT_FILENO;
  (void)WriteAll(fd, output.data());
}

}  // namespace cryo::cli
