// SPDX-License-Identifier: Apache-2.0
// cryo logs [-f] NAME
#include <memory>

#include "client.h"

namespace cryo::cli {
namespace {

struct LogsOptions {
  std::string name;
  bool follow = false;
};

int Logs(const Globals& globals, const LogsOptions& opts) {
  proto::Request req;
  req.mutable_logs()->set_name(opts.name);
  req.mutable_logs()->set_follow(opts.follow);
  auto fd = Send(globals, req);
  if (!fd) return ReportError("logs", fd.error());
  for (;;) {
    auto r = Receive(fd->get());
    if (!r) return ReportError("logs", r.error());
    if (r->has_error()) return ReportError("logs", ErrorFromProto(r->error()));
    if (r->has_output()) {
      WriteOutput(r->output());
      continue;
    }
    return kExitOk;  // done, or exited when following
  }
}

}  // namespace

Command RegisterLogs(CLI::App& app, const Globals& globals) {
  auto opts = std::make_shared<LogsOptions>();
  auto* sub =
      app.add_subcommand("logs", "Print a job's output (stdout to stdout, stderr to stderr)");
  sub->add_flag("-f,--follow", opts->follow, "keep printing until the job ends");
  sub->add_option("name", opts->name, "the job")->required();
  return [&globals, opts] { return Logs(globals, *opts); };
}

}  // namespace cryo::cli
