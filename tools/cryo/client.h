// SPDX-License-Identifier: Apache-2.0
// What every subcommand of the cryo CLI shares: finding and calling cryod,
// printing errors, and the exit codes scripts can rely on.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

#include "cryo/daemon.pb.h"
#include "cryo/error.h"
#include "cryo/protocol.h"
#include "cryo/unique_fd.h"

namespace cryo::cli {

// Exit codes of cryo (besides `cryo run`, which exits with the job's status
// and uses 125-127 for its own failures, like `docker run`).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNotFound = 3;
inline constexpr int kExitPermission = 4;
inline constexpr int kExitUnavailable = 5;  // cryod does not answer
inline constexpr int kExitRunFailed = 125;
inline constexpr int kExitCannotExecute = 126;
inline constexpr int kExitCommandNotFound = 127;

struct Globals {
  std::string socket;  // --socket, else $CRYO_SOCKET, else the default
  std::string SocketPath() const;
};

// Connects to cryod; when nothing answers, the error says how to start it.
Result<UniqueFd> Connect(const Globals& globals);
// Sends `request` (the protocol version is filled in) on a fresh connection.
Result<UniqueFd> Send(const Globals& globals, proto::Request request);
// Reads the next response; a lost connection is an error.
Result<proto::Response> Receive(int fd);
// Shows a `progress` frame of a checkpoint or restore (progress.h).
using ProgressFn = std::function<void(const proto::Progress&)>;
// Reads responses up to the first that is not `progress`, handing those to
// `on_progress` (if set), and returns it.
Result<proto::Response> ReceiveAnswer(int fd, const ProgressFn& on_progress);
// One request, one final response; an `error` response becomes an Error.
// `progress` frames before it go to `on_progress`.
Result<proto::Response> Call(const Globals& globals, proto::Request request,
                             const ProgressFn& on_progress = nullptr);

// Prints "cryo <command>: <message>" to stderr and returns the exit code for it.
int ReportError(std::string_view command, const Error& error);

// A subcommand: registers its options on `app` and returns what runs it.
using Command = std::function<int()>;
using Registrar = Command (*)(CLI::App& app, const Globals& globals);

Command RegisterRun(CLI::App& app, const Globals& globals);
Command RegisterPs(CLI::App& app, const Globals& globals);
Command RegisterLogs(CLI::App& app, const Globals& globals);
Command RegisterKill(CLI::App& app, const Globals& globals);
Command RegisterRm(CLI::App& app, const Globals& globals);
Command RegisterCheckpoint(CLI::App& app, const Globals& globals);
Command RegisterRestore(CLI::App& app, const Globals& globals);
Command RegisterCheckpoints(CLI::App& app, const Globals& globals);
Command RegisterVerify(CLI::App& app, const Globals& globals);
Command RegisterRmCheckpoint(CLI::App& app, const Globals& globals);
Command RegisterGc(CLI::App& app, const Globals& globals);

// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT so that none is lost (or kills
// us) before AttachToJob knows which job to forward them to. Call before
// sending an attached request.
void HoldForwardedSignals();
// After `started`: streams the job's output from `fd`, forwards SIGINT,
// SIGTERM, SIGHUP and SIGQUIT to the job, and returns its exit status.
int AttachToJob(const Globals& globals, int fd, const std::string& name, std::string_view command);

// Writes bytes of job output to our stdout or stderr.
void WriteOutput(const proto::Output& output);

}  // namespace cryo::cli
