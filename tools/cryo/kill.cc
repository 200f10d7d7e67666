// SPDX-License-Identifier: Apache-2.0
// cryo kill [--signal SIG] NAME
#include <signal.h>
#include <string.h>

#include <charconv>
#include <memory>

#include "client.h"

namespace cryo::cli {
namespace {

struct KillOptions {
  std::string name;
  std::string signal = "TERM";
};

// "TERM", "SIGTERM", "term" or "15".
Result<int> ParseSignal(std::string_view text) {
  int number = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (ec == std::errc() && ptr == text.data() + text.size()) {
    if (number > 0 && number < NSIG) return number;
  } else {
    std::string name(text);
    for (auto& c : name) c = static_cast<char>(toupper(static_cast<unsigned char>(c)));
    if (name.starts_with("SIG")) name = name.substr(3);
    for (int sig = 1; sig < NSIG; ++sig) {
      const char* abbrev = sigabbrev_np(sig);
      if (abbrev != nullptr && name == abbrev) return sig;
    }
  }
  return Fail(ErrorKind::kInvalidArgument,
              "unknown signal '" + std::string(text) + "' (try TERM, INT, KILL or a number)");
}

int Kill(const Globals& globals, const KillOptions& opts) {
  auto sig = ParseSignal(opts.signal);
  if (!sig) return ReportError("kill", sig.error());
  proto::Request req;
  req.mutable_kill()->set_name(opts.name);
  req.mutable_kill()->set_signal(*sig);
  auto r = Call(globals, req);
  if (!r) return ReportError("kill", r.error());
  return kExitOk;
}

}  // namespace

Command RegisterKill(CLI::App& app, const Globals& globals) {
  auto opts = std::make_shared<KillOptions>();
  auto* sub =
      app.add_subcommand("kill", "Send a signal to a job (default TERM; KILL ends its whole tree)");
  sub->add_option("-s,--signal", opts->signal, "signal name or number");
  sub->add_option("name", opts->name, "the job")->required();
  return [&globals, opts] { return Kill(globals, *opts); };
}

}  // namespace cryo::cli
