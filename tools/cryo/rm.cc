// SPDX-License-Identifier: Apache-2.0
// cryo rm [--force] NAME...
#include <iostream>
#include <memory>

#include "client.h"

namespace cryo::cli {
namespace {

struct RmOptions {
  std::vector<std::string> names;
  bool force = false;
};

int Rm(const Globals& globals, const RmOptions& opts) {
  int code = kExitOk;
  for (const auto& name : opts.names) {
    proto::Request req;
    req.mutable_remove()->set_name(name);
    req.mutable_remove()->set_force(opts.force);
    auto r = Call(globals, req);
    if (!r) {
      code = ReportError("rm", r.error());
      continue;
    }
    std::cout << name << "\n";
  }
  return code;
}

}  // namespace

Command RegisterRm(CLI::App& app, const Globals& globals) {
  auto opts = std::make_shared<RmOptions>();
  auto* sub = app.add_subcommand("rm", "Forget ended jobs and their output");
  sub->add_flag("-f,--force", opts->force, "kill a running job first");
  sub->add_option("names", opts->names, "the jobs")->required();
  return [&globals, opts] { return Rm(globals, *opts); };
}

}  // namespace cryo::cli
