// SPDX-License-Identifier: Apache-2.0
// cryo run [--name NAME] [-d] [--env K=V]... -- PROG ARGS...
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <memory>

#include "client.h"

extern char** environ;

namespace cryo::cli {
namespace {

struct RunOptions {
  std::string name;
  bool detach = false;
  std::vector<std::string> env;
  std::vector<std::string> command;
};

int RunExitCode(const Error& e) {
  ReportError("run", e);
  if (e.kind() == ErrorKind::kNotFound) return kExitCommandNotFound;
  if (e.kind() == ErrorKind::kPermissionDenied) return kExitCannotExecute;
  return kExitRunFailed;
}

// The job's environment: ours, with --env entries replacing or adding.
std::vector<std::string> JobEnvironment(const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  for (const auto& kv : overrides) {
    std::string key = kv.substr(0, kv.find('=') + 1);
    std::erase_if(env, [&](const std::string& e) { return e.starts_with(key); });
    env.push_back(kv);
  }
  return env;
}

int Run(const Globals& globals, const RunOptions& opts) {
  for (const auto& kv : opts.env) {
    if (kv.find('=') == std::string::npos || kv[0] == '=') {
      return ReportError(
          "run", Error(ErrorKind::kInvalidArgument, "--env wants KEY=VALUE, not '" + kv + "'"));
    }
  }
  std::error_code ec;
  auto cwd = std::filesystem::current_path(ec);
  if (ec)
    return RunExitCode(Error(ErrorKind::kIo, "cannot read the current directory", ec.value()));
  proto::Request req;
  auto* run = req.mutable_run();
  run->set_name(opts.name);
  for (const auto& a : opts.command) run->add_argv(a);
  for (const auto& e : JobEnvironment(opts.env)) run->add_env(e);
  run->set_cwd(cwd.string());
  run->set_attach(!opts.detach);

  if (opts.detach) {
    auto r = Call(globals, req);
    if (!r) return RunExitCode(r.error());
    std::cout << r->job().name() << "\n";
    return kExitOk;
  }
  HoldForwardedSignals();
  auto fd = Send(globals, req);
  if (!fd) return RunExitCode(fd.error());
  auto first = Receive(fd->get());
  if (!first) return RunExitCode(first.error());
  if (first->has_error()) return RunExitCode(ErrorFromProto(first->error()));
  return AttachToJob(globals, fd->get(), first->started().job().name(), "run");
}

}  // namespace

Command RegisterRun(CLI::App& app, const Globals& globals) {
  auto opts = std::make_shared<RunOptions>();
  auto* sub = app.add_subcommand("run", "Start a program as a job of cryod (attached unless -d)");
  sub->add_option("--name", opts->name, "job name (unique among live jobs; default: generated)");
  sub->add_flag("-d,--detach", opts->detach, "print the job name and return at once");
  sub->add_option("--env", opts->env, "set KEY=VALUE in the job's environment (repeatable)")
      ->allow_extra_args(false);
  sub->add_option("command", opts->command, "the program and its arguments, after --")->required();
  return [&globals, opts] { return Run(globals, *opts); };
}

}  // namespace cryo::cli
