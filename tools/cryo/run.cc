// SPDX-License-Identifier: Apache-2.0
// cryo run [--name NAME] [-d] [--env K=V]... [--on-sigterm MODE] -- PROG ARGS...
#include <elf.h>
#include <unistd.h>

#include <fstream>

#include <filesystem>
#include <iostream>
#include <memory>

#include "client.h"

extern char** environ;

namespace cryo::cli {
namespace {

struct RunOptions {
  std::string name;
  bool detach = false;
  std::vector<std::string> env;
  std::vector<std::string> command;
  std::string on_sigterm = "checkpoint";
};

int RunExitCode(const Error& e) {
  ReportError("run", e);
  if (e.kind() == ErrorKind::kNotFound) return kExitCommandNotFound;
  if (e.kind() == ErrorKind::kPermissionDenied) return kExitCannotExecute;
  return kExitRunFailed;
}

// The job's environment: ours, with --env entries replacing or adding.
std::vector<std::string> JobEnvironment(const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  for (const auto& kv : overrides) {
    std::string key = kv.substr(0, kv.find('=') + 1);
    std::erase_if(env, [&](const std::string& e) { return e.starts_with(key); });
    env.push_back(kv);
  }
  return env;
}

// The file `program` names, looked up in PATH like execvp does ("" if none).
std::string FindProgram(const std::string& program) {
  if (program.find('/') != std::string::npos) return program;
  const char* path = getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string candidate = dirs.substr(start, end - start) + "/" + program;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return "";
}

// Whether `path` is an ELF executable without an interpreter: the dynamic
// loader never runs, so LD_PRELOAD (the shim) cannot apply to it.
bool IsStaticExecutable(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  Elf64_Ehdr header;
  if (!in.read(reinterpret_cast<char*>(&header), sizeof header)) return false;
  if (std::string_view(reinterpret_cast<char*>(header.e_ident), 4) != ELFMAG ||
      header.e_ident[EI_CLASS] != ELFCLASS64) {
    return false;
  }
  for (int i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr ph;
    in.seekg(static_cast<std::streamoff>(header.e_phoff + i * header.e_phentsize));
    if (!in.read(reinterpret_cast<char*>(&ph), sizeof ph)) return false;
    if (ph.p_type == PT_INTERP) return false;
  }
  return true;
}

int Run(const Globals& globals, const RunOptions& opts) {
  for (const auto& kv : opts.env) {
    if (kv.find('=') == std::string::npos || kv[0] == '=') {
      return ReportError(
          "run", Error(ErrorKind::kInvalidArgument, "--env wants KEY=VALUE, not '" + kv + "'"));
    }
  }
  std::error_code ec;
  auto cwd = std::filesystem::current_path(ec);
  if (ec)
    return RunExitCode(Error(ErrorKind::kIo, "cannot read the current directory", ec.value()));
  proto::Request req;
  auto* run = req.mutable_run();
  run->set_name(opts.name);
  for (const auto& a : opts.command) run->add_argv(a);
  for (const auto& e : JobEnvironment(opts.env)) run->add_env(e);
  run->set_cwd(cwd.string());
  run->set_attach(!opts.detach);
  run->set_on_sigterm(opts.on_sigterm);
  if (opts.on_sigterm != "forward") {
    std::string program = FindProgram(opts.command.front());
    if (!program.empty() && IsStaticExecutable(program)) {
      std::cerr << "cryo run: warning: " << program
                << " is statically linked: cryo cannot catch its SIGTERM, which will stop it "
                   "without a checkpoint (checkpoint it with 'cryo checkpoint --stop' instead)\n";
    }
  }

  if (opts.detach) {
    auto r = Call(globals, req);
    if (!r) return RunExitCode(r.error());
    std::cout << r->job().name() << "\n";
    return kExitOk;
  }
  HoldForwardedSignals();
  auto fd = Send(globals, req);
  if (!fd) return RunExitCode(fd.error());
  auto first = Receive(fd->get());
  if (!first) return RunExitCode(first.error());
  if (first->has_error()) return RunExitCode(ErrorFromProto(first->error()));
  return AttachToJob(globals, fd->get(), first->started().job().name(), "run");
}

}  // namespace

Command RegisterRun(CLI::App& app, const Globals& globals) {
  auto opts = std::make_shared<RunOptions>();
  auto* sub = app.add_subcommand("run", "Start a program as a job of cryod (attached unless -d)");
  sub->add_option("--name", opts->name, "job name (unique among live jobs; default: generated)");
  sub->add_flag("-d,--detach", opts->detach, "print the job name and return at once");
  sub->add_option("--env", opts->env, "set KEY=VALUE in the job's environment (repeatable)")
      ->allow_extra_args(false);
  sub->add_option("--on-sigterm", opts->on_sigterm,
                  "what a SIGTERM to the job does: checkpoint (then stop), "
                  "checkpoint-and-forward, or forward")
      ->check(CLI::IsMember({"checkpoint", "checkpoint-and-forward", "forward"}));
  sub->add_option("command", opts->command, "the program and its arguments, after --")->required();
  return [&globals, opts] { return Run(globals, *opts); };
}

}  // namespace cryo::cli
