// SPDX-License-Identifier: Apache-2.0
// cryo rm-checkpoint REF...
#include <iostream>
#include <memory>

#include "client.h"

namespace cryo::cli {
namespace {

int RemoveCheckpoints(const Globals& globals, const std::vector<std::string>& refs) {
  int code = kExitOk;
  for (const auto& ref : refs) {
    proto::Request req;
    req.mutable_remove_checkpoint()->set_ref(ref);
    auto r = Call(globals, req);
    if (!r) {
      code = ReportError("rm-checkpoint", r.error());
      continue;
    }
    std::cout << r->checkpoint().id() << "\n";
  }
  return code;
}

}  // namespace

Command RegisterRmCheckpoint(CLI::App& app, const Globals& globals) {
  auto refs = std::make_shared<std::vector<std::string>>();
  auto* sub = app.add_subcommand(
      "rm-checkpoint", "Remove checkpoints (a job's latest falls back to the previous one)");
  sub->add_option("refs", *refs, "checkpoint ids or NAME@latest")->required();
  return [&globals, refs] { return RemoveCheckpoints(globals, *refs); };
}

}  // namespace cryo::cli
