// SPDX-License-Identifier: Apache-2.0
#include "shim_service.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "cryo/file_util.h"
#include "cryo/log.h"
#include "cryo/process.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace cryo {
namespace {

using Clock = std::chrono::steady_clock;
using shim::Message;

// A connection must say what it is promptly.
constexpr int kFirstMessageTimeoutSeconds = 5;
// How long a connection from a job that is still starting waits for it to
// run: a program may call in before cryod has read its start report.
constexpr auto kStartWait = std::chrono::seconds(10);
// A report's sender closes right after our answer; it must be closed before
// the freeze (a report socket would make the dump fail).
constexpr int kReportCloseTimeoutMs = 5000;
// Reports that arrive within this time of each other are one SIGTERM (a
// process-group signal reaches every member at once).
constexpr auto kTermSettle = std::chrono::milliseconds(200);
// How long a SIGTERM checkpoint waits for another checkpoint of the job
// (`cryo checkpoint`) to finish.
constexpr auto kBusyWait = std::chrono::seconds(60);
// cryo.h's CRYO_PREPARE_BOUND_MS: how long a checkpoint waits for the
// job's API processes to be ready.
constexpr auto kPrepareBound = std::chrono::milliseconds(15000);

Message MakeMessage(shim::Type type) {
  Message m;
  std::memset(&m, 0, sizeof m);
  m.magic = shim::kMagic;
  m.version = shim::kVersion;
  m.type = type;
  return m;
}

void SetText(Message& m, const std::string& text) {
  std::snprintf(m.text, sizeof m.text, "%s", text.c_str());
}

Result<Message> ReadMessage(int fd) {
  Message m;
  auto r = ReadFull(fd, std::span<char>(reinterpret_cast<char*>(&m), sizeof m));
  if (!r) return std::unexpected(r.error());
  if (*r != sizeof m) return Fail(ErrorKind::kIo, "connection closed");
  if (m.magic != shim::kMagic || m.version != shim::kVersion) {
    return Fail(ErrorKind::kInvalidArgument, "not a shim message of version 1");
  }
  return m;
}

// Waits until the peer closes (read returns 0) or `timeout_ms` passes.
bool WaitForClose(int fd, int timeout_ms) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, left) <= 0) continue;
    char buf[64];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) return true;
    if (n < 0 && errno != EINTR) return true;
  }
}

// Delivers SIGTERM to the process of `pidfd`, marked for its shim as
// forwarded: the shim applies the program's own disposition.
void ForwardSigterm(int pidfd) {
  siginfo_t info;
  std::memset(&info, 0, sizeof info);
  info.si_signo = SIGTERM;
  info.si_code = SI_QUEUE;
  info.si_value.sival_ptr = reinterpret_cast<void*>(shim::kForwardValue);
  if (::syscall(SYS_pidfd_send_signal, pidfd, SIGTERM, &info, 0) != 0 && errno != ESRCH) {
    LogWarn("cannot forward SIGTERM", {{"error", std::strerror(errno)}});
  }
}

// The process behind a connection: a pidfd, so that a pid reused after
// the sender died cannot be mistaken for it.
Result<std::pair<pid_t, UniqueFd>> PeerProcess(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return SysFail("SO_PEERCRED");
  }
  int pidfd = -1;
  len = sizeof pidfd;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0) {
    pidfd = static_cast<int>(::syscall(SYS_pidfd_open, cred.pid, 0));
    if (pidfd < 0) return SysFail("pidfd_open");
  }
  return std::make_pair(cred.pid, UniqueFd(pidfd));
}

bool Alive(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

}  // namespace

struct ShimService::Connection {
  UniqueFd fd;
  std::string job_id;
  uint64_t inode = 0;  // of the program's end
  std::mutex write_mu;
  // Guarded by ShimService::mu_.
  uint64_t ready_seq = 0;
  bool closed = false;

  bool Send(const Message& m) {
    std::lock_guard lock(write_mu);
    return WriteAll(fd.get(), std::string_view(reinterpret_cast<const char*>(&m), sizeof m))
        .has_value();
  }
};

ShimService::ShimService(std::unique_ptr<UnixListener> listener, Supervisor& supervisor,
                         CheckpointService& checkpoints)
    : listener_(std::move(listener)), supervisor_(supervisor), checkpoints_(checkpoints) {}

ShimService::~ShimService() {
  listener_->Stop();
  if (acceptor_.joinable()) acceptor_.join();
}

Result<std::unique_ptr<ShimService>> ShimService::Listen(const std::string& socket_path,
                                                         Supervisor& supervisor,
                                                         CheckpointService& checkpoints) {
  auto listener = UnixListener::Create(socket_path, 128);
  if (!listener) return std::unexpected(listener.error());
  return std::unique_ptr<ShimService>(
      new ShimService(std::move(*listener), supervisor, checkpoints));
}

void ShimService::Start() {
  acceptor_ =
      std::thread([this] { listener_->AcceptLoop([this](UniqueFd fd) { Serve(std::move(fd)); }); });
}

void ShimService::Serve(UniqueFd fd) {
  auto peer = PeerProcess(fd.get());
  if (!peer) return;
  auto& [pid, pidfd] = *peer;
  timeval timeout{kFirstMessageTimeoutSeconds, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  auto first = ReadMessage(fd.get());
  if (!first) return;
  // Only a process of a running job counts, and only for that job.
  auto job = supervisor_.JobOfProcess(pid, kStartWait);
  if (!job || !Alive(pidfd.get())) {
    LogDebug("shim connection from outside any job refused", {{"pid", std::to_string(pid)}});
    if (first->type == shim::kTermReport) (void)WriteAll(fd.get(), std::string(1, shim::kRefused));
    return;
  }
  if (first->type == shim::kTermReport) {
    OnTermReport(*job, *first, std::move(fd), std::move(pidfd));
  } else if (first->type == shim::kHello) {
    timeval none{0, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
    auto conn = std::make_shared<Connection>();
    conn->fd = std::move(fd);
    conn->job_id = job->id;
    conn->inode = first->inode;
    {
      std::lock_guard lock(mu_);
      connections_.emplace(job->id, conn);
    }
    conn->Send(MakeMessage(shim::kHello));
    LogDebug("shim API connection", {{"job", job->name}, {"pid", std::to_string(pid)}});
    ServeApi(*job, conn);
  }
}

void ShimService::OnTermReport(const JobRecord& job, const Message& report, UniqueFd conn,
                               UniqueFd pidfd) {
  if (job.on_sigterm == OnSigterm::kForward) {
    (void)WriteAll(conn.get(), std::string(1, shim::kRefused));
    return;
  }
  // A report older than the job was under way when the job was
  // checkpointed; that SIGTERM was dealt with then.
  bool stale = report.time_ms < job.created_unix_ms;
  (void)WriteAll(conn.get(), std::string(1, shim::kAccepted));
  if (!WaitForClose(conn.get(), kReportCloseTimeoutMs)) {
    LogWarn("a SIGTERM report was not closed in time", {{"job", job.name}});
  }
  if (stale) {
    LogInfo("SIGTERM report from before the job's restore ignored", {{"job", job.name}});
    return;
  }
  std::lock_guard lock(mu_);
  auto [it, first] = terms_.try_emplace(job.id);
  it->second.reporters.push_back(std::move(pidfd));
  if (!first) return;  // part of the SIGTERM being handled
  LogInfo("SIGTERM received",
          {{"job", job.name}, {"on_sigterm", std::string(OnSigtermName(job.on_sigterm))}});
  std::thread([this, job] { CheckpointOnTerm(job); }).detach();
}

void ShimService::CheckpointOnTerm(JobRecord job) {
  std::this_thread::sleep_for(kTermSettle);
  bool stop = job.on_sigterm == OnSigterm::kCheckpoint;
  Caller owner{.uid = job.uid, .gid = job.gid, .pid = 0, .groups = job.groups};
  auto deadline = Clock::now() + kBusyWait;
  auto result = checkpoints_.Checkpoint(owner, job.name, stop);
  while (!result && supervisor_.IsCheckpointing(job.id) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    result = checkpoints_.Checkpoint(owner, job.name, stop);
  }
  std::vector<UniqueFd> reporters;
  {
    std::lock_guard lock(mu_);
    reporters = std::move(terms_[job.id].reporters);
    terms_.erase(job.id);
  }
  if (!result) {
    // A job that ended meanwhile (another checkpoint --stop, a kill) needs
    // neither the signal nor a notice.
    auto now = supervisor_.Get(job.id);
    if (!now || now->state != JobState::kRunning) return;
    std::string notice = "SIGTERM at " + std::to_string(UnixMillis() / 1000) +
                         ": checkpoint failed, so the program got the SIGTERM (" +
                         result.error().message() + ")";
    LogWarn("SIGTERM checkpoint failed; forwarding SIGTERM",
            {{"job", job.name}, {"error", result.error().ToString()}});
    supervisor_.SetNotice(job.id, notice);
  } else {
    LogInfo("SIGTERM checkpoint stored", {{"job", job.name}, {"id", result->id}});
    if (stop) return;
  }
  for (const auto& pidfd : reporters) ForwardSigterm(pidfd.get());
}

void ShimService::ServeApi(const JobRecord& job, std::shared_ptr<Connection> conn) {
  for (;;) {
    auto m = ReadMessage(conn->fd.get());
    if (!m) break;
    if (m->type == shim::kReady) {
      std::lock_guard lock(mu_);
      conn->ready_seq = std::max(conn->ready_seq, m->seq);
      ready_.notify_all();
    } else if (m->type == shim::kCheckpointRequest) {
      std::thread([this, job, conn, seq = m->seq] {
        OnCheckpointRequest(job, conn, seq);
      }).detach();
    }
  }
  Drop(conn);
}

void ShimService::OnCheckpointRequest(const JobRecord& job, std::shared_ptr<Connection> conn,
                                      uint64_t seq) {
  Caller owner{.uid = job.uid, .gid = job.gid, .pid = 0, .groups = job.groups};
  auto result = checkpoints_.Checkpoint(owner, job.name, false);
  Message done = MakeMessage(shim::kCheckpointDone);
  done.seq = seq;
  if (result) {
    SetText(done, result->id);
  } else {
    done.status = EIO;
    LogWarn("checkpoint requested by the program failed",
            {{"job", job.name}, {"error", result.error().ToString()}});
    supervisor_.SetNotice(job.id, "cryo_checkpoint() failed: " + result.error().message());
  }
  conn->Send(done);
}

std::vector<std::shared_ptr<ShimService::Connection>> ShimService::ConnectionsOf(
    const std::string& job_id) {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Connection>> out;
  auto [begin, end] = connections_.equal_range(job_id);
  for (auto it = begin; it != end; ++it) out.push_back(it->second);
  return out;
}

void ShimService::Drop(const std::shared_ptr<Connection>& conn) {
  std::lock_guard lock(mu_);
  conn->closed = true;
  auto [begin, end] = connections_.equal_range(conn->job_id);
  for (auto it = begin; it != end; ++it) {
    if (it->second == conn) {
      connections_.erase(it);
      break;
    }
  }
  ready_.notify_all();
}

std::vector<uint64_t> ShimService::Prepare(const JobRecord& job) {
  auto conns = ConnectionsOf(job.id);
  if (conns.empty()) return {};
  uint64_t seq;
  {
    std::lock_guard lock(mu_);
    seq = next_prepare_++;
  }
  Message prepare = MakeMessage(shim::kPrepare);
  prepare.seq = seq;
  for (auto& c : conns) c->Send(prepare);
  std::unique_lock lock(mu_);
  bool all_ready = ready_.wait_for(lock, kPrepareBound, [&] {
    for (auto& c : conns) {
      if (!c->closed && c->ready_seq < seq) return false;
    }
    return true;
  });
  if (!all_ready) {
    LogWarn("a process of the job was not ready for the checkpoint in time; going ahead",
            {{"job", job.name}});
  }
  std::vector<uint64_t> inodes;
  for (auto& c : conns) {
    if (!c->closed) inodes.push_back(c->inode);
  }
  return inodes;
}

void ShimService::Resumed(const JobRecord& job, int status, const std::string& id) {
  Message m = MakeMessage(shim::kResumed);
  m.status = status;
  SetText(m, id);
  for (auto& c : ConnectionsOf(job.id)) c->Send(m);
}

void ShimService::Restored(const JobRecord& job, std::vector<std::pair<UniqueFd, uint64_t>> sockets,
                           const std::string& id) {
  Message m = MakeMessage(shim::kRestored);
  SetText(m, id);
  for (auto& [fd, inode] : sockets) {
    auto conn = std::make_shared<Connection>();
    conn->fd = std::move(fd);
    conn->job_id = job.id;
    conn->inode = inode;
    {
      std::lock_guard lock(mu_);
      connections_.emplace(job.id, conn);
    }
    conn->Send(m);
    std::thread([this, job, conn] { ServeApi(job, conn); }).detach();
  }
}

}  // namespace cryo
