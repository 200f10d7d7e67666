// SPDX-License-Identifier: Apache-2.0
// cryo ps [--all] [--json]
#include <pwd.h>

#include <ctime>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "checkpoint_format.h"
#include "client.h"

namespace cryo::cli {
namespace {

struct PsOptions {
  bool all = false;
  bool json = false;
};

std::string StateText(const proto::JobInfo& job) {
  switch (job.state()) {
    case proto::JOB_STATE_STARTING:
      return "starting";
    case proto::JOB_STATE_RUNNING:
      return "running";
    case proto::JOB_STATE_EXITED:
      return "exited";
    case proto::JOB_STATE_LOST:
      return "lost";
    case proto::JOB_STATE_CHECKPOINTED:
      return "checkpointed";
    case proto::JOB_STATE_CHECKPOINTING:
      return "checkpointing";
    default:
      return "unknown";
  }
}

std::string OwnerName(uint32_t uid) {
  passwd* pw = ::getpwuid(uid);
  return pw != nullptr ? pw->pw_name : std::to_string(uid);
}

std::string CommandLine(const proto::JobInfo& job) {
  std::string cmd;
  for (const auto& a : job.argv()) cmd += (cmd.empty() ? "" : " ") + a;
  return cmd;
}

nlohmann::json ToJson(const proto::JobInfo& job) {
  nlohmann::json j = {
      {"name", job.name()},
      {"id", job.id()},
      {"state", StateText(job)},
      {"pid", job.pid()},
      {"uid", job.uid()},
      {"gid", job.gid()},
      {"owner", OwnerName(job.uid())},
      {"created_unix_ms", job.created_unix_ms()},
      {"command", CommandLine(job)},
      {"argv", std::vector<std::string>(job.argv().begin(), job.argv().end())},
      {"cwd", job.cwd()},
      {"restored_from", job.restored_from()},
      {"last_checkpoint", job.last_checkpoint()},
      {"on_sigterm", job.on_sigterm()},
      {"notice", job.notice()},
  };
  j["exit_code"] = job.has_exit_code() ? nlohmann::json(job.exit_code()) : nlohmann::json(nullptr);
  j["ended_unix_ms"] =
      job.ended_unix_ms() != 0 ? nlohmann::json(job.ended_unix_ms()) : nlohmann::json(nullptr);
  return j;
}

int Ps(const Globals& globals, const PsOptions& opts) {
  proto::Request req;
  req.mutable_ps()->set_all(opts.all);
  auto r = Call(globals, req);
  if (!r) return ReportError("ps", r.error());
  const auto& jobs = r->jobs().jobs();
  if (opts.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& job : jobs) out.push_back(ToJson(job));
    std::cout << out.dump(2) << "\n";
    return kExitOk;
  }
  std::cout << std::left << std::setw(20) << "NAME" << std::setw(14) << "STATE" << std::setw(9)
            << "PID" << std::setw(10) << "OWNER" << std::setw(21) << "CREATED"
            << "COMMAND\n";
  for (const auto& job : jobs) {
    std::string state = StateText(job);
    // A checkpointed job was ended by CRIU on purpose: its status says nothing.
    if (job.has_exit_code() && job.state() != proto::JOB_STATE_CHECKPOINTED) {
      state += " (" + std::to_string(job.exit_code()) + ")";
    }
    std::cout << std::setw(20) << job.name() << std::setw(14) << state << std::setw(9)
              << (job.pid() != 0 ? std::to_string(job.pid()) : "-") << std::setw(10)
              << OwnerName(job.uid()) << std::setw(21) << LocalTime(job.created_unix_ms())
              << CommandLine(job) << "\n";
  }
  for (const auto& job : jobs) {
    if (!job.notice().empty()) std::cout << "\n" << job.name() << ": " << job.notice() << "\n";
  }
  return kExitOk;
}

}  // namespace

Command RegisterPs(CLI::App& app, const Globals& globals) {
  auto opts = std::make_shared<PsOptions>();
  auto* sub = app.add_subcommand("ps", "List your jobs (root: everyone's)");
  sub->add_flag("-a,--all", opts->all, "include jobs that have ended");
  sub->add_flag("--json", opts->json, "print a JSON array");
  return [&globals, opts] { return Ps(globals, *opts); };
}

}  // namespace cryo::cli
