// SPDX-License-Identifier: Apache-2.0
// cryo verify REF
#include <iostream>
#include <memory>

#include "checkpoint_format.h"
#include "client.h"

namespace cryo::cli {
namespace {

int Verify(const Globals& globals, const std::string& ref) {
  proto::Request req;
  req.mutable_verify()->set_ref(ref);
  auto r = Call(globals, req);
  if (!r) return ReportError("verify", r.error());
  std::cout << r->checkpoint().id() << ": intact (" << HumanBytes(r->checkpoint().bytes())
            << ", manifest authenticated, every chunk checked)\n";
  return kExitOk;
}

}  // namespace

Command RegisterVerify(CLI::App& app, const Globals& globals) {
  auto ref = std::make_shared<std::string>();
  auto* sub = app.add_subcommand(
      "verify", "Re-read a checkpoint and check every hash and its manifest's MAC");
  sub->add_option("ref", *ref, "NAME, NAME@latest or a checkpoint id")->required();
  return [&globals, ref] { return Verify(globals, *ref); };
}

}  // namespace cryo::cli
