// SPDX-License-Identifier: Apache-2.0
// cryo gc
#include <iostream>
#include <memory>

#include "client.h"

namespace cryo::cli {

Command RegisterGc(CLI::App& app, const Globals& globals) {
  app.add_subcommand("gc", "Remove chunks no checkpoint references (root only)");
  return [&globals] {
    proto::Request req;
    req.mutable_gc();
    auto r = Call(globals, req);
    if (!r) return ReportError("gc", r.error());
    std::cout << "removed " << r->gc().chunks_removed() << " unreferenced chunks, kept "
              << r->gc().chunks_kept() << " of " << r->gc().manifests() << " checkpoints\n";
    return kExitOk;
  };
}

}  // namespace cryo::cli
