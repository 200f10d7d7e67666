// SPDX-License-Identifier: Apache-2.0
#include "server.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <thread>

#include "cryo/file_util.h"
#include "cryo/log.h"
#include "cryo/protocol.h"
#include "output_stream.h"
#include "progress.h"

namespace cryo {
namespace {

// A request must arrive promptly; a client that stops reading our answers
// is dropped rather than allowed to pin a thread forever.
constexpr int kRequestTimeoutSeconds = 30;
constexpr int kSendTimeoutSeconds = 60;

struct Session {
  int fd;
  Caller caller;
  Supervisor& supervisor;
  CheckpointService& checkpoints;

  void Send(const proto::Response& r) const {
    if (auto s = WriteFrame(fd, r); !s)
      LogDebug("client write failed", {{"error", s.error().ToString()}});
  }
  void SendError(const Error& e) const { Send(ErrorResponse(e)); }
};

proto::JobState StateToProto(JobState s) {
  switch (s) {
    case JobState::kStarting:
      return proto::JOB_STATE_STARTING;
    case JobState::kRunning:
      return proto::JOB_STATE_RUNNING;
    case JobState::kExited:
      return proto::JOB_STATE_EXITED;
    case JobState::kLost:
      return proto::JOB_STATE_LOST;
    case JobState::kCheckpointed:
      return proto::JOB_STATE_CHECKPOINTED;
  }
  return proto::JOB_STATE_UNSPECIFIED;
}

void ToProto(const JobRecord& job, proto::JobInfo* out) {
  out->set_name(job.name);
  out->set_id(job.id);
  out->set_state(StateToProto(job.state));
  out->set_pid(job.pid);
  out->set_uid(job.uid);
  out->set_gid(job.gid);
  out->set_created_unix_ms(job.created_unix_ms);
  out->set_ended_unix_ms(job.ended_unix_ms);
  for (const auto& a : job.argv) out->add_argv(a);
  out->set_has_exit_code(job.exit_code.has_value());
  out->set_exit_code(job.exit_code.value_or(0));
  out->set_cwd(job.cwd);
  out->set_restored_from(job.restored_from);
  out->set_last_checkpoint(job.last_checkpoint);
  out->set_on_sigterm(std::string(OnSigtermName(job.on_sigterm)));
  out->set_notice(job.notice);
}

void ToProto(const Manifest& m, bool latest, proto::CheckpointInfo* out) {
  out->set_id(m.id);
  out->set_job(m.job);
  out->set_parent(m.parent);
  out->set_created_unix_ms(m.created_unix_ms);
  out->set_bytes(m.image_bytes);
  out->set_stored_bytes(m.stored_bytes);
  out->set_uid(m.uid);
  for (const auto& [phase, ms] : m.phases) (*out->mutable_phases_ms())[phase] = ms;
  for (const auto& a : m.argv) out->add_argv(a);
  out->set_latest(latest);
}

proto::Response CheckpointResponse(const Session& s, const Manifest& m) {
  proto::Response r;
  ToProto(m, s.checkpoints.IsLatest(m), r.mutable_checkpoint());
  return r;
}

proto::Response JobResponse(const JobRecord& job) {
  proto::Response r;
  ToProto(job, r.mutable_job());
  return r;
}

// Streams output and, when the job has ended, the `exited` frame.
void FollowToEnd(const Session& s, const JobRecord& job) {
  auto ended = StreamOutput(s.supervisor, job, s.fd, /*follow=*/true);
  if (!ended) {
    if (ended.error().kind() != ErrorKind::kUnavailable) s.SendError(ended.error());
    return;
  }
  proto::Response r;
  r.mutable_exited()->set_exit_code((*ended)->exit_code.value_or(255));
  r.mutable_exited()->set_checkpointed((*ended)->state == JobState::kCheckpointed);
  s.Send(r);
}

void HandleRun(const Session& s, const proto::Request& req) {
  auto job = s.supervisor.Run(s.caller, req.run());
  if (!job) return s.SendError(job.error());
  if (!req.run().attach()) return s.Send(JobResponse(*job));
  proto::Response started;
  ToProto(*job, started.mutable_started()->mutable_job());
  s.Send(started);
  FollowToEnd(s, *job);
}

void HandlePs(const Session& s, const proto::Request& req) {
  proto::Response r;
  for (const auto& job : s.supervisor.List(s.caller, req.ps().all())) {
    auto* info = r.mutable_jobs()->add_jobs();
    ToProto(job, info);
    if (s.supervisor.IsCheckpointing(job.id)) info->set_state(proto::JOB_STATE_CHECKPOINTING);
  }
  s.Send(r);
}

void HandleLogs(const Session& s, const proto::Request& req) {
  auto job = s.supervisor.Find(s.caller, req.logs().name());
  if (!job) return s.SendError(job.error());
  if (req.logs().follow()) return FollowToEnd(s, *job);
  auto sent = StreamOutput(s.supervisor, *job, s.fd, /*follow=*/false);
  if (!sent) return s.SendError(sent.error());
  proto::Response done;
  done.mutable_done();
  s.Send(done);
}

void HandleKill(const Session& s, const proto::Request& req) {
  int sig = req.kill().signal() == 0 ? SIGTERM : req.kill().signal();
  if (sig < 1 || sig >= NSIG)
    return s.SendError(Error(ErrorKind::kInvalidArgument, "no signal " + std::to_string(sig)));
  auto job = s.supervisor.Kill(s.caller, req.kill().name(), sig);
  if (!job) return s.SendError(job.error());
  s.Send(JobResponse(*job));
}

void HandleRemove(const Session& s, const proto::Request& req) {
  auto job = s.supervisor.Remove(s.caller, req.remove().name(), req.remove().force());
  if (!job) return s.SendError(job.error());
  s.Send(JobResponse(*job));
}

// `progress` frames on the client's connection, if it asked for them. The
// meter's thread sends them while the session's thread waits for the
// operation; destroying the meter stops them before the final answer.
std::unique_ptr<ProgressMeter> ProgressFrames(const Session& s, bool wanted) {
  if (!wanted) return nullptr;
  return std::make_unique<ProgressMeter>([&s](const ProgressReport& p) {
    proto::Response r;
    auto* out = r.mutable_progress();
    out->set_phase(p.phase);
    out->set_done_bytes(p.done_bytes);
    out->set_total_bytes(p.total_bytes);
    out->set_elapsed_ms(p.elapsed_ms);
    s.Send(r);
  });
}

void HandleCheckpoint(const Session& s, const proto::Request& req) {
  auto progress = ProgressFrames(s, req.checkpoint().progress());
  auto m = s.checkpoints.Checkpoint(s.caller, req.checkpoint().name(), req.checkpoint().stop(),
                                    progress.get());
  progress.reset();
  if (!m) return s.SendError(m.error());
  s.Send(CheckpointResponse(s, *m));
}

void HandleRestore(const Session& s, const proto::Request& req) {
  auto progress = ProgressFrames(s, req.restore().progress());
  auto restored =
      s.checkpoints.Restore(s.caller, req.restore().ref(), req.restore().name(), progress.get());
  progress.reset();
  if (!restored) return s.SendError(restored.error());
  proto::Response r;
  auto* info = req.restore().attach() ? r.mutable_started()->mutable_job() : r.mutable_job();
  ToProto(restored->job, info);
  for (const auto& [phase, ms] : restored->phases) (*info->mutable_restore_phases_ms())[phase] = ms;
  s.Send(r);
  if (req.restore().attach()) FollowToEnd(s, restored->job);
}

void HandleCheckpoints(const Session& s, const proto::Request& req) {
  auto list = s.checkpoints.List(s.caller, req.checkpoints().job());
  if (!list) return s.SendError(list.error());
  proto::Response r;
  std::map<std::string, std::string> latest_of;  // job -> its `latest`, read once
  for (const auto& m : *list) {
    auto [it, fresh] = latest_of.try_emplace(m.job);
    if (fresh) it->second = s.checkpoints.LatestOf(m.job);
    ToProto(m, it->second == m.id, r.mutable_checkpoints()->add_checkpoints());
  }
  s.Send(r);
}

void HandleVerify(const Session& s, const proto::Request& req) {
  auto m = s.checkpoints.Verify(s.caller, req.verify().ref());
  if (!m) return s.SendError(m.error());
  s.Send(CheckpointResponse(s, *m));
}

void HandleRemoveCheckpoint(const Session& s, const proto::Request& req) {
  auto m = s.checkpoints.Remove(s.caller, req.remove_checkpoint().ref());
  if (!m) return s.SendError(m.error());
  proto::Response r;
  ToProto(*m, false, r.mutable_checkpoint());
  s.Send(r);
}

void HandleGc(const Session& s, const proto::Request&) {
  auto stats = s.checkpoints.CollectGarbage(s.caller);
  if (!stats) return s.SendError(stats.error());
  proto::Response r;
  r.mutable_gc()->set_manifests(stats->manifests);
  r.mutable_gc()->set_chunks_kept(stats->chunks_kept);
  r.mutable_gc()->set_chunks_removed(stats->chunks_removed);
  s.Send(r);
}

using Handler = void (*)(const Session&, const proto::Request&);
struct Route {
  proto::Request::BodyCase body;
  Handler handler;
};
constexpr Route kRoutes[] = {
    {proto::Request::kRun, HandleRun},
    {proto::Request::kPs, HandlePs},
    {proto::Request::kLogs, HandleLogs},
    {proto::Request::kKill, HandleKill},
    {proto::Request::kRemove, HandleRemove},
    {proto::Request::kCheckpoint, HandleCheckpoint},
    {proto::Request::kRestore, HandleRestore},
    {proto::Request::kCheckpoints, HandleCheckpoints},
    {proto::Request::kVerify, HandleVerify},
    {proto::Request::kRemoveCheckpoint, HandleRemoveCheckpoint},
    {proto::Request::kGc, HandleGc},
};

Result<Caller> PeerCaller(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return SysFail("SO_PEERCRED");
  Caller c{cred.uid, cred.gid, cred.pid, {}};
  std::vector<gid_t> groups(64);
  for (;;) {
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      break;
    }
    if (errno != ERANGE) return SysFail("SO_PEERGROUPS");
    groups.resize(glen / sizeof(gid_t) + 1);
  }
  c.groups = std::move(groups);
  return c;
}

void SetTimeout(int fd, int option, int seconds) {
  timeval tv{seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, option, &tv, sizeof tv);
}

void ServeClient(UniqueFd fd, Supervisor& supervisor, CheckpointService& checkpoints) {
  auto caller = PeerCaller(fd.get());
  if (!caller) {
    LogWarn("cannot identify client", {{"error", caller.error().ToString()}});
    return;
  }
  Session s{fd.get(), *caller, supervisor, checkpoints};
  SetTimeout(fd.get(), SO_RCVTIMEO, kRequestTimeoutSeconds);
  SetTimeout(fd.get(), SO_SNDTIMEO, kSendTimeoutSeconds);
  proto::Request req;
  auto got = ReadFrame(fd.get(), &req);
  if (!got) {
    LogWarn("bad request",
            {{"uid", std::to_string(caller->uid)}, {"error", got.error().ToString()}});
    return s.SendError(got.error().WithContext("bad request"));
  }
  if (!*got) return;
  if (req.protocol_version() != kProtocolVersion) {
    return s.SendError(Error(ErrorKind::kInvalidArgument,
                             "protocol version " + std::to_string(req.protocol_version()) +
                                 " is not supported (cryod speaks " +
                                 std::to_string(kProtocolVersion) +
                                 "; use a cryo client of the same release)"));
  }
  for (const auto& route : kRoutes) {
    if (route.body == req.body_case()) return route.handler(s, req);
  }
  s.SendError(Error(ErrorKind::kInvalidArgument, "empty or unknown request"));
}

}  // namespace

ControlServer::ControlServer(std::unique_ptr<UnixListener> listener, Supervisor& supervisor,
                             CheckpointService& checkpoints)
    : listener_(std::move(listener)), supervisor_(supervisor), checkpoints_(checkpoints) {}

ControlServer::~ControlServer() { Stop(); }

Result<std::unique_ptr<ControlServer>> ControlServer::Listen(const std::string& socket_path,
                                                             Supervisor& supervisor,
                                                             CheckpointService& checkpoints) {
  std::string dir = std::filesystem::path(socket_path).parent_path().string();
  if (auto s = MakeDirs(dir, 0755); !s) return std::unexpected(s.error());
  if (UnixSocketAnswers(socket_path)) {
    return Fail(ErrorKind::kAlreadyExists, "another cryod is already listening on " + socket_path);
  }
  auto listener = UnixListener::Create(socket_path, 64);
  if (!listener) return std::unexpected(listener.error());
  return std::unique_ptr<ControlServer>(
      new ControlServer(std::move(*listener), supervisor, checkpoints));
}

void ControlServer::Serve() {
  listener_->AcceptLoop([&sup = supervisor_, &cps = checkpoints_](UniqueFd fd) {
    ServeClient(std::move(fd), sup, cps);
  });
}

void ControlServer::Stop() { listener_->Stop(); }

}  // namespace cryo
