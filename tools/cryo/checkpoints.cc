// SPDX-License-Identifier: Apache-2.0
// cryo checkpoints [NAME] [--json]
#include <iomanip>
#include <iostream>
#include <memory>

#include "checkpoint_format.h"
#include "client.h"

namespace cryo::cli {
namespace {

struct CheckpointsOptions {
  std::string job;
  bool json = false;
};

int Checkpoints(const Globals& globals, const CheckpointsOptions& opts) {
  proto::Request req;
  req.mutable_checkpoints()->set_job(opts.job);
  auto r = Call(globals, req);
  if (!r) return ReportError("checkpoints", r.error());
  const auto& list = r->checkpoints().checkpoints();
  if (opts.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& c : list) out.push_back(CheckpointJson(c));
    std::cout << out.dump(2) << "\n";
    return kExitOk;
  }
  std::cout << std::left << std::setw(18) << "ID" << std::setw(20) << "JOB" << std::setw(21)
            << "CREATED" << std::setw(18) << "PARENT" << std::setw(12) << "BYTES"
            << "STORED\n";
  for (const auto& c : list) {
    std::cout << std::setw(18) << (c.id() + (c.latest() ? "*" : "")) << std::setw(20) << c.job()
              << std::setw(21) << LocalTime(c.created_unix_ms()) << std::setw(18)
              << (c.parent().empty() ? "-" : c.parent()) << std::setw(12) << HumanBytes(c.bytes())
              << HumanBytes(c.stored_bytes()) << "\n";
  }
  return kExitOk;
}

}  // namespace

Command RegisterCheckpoints(CLI::App& app, const Globals& globals) {
  auto opts = std::make_shared<CheckpointsOptions>();
  auto* sub = app.add_subcommand("checkpoints",
                                 "List your checkpoints, newest first (* marks a job's latest)");
  sub->add_flag("--json", opts->json, "print a JSON array");
  sub->add_option("name", opts->job, "only this job's");
  return [&globals, opts] { return Checkpoints(globals, *opts); };
}

}  // namespace cryo::cli
