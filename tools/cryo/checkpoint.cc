// SPDX-License-Identifier: Apache-2.0
// cryo checkpoint [--stop] [--json] NAME

#include <iostream>
#include <memory>
#include <optional>

#include "checkpoint_format.h"
#include "client.h"
#include "progress.h"

namespace cryo::cli {
namespace {

struct CheckpointOptions {
  std::string name;
  bool stop = false;
  bool json = false;
};

int Checkpoint(const Globals& globals, const CheckpointOptions& opts) {
  proto::Request req;
  req.mutable_checkpoint()->set_name(opts.name);
  req.mutable_checkpoint()->set_stop(opts.stop);
  std::optional<ProgressLine> line;
  if (ProgressLine::Wanted(opts.json)) {
    req.mutable_checkpoint()->set_progress(true);
    line.emplace("checkpoint " + opts.name);
  }
  auto r = Call(globals, req, line ? line->Callback() : nullptr);
  line.reset();
  if (!r) return ReportError("checkpoint", r.error());
  const auto& c = r->checkpoint();
  if (opts.json) {
    std::cout << CheckpointJson(c).dump(2) << "\n";
    return kExitOk;
  }
  std::cerr << "checkpoint of " << c.job() << ": " << HumanBytes(c.bytes()) << " of images, "
            << HumanBytes(c.stored_bytes()) << " new in the store";
  if (!c.phases_ms().empty()) std::cerr << "; " << PhasesText(c.phases_ms());
  std::cerr << (opts.stop ? "; job stopped\n" : "\n");
  std::cout << c.id() << "\n";
  return kExitOk;
}

}  // namespace

Command RegisterCheckpoint(CLI::App& app, const Globals& globals) {
  auto opts = std::make_shared<CheckpointOptions>();
  auto* sub =
      app.add_subcommand("checkpoint", "Checkpoint a running job (it keeps running unless --stop)");
  sub->add_flag("--stop", opts->stop, "end the job once the checkpoint is durable");
  sub->add_flag("--json", opts->json, "print the checkpoint as JSON");
  sub->add_option("name", opts->name, "the job")->required();
  return [&globals, opts] { return Checkpoint(globals, *opts); };
}

}  // namespace cryo::cli
