// SPDX-License-Identifier: Apache-2.0
// The LD_PRELOAD shim under a real cryod and real CRIU: what a SIGTERM does
// to real programs in each --on-sigterm mode, and the cryo.h API through
// its example program. Each test proves its point by what the programs
// print and write, and by the checkpoints cryod lists.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>

#include "harness.h"

namespace cryo::testing {
namespace {

using std::chrono::seconds;

constexpr auto kTimeout = seconds(20);

// A program that counts "tick N" and, when its own SIGTERM handling runs,
// writes "handler ran" to the file named by `argv(marker)`.
struct Program {
  std::vector<std::string> (*argv)(const std::string& marker);
  // How far past the last printed tick a restored program may start: its
  // state moves on between two prints (1 for a plain counter).
  long slack = 1;
};

std::vector<std::string> HandlerArgv(const std::string& marker) {
  return {TestProgram("term_counter"), marker};
}
std::vector<std::string> ThreadsArgv(const std::string& marker) {
  return {TestProgram("term_threads"), marker};
}
std::vector<std::string> SignalfdThreadArgv(const std::string& marker) {
  return {TestProgram("term_signalfd"), marker, "thread"};
}
std::vector<std::string> SignalfdPollArgv(const std::string& marker) {
  return {TestProgram("term_signalfd"), marker, "poll"};
}
std::vector<std::string> PythonArgv(const std::string& marker) {
  return {"python3", "-u", "-c",
          "import signal, sys, time\n"
          "def on_term(signum, frame):\n"
          "    with open(sys.argv[1], 'w') as f:\n"
          "        f.write('handler ran\\n')\n"
          "    print('handler ran')\n"
          "    sys.exit(0)\n"
          "signal.signal(signal.SIGTERM, on_term)\n"
          "n = 0\n"
          "while True:\n"
          // One write per line: print() writes 'tick', ' ', n and '\n'
          // apart, and a checkpoint between them splits a line in two logs.
          "    sys.stdout.write('tick %d\\n' % n)\n"
          "    n += 1\n"
          "    time.sleep(0.02)\n",
          marker};
}
std::vector<std::string> ShellArgv(const std::string& marker) {
  // $0 is the marker file.
  return {"sh", "-c",
          "trap 'echo handler ran > \"$0\"; echo handler ran; exit 0' TERM\n"
          "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.02; done",
          marker};
}

const Program kHandler{HandlerArgv};
const Program kThreads{ThreadsArgv, 5000};
const Program kSignalfdThread{SignalfdThreadArgv};
const Program kSignalfdPoll{SignalfdPollArgv};
const Program kPython{PythonArgv};
const Program kShell{ShellArgv};

// The numbers after `word ` in `text`, in order.
std::vector<long> Numbers(const std::string& text, const std::string& word) {
  std::vector<long> out;
  std::regex re("(^|\n)" + word + " ([0-9]+)");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
       ++it) {
    out.push_back(std::stol((*it)[2]));
  }
  return out;
}

std::string Logs(const Cryod& d, const std::string& job) { return d.Cryo({"logs", job}).out; }

std::vector<long> Ticks(const Cryod& d, const std::string& job) {
  return Numbers(Logs(d, job), "tick");
}

bool WaitForOutput(const Cryod& d, const std::string& job, const std::string& text) {
  return WaitUntil([&] { return Logs(d, job).find(text) != std::string::npos; }, kTimeout);
}

bool WaitForTicks(const Cryod& d, const std::string& job, size_t n) {
  return WaitUntil([&] { return Ticks(d, job).size() > n; }, kTimeout);
}

bool WaitForState(const Cryod& d, const std::string& job, const std::string& state) {
  return WaitUntil(
      [&] {
        auto j = d.Job(job);
        return !j.is_null() && j["state"] == state;
      },
      kTimeout);
}

nlohmann::json Checkpoints(const Cryod& d, const std::string& job) {
  auto j = nlohmann::json::parse(d.Cryo({"checkpoints", "--json", job}).out, nullptr, false);
  return j.is_array() ? j : nlohmann::json::array();
}

std::string Marker(const Cryod& d, const std::string& job) {
  return d.Scratch() + "/" + job + ".handler";
}

std::string ReadFileContents(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void RunJob(const Cryod& d, const std::string& name, const std::string& mode,
            const std::vector<std::string>& argv) {
  std::vector<std::string> args{"run", "-d", "--name", name, "--on-sigterm", mode, "--"};
  args.insert(args.end(), argv.begin(), argv.end());
  auto r = d.Cryo(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(d.Job(name)["on_sigterm"], mode);
}

// Starts `program` as job `name` and waits until it is counting.
void Start(const Cryod& d, const std::string& name, const std::string& mode,
           const Program& program) {
  ASSERT_NO_FATAL_FAILURE(RunJob(d, name, mode, program.argv(Marker(d, name))));
  ASSERT_TRUE(WaitForTicks(d, name, 5)) << Logs(d, name) << d.DaemonLog();
}

void Terminate(const Cryod& d, const std::string& name) {
  auto r = d.Cryo({"kill", "--signal", "TERM", name});
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

// A restored job counts on from where it was: it does not start over
// (first tick at least `before`, the last tick seen before the SIGTERM),
// loses nothing (at most `slack` past `last`, the last tick before the
// checkpoint) and keeps counting.
void ExpectCountsOn(const Cryod& d, const std::string& job, long before, long last, long slack) {
  // The original may have counted on while its checkpoint was stored:
  // wait until the restored job has passed its last tick.
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto t = Ticks(d, job);
        return t.size() >= 3 && t.back() > last;
      },
      kTimeout))
      << Logs(d, job) << d.DaemonLog();
  auto after = Ticks(d, job);
  EXPECT_GE(after.front(), before) << "the program restarted instead of continuing";
  EXPECT_LE(after.front(), last + slack) << "ticks were lost";
  EXPECT_GT(after.back(), last);
}

// --on-sigterm checkpoint: the SIGTERM ends the job as `checkpointed` with
// one checkpoint; the program's own handler never runs, and a restore
// counts on.
void ExpectCheckpointed(const Program& program) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(Start(d, "p", "checkpoint", program));
  long before = Ticks(d, "p").back();
  ASSERT_NO_FATAL_FAILURE(Terminate(d, "p"));
  ASSERT_TRUE(WaitForState(d, "p", "checkpointed")) << d.Job("p").dump() << d.DaemonLog();
  auto list = Checkpoints(d, "p");
  ASSERT_EQ(list.size(), 1u) << list.dump();
  EXPECT_EQ(d.Job("p")["last_checkpoint"], list[0]["id"]);
  EXPECT_EQ(d.Job("p")["notice"], "");
  std::string log = Logs(d, "p");
  EXPECT_EQ(log.find("handler ran"), std::string::npos) << log;
  long last = Numbers(log, "tick").back();

  auto r = d.Cryo({"restore", "-d", "p"});
  ASSERT_EQ(r.exit_code, 0) << r.err << d.DaemonLog();
  ExpectCountsOn(d, "p", before, last, program.slack);
  EXPECT_FALSE(std::filesystem::exists(Marker(d, "p"))) << "the program's SIGTERM handler ran";
  EXPECT_EQ(Logs(d, "p").find("handler ran"), std::string::npos);
  EXPECT_EQ(d.Job("p")["state"], "running");
}

// --on-sigterm checkpoint-and-forward: a checkpoint first, then the
// program's own handler runs (it exits 0); restoring the checkpoint under
// another name resumes the state from before the SIGTERM.
void ExpectCheckpointedThenForwarded(const Program& program) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(Start(d, "p", "checkpoint-and-forward", program));
  long before = Ticks(d, "p").back();
  ASSERT_NO_FATAL_FAILURE(Terminate(d, "p"));
  ASSERT_TRUE(WaitUntil([&] { return std::filesystem::exists(Marker(d, "p")); }, kTimeout))
      << Logs(d, "p") << d.DaemonLog();
  auto list = Checkpoints(d, "p");
  ASSERT_EQ(list.size(), 1u) << "the handler ran before the checkpoint existed: " << list.dump();
  EXPECT_EQ(ReadFileContents(Marker(d, "p")), "handler ran\n");
  ASSERT_TRUE(WaitForState(d, "p", "exited")) << d.Job("p").dump();
  EXPECT_EQ(d.Job("p")["exit_code"], 0);
  std::string log = Logs(d, "p");
  EXPECT_NE(log.find("handler ran"), std::string::npos) << log;
  long last = Numbers(log, "tick").back();

  std::filesystem::remove(Marker(d, "p"));
  auto r = d.Cryo({"restore", "-d", "--name", "copy", list[0]["id"]});
  ASSERT_EQ(r.exit_code, 0) << r.err << d.DaemonLog();
  ExpectCountsOn(d, "copy", before, last, program.slack);
  EXPECT_FALSE(std::filesystem::exists(Marker(d, "p"))) << "the restored copy got the SIGTERM";
}

// --on-sigterm forward: plain SIGTERM, the handler runs, no checkpoint.
void ExpectForwarded(const Program& program) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(Start(d, "p", "forward", program));
  ASSERT_NO_FATAL_FAILURE(Terminate(d, "p"));
  ASSERT_TRUE(WaitForState(d, "p", "exited")) << d.Job("p").dump() << d.DaemonLog();
  EXPECT_EQ(d.Job("p")["exit_code"], 0);
  EXPECT_EQ(ReadFileContents(Marker(d, "p")), "handler ran\n");
  EXPECT_NE(Logs(d, "p").find("handler ran"), std::string::npos);
  EXPECT_EQ(Checkpoints(d, "p").size(), 0u);
}

TEST(Shim, HandlerProgramIsCheckpointedAndItsHandlerNeverRuns) { ExpectCheckpointed(kHandler); }
TEST(Shim, HandlerProgramIsCheckpointedThenItsHandlerRuns) {
  ExpectCheckpointedThenForwarded(kHandler);
}
TEST(Shim, HandlerProgramInForwardModeJustGetsItsSigterm) { ExpectForwarded(kHandler); }

TEST(Shim, ThreadedProgramIsCheckpointedOnceAndItsHandlerNeverRuns) {
  ExpectCheckpointed(kThreads);
}
TEST(Shim, ThreadedProgramIsCheckpointedThenItsHandlerRuns) {
  ExpectCheckpointedThenForwarded(kThreads);
}
TEST(Shim, ThreadedProgramInForwardModeJustGetsItsSigterm) { ExpectForwarded(kThreads); }

TEST(Shim, SignalfdThreadProgramIsCheckpointedAndNeverReadsTheSigterm) {
  ExpectCheckpointed(kSignalfdThread);
}
TEST(Shim, SignalfdPollLoopIsCheckpointedAndKeepsLoopingAfterRestore) {
  ExpectCheckpointed(kSignalfdPoll);
}
TEST(Shim, SignalfdProgramIsCheckpointedThenReadsTheSigterm) {
  ExpectCheckpointedThenForwarded(kSignalfdThread);
}
TEST(Shim, SignalfdPollLoopIsCheckpointedThenReadsTheSigterm) {
  ExpectCheckpointedThenForwarded(kSignalfdPoll);
}
TEST(Shim, SignalfdProgramInForwardModeJustReadsItsSigterm) { ExpectForwarded(kSignalfdThread); }

TEST(Shim, PythonProgramIsCheckpointedAndItsHandlerNeverRuns) { ExpectCheckpointed(kPython); }
TEST(Shim, PythonProgramIsCheckpointedThenItsHandlerRuns) {
  ExpectCheckpointedThenForwarded(kPython);
}
TEST(Shim, PythonProgramInForwardModeJustGetsItsSigterm) { ExpectForwarded(kPython); }

TEST(Shim, ShellTrapIsCheckpointedAndNeverRuns) { ExpectCheckpointed(kShell); }
TEST(Shim, ShellTrapRunsAfterTheCheckpoint) { ExpectCheckpointedThenForwarded(kShell); }
TEST(Shim, ShellTrapInForwardModeJustRuns) { ExpectForwarded(kShell); }

// SIG_IGN is the program's choice not to be stopped by SIGTERM: it keeps
// running and nothing is checkpointed, in every mode and whoever sends it.
TEST(Shim, IgnoredSigtermNeitherStopsNorCheckpoints) {
  Cryod d;
  for (const std::string mode : {"checkpoint", "checkpoint-and-forward", "forward"}) {
    SCOPED_TRACE(mode);
    std::string name = "ign-" + mode;
    ASSERT_NO_FATAL_FAILURE(RunJob(d, name, mode, {TestProgram("term_ignore")}));
    ASSERT_TRUE(WaitForTicks(d, name, 5));
    ASSERT_NO_FATAL_FAILURE(Terminate(d, name));
    pid_t pid = d.Job(name)["pid"];
    ASSERT_EQ(kill(pid, SIGTERM), 0);
    size_t seen = Ticks(d, name).size();
    EXPECT_TRUE(WaitForTicks(d, name, seen + 25)) << "SIGTERM stopped it";
    EXPECT_EQ(d.Job(name)["state"], "running");
    EXPECT_EQ(Checkpoints(d, name).size(), 0u);
  }
}

TEST(Shim, DefaultModeIsCheckpoint) {
  Cryod d;
  auto r = d.Cryo({"run", "-d", "--name", "dflt", "--", TestProgram("counter")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(d.Job("dflt")["on_sigterm"], "checkpoint");
  ASSERT_TRUE(WaitForOutput(d, "dflt", "count 5"));
  pid_t pid = d.Job("dflt")["pid"];
  ASSERT_EQ(kill(pid, SIGTERM), 0);  // kill(2) by anyone, not cryo kill
  ASSERT_TRUE(WaitForState(d, "dflt", "checkpointed")) << d.DaemonLog();
  EXPECT_EQ(Checkpoints(d, "dflt").size(), 1u);
}

// When the checkpoint fails, the program gets its SIGTERM as if cryo were
// not there (here: the default action), and `cryo ps` says why.
TEST(Shim, FailedCheckpointDeliversTheSigtermAndLeavesANotice) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunJob(d, "uring", "checkpoint", {TestProgram("io_uring_holder")}));
  ASSERT_TRUE(WaitForOutput(d, "uring", "ready"));
  ASSERT_NO_FATAL_FAILURE(Terminate(d, "uring"));
  ASSERT_TRUE(WaitForState(d, "uring", "exited")) << d.Job("uring").dump() << d.DaemonLog();
  auto job = d.Job("uring");
  EXPECT_EQ(job["exit_code"], 128 + SIGTERM);
  EXPECT_NE(job["notice"].get<std::string>().find("SIGTERM"), std::string::npos) << job.dump();
  EXPECT_EQ(Checkpoints(d, "uring").size(), 0u);
  auto ps = d.Cryo({"ps", "--all"});
  EXPECT_NE(ps.out.find(job["notice"].get<std::string>()), std::string::npos) << ps.out;
}

// The host pids of the children of `pid`.
std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::string p = std::to_string(pid);
  std::istringstream in(ReadFileContents("/proc/" + p + "/task/" + p + "/children"));
  std::vector<pid_t> out;
  for (pid_t c; in >> c;) out.push_back(c);
  return out;
}

// A SIGTERM to the process group reaches the parent and three exec'd
// children at once: one checkpoint of the whole tree, which restores whole.
TEST(Shim, ProcessGroupSigtermMakesOneCheckpointOfTheTree) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(
      RunJob(d, "tree", "checkpoint", {TestProgram("term_tree"), "3", "sleep", "1000"}));
  ASSERT_TRUE(WaitForTicks(d, "tree", 5));
  pid_t pid = d.Job("tree")["pid"];
  ASSERT_EQ(ChildrenOf(pid).size(), 3u);
  for (pid_t child : ChildrenOf(pid)) {
    EXPECT_NE(ReadFileContents("/proc/" + std::to_string(child) + "/maps").find("libcryo_preload"),
              std::string::npos)
        << "the shim did not survive fork and exec";
  }
  long before = Ticks(d, "tree").back();
  ASSERT_EQ(kill(-getpgid(pid), SIGTERM), 0);
  ASSERT_TRUE(WaitForState(d, "tree", "checkpointed")) << d.Job("tree").dump() << d.DaemonLog();
  EXPECT_EQ(Checkpoints(d, "tree").size(), 1u) << Checkpoints(d, "tree").dump();
  long last = Ticks(d, "tree").back();

  ASSERT_EQ(d.Cryo({"restore", "-d", "tree"}).exit_code, 0) << d.DaemonLog();
  ExpectCountsOn(d, "tree", before, last, 1);
  EXPECT_EQ(ChildrenOf(d.Job("tree")["pid"]).size(), 3u);
  EXPECT_EQ(Checkpoints(d, "tree").size(), 1u);
}

// With checkpoint-and-forward: still one checkpoint, then every process
// gets its SIGTERM (default action) and the job ends.
TEST(Shim, ProcessGroupSigtermIsForwardedToEveryProcessAfterOneCheckpoint) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunJob(d, "tree", "checkpoint-and-forward",
                                 {TestProgram("term_tree"), "3", "sleep", "1000"}));
  ASSERT_TRUE(WaitForTicks(d, "tree", 5));
  pid_t pid = d.Job("tree")["pid"];
  auto children = ChildrenOf(pid);
  ASSERT_EQ(children.size(), 3u);
  ASSERT_EQ(kill(-getpgid(pid), SIGTERM), 0);
  ASSERT_TRUE(WaitForState(d, "tree", "exited")) << d.Job("tree").dump() << d.DaemonLog();
  EXPECT_EQ(d.Job("tree")["exit_code"], 128 + SIGTERM);
  EXPECT_EQ(Checkpoints(d, "tree").size(), 1u);
}

// The example program (preload/examples/cryo_example.c).
std::string Example() { return CRYO_TEST_EXAMPLE; }

// Position of `line` (a whole line) in `log`, npos if absent.
size_t LineAt(const std::string& log, const std::string& line, size_t from = 0) {
  if (from == 0 && log.starts_with(line + "\n")) return 0;
  size_t at = log.find("\n" + line + "\n", from == 0 ? 0 : from - 1);
  return at == std::string::npos ? at : at + 1;
}

// Expects `lines` in `log` in this order, starting at `from`; returns the
// position of the last one.
size_t ExpectInOrder(const std::string& log, const std::vector<std::string>& lines,
                     size_t from = 0) {
  for (const auto& line : lines) {
    size_t at = LineAt(log, line, from);
    EXPECT_NE(at, std::string::npos) << "'" << line << "' missing or out of order in:\n" << log;
    if (at == std::string::npos) return at;
    from = at + 1;
  }
  return from - 1;
}

std::string CheckpointIdIn(const std::string& log, const std::string& pattern) {
  std::smatch m;
  if (!std::regex_search(log, m, std::regex(pattern))) return "";
  return m[1];
}

TEST(Shim, ExampleRunsWithoutCryo) {
  auto r = RunCommand({Example(), "--hold", "200"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "cryo is not active: no checkpoints\nnot holding: Function not implemented\n"
            "critical 0\ncritical 1\nreleasing\n"
            "no checkpoint: Function not implemented\ntick 0\ntick 1\ntick 2\ntick 3\ntick 4\n");
}

// Hooks: before in registration order, after_resume in the original and
// after_restore in a restored copy in reverse order; cryo_checkpoint()
// returns "checkpointed" in the original and "restored" in the copy, with
// the same id.
TEST(Shim, ExampleHooksRunInOrderAcrossCheckpointAndRestore) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunJob(d, "ex", "checkpoint", {Example(), "--forever"}));
  ASSERT_TRUE(WaitForOutput(d, "ex", "taken, continuing")) << Logs(d, "ex") << d.DaemonLog();
  std::string log = Logs(d, "ex");
  std::string id = CheckpointIdIn(log, "checkpoint ([0-9a-f]+) taken, continuing");
  ASSERT_EQ(id.size(), 16u) << log;
  ExpectInOrder(log, {"cryo is active", "releasing", "before A", "before B", "after_resume B",
                      "after_resume A", "checkpoint " + id + " taken, continuing", "tick 0"});
  EXPECT_EQ(log.find("after_restore"), std::string::npos) << log;
  auto list = Checkpoints(d, "ex");
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["id"], id);

  auto r = d.Cryo({"restore", "-d", "--name", "copy", id});
  ASSERT_EQ(r.exit_code, 0) << r.err << d.DaemonLog();
  ASSERT_TRUE(WaitForOutput(d, "copy", "restored from checkpoint " + id))
      << Logs(d, "copy") << d.DaemonLog();
  ASSERT_TRUE(WaitForTicks(d, "copy", 2));
  std::string copy = Logs(d, "copy");
  ExpectInOrder(copy, {"after_restore B", "after_restore A", "restored from checkpoint " + id,
                       "tick 0", "tick 1"});
  EXPECT_EQ(copy.find("after_resume"), std::string::npos) << copy;
  EXPECT_EQ(copy.find("taken, continuing"), std::string::npos) << copy;
  EXPECT_EQ(copy.find("cryo is active"), std::string::npos) << "the copy started over: " << copy;
}

// A `cryo checkpoint --stop` requested while the program holds checkpoints
// off waits for cryo_release(): the before hooks run during the hold, but
// the job is frozen (and stopped) only after the critical section is over,
// and the copy restored from it does not go through it again.
TEST(Shim, HoldDelaysACheckpointUntilRelease) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunJob(d, "hold", "checkpoint",
                                 {Example(), "--hold", "4000", "--no-checkpoint", "--forever"}));
  ASSERT_TRUE(WaitForOutput(d, "hold", "critical 0")) << Logs(d, "hold") << d.DaemonLog();
  auto r = d.Cryo({"checkpoint", "--stop", "--json", "hold"});
  ASSERT_EQ(r.exit_code, 0) << r.err << d.DaemonLog();
  EXPECT_EQ(d.Job("hold")["state"], "checkpointed");
  std::string log = Logs(d, "hold");
  size_t before = ExpectInOrder(log, {"holding", "critical 0", "before A", "before B"});
  // The hooks ran while the critical section was still going on...
  EXPECT_NE(log.find("\ncritical ", before), std::string::npos) << log;
  // ...and the job was frozen only after it ended.
  ExpectInOrder(log, {"critical 39", "releasing"}, before);
  EXPECT_EQ(log.find("after_resume"), std::string::npos) << "a --stop checkpoint ends the job";

  ASSERT_EQ(d.Cryo({"restore", "-d", "hold"}).exit_code, 0) << d.DaemonLog();
  ASSERT_TRUE(WaitForTicks(d, "hold", 3)) << Logs(d, "hold");
  std::string copy = Logs(d, "hold");
  size_t restored = ExpectInOrder(copy, {"after_restore B", "after_restore A"});
  EXPECT_EQ(copy.find("critical", restored), std::string::npos)
      << "the checkpoint was taken inside the critical section:\n"
      << copy;
}

// A program may use the API from its first line, before cryod has read its
// job's start report, which jobs started together make likely (a batch
// launcher): cryod serves such a connection once the job runs, rather than
// refusing it as coming from outside any job.
TEST(Shim, ApiWorksFromTheFirstLineOfJobsStartedTogether) {
  Cryod d;
  constexpr int kJobs = 20;
  auto name = [](int i) { return "early" + std::to_string(i); };
  std::vector<std::unique_ptr<BackgroundCommand>> runs;
  for (int i = 0; i < kJobs; ++i) {
    runs.push_back(std::make_unique<BackgroundCommand>(
        d.CryoArgv({"run", "-d", "--name", name(i), "--", TestProgram("hold_first")}),
        d.WithSocket({})));
  }
  for (auto& run : runs) {
    auto r = run->Finish(std::chrono::seconds(60));
    ASSERT_EQ(r.exit_code, 0) << r.err << d.DaemonLog();
  }
  for (int i = 0; i < kJobs; ++i) {
    ASSERT_TRUE(WaitForState(d, name(i), "exited")) << Logs(d, name(i));
    EXPECT_EQ(Logs(d, name(i)), "hold ok\n") << name(i);
  }
}

// The API connection is an external unix socket of the checkpoint: a
// restore by a different cryod process (the one that checkpointed was
// killed) gives the program a working connection: after_restore hooks run,
// cryo_checkpoint() returns "restored", and a further cryo_checkpoint()
// succeeds.
TEST(Shim, ApiSocketWorksAfterRestoreByARestartedDaemon) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunJob(d, "api", "checkpoint", {Example(), "--forever"}));
  ASSERT_TRUE(WaitForOutput(d, "api", "taken, continuing")) << Logs(d, "api") << d.DaemonLog();
  std::string id = CheckpointIdIn(Logs(d, "api"), "checkpoint ([0-9a-f]+) taken, continuing");
  ASSERT_FALSE(id.empty());
  ASSERT_EQ(d.Cryo({"kill", "--signal", "KILL", "api"}).exit_code, 0);
  ASSERT_TRUE(WaitForState(d, "api", "exited"));

  pid_t old_daemon = d.pid();
  d.Kill9();
  d.Start();
  ASSERT_NE(d.pid(), old_daemon);

  auto r = d.Cryo({"restore", "-d", "--name", "api2", id});
  ASSERT_EQ(r.exit_code, 0) << r.err << d.DaemonLog();
  ASSERT_TRUE(WaitForOutput(d, "api2", "restored from checkpoint " + id))
      << Logs(d, "api2") << d.DaemonLog();
  ExpectInOrder(Logs(d, "api2"),
                {"after_restore B", "after_restore A", "restored from checkpoint " + id});

  ASSERT_EQ(d.Cryo({"kill", "--signal", "USR1", "api2"}).exit_code, 0);
  ASSERT_TRUE(WaitForOutput(d, "api2", "taken, continuing")) << Logs(d, "api2") << d.DaemonLog();
  std::string log = Logs(d, "api2");
  std::string second = CheckpointIdIn(log, "checkpoint ([0-9a-f]+) taken, continuing");
  EXPECT_NE(second, id);
  ExpectInOrder(log, {"restored from checkpoint " + id, "before A", "before B", "after_resume B",
                      "after_resume A", "checkpoint " + second + " taken, continuing"});
  bool listed = false;
  for (const auto& c : Checkpoints(d, "api2")) listed |= c["id"] == second;
  EXPECT_TRUE(listed) << Checkpoints(d, "api2").dump();
}

}  // namespace
}  // namespace cryo::testing
