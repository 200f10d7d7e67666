// SPDX-License-Identifier: Apache-2.0
// cryod: the privileged daemon of cryo. main() reads like its lifecycle:
// configuration, state, the supervisor, the control socket, wait for a
// signal, stop. Jobs live on without cryod; a new cryod adopts them.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>
#include <thread>

#include "checkpoints.h"
#include "criu_run_dir.h"
#include "cryo/config.h"
#include "cryo/file_util.h"
#include "cryo/image_store.h"
#include "cryo/log.h"
#include "registry.h"
#include "server.h"
#include "shim_service.h"
#include "supervisor.h"

#ifndef CRYO_DEFAULT_CRIU
#define CRYO_DEFAULT_CRIU "/opt/cryo/criu/sbin/criu"
#endif
#ifndef CRYO_LIBEXEC_FROM_BIN
#define CRYO_LIBEXEC_FROM_BIN "../libexec/cryo"
#endif

namespace cryo {
namespace {

struct Flags {
  std::string config;
  std::string state_dir, socket, store, memory_scratch, log_level, lazy_restore;
  int ready_fd = -1;
};

Result<DaemonConfig> Configure(const Flags& flags) {
  DaemonConfig config;
  std::string path = flags.config.empty() ? kDefaultConfigPath : flags.config;
  if (!flags.config.empty() || std::filesystem::exists(path)) {
    auto loaded = LoadDaemonConfig(path, config);
    if (!loaded) return loaded;
    config = *loaded;
  }
  if (!flags.state_dir.empty()) config.state_dir = flags.state_dir;
  if (!flags.socket.empty()) config.socket_path = flags.socket;
  if (!flags.store.empty()) config.store_url = flags.store;
  if (!flags.log_level.empty()) config.log_level = flags.log_level;
  if (!flags.memory_scratch.empty()) config.memory_scratch = flags.memory_scratch;
  if (!flags.lazy_restore.empty()) config.lazy_restore = flags.lazy_restore;
  if (config.criu_path.empty()) config.criu_path = CRYO_DEFAULT_CRIU;
  for (const auto* p : {&config.state_dir, &config.socket_path}) {
    if (p->empty() || (*p)[0] != '/')
      return Fail(ErrorKind::kInvalidArgument, "'" + *p + "' is not an absolute path");
  }
  return ParseDaemonConfig("", config);  // validates the result once more
}

// cryod's helpers run as root: take them only from next to cryod itself, and
// only if nobody but root can have changed them.
Result<std::string> FindHelper(std::string_view name) {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return SysFail("read /proc/self/exe", ec.value());
  std::string path = (exe.parent_path() / CRYO_LIBEXEC_FROM_BIN / name).lexically_normal().string();
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return SysFail("find helper " + path);
  if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return Fail(ErrorKind::kPermissionDenied,
                path + " must be owned by root and writable only by root");
  }
  return path;
}

std::optional<uint64_t> LazyRestoreMinBytes(const DaemonConfig& config) {
  if (config.lazy_restore == "off") return std::nullopt;
  return config.lazy_restore == "always" ? 1 : uint64_t{64} << 20;
}

int RealMain(int argc, char** argv) {
  CLI::App app{"cryod: the cryo daemon (runs as root)"};
  Flags flags;
  app.add_option("--config", flags.config,
                 std::string("configuration file (default ") + kDefaultConfigPath + ")");
  app.add_option("--state-dir", flags.state_dir, "state directory (default /var/lib/cryo)");
  app.add_option("--socket", flags.socket, "control socket (default /run/cryo/cryod.sock)");
  app.add_option("--store", flags.store, "checkpoint store URL (default file://STATE_DIR/store)");
  app.add_option("--memory-scratch", flags.memory_scratch,
                 "tmpfs directory to stage images in when they fit, or 'off' (default /dev/shm)");
  app.add_option("--log-level", flags.log_level, "debug, info, warn or error");
  app.add_option("--lazy-restore", flags.lazy_restore,
                 "restore memory through userfaultfd: auto (>= 64 MiB of it), always or off");
  app.add_option("--ready-fd", flags.ready_fd,
                 "write 'ready' to this fd once serving (for supervisors and tests)");
  CLI11_PARSE(app, argc, argv);

  if (::geteuid() != 0) {
    std::cerr << "cryod: must run as root (it starts jobs as their owners and drives CRIU)\n";
    return 1;
  }
  auto config = Configure(flags);
  if (!config) {
    std::cerr << "cryod: configuration: " << config.error().ToString() << "\n";
    return 1;
  }
  SetLogLevel(config->log_level);
  ::umask(077);
  if (auto s = MakeDirs(config->state_dir, 0700); !s) {
    LogError("cannot create the state directory", {{"error", s.error().ToString()}});
    return 1;
  }
  ::chmod(config->state_dir.c_str(), 0700);
  auto store = OpenStore(config->EffectiveStoreUrl());
  if (!store) {
    LogError("cannot use the store", {{"error", store.error().ToString()}});
    return 1;
  }
  auto key = Key::LoadOrCreate(config->state_dir + "/key");
  if (!key) {
    LogError("cannot use the key file", {{"error", key.error().ToString()}});
    return 1;
  }
  if (::access(config->criu_path.c_str(), X_OK) != 0) {
    LogWarn("CRIU not found; checkpoints will fail (run tools/setup.sh)",
            {{"criu", config->criu_path}});
  }
  if (auto cached = PrepareCriuRunDir(std::string(kCriuRunDir)); !cached) {
    LogError("cannot prepare the directory of CRIU's kernel cache",
             {{"error", cached.error().ToString()}});
    return 1;
  }
  auto monitor = FindHelper("cryo-monitor");
  auto init = FindHelper("cryo-init");
  if (!monitor || !init) {
    LogError("cannot use cryod's helpers",
             {{"error", (monitor ? init.error() : monitor.error()).ToString()}});
    return 1;
  }

  // Orphans of jobs come to cryod, which reaps them; SIGCHLD is read through
  // a signalfd and the stop signals through sigwait, in every thread.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t stop;
  sigemptyset(&stop);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&stop, sig);
  ::pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  auto supervisor = Supervisor::Create(config->state_dir, *monitor);
  if (!supervisor) {
    LogError("cannot load the job table", {{"error", supervisor.error().ToString()}});
    return 1;
  }
  // The state directory records our memory scratch, so that a restarted
  // cryod finds (and clears) what its predecessor left.
  auto scratch = ScratchSpace::Create(
      {.disk_dir = config->state_dir + "/work",
       .memory_dir = config->memory_scratch == "off" ? "" : config->memory_scratch,
       .record = config->state_dir + "/memory-scratch"});
  if (!scratch) {
    LogError("cannot prepare scratch space", {{"error", scratch.error().ToString()}});
    return 1;
  }
  std::string memory_scratch = (*scratch)->memory_root();
  CheckpointService checkpoints(
      **supervisor, std::move(*store), *key, std::move(*scratch),
      {.criu_path = config->criu_path, .lazy_restore_min_bytes = LazyRestoreMinBytes(*config)});
  checkpoints.CheckLazyRestoreSoon();
  // After a crash or a power loss, chunks that no published checkpoint
  // references may be torn (they are synced only before their manifest is
  // written), and a new checkpoint would reuse them as they are: check them
  // before taking requests. An orderly stop leaves a marker that spares this.
  std::string clean_stop = config->state_dir + "/clean-stop";
  if (::unlink(clean_stop.c_str()) != 0) {
    if (auto torn = checkpoints.RemoveTornChunks(); !torn) {
      LogWarn("after an unclean stop, unreferenced chunks could not be checked",
              {{"error", torn.error().ToString()}});
    } else {
      LogInfo("after an unclean stop: checked unreferenced chunks",
              {{"removed_torn", std::to_string(*torn)}});
    }
  }
  auto server = ControlServer::Listen(config->socket_path, **supervisor, checkpoints);
  if (!server) {
    LogError("cannot listen", {{"error", server.error().ToString()}});
    (void)checkpoints.Quiesce();  // leaves no scratch behind
    return 1;
  }
  // The LD_PRELOAD shim of jobs talks to cryod on a socket next to the
  // control socket. Without it, jobs run as they are and SIGTERM is plain.
  std::unique_ptr<ShimService> shim;
  std::string shim_socket =
      (std::filesystem::path(config->socket_path).parent_path() / "shim.sock").string();
  if (auto preload = FindHelper("libcryo_preload.so"); !preload) {
    LogWarn("no LD_PRELOAD shim: SIGTERM will not checkpoint jobs",
            {{"error", preload.error().ToString()}});
  } else if (auto made = ShimService::Listen(shim_socket, **supervisor, checkpoints); !made) {
    LogWarn("no LD_PRELOAD shim: SIGTERM will not checkpoint jobs",
            {{"error", made.error().ToString()}});
  } else {
    shim = std::move(*made);
    checkpoints.SetParticipants(shim.get());
    shim->Start();
    (*supervisor)->EnableShim(*preload, shim_socket);
  }
  std::thread serving([&] { (*server)->Serve(); });
  LogInfo("cryod ready", {{"socket", config->socket_path},
                          {"state_dir", config->state_dir},
                          {"store", config->EffectiveStoreUrl()},
                          {"criu", config->criu_path},
                          {"memory_scratch", memory_scratch.empty() ? "off" : memory_scratch},
                          {"lazy_restore", config->lazy_restore}});
  if (flags.ready_fd >= 0) {
    (void)WriteAll(flags.ready_fd, "ready\n");
    ::close(flags.ready_fd);
  }

  int sig = 0;
  sigwait(&stop, &sig);
  LogInfo("cryod stopping; jobs keep running", {{"signal", std::to_string(sig)}});
  (*server)->Stop();
  serving.join();
  // Clean only if no checkpoint was cut short: its chunks are not synced,
  // and its images stay in scratch for the next start to clear.
  if (checkpoints.Quiesce()) (void)WriteFileAtomic(clean_stop, "");
  // Client threads may still be streaming: end the process without running
  // destructors under them. Job state is on disk; monitors carry on.
  std::_Exit(0);
}

}  // namespace
}  // namespace cryo

int main(int argc, char** argv) { return cryo::RealMain(argc, argv); }
