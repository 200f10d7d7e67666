// SPDX-License-Identifier: Apache-2.0
// cryo restore [--name NEW] [-d] REF
#include <iostream>
#include <memory>

#include "client.h"

namespace cryo::cli {
namespace {

struct RestoreOptions {
  std::string ref;
  std::string name;
  bool detach = false;
};

int Restore(const Globals& globals, const RestoreOptions& opts) {
  proto::Request req;
  req.mutable_restore()->set_ref(opts.ref);
  req.mutable_restore()->set_name(opts.name);
  req.mutable_restore()->set_attach(!opts.detach);
  if (opts.detach) {
    auto r = Call(globals, req);
    if (!r) return ReportError("restore", r.error());
    std::cout << r->job().name() << "\n";
    return kExitOk;
  }
  HoldForwardedSignals();
  auto fd = Send(globals, req);
  if (!fd) return ReportError("restore", fd.error());
  auto first = Receive(fd->get());
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
  sub->add_flag("-d,--detach", opts->detach, "print the job name and return at once");
  sub->add_option("ref", opts->ref, "NAME, NAME@latest or a checkpoint id")->required();
  return [&globals, opts] { return Restore(globals, *opts); };
}

}  // namespace cryo::cli
