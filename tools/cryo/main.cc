// SPDX-License-Identifier: Apache-2.0
// cryo: the command line of cryo. One file per subcommand; this table is
// the whole list.
#include <CLI/CLI.hpp>
#include <iostream>

#include "client.h"

namespace cryo::cli {
namespace {

constexpr Registrar kCommands[] = {
    RegisterRun,    RegisterPs,           RegisterLogs,    RegisterKill,
    RegisterRm,     RegisterCheckpoint,   RegisterRestore, RegisterCheckpoints,
    RegisterVerify, RegisterRmCheckpoint, RegisterGc,
};

int RealMain(int argc, char** argv) {
  CLI::App app{"cryo: checkpoint and restore unmodified Linux programs"};
  app.require_subcommand(1);
  Globals globals;
  app.add_option("--socket", globals.socket,
                 "cryod's socket (default $CRYO_SOCKET or /run/cryo/cryod.sock)");
  std::vector<std::pair<CLI::App*, Command>> commands;
  for (Registrar reg : kCommands) {
    size_t before = app.get_subcommands({}).size();
    Command run = reg(app, globals);
    commands.emplace_back(app.get_subcommands({})[before], std::move(run));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  for (auto& [sub, run] : commands) {
    if (sub->parsed()) return run();
  }
  return kExitUsage;
}

}  // namespace
}  // namespace cryo::cli

int main(int argc, char** argv) { return cryo::cli::RealMain(argc, argv); }
