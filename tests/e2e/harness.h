// SPDX-License-Identifier: Apache-2.0
// End-to-end harness: a real cryod on a temporary socket and state
// directory, driven through the real cryo binary, as root or as other uids.
// Everything a test starts is stopped by pid when the test ends.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace cryo::testing {

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// The credentials a command runs with (root when uid is 0).
struct As {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
};

struct CommandOptions {
  As as;
  std::vector<std::string> env;  // added to (or replacing in) the test's environment
  std::string cwd;
};

// Runs a command to its end, collecting stdout, stderr and the exit code.
CommandResult RunCommand(const std::vector<std::string>& argv, const CommandOptions& options = {});

// A command running in the background, its output in pipes.
class BackgroundCommand {
 public:
  BackgroundCommand(const std::vector<std::string>& argv, const CommandOptions& options = {});
  ~BackgroundCommand();
  pid_t pid() const { return pid_; }
  // Reads stdout until it contains `marker` (true) or `timeout` passes.
  bool WaitForOutput(const std::string& marker, std::chrono::milliseconds timeout);
  void Signal(int sig);
  // Waits for the end and returns everything it printed.
  CommandResult Finish(std::chrono::milliseconds timeout);

 private:
  void Pump(int timeout_ms);
  pid_t pid_ = -1;
  int out_ = -1, err_ = -1;
  CommandResult result_;
};

// Repeats `probe` until it holds or `timeout` passes: for events that can
// only be observed by looking (a line in a log, a process gone).
bool WaitUntil(const std::function<bool()>& probe,
               std::chrono::milliseconds timeout = std::chrono::seconds(10));

// A real cryod, started by the constructor.
class Cryod {
 public:
  // Starts cryod with its own state directory and socket, plus `extra_args`.
  explicit Cryod(std::vector<std::string> extra_args = {});
  ~Cryod();  // kills the jobs it started (by their cgroups), then cryod

  void Start();
  void Kill9();  // kill -9: a crash
  void Stop();   // SIGTERM: an orderly stop
  pid_t pid() const { return pid_; }
  const std::string& socket() const { return socket_; }
  const std::string& state_dir() const { return state_dir_; }
  std::string DaemonLog() const;
  // Where cryod stages images in memory, from its log ("" if off).
  std::string MemoryScratch() const;
  // A directory (0755) that lives as long as this object.
  std::string Scratch() const;

  // Runs `cryo ARGS...` against this daemon.
  CommandResult Cryo(const std::vector<std::string>& args,
                     const CommandOptions& options = {}) const;
  std::vector<std::string> CryoArgv(const std::vector<std::string>& args) const;
  CommandOptions WithSocket(CommandOptions options) const;
  // `cryo ps --json [--all]`, parsed.
  nlohmann::json Ps(bool all = true, const As& as = {}) const;
  // The ps entry of job `name` (null if absent).
  nlohmann::json Job(const std::string& name) const;

 private:
  void KillJobs();
  std::string dir_;
  std::string state_dir_;
  std::string socket_;
  std::vector<std::string> extra_args_;
  pid_t pid_ = -1;
};

// Paths of the binaries under test.
std::string CryoBinary();
std::string CryodBinary();
std::string TestProgram(const std::string& name);
std::string CriuBinary();

}  // namespace cryo::testing
