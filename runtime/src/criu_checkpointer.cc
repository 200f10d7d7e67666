// SPDX-License-Identifier: Apache-2.0
// CRIU through `criu swrk <fd>`: a SOCK_SEQPACKET socketpair, one packed
// criu_req / criu_resp per datagram (rpc.proto, installed with CRIU).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "criu/rpc.pb.h"
#include "cryo/checkpointer.h"
#include "cryo/file_util.h"
#include "cryo/process.h"

namespace cryo {
namespace {

constexpr int kSwrkFd = 3;
constexpr int kFirstInheritFd = 10;
constexpr size_t kMaxMessage = 1 << 20;
// The environment CRIU runs with: nothing of ours, no $HOME config.
const std::vector<std::string> kCriuEnv = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                                           "HOME=/nonexistent", "LANG=C"};

// The lines of CRIU's log that say what went wrong (the last few errors).
std::string LogExcerpt(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> errors;
  for (std::string line; std::getline(in, line);) {
    // This one is printed on every run and is harmless.
    if (line.find("Error") != std::string::npos &&
        line.find("RLIMIT_NOFILE") == std::string::npos) {
      errors.push_back(line);
    }
  }
  if (errors.empty()) return "";
  std::string out = "\nfrom CRIU's log " + path + ":";
  size_t from = errors.size() > 8 ? errors.size() - 8 : 0;
  for (size_t i = from; i < errors.size(); ++i) out += "\n  " + errors[i];
  return out;
}

// One swrk session: a criu process and our end of its socket.
class Session {
 public:
  static Result<Session> Start(const std::string& criu,
                               const std::vector<std::pair<std::string, int>>& inherit,
                               const std::string& cgroup_procs) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
      return SysFail("socketpair");
    UniqueFd ours(sv[0]), theirs(sv[1]);
    // CRIU reads /etc/criu/default.conf and $HOME/.criu/default.conf (they
    // could name action scripts or plugins, run as root) also for swrk, at
    // start, unless told not to. swrk takes exactly one argument after it,
    // the fd, so the option goes before "swrk" (criu/crtools.c, config.c).
    SpawnOptions spawn{.path = criu,
                       .argv = {"criu", "--no-default-config", "swrk", std::to_string(kSwrkFd)},
                       .env = kCriuEnv,
                       .fds = {{kSwrkFd, theirs.get()}},
                       .cgroup_procs = cgroup_procs,
                       .own_process_group = true};
    int next = kFirstInheritFd;
    for (const auto& [key, fd] : inherit) spawn.fds.push_back({next++, fd});
    auto child = Spawn(spawn);
    if (!child) return std::unexpected(child.error().WithContext("start CRIU"));
    return Session(std::move(ours), std::move(*child));
  }

  Status Send(const criu_req& req) {
    std::string bytes;
    if (!req.SerializeToString(&bytes))
      return Fail(ErrorKind::kInternal, "cannot encode a CRIU request");
    if (::send(sock_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(bytes.size())) {
      return SysFail("send to CRIU");
    }
    return {};
  }

  Result<criu_resp> Receive() {
    // Once CRIU is gone, its answer is queued already (its main process
    // sends them all): whoever else still holds the socket, do not wait.
    int flags = MSG_TRUNC | (WaitForAnswer() ? MSG_DONTWAIT : 0);
    std::string buf(kMaxMessage, '\0');
    ssize_t n;
    do {
      n = ::recv(sock_.get(), buf.data(), buf.size(), flags);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) n = 0;
    if (n < 0) return SysFail("receive from CRIU");
    if (n == 0) return Fail(ErrorKind::kInternal, "CRIU ended the session without an answer");
    if (static_cast<size_t>(n) > buf.size())
      return Fail(ErrorKind::kInternal, "CRIU answer too large");
    criu_resp resp;
    if (!resp.ParseFromArray(buf.data(), static_cast<int>(n))) {
      return Fail(ErrorKind::kInternal, "cannot decode CRIU's answer");
    }
    return resp;
  }

  // Runs `req` to its final answer, acknowledging notifications; the one
  // named `script` only if `hook` succeeds.
  Result<criu_resp> Run(const criu_req& req, std::string_view script, const CommitFn* hook,
                        Error* hook_error) {
    if (auto s = Send(req); !s) return std::unexpected(s.error());
    for (;;) {
      auto resp = Receive();
      if (!resp) return resp;
      if (resp->type() != NOTIFY) return resp;
      bool ok = true;
      if (hook != nullptr && *hook && resp->notify().script() == script) {
        auto done = (*hook)();
        if (!done) {
          ok = false;
          *hook_error = done.error();
        }
      }
      criu_req ack;
      ack.set_type(NOTIFY);
      ack.set_notify_success(ok);
      if (auto s = Send(ack); !s) return std::unexpected(s.error());
    }
  }

  ~Session() {
    sock_.reset();
    if (child_.pidfd.valid()) {
      // CRIU exits once its socket closes; reap it (in cryod a reaper thread
      // may get there first, which is as good), and whatever it left.
      pollfd p{child_.pidfd.get(), POLLIN, 0};
      ::poll(&p, 1, 10000);
      EndLeftovers();
      ::waitpid(child_.pid, nullptr, WNOHANG);
    }
  }
  Session(Session&&) = default;

 private:
  // Waits until CRIU's socket has something to read, or CRIU is gone. A
  // CRIU killed in the middle of a dump can leave a child of its own (a
  // helper it forked, sleeping in a loop) that holds the socket open: no
  // end of file would ever come, and the frozen job would stay frozen. So
  // once CRIU itself exits, what it left is ended, and with it the socket.
  // Returns whether CRIU has exited.
  bool WaitForAnswer() {
    if (!child_.pidfd.valid()) return false;
    for (;;) {
      pollfd p[2] = {{sock_.get(), POLLIN, 0}, {child_.pidfd.get(), POLLIN, 0}};
      int n = ::poll(p, 2, -1);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 || p[0].revents != 0) return false;
      if (p[1].revents != 0) {
        EndLeftovers();
        return true;
      }
    }
  }

  // Kills what is left of CRIU's process group (Spawn made it one): the
  // helpers of a CRIU that is gone. CRIU's own pid still names the group,
  // which no other process can lead while one of them lives (an empty
  // group's number could be reused in the moment after a reaper took CRIU:
  // cyclic pid allocation makes that practically unreachable). Restored
  // tasks are never in it: cryo-init leads its own session, and cryo never
  // asks for shell_job, which would put them into CRIU's group.
  void EndLeftovers() {
    pollfd p{child_.pidfd.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) == 1) (void)::kill(-child_.pid, SIGKILL);
  }

  Session(UniqueFd sock, Spawned child) : sock_(std::move(sock)), child_(std::move(child)) {}
  UniqueFd sock_;
  Spawned child_;
};

// CRIU resolves work_dir_fd in the caller (/proc/<caller>/fd/N): `work`
// must stay open until the request is answered.
void SetCommonOptions(criu_opts* opts, const std::string& images_dir, const UniqueFd& work,
                      const std::string& log, bool tcp) {
  opts->set_images_dir_fd(-1);
  opts->set_images_dir(images_dir);
  if (work.valid()) opts->set_work_dir_fd(work.get());
  opts->set_log_file(log);
  opts->set_log_level(4);
  opts->set_notify_scripts(true);
  opts->set_manage_cgroups_mode(IGNORE);
  if (tcp) {
    opts->set_tcp_established(true);
    opts->set_network_lock(NFTABLES);
  }
}

Result<UniqueFd> OpenWorkDir(const std::string& dir) {
  if (dir.empty()) return UniqueFd();
  // Not close-on-exec would not matter: CRIU opens it through /proc.
  return OpenFile(dir, O_RDONLY | O_DIRECTORY);
}

const std::string& LogDir(const std::string& images, const std::string& work) {
  return work.empty() ? images : work;
}

std::string Failure(const criu_resp& resp) {
  std::string why = resp.has_cr_errmsg() && !resp.cr_errmsg().empty() ? resp.cr_errmsg() : "";
  // CRIU's first error, which it reports here, is on some machines always
  // the harmless RLIMIT_NOFILE one (as LogExcerpt knows): not the reason.
  if (why.find("RLIMIT_NOFILE") != std::string::npos) why.clear();
  if (why.empty() && resp.has_cr_errno() && resp.cr_errno() != 0)
    why = std::strerror(resp.cr_errno());
  return why.empty() ? "" : " (" + why + ")";
}

// What identifies a CRIU binary for its version: replaced or rebuilt, it is
// asked again.
struct BinaryIdentity {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  timespec mtime{};
  bool operator==(const BinaryIdentity& o) const {
    return dev == o.dev && ino == o.ino && size == o.size && mtime.tv_sec == o.mtime.tv_sec &&
           mtime.tv_nsec == o.mtime.tv_nsec;
  }
};

Result<BinaryIdentity> IdentityOf(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return SysFail("CRIU at " + path);
  return BinaryIdentity{st.st_dev, st.st_ino, st.st_size, st.st_mtim};
}

// Asks the CRIU at `path` its version ("4.2.1").
Result<std::string> AskVersion(const std::string& path) {
  auto session = Session::Start(path, {}, "");
  if (!session) return std::unexpected(session.error());
  criu_req req;
  req.set_type(VERSION);
  auto resp = session->Run(req, "", nullptr, nullptr);
  if (!resp) return std::unexpected(resp.error().WithContext(path + " does not answer"));
  std::string version = std::to_string(resp->version().major_number()) + "." +
                        std::to_string(resp->version().minor_number());
  if (resp->version().has_sublevel()) version += "." + std::to_string(resp->version().sublevel());
  return version;
}

// Versions already asked, by binary: asking starts a CRIU (6-17 ms here),
// once per checkpoint before this cache.
std::mutex versions_mu;
std::map<std::string, std::pair<BinaryIdentity, std::string>>& Versions() {
  static auto* versions = new std::map<std::string, std::pair<BinaryIdentity, std::string>>();
  return *versions;  // never destroyed
}

class CriuCheckpointer final : public Checkpointer {
 public:
  explicit CriuCheckpointer(std::string path) : path_(std::move(path)) {}

  Result<std::string> Version() override {
    auto identity = IdentityOf(path_);
    if (!identity) return std::unexpected(identity.error());
    {
      std::lock_guard lock(versions_mu);
      auto it = Versions().find(path_);
      if (it != Versions().end() && it->second.first == *identity) return it->second.second;
    }
    auto version = AskVersion(path_);
    if (!version) return version;
    std::lock_guard lock(versions_mu);
    Versions()[path_] = {*identity, *version};
    return version;
  }

  Status Dump(const DumpOptions& o, const CommitFn& commit) override {
    auto session = Session::Start(path_, {}, "");
    if (!session) return std::unexpected(session.error());
    criu_req req;
    req.set_type(DUMP);
    auto* opts = req.mutable_opts();
    auto work = OpenWorkDir(o.work_dir);
    if (!work) return std::unexpected(work.error());
    SetCommonOptions(opts, o.images_dir, *work, "dump.log", o.tcp_established);
    opts->set_pid(o.pid);
    opts->set_leave_running(o.leave_running);
    if (!o.freeze_cgroup.empty()) opts->set_freeze_cgroup(o.freeze_cgroup);
    for (const auto& e : o.external) opts->add_external(e);
    Error commit_error(ErrorKind::kInternal, "");
    auto resp = session->Run(req, "post-dump", &commit, &commit_error);
    if (!resp) return std::unexpected(resp.error().WithContext("criu dump"));
    if (!commit_error.message().empty()) {
      return std::unexpected(commit_error.WithContext("checkpoint not stored, job resumed"));
    }
    if (!resp->success()) {
      return Fail(ErrorKind::kFailedPrecondition,
                  "criu dump failed" + Failure(*resp) +
                      LogExcerpt(LogDir(o.images_dir, o.work_dir) + "/dump.log"));
    }
    return {};
  }

  Result<pid_t> Restore(const RestoreOptions& o) override {
    if (o.stream) return RestoreFromStream(o);
    auto session = Session::Start(path_, o.inherit_fds, o.cgroup_procs);
    if (!session) return std::unexpected(session.error());
    criu_req req;
    req.set_type(RESTORE);
    auto* opts = req.mutable_opts();
    auto work = OpenWorkDir(o.work_dir);
    if (!work) return std::unexpected(work.error());
    SetCommonOptions(opts, o.images_dir, *work, "restore.log", o.tcp_established);
    opts->set_rst_sibling(true);
    if (o.lazy_pages) opts->set_lazy_pages(true);
    int next = kFirstInheritFd;
    for (const auto& [key, fd] : o.inherit_fds) {
      auto* inherit = opts->add_inherit_fd();
      inherit->set_key(key);
      inherit->set_fd(next++);
    }
    Error hook_error(ErrorKind::kInternal, "");
    auto resp = session->Run(req, "post-restore", &o.post_restore, &hook_error);
    if (!resp) return std::unexpected(resp.error().WithContext("criu restore"));
    if (!hook_error.message().empty()) {
      return std::unexpected(hook_error.WithContext("restore failed, the restored tree killed"));
    }
    if (!resp->success()) {
      return Fail(ErrorKind::kFailedPrecondition,
                  "criu restore failed" + Failure(*resp) +
                      LogExcerpt(LogDir(o.images_dir, o.work_dir) + "/restore.log"));
    }
    return resp->restore().pid();
  }

  Result<bool> SupportsLazyPages() override {
    auto session = Session::Start(path_, {}, "");
    if (!session) return std::unexpected(session.error());
    criu_req req;
    req.set_type(FEATURE_CHECK);
    req.mutable_features()->set_lazy_pages(true);
    auto resp = session->Run(req, "", nullptr, nullptr);
    if (!resp) return std::unexpected(resp.error().WithContext("criu feature check"));
    return resp->success() && resp->has_features() && resp->features().lazy_pages();
  }

 private:
  // The command-line equivalent of Restore's RPC request, with --stream.
  Result<pid_t> RestoreFromStream(const RestoreOptions& o) {
    const std::string& logs = LogDir(o.images_dir, o.work_dir);
    std::string pidfile = logs + "/restore.pid";
    std::vector<std::string> argv = {"criu",
                                     "restore",
                                     "--no-default-config",
                                     "--stream",
                                     "--images-dir",
                                     o.images_dir,
                                     "--work-dir",
                                     logs,
                                     "--log-file",
                                     "restore.log",
                                     "-v4",
                                     "--restore-detached",
                                     "--restore-sibling",
                                     "--manage-cgroups=ignore",
                                     "--pidfile",
                                     pidfile};
    if (o.tcp_established) {
      argv.insert(argv.end(), {"--tcp-established", "--network-lock", "nftables"});
    }
    SpawnOptions spawn{
        .path = path_, .argv = {}, .env = kCriuEnv, .fds = {}, .cgroup_procs = o.cgroup_procs};
    int next = kFirstInheritFd;
    for (const auto& [key, fd] : o.inherit_fds) {
      argv.push_back("--inherit-fd");
      argv.push_back("fd[" + std::to_string(next) + "]:" + key);
      spawn.fds.push_back({next++, fd});
    }
    spawn.argv = std::move(argv);
    auto child = Spawn(spawn);
    if (!child) return std::unexpected(child.error().WithContext("start CRIU"));
    int status = 0;
    while (::waitpid(child->pid, &status, 0) < 0) {
      if (errno != EINTR) return SysFail("wait for criu restore");
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return Fail(ErrorKind::kFailedPrecondition,
                  "criu restore failed" + LogExcerpt(logs + "/restore.log"));
    }
    auto text = ReadFileToString(pidfile);
    pid_t pid = text ? static_cast<pid_t>(std::atoi(text->c_str())) : 0;
    if (pid <= 0) return Fail(ErrorKind::kInternal, "criu restore left no pid in " + pidfile);
    return pid;
  }

  std::string path_;
};

}  // namespace

Result<std::unique_ptr<Checkpointer>> CreateCriuCheckpointer(const std::string& criu_path) {
  if (criu_path.empty() || criu_path[0] != '/') {
    return Fail(ErrorKind::kInvalidArgument, "the CRIU path must be absolute: '" + criu_path + "'");
  }
  if (::access(criu_path.c_str(), X_OK) != 0) return SysFail("CRIU at " + criu_path);
  return std::make_unique<CriuCheckpointer>(criu_path);
}

}  // namespace cryo
