// SPDX-License-Identifier: Apache-2.0
// cryo restore [--name NEW] [-d [--json]] REF
#include <iostream>
#include <memory>
#include <optional>

#include "checkpoint_format.h"
#include "client.h"
#include "progress.h"

namespace cryo::cli {
namespace {

struct RestoreOptions {
  std::string ref;
  std::string name;
  bool detach = false;
  bool json = false;
};

// Detached: the job name on stdout (the timings on stderr), or all as JSON.
int RestoreDetached(const Globals& globals, proto::Request req, const RestoreOptions& opts) {
  std::optional<ProgressLine> line;
  if (ProgressLine::Wanted(opts.json)) {
    req.mutable_restore()->set_progress(true);
    line.emplace("restore " + opts.ref);
  }
  auto r = Call(globals, req, line ? line->Callback() : nullptr);
  line.reset();
  if (!r) return ReportError("restore", r.error());
  const auto& job = r->job();
  if (opts.json) {
    std::cout << RestoreJson(job).dump(2) << "\n";
    return kExitOk;
  }
  if (!job.restore_phases_ms().empty()) {
    std::cerr << "restored " << job.name() << " from " << job.restored_from() << "; "
              << PhasesText(job.restore_phases_ms()) << "\n";
  }
  std::cout << job.name() << "\n";
  return kExitOk;
}

int Restore(const Globals& globals, const RestoreOptions& opts) {
  proto::Request req;
  req.mutable_restore()->set_ref(opts.ref);
  req.mutable_restore()->set_name(opts.name);
  req.mutable_restore()->set_attach(!opts.detach);
  if (opts.detach) return RestoreDetached(globals, std::move(req), opts);
  HoldForwardedSignals();
  std::optional<ProgressLine> line;
  if (ProgressLine::Wanted(false)) {
    req.mutable_restore()->set_progress(true);
    line.emplace("restore " + opts.ref);
  }
  auto fd = Send(globals, req);
  if (!fd) return ReportError("restore", fd.error());
  auto first = ReceiveAnswer(fd->get(), line ? line->Callback() : nullptr);
  line.reset();  // before the job's output
  if (!first) return ReportError("restore", first.error());
  if (first->has_error()) return ReportError("restore", ErrorFromProto(first->error()));
  return AttachToJob(globals, fd->get(), first->started().job().name(), "restore");
}

}  // namespace

Command RegisterRestore(CLI::App& app, const Globals& globals) {
  auto opts = std::make_shared<RestoreOptions>();
  auto* sub = app.add_subcommand(
      "restore", "Restore a checkpoint (REF: NAME, NAME@latest or an id); attached unless -d");
  sub->add_option("--name", opts->name,
                  "name of the restored job (default: the checkpointed job's)");
  auto* detach =
      sub->add_flag("-d,--detach", opts->detach, "print the job name and return at once");
  sub->add_flag("--json", opts->json, "with -d: print the job and the restore's phases as JSON")
      ->needs(detach);
  sub->add_option("ref", opts->ref, "NAME, NAME@latest or a checkpoint id")->required();
  return [&globals, opts] { return Restore(globals, *opts); };
}

}  // namespace cryo::cli
