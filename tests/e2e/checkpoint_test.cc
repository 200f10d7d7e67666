// SPDX-License-Identifier: Apache-2.0
// Checkpoint and restore of real programs under a real cryod and real CRIU:
// each test checkpoints, restores, and proves the state went on (not
// restarted) by what the program prints.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "harness.h"

namespace cryo::testing {
namespace {

using std::chrono::seconds;

const As kAlice{4242, 4242, {4242}};
const As kBob{4343, 4343, {4343}};

// The numbers after `word ` in `text`, in order.
std::vector<long> Numbers(const std::string& text, const std::string& word) {
  std::vector<long> out;
  std::regex re(word + " ([0-9]+)");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
       ++it) {
    out.push_back(std::stol((*it)[1]));
  }
  return out;
}

std::string Logs(const Cryod& d, const std::string& job) { return d.Cryo({"logs", job}).out; }

std::string ReadFileContents(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool WaitForOutput(const Cryod& d, const std::string& job, const std::string& text) {
  return WaitUntil([&] { return Logs(d, job).find(text) != std::string::npos; }, seconds(20));
}

// Waits until `job` has printed more than `n` numbers after `word`.
bool WaitForMore(const Cryod& d, const std::string& job, const std::string& word, size_t n,
                 std::chrono::milliseconds timeout = seconds(20)) {
  return WaitUntil([&] { return Numbers(Logs(d, job), word).size() > n; }, timeout);
}

nlohmann::json CheckpointJson(const Cryod& d, const std::string& job, bool stop = false,
                              const As& as = {}) {
  std::vector<std::string> args{"checkpoint", "--json", job};
  if (stop) args.insert(args.begin() + 1, "--stop");
  auto r = d.Cryo(args, {.as = as});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  return j.is_object() ? j : nlohmann::json(nullptr);
}

std::string StoreDir(const Cryod& d) { return d.state_dir() + "/store"; }

// A checkpoint's manifest, as JSON (read from the store file).
nlohmann::json ManifestJson(const Cryod& d, const std::string& id) {
  std::ifstream in(StoreDir(d) + "/manifests/" + id);
  std::string header;
  std::getline(in, header);
  std::stringstream body;
  body << in.rdbuf();
  return nlohmann::json::parse(body.str());
}

// The chunk hashes a checkpoint's manifest lists.
std::set<std::string> ChunksOf(const Cryod& d, const std::string& id) {
  auto m = ManifestJson(d, id);
  std::set<std::string> out;
  for (const auto& f : m["files"]) {
    for (const auto& c : f["chunks"]) out.insert(c[0].get<std::string>());
  }
  return out;
}

std::string ChunkPath(const Cryod& d, const std::string& hash) {
  return StoreDir(d) + "/chunks/" + hash.substr(0, 2) + "/" + hash;
}

// Restores `ref` detached as `name`; the new job must be running.
void RestoreDetached(const Cryod& d, const std::string& ref, const std::string& name = "") {
  std::vector<std::string> args{"restore", "-d", ref};
  if (!name.empty()) args.insert(args.begin() + 2, {"--name", name});
  auto r = d.Cryo(args);
  ASSERT_EQ(r.exit_code, 0) << r.err << d.DaemonLog();
}

// Checks a restored counter went on from where it was: its first number is
// at most one past the last one seen before (the pipe's unread contents are
// restored too, so a few may repeat), and it keeps counting.
void ExpectContinued(const Cryod& d, const std::string& job, const std::string& word,
                     long last_before) {
  ASSERT_TRUE(WaitForMore(d, job, word, 3)) << Logs(d, job) << d.DaemonLog();
  auto after = Numbers(Logs(d, job), word);
  EXPECT_LE(after.front(), last_before + 1) << "numbers were lost";
  EXPECT_GE(after.front(), last_before - 50) << "the program restarted instead of continuing";
  EXPECT_GT(after.back(), last_before);
}

TEST(Checkpoint, CounterStopsAndContinuesAfterRestore) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "c", "--", TestProgram("counter")}).exit_code, 0);
  ASSERT_TRUE(WaitForMore(d, "c", "count", 10));
  auto ck = CheckpointJson(d, "c", /*stop=*/true);
  ASSERT_FALSE(ck.is_null());
  EXPECT_EQ(ck["job"], "c");
  EXPECT_EQ(ck["id"].get<std::string>().size(), 16u);
  EXPECT_GT(ck["bytes"].get<uint64_t>(), 0u);
  EXPECT_GT(ck["stored_bytes"].get<uint64_t>(), 0u);
  EXPECT_FALSE(ck["created"].get<std::string>().empty());
  for (const char* phase : {"dump", "store", "publish"})
    EXPECT_TRUE(ck["phases_ms"].contains(phase)) << phase;
  EXPECT_EQ(d.Job("c")["state"], "checkpointed");
  long last = Numbers(Logs(d, "c"), "count").back();

  RestoreDetached(d, "c");
  EXPECT_EQ(d.Job("c")["state"], "running");
  EXPECT_EQ(d.Job("c")["restored_from"], ck["id"]);
  ExpectContinued(d, "c", "count", last);
}

TEST(Checkpoint, RunningJobKeepsRunningAndACopyRestoresUnderAnotherName) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "orig", "--", TestProgram("counter")}).exit_code, 0);
  ASSERT_TRUE(WaitForMore(d, "orig", "count", 5));
  auto ck = CheckpointJson(d, "orig");
  ASSERT_FALSE(ck.is_null());
  EXPECT_EQ(d.Job("orig")["state"], "running");
  size_t seen = Numbers(Logs(d, "orig"), "count").size();
  EXPECT_TRUE(WaitForMore(d, "orig", "count", seen + 3))
      << "the original stopped after its checkpoint";

  auto refused = d.Cryo({"restore", "-d", "orig"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("--name"), std::string::npos) << refused.err;

  RestoreDetached(d, ck["id"], "copy");
  EXPECT_EQ(d.Job("orig")["state"], "running");
  EXPECT_EQ(d.Job("copy")["state"], "running");
  ASSERT_TRUE(WaitForMore(d, "copy", "count", 3));
  auto copy = Numbers(Logs(d, "copy"), "count");
  EXPECT_GT(copy.front(), 0) << "the copy started from scratch";
  EXPECT_NE(d.Job("copy")["pid"], d.Job("orig")["pid"]);
}

TEST(Checkpoint, ThreeGenerationsOfCheckpointAndRestore) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "gen", "--", TestProgram("counter")}).exit_code, 0);
  std::vector<std::string> ids;
  for (int generation = 0; generation < 3; ++generation) {
    size_t seen = Numbers(Logs(d, "gen"), "count").size();
    ASSERT_TRUE(WaitForMore(d, "gen", "count", seen + 3));
    auto ck = CheckpointJson(d, "gen", /*stop=*/true);
    ASSERT_FALSE(ck.is_null()) << "generation " << generation;
    ids.push_back(ck["id"]);
    long last = Numbers(Logs(d, "gen"), "count").back();
    RestoreDetached(d, "gen@latest");
    ExpectContinued(d, "gen", "count", last);
  }
  auto list = nlohmann::json::parse(d.Cryo({"checkpoints", "--json", "gen"}).out);
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0]["id"], ids[2]);
  EXPECT_EQ(list[0]["parent"], ids[1]);
  EXPECT_EQ(list[1]["parent"], ids[0]);
  EXPECT_TRUE(list[0]["latest"].get<bool>());
  EXPECT_FALSE(list[1]["latest"].get<bool>());
}

TEST(Checkpoint, MultiThreadedProgramKeepsItsInvariants) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "mt", "--", TestProgram("threads")}).exit_code, 0);
  ASSERT_TRUE(WaitForMore(d, "mt", "total", 5));
  ASSERT_FALSE(CheckpointJson(d, "mt", true).is_null());
  long last = Numbers(Logs(d, "mt"), "total").back();
  RestoreDetached(d, "mt");
  ASSERT_TRUE(WaitForMore(d, "mt", "total", 5));
  auto after = Numbers(Logs(d, "mt"), "total");
  EXPECT_GE(after.front(), last - 100);
  EXPECT_GT(after.back(), last);
  EXPECT_EQ(Logs(d, "mt").find("BROKEN"), std::string::npos);
}

TEST(Checkpoint, ShellPipelineTreeContinues) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "pipe", "--", "sh", "-c",
                    "i=0; while :; do echo n $i; i=$((i+1)); sleep 0.02; done | cat | cat"})
                .exit_code,
            0);
  ASSERT_TRUE(WaitForMore(d, "pipe", "n", 5));
  ASSERT_FALSE(CheckpointJson(d, "pipe", true).is_null());
  long last = Numbers(Logs(d, "pipe"), "n").back();
  RestoreDetached(d, "pipe");
  ExpectContinued(d, "pipe", "n", last);
}

TEST(Checkpoint, PythonInterpreterKeepsItsState) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "py", "--", "python3", "-u", "-c",
                    "import time\nstate = {'n': 0}\nwhile True:\n    state['n'] += 1\n"
                    "    print('py', state['n'])\n    time.sleep(0.02)\n"})
                .exit_code,
            0);
  ASSERT_TRUE(WaitForMore(d, "py", "py", 5));
  ASSERT_FALSE(CheckpointJson(d, "py", true).is_null());
  long last = Numbers(Logs(d, "py"), "py").back();
  RestoreDetached(d, "py");
  ExpectContinued(d, "py", "py", last);
}

TEST(Checkpoint, AttachedRestoreStreamsOutputAndForwardsSignals) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "h", "--on-sigterm", "forward", "--",
                    TestProgram("term_handler")})
                .exit_code,
            0);
  ASSERT_TRUE(WaitForOutput(d, "h", "ready"));
  ASSERT_FALSE(CheckpointJson(d, "h", true).is_null());
  BackgroundCommand restore(d.CryoArgv({"restore", "h"}), d.WithSocket({}));
  ASSERT_TRUE(WaitUntil([&] { return !d.Job("h").is_null() && d.Job("h")["state"] == "running"; }));
  restore.Signal(SIGTERM);
  auto r = restore.Finish(seconds(20));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "handler ran\n");
}

TEST(Checkpoint, CorruptionIsRefusedAndOtherCheckpointsStillRestore) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "v", "--", TestProgram("counter")}).exit_code, 0);
  ASSERT_TRUE(WaitForMore(d, "v", "count", 3));
  auto good = CheckpointJson(d, "v");
  ASSERT_TRUE(WaitForMore(d, "v", "count", 10));
  auto bad = CheckpointJson(d, "v");
  ASSERT_FALSE(good.is_null());
  ASSERT_FALSE(bad.is_null());
  std::string bad_id = bad["id"], good_id = good["id"];
  EXPECT_EQ(d.Cryo({"verify", bad_id}).exit_code, 0);

  std::set<std::string> only_bad;
  auto good_chunks = ChunksOf(d, good_id);
  for (const auto& h : ChunksOf(d, bad_id)) {
    if (!good_chunks.contains(h)) only_bad.insert(h);
  }
  ASSERT_GE(only_bad.size(), 1u);
  std::string victim = ChunkPath(d, *only_bad.begin());
  std::string original;
  {
    std::ifstream in(victim, std::ios::binary);
    original.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto expect_refused = [&](const std::string& what) {
    auto v = d.Cryo({"verify", bad_id});
    EXPECT_NE(v.exit_code, 0) << what;
    EXPECT_NE(v.err.find(only_bad.begin()->substr(0, 12)), std::string::npos)
        << what << ": " << v.err;
    auto r = d.Cryo({"restore", "-d", "--name", "broken", bad_id});
    EXPECT_NE(r.exit_code, 0) << what;
    EXPECT_NE(r.err.find("verify"), std::string::npos) << what << ": " << r.err;
    EXPECT_TRUE(d.Job("broken").is_null()) << what;
  };
  auto rewrite = [&](const std::string& content) {
    std::ofstream(victim, std::ios::binary | std::ios::trunc) << content;
  };
  std::string flipped = original;
  flipped[flipped.size() / 2] ^= 0x01;
  rewrite(flipped);
  expect_refused("a flipped byte");
  rewrite(original.substr(0, original.size() / 2));
  expect_refused("a truncated chunk");
  std::filesystem::remove(victim);
  expect_refused("a deleted chunk");
  rewrite(original);
  EXPECT_EQ(d.Cryo({"verify", bad_id}).exit_code, 0) << "repaired chunk";

  // A modified manifest is refused before anything else is read.
  std::string manifest = StoreDir(d) + "/manifests/" + bad_id;
  std::string text;
  {
    std::ifstream in(manifest, std::ios::binary);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::string tampered = text;
  size_t pos = tampered.find("\"uid\":");
  ASSERT_NE(pos, std::string::npos);
  tampered.replace(pos, 6, "\"uid\": ");
  std::ofstream(manifest, std::ios::binary | std::ios::trunc) << tampered;
  auto v = d.Cryo({"verify", bad_id});
  EXPECT_NE(v.exit_code, 0);
  EXPECT_NE(v.err.find("authentication"), std::string::npos) << v.err;
  auto r = d.Cryo({"restore", "-d", "--name", "broken", bad_id});
  EXPECT_NE(r.exit_code, 0);

  // The other checkpoint is intact and restores.
  EXPECT_EQ(d.Cryo({"verify", good_id}).exit_code, 0);
  RestoreDetached(d, good_id, "from-good");
  ASSERT_TRUE(WaitForMore(d, "from-good", "count", 3));
  EXPECT_GT(Numbers(Logs(d, "from-good"), "count").front(), 0);
}

TEST(Checkpoint, AlmostUnchangedProcessStoresLittleTheSecondTime) {
  Cryod d;
  ASSERT_EQ(
      d.Cryo({"run", "-d", "--name", "big", "--", TestProgram("memory_hog"), "256"}).exit_code, 0);
  ASSERT_TRUE(WaitForOutput(d, "big", "ready"));
  auto first = CheckpointJson(d, "big");
  ASSERT_FALSE(first.is_null());
  EXPECT_GT(first["bytes"].get<uint64_t>(), 256u << 20);
  // Pages appear in the middle of the address space: everything after them
  // moves in the pages image.
  ASSERT_EQ(d.Cryo({"kill", "--signal", "USR1", "big"}).exit_code, 0);
  ASSERT_TRUE(WaitForOutput(d, "big", "grown"));
  auto second = CheckpointJson(d, "big");
  ASSERT_FALSE(second.is_null());
  uint64_t s1 = first["stored_bytes"], s2 = second["stored_bytes"];
  EXPECT_LT(s2 * 10, s1) << "first stored " << s1 << " bytes, second " << s2;
  EXPECT_EQ(d.Cryo({"verify", second["id"]}).exit_code, 0);
}

TEST(Checkpoint, DumpFailureLeavesTheJobRunningAndNothingPublished) {
  Cryod d;
  ASSERT_EQ(
      d.Cryo({"run", "-d", "--name", "uring", "--", TestProgram("io_uring_holder")}).exit_code, 0);
  ASSERT_TRUE(WaitForOutput(d, "uring", "ready"));
  auto r = d.Cryo({"checkpoint", "uring"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("criu dump failed"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("CRIU's log"), std::string::npos)
      << "the message must show CRIU's reasons: " << r.err;
  EXPECT_EQ(r.err.find("RLIMIT_NOFILE"), std::string::npos)
      << "CRIU's harmless rlimit error is not the reason: " << r.err;
  EXPECT_EQ(d.Job("uring")["state"], "running");
  size_t seen = Numbers(Logs(d, "uring"), "alive").size();
  EXPECT_TRUE(WaitForMore(d, "uring", "alive", seen + 3)) << "the job is frozen or dead";
  EXPECT_EQ(d.Cryo({"checkpoints", "--json"}).out, "[]\n");

  // Same with --stop: the job must not be killed.
  r = d.Cryo({"checkpoint", "--stop", "uring"});
  EXPECT_EQ(r.exit_code, 1);
  seen = Numbers(Logs(d, "uring"), "alive").size();
  EXPECT_TRUE(WaitForMore(d, "uring", "alive", seen + 3));
  EXPECT_EQ(d.Job("uring")["state"], "running");
}

// Runs vfork_once as job "v" and has it vfork() a child that execs
// `child_seconds` later; returns once the child is there.
void StartInVfork(const Cryod& d, const std::string& child_seconds) {
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "v", "--", TestProgram("vfork_once"), child_seconds})
                .exit_code,
            0);
  ASSERT_TRUE(WaitForMore(d, "v", "count", 3));
  ASSERT_EQ(d.Cryo({"kill", "-s", "USR1", "v"}).exit_code, 0);
  ASSERT_TRUE(WaitForOutput(d, "v", "vforked"));
}

// A vfork() parent whose child has not exec'd yet is a task CRIU cannot
// seize: a dump that meets one fails after CRIU's 10 s timeout. cryod
// freezes the job only once the child has exec'd, and the checkpoint
// succeeds at the first attempt.
TEST(Checkpoint, AJobInVforkIsCheckpointedOnceTheChildExecs) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(StartInVfork(d, "3"));
  auto ck = CheckpointJson(d, "v");
  ASSERT_FALSE(ck.is_null()) << "CRIU met the vfork: " << d.DaemonLog();
  // The freeze waited for the child (3 s from "vforked"), within the dump.
  EXPECT_GE(ck["phases_ms"]["freeze"].get<int64_t>(), 1000) << ck.dump();
  EXPECT_EQ(d.Job("v")["state"], "running");
  size_t seen = Numbers(Logs(d, "v"), "count").size();
  EXPECT_TRUE(WaitForMore(d, "v", "count", seen + 3)) << "the job is frozen or dead";
  RestoreDetached(d, ck["id"].get<std::string>(), "v-copy");
  EXPECT_TRUE(WaitForMore(d, "v-copy", "count", 3)) << Logs(d, "v-copy");
}

// A vfork() child that does not exec within the freeze timeout: the
// checkpoint fails with a message naming the processes, the job runs on,
// and once the child has exec'd the job checkpoints.
TEST(Checkpoint, AVforkChildThatDoesNotExecFailsClearlyAndTheJobRunsOn) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(StartInVfork(d, "14"));
  auto r = d.Cryo({"checkpoint", "v"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("kept sharing one address space"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("(vfork_once)"), std::string::npos) << "processes not named: " << r.err;
  EXPECT_EQ(d.Job("v")["state"], "running");
  EXPECT_EQ(d.Cryo({"checkpoints", "--json", "v"}).out, "[]\n");
  // The child execs 14 s after "vforked": the parent counts on, not frozen.
  size_t seen = Numbers(Logs(d, "v"), "count").size();
  EXPECT_TRUE(WaitForMore(d, "v", "count", seen + 3, seconds(30))) << "the job is frozen or dead";
  EXPECT_FALSE(CheckpointJson(d, "v").is_null()) << d.DaemonLog();
}

// A shell running commands in a loop is in vfork() a good part of the time
// (dash vforks its children): every checkpoint succeeds, none waits for
// CRIU's timeout.
TEST(Checkpoint, AShellRunningCommandsInALoopCheckpointsEveryTime) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "sh", "--", "/bin/sh", "-c",
                    "i=0; while :; do i=$((i+1)); /bin/true; echo count $i; done"})
                .exit_code,
            0);
  ASSERT_TRUE(WaitForMore(d, "sh", "count", 3));
  for (int i = 0; i < 8; ++i) {
    auto ck = CheckpointJson(d, "sh");
    ASSERT_FALSE(ck.is_null()) << "checkpoint " << i << " failed: " << d.DaemonLog();
    EXPECT_LT(ck["phases_ms"]["freeze"].get<int64_t>(), 5000) << ck.dump();
  }
  size_t seen = Numbers(Logs(d, "sh"), "count").size();
  EXPECT_TRUE(WaitForMore(d, "sh", "count", seen + 3)) << "the job is frozen or dead";
}

TEST(Checkpoint, BadReferencesAndEndedJobsGetClearErrors) {
  Cryod d;
  auto r = d.Cryo({"restore", "nothing-here"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("no checkpoint 'nothing-here'"), std::string::npos) << r.err;
  r = d.Cryo({"verify", "0123456789abcdef"});
  EXPECT_EQ(r.exit_code, 3);
  r = d.Cryo({"restore", "x@yesterday"});
  EXPECT_EQ(r.exit_code, 2);
  ASSERT_EQ(d.Cryo({"run", "--name", "over", "--", "true"}).exit_code, 0);
  r = d.Cryo({"checkpoint", "over"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("not running"), std::string::npos) << r.err;
  r = d.Cryo({"checkpoint", "ghost"});
  EXPECT_EQ(r.exit_code, 3);
}

TEST(Checkpoint, CheckpointsOfOneUserAreInvisibleToAnother) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "roots", "--", "sleep", "1000"}).exit_code, 0);
  auto ck = CheckpointJson(d, "roots");
  ASSERT_FALSE(ck.is_null());
  EXPECT_EQ(nlohmann::json::parse(d.Cryo({"checkpoints", "--json"}, {.as = kBob}).out).size(), 0u);
  EXPECT_EQ(nlohmann::json::parse(d.Cryo({"checkpoints", "--json"}).out).size(), 1u);
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"verify", ck["id"]},
                                             {"verify", "roots@latest"},
                                             {"restore", "-d", "--name", "stolen", ck["id"]},
                                             {"rm-checkpoint", ck["id"]}}) {
    auto r = d.Cryo(args, {.as = kBob});
    EXPECT_EQ(r.exit_code, 3) << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find("no checkpoint"), std::string::npos) << r.err;
  }
  EXPECT_TRUE(d.Job("stolen").is_null());
  EXPECT_EQ(d.Cryo({"checkpoint", "roots"}, {.as = kBob}).exit_code, 4);
  // Store files are root's alone.
  for (const auto& e : std::filesystem::recursive_directory_iterator(StoreDir(d))) {
    struct stat st;
    ASSERT_EQ(stat(e.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 0u) << e.path();
    EXPECT_EQ(st.st_mode & 0777, e.is_directory() ? 0700u : 0600u) << e.path();
  }
}

// CRIU needs CAP_SYS_RESOURCE to read another uid's rlimits; some machines
// (this project's CI VM among them) take it from root. Either the job of a
// non-root user checkpoints and restores with its owner's credentials, or
// cryod refuses up front, says why, and leaves the job running.
TEST(Checkpoint, NonRootJobCheckpointsOrIsRefusedClearly) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "alices", "--", TestProgram("counter")},
                   {.as = kAlice, .cwd = "/tmp"})
                .exit_code,
            0);
  ASSERT_TRUE(WaitForMore(d, "alices", "count", 3));
  auto r = d.Cryo({"checkpoint", "--stop", "--json", "alices"}, {.as = kAlice});
  std::string status = ReadFileContents("/proc/self/status");
  uint64_t caps = std::stoull(status.substr(status.find("CapEff:") + 7), nullptr, 16);
  if ((caps >> 24 & 1) == 0) {  // CAP_SYS_RESOURCE
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("CAP_SYS_RESOURCE"), std::string::npos) << r.err;
    size_t seen = Numbers(Logs(d, "alices"), "count").size();
    EXPECT_TRUE(WaitForMore(d, "alices", "count", seen + 3)) << "the refused job must keep running";
    EXPECT_EQ(d.Job("alices")["state"], "running");
    return;
  }
  ASSERT_EQ(r.exit_code, 0) << r.err;
  long last = Numbers(Logs(d, "alices"), "count").back();
  ASSERT_EQ(d.Cryo({"restore", "-d", "alices"}, {.as = kAlice}).exit_code, 0);
  ExpectContinued(d, "alices", "count", last);
  pid_t pid = d.Job("alices")["pid"];
  EXPECT_NE(ReadFileContents("/proc/" + std::to_string(pid) + "/status").find("Uid:\t4242"),
            std::string::npos);
}

// CRIU's parasite makes "proc.crtools" in the working directory of the
// tree's root task, cryo-init, whose cwd is "/" (daemon/criu_proc_dir.h).
// One left behind by a killed CRIU failed every checkpoint on the machine;
// cryod removes it once it is stale. (Other tests running meanwhile see it
// too: they dump again after a pause, and one of them may remove it first.)
TEST(Checkpoint, ALeftoverCriuProcDirIsRemovedAndTheCheckpointWorks) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "c", "--", TestProgram("counter")}).exit_code, 0);
  ASSERT_TRUE(WaitForMore(d, "c", "count", 3));
  const std::string leftover = "/proc.crtools";
  ASSERT_TRUE(::mkdir(leftover.c_str(), 0700) == 0 || errno == EEXIST);
  timespec hour_ago[2] = {{::time(nullptr) - 3600, 0}, {::time(nullptr) - 3600, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, leftover.c_str(), hour_ago, 0), 0);
  auto r = d.Cryo({"checkpoint", "--stop", "c"});
  bool left = ::access(leftover.c_str(), F_OK) == 0;
  if (left) ::rmdir(leftover.c_str());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(left) << "the leftover is still there";
  long last = Numbers(Logs(d, "c"), "count").back();
  ASSERT_EQ(d.Cryo({"restore", "-d", "c"}).exit_code, 0);
  ExpectContinued(d, "c", "count", last);
}

// Checkpoints at the same moment (as a preemption notice gives every job
// on a machine) collide on that directory now and then; each dumps again
// and none fails.
TEST(Checkpoint, ManyJobsCheckpointedAtOnceAllSucceed) {
  Cryod d;
  const int kJobs = 4;
  for (int j = 0; j < kJobs; ++j) {
    std::string name = "j" + std::to_string(j);
    ASSERT_EQ(d.Cryo({"run", "-d", "--name", name, "--", TestProgram("counter")}).exit_code, 0);
  }
  for (int j = 0; j < kJobs; ++j) ASSERT_TRUE(WaitForMore(d, "j" + std::to_string(j), "count", 2));
  for (int round = 0; round < 5; ++round) {
    std::vector<std::thread> clients;
    std::vector<CommandResult> results(kJobs);
    for (int j = 0; j < kJobs; ++j) {
      clients.emplace_back([&, j] {
        results[j] = d.Cryo({"checkpoint", "j" + std::to_string(j)});
      });
    }
    for (auto& c : clients) c.join();
    for (int j = 0; j < kJobs; ++j) {
      EXPECT_EQ(results[j].exit_code, 0)
          << "round " << round << ", job " << j << ": " << results[j].err;
    }
  }
}

// A tmpfs of its own, mounted for the test's lifetime.
class SmallTmpfs {
 public:
  explicit SmallTmpfs(const std::string& size) {
    char tmpl[] = "/tmp/cryo-tmpfs-XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    path_ = tmpl;
    std::string options = "size=" + size + ",mode=0700";
    mounted_ = ::mount("tmpfs", path_.c_str(), "tmpfs", 0, options.c_str()) == 0;
    EXPECT_TRUE(mounted_) << std::strerror(errno);
  }
  ~SmallTmpfs() {
    if (mounted_) ::umount2(path_.c_str(), MNT_DETACH);
    ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool mounted_ = false;
};

// Memory scratch is chosen from the job's resident memory. A job holding
// 400 MiB in a memfd it never maps has little, but its images hold the
// memfd too: they outgrow a 256 MiB tmpfs. The dump runs again on disk, the
// checkpoint succeeds and restores with the memfd's content.
TEST(Checkpoint, ImagesThatOutgrowMemoryScratchAreDumpedAgainOnDisk) {
  SmallTmpfs shm("256m");  // outlives cryod, which removes its directory in it
  Cryod d({"--memory-scratch", shm.path()});
  ASSERT_EQ(
      d.Cryo({"run", "-d", "--name", "m", "--", TestProgram("memfd_holder"), "400"}).exit_code, 0);
  ASSERT_TRUE(WaitForMore(d, "m", "count", 3));
  auto r = d.Cryo({"checkpoint", "--stop", "m"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string log = d.DaemonLog();
  EXPECT_NE(log.find("memory scratch ran out during the dump"), std::string::npos) << log;
  EXPECT_NE(log.find("scratch=disk"), std::string::npos) << log;
  long last = Numbers(Logs(d, "m"), "count").back();
  ASSERT_EQ(d.Cryo({"restore", "-d", "m"}).exit_code, 0);
  ExpectContinued(d, "m", "count", last);
  ASSERT_EQ(d.Cryo({"kill", "--signal", "USR1", "m"}).exit_code, 0);
  ASSERT_TRUE(WaitUntil([&] {
    std::string out = Logs(d, "m");
    return out.find("intact") != std::string::npos || out.find("BROKEN") != std::string::npos;
  }));
  EXPECT_EQ(Logs(d, "m").find("BROKEN"), std::string::npos) << "the memfd lost its content";
}

TEST(Checkpoint, RemovedCheckpointFallsBackToItsParent) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "r", "--", "sleep", "1000"}).exit_code, 0);
  auto a = CheckpointJson(d, "r");
  auto b = CheckpointJson(d, "r");
  ASSERT_EQ(d.Cryo({"rm-checkpoint", "r@latest"}).exit_code, 0);
  auto list = nlohmann::json::parse(d.Cryo({"checkpoints", "--json"}).out);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["id"], a["id"]);
  EXPECT_TRUE(list[0]["latest"].get<bool>());
  EXPECT_EQ(d.Cryo({"verify", "r@latest"}).exit_code, 0);
  EXPECT_EQ(d.Cryo({"verify", b["id"]}).exit_code, 3);
}

TEST(Checkpoint, DaemonKilledDuringCheckpointsLosesNothingAndLeavesNothingFrozen) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "k", "--", TestProgram("memory_hog"), "64"}).exit_code,
            0);
  ASSERT_TRUE(WaitForOutput(d, "k", "ready"));
  auto first = CheckpointJson(d, "k");
  ASSERT_FALSE(first.is_null());
  // Crash points spread over freeze, dump, store and publish.
  for (int delay_ms : {1, 30, 80, 150, 300}) {
    SCOPED_TRACE("cryod killed after " + std::to_string(delay_ms) + " ms");
    std::string option = delay_ms % 2 ? "--stop" : "--json";
    BackgroundCommand ck(d.CryoArgv({"checkpoint", option, "k"}), d.WithSocket({}));
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));  // where to crash
    d.Kill9();
    ck.Finish(seconds(30));
    d.Start();
    // Once CRIU has given up, the job runs: neither frozen nor killed by a
    // --stop that was never committed.
    std::string cgroup = "/sys/fs/cgroup/freezer/cryo/" + d.Job("k")["id"].get<std::string>();
    EXPECT_TRUE(WaitUntil([&] {
      return d.Job("k")["state"] == "running" &&
             ReadFileContents(cgroup + "/freezer.state").starts_with("THAWED");
    })) << d.Job("k").dump()
        << ReadFileContents(cgroup + "/freezer.state");
    // Every published checkpoint is whole, and `latest` names one of them.
    auto list = nlohmann::json::parse(d.Cryo({"checkpoints", "--json", "k"}).out);
    ASSERT_GE(list.size(), 1u);
    for (const auto& c : list) {
      auto v = d.Cryo({"verify", c["id"]});
      EXPECT_EQ(v.exit_code, 0) << v.err;
    }
    EXPECT_EQ(d.Cryo({"verify", "k@latest"}).exit_code, 0);
    EXPECT_FALSE(std::filesystem::exists(d.state_dir() + "/work") &&
                 !std::filesystem::is_empty(d.state_dir() + "/work"))
        << "scratch space left behind";
    std::string memory = d.MemoryScratch();
    ASSERT_FALSE(memory.empty()) << d.DaemonLog();
    EXPECT_TRUE(std::filesystem::is_empty(memory)) << "scratch space left behind in " << memory;
  }
  RestoreDetached(d, "k@latest", "k-copy");
  auto copy = d.Job("k-copy");
  EXPECT_EQ(copy["state"], "running");
  pid_t pid = copy["pid"];
  EXPECT_EQ(ReadFileContents("/proc/" + std::to_string(pid) + "/comm"), "memory_hog\n");
}

// The pid of a process named `comm` whose parent is `parent` (0 if none).
// Whether `pid` (a child not reaped yet) has ended.
bool Exited(pid_t pid) {
  std::string stat = ReadFileContents("/proc/" + std::to_string(pid) + "/stat");
  size_t paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] == 'Z';
}

pid_t ChildNamed(pid_t parent, const std::string& comm) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream status(entry.path() / "status");
    std::string line, got_comm;
    pid_t ppid = 0;
    while (std::getline(status, line)) {
      if (line.starts_with("Name:\t")) got_comm = line.substr(6);
      if (line.starts_with("PPid:\t")) ppid = std::stoi(line.substr(6));
    }
    if (got_comm == comm && ppid == parent) return std::stoi(name);
  }
  return 0;
}

// CRIU itself dies in the middle of a dump (OOM killer, a bug): the job
// must not stay frozen until cryod restarts, and nothing is published.
TEST(Checkpoint, CriuDyingMidDumpLeavesTheJobRunningAndThawed) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "k", "--", TestProgram("memory_hog"), "512"}).exit_code,
            0);
  ASSERT_TRUE(WaitForOutput(d, "k", "ready"));
  std::string cgroup = "/sys/fs/cgroup/freezer/cryo/" + d.Job("k")["id"].get<std::string>();
  // Catch CRIU while the job is frozen: watch the freezer closely, and once
  // it says FROZEN kill cryod's CRIU child, which is then the dump's (the
  // CRIU that cryod asks for its version first is gone by then). A dump can
  // be over before we look (a loaded machine): then the checkpoint
  // succeeded and we try again.
  bool killed = false;
  size_t completed = 0;  // attempts whose dump was over before we looked
  for (int attempt = 0; attempt < 5 && !killed; ++attempt) {
    BackgroundCommand ck(d.CryoArgv({"checkpoint", "k"}), d.WithSocket({}));
    auto deadline = std::chrono::steady_clock::now() + seconds(20);
    while (std::chrono::steady_clock::now() < deadline && !Exited(ck.pid())) {
      if (!ReadFileContents(cgroup + "/freezer.state").starts_with("FROZEN")) continue;
      if (pid_t criu = ChildNamed(d.pid(), "criu"); criu != 0) {
        killed = kill(criu, SIGKILL) == 0;
        break;
      }
    }
    auto r = ck.Finish(seconds(30));
    if (killed) {
      EXPECT_NE(r.exit_code, 0) << r.out;
    } else if (r.exit_code == 0) {
      ++completed;
    }
  }
  ASSERT_TRUE(killed) << "never caught CRIU with the job frozen";
  EXPECT_TRUE(ReadFileContents(cgroup + "/freezer.state").starts_with("THAWED"))
      << ReadFileContents(cgroup + "/freezer.state") << d.DaemonLog();
  EXPECT_EQ(d.Job("k")["state"], "running");
  // Nothing of the failed checkpoint was published.
  auto list = nlohmann::json::parse(d.Cryo({"checkpoints", "--json", "k"}).out);
  EXPECT_EQ(list.size(), completed) << list.dump();
  // The job is whole: it can be checkpointed again.
  EXPECT_FALSE(CheckpointJson(d, "k").is_null()) << d.DaemonLog();
}

// CRIU dies while a --stop checkpoint is being stored, the job still frozen:
// the checkpoint is durable, so the job must end as --stop asked, not run on
// beside the checkpoint that was meant to be its last.
TEST(Checkpoint, CriuDyingAfterAStopCheckpointIsStoredStillEndsTheJob) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "k", "--", TestProgram("memory_hog"), "512"}).exit_code,
            0);
  ASSERT_TRUE(WaitForOutput(d, "k", "ready"));
  BackgroundCommand ck(d.CryoArgv({"checkpoint", "--stop", "k"}), d.WithSocket({}));
  // cryod logs the end of the dump at CRIU's post-dump notification, before
  // it stores the rest of the images and publishes. (Chunks appear earlier:
  // memory images are stored while CRIU writes them.)
  pid_t criu = 0;
  ASSERT_TRUE(WaitUntil([&] {
    if (d.DaemonLog().find("msg=\"images dumped\"") == std::string::npos) return false;
    return (criu = ChildNamed(d.pid(), "criu")) != 0;
  })) << "never saw the store phase";
  ASSERT_EQ(kill(criu, SIGKILL), 0);
  auto r = ck.Finish(seconds(60));
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err << d.DaemonLog();
  EXPECT_TRUE(WaitUntil([&] { return d.Job("k")["state"] == "checkpointed"; }))
      << d.Job("k").dump();
  EXPECT_EQ(d.Cryo({"verify", "k@latest"}).exit_code, 0);
  RestoreDetached(d, "k");
  EXPECT_EQ(d.Job("k")["state"], "running");
}

// The scratch directory an operation logged ("" if none).
std::string LoggedScratch(const Cryod& d, const std::string& message) {
  std::string log = d.DaemonLog();
  std::smatch m;
  std::string last;
  std::regex re("msg=\"" + message + "\".* scratch=([a-z]+)");
  for (auto it = std::sregex_iterator(log.begin(), log.end(), re); it != std::sregex_iterator();
       ++it) {
    last = (*it)[1];
  }
  return last;
}

// By default images are staged in a private directory in memory, and
// nothing of them stays there.
TEST(Checkpoint, ImagesAreStagedInPrivateMemoryAndRemovedAfterwards) {
  Cryod d;
  std::string memory = d.MemoryScratch();
  ASSERT_TRUE(memory.starts_with("/dev/shm/cryo-")) << d.DaemonLog();
  struct stat st {};
  ASSERT_EQ(::lstat(memory.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  EXPECT_EQ(st.st_uid, 0u);
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "c", "--", TestProgram("counter")}).exit_code, 0);
  ASSERT_TRUE(WaitForMore(d, "c", "count", 10));
  ASSERT_FALSE(CheckpointJson(d, "c", /*stop=*/true).is_null());
  EXPECT_EQ(LoggedScratch(d, "checkpoint stored"), "memory");
  EXPECT_TRUE(std::filesystem::is_empty(memory));
  long last = Numbers(Logs(d, "c"), "count").back();
  RestoreDetached(d, "c");
  EXPECT_EQ(LoggedScratch(d, "job restored"), "memory");
  // The restore read its images from cryod's stream, not from files.
  EXPECT_TRUE(
      std::regex_search(d.DaemonLog(), std::regex("msg=\"job restored\".* images=streamed")))
      << d.DaemonLog();
  EXPECT_TRUE(std::filesystem::is_empty(memory));
  ExpectContinued(d, "c", "count", last);
}

// With memory scratch off (or images too large for memory) they go through
// the state directory on disk, with the same result.
TEST(Checkpoint, WithMemoryScratchOffImagesGoThroughTheDisk) {
  Cryod d({"--memory-scratch", "off"});
  EXPECT_EQ(d.MemoryScratch(), "");
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "c", "--", TestProgram("counter")}).exit_code, 0);
  ASSERT_TRUE(WaitForMore(d, "c", "count", 10));
  ASSERT_FALSE(CheckpointJson(d, "c", /*stop=*/true).is_null());
  EXPECT_EQ(LoggedScratch(d, "checkpoint stored"), "disk");
  long last = Numbers(Logs(d, "c"), "count").back();
  RestoreDetached(d, "c");
  EXPECT_EQ(LoggedScratch(d, "job restored"), "disk");
  ExpectContinued(d, "c", "count", last);
  EXPECT_TRUE(std::filesystem::is_empty(d.state_dir() + "/work"));
}

// Chunks are synced only before the manifest that names them: after a power
// loss, a chunk no checkpoint names yet may be torn, and the next checkpoint
// would reuse it as it is. A cryod that did not stop in order re-reads such
// chunks before it takes requests and removes the torn ones; intact ones
// stay (another cryod sharing the store may be about to name them).
TEST(Checkpoint, TornUnreferencedChunksAreNotReusedAfterAnUncleanStop) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "t", "--", TestProgram("memory_hog"), "32"}).exit_code,
            0);
  ASSERT_TRUE(WaitForOutput(d, "t", "ready"));
  auto first = CheckpointJson(d, "t");
  ASSERT_FALSE(first.is_null());
  std::string first_id = first["id"];
  // What an interrupted checkpoint leaves: chunks no manifest names, one of
  // them torn by the power loss. The job's memory has not changed, so its
  // next checkpoint produces exactly these chunks.
  std::set<std::string> chunks = ChunksOf(d, first_id);
  ASSERT_FALSE(chunks.empty());
  ASSERT_EQ(d.Cryo({"rm-checkpoint", first_id}).exit_code, 0);
  std::string torn, intact;
  for (const auto& hash : chunks) {
    std::string path = ChunkPath(d, hash);
    if (std::filesystem::file_size(path) <= 4096) continue;
    (torn.empty() ? torn : intact) = path;
    if (!intact.empty()) break;
  }
  ASSERT_FALSE(torn.empty());
  ASSERT_FALSE(intact.empty());
  std::filesystem::resize_file(torn, 100);

  d.Kill9();
  d.Start();
  EXPECT_FALSE(std::filesystem::exists(torn)) << d.DaemonLog();
  EXPECT_TRUE(std::filesystem::exists(intact)) << "an intact chunk was removed";
  EXPECT_NE(d.DaemonLog().find("removed_torn=1"), std::string::npos) << d.DaemonLog();
  auto second = CheckpointJson(d, "t");
  ASSERT_FALSE(second.is_null());
  EXPECT_GT(second["stored_bytes"].get<uint64_t>(), 0u) << "nothing stored anew";
  auto v = d.Cryo({"verify", second["id"]});
  EXPECT_EQ(v.exit_code, 0) << v.err;

  // An orderly stop is recorded, and the next start checks nothing.
  std::string stray = ChunkPath(d, std::string(64, 'e'));
  std::filesystem::create_directories(std::filesystem::path(stray).parent_path());
  std::ofstream(stray) << "stray";
  d.Stop();
  EXPECT_TRUE(std::filesystem::exists(d.state_dir() + "/clean-stop"));
  d.Start();
  EXPECT_FALSE(std::filesystem::exists(d.state_dir() + "/clean-stop"));
  EXPECT_TRUE(std::filesystem::exists(stray)) << "a clean start checked the store";
}

TEST(Checkpoint, GarbageCollectionReclaimsOnlyUnreferencedChunks) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "g", "--", TestProgram("counter")}).exit_code, 0);
  ASSERT_TRUE(WaitForMore(d, "g", "count", 3));
  auto a = CheckpointJson(d, "g");
  ASSERT_TRUE(WaitForMore(d, "g", "count", 10));
  auto b = CheckpointJson(d, "g");
  auto count_chunks = [&] {
    size_t n = 0;
    for (const auto& e : std::filesystem::recursive_directory_iterator(StoreDir(d) + "/chunks")) {
      n += e.is_regular_file();
    }
    return n;
  };
  std::set<std::string> only_b;
  auto a_chunks = ChunksOf(d, a["id"]);
  for (const auto& h : ChunksOf(d, b["id"])) {
    if (!a_chunks.contains(h)) only_b.insert(h);
  }
  size_t before = count_chunks();
  EXPECT_EQ(d.Cryo({"gc"}, {.as = kBob}).exit_code, 4) << "gc is root's";
  auto r = d.Cryo({"gc"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(count_chunks(), before) << "gc removed referenced chunks";

  ASSERT_EQ(d.Cryo({"rm-checkpoint", b["id"]}).exit_code, 0);
  r = d.Cryo({"gc"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("removed " + std::to_string(only_b.size()) + " unreferenced"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(count_chunks(), before - only_b.size());
  EXPECT_EQ(d.Cryo({"verify", a["id"]}).exit_code, 0);
  RestoreDetached(d, a["id"], "g-copy");
  EXPECT_TRUE(WaitForMore(d, "g-copy", "count", 3));
}

TEST(Checkpoint, CryodsSharingAStoreNeverRemoveEachOthersChunks) {
  Cryod a;
  // b shares a's store with a key of its own (each state directory has one).
  Cryod b({"--store", "file://" + StoreDir(a)});
  ASSERT_EQ(a.Cryo({"run", "-d", "--name", "s", "--", TestProgram("counter")}).exit_code, 0);
  ASSERT_TRUE(WaitForMore(a, "s", "count", 3));
  auto first = CheckpointJson(a, "s");
  ASSERT_FALSE(first.is_null());
  std::set<std::string> chunks = ChunksOf(a, first["id"]);
  auto all_there = [&] {
    for (const auto& h : chunks) {
      if (!std::filesystem::exists(ChunkPath(a, h))) return false;
    }
    return true;
  };
  // To b, a's manifest is unreadable and a's chunks fail every check.
  auto gc = b.Cryo({"gc"});
  EXPECT_NE(gc.exit_code, 0) << gc.out;
  EXPECT_NE(gc.err.find("key"), std::string::npos) << gc.err;
  EXPECT_TRUE(all_there()) << "gc of another cryod removed chunks";
  // An unclean stop makes b look for torn chunks when it starts again.
  b.Kill9();
  b.Start();
  EXPECT_NE(b.DaemonLog().find("left as they are"), std::string::npos) << b.DaemonLog();
  EXPECT_TRUE(all_there()) << "another cryod took our chunks for torn ones";
  auto v = a.Cryo({"verify", first["id"]});
  EXPECT_EQ(v.exit_code, 0) << v.err;

  // gc waits for a checkpoint, restore or verify of another process (here
  // the test, holding what such a cryod holds) before it removes anything.
  ASSERT_EQ(a.Cryo({"rm-checkpoint", first["id"]}).exit_code, 0);
  int fd = ::open((StoreDir(a) + "/.guard").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_SH), 0);
  BackgroundCommand collecting(a.CryoArgv({"gc"}), a.WithSocket({}));
  std::this_thread::sleep_for(seconds(2));
  EXPECT_TRUE(all_there()) << "gc removed chunks while the store was in use";
  ::close(fd);
  auto done = collecting.Finish(seconds(30));
  EXPECT_EQ(done.exit_code, 0) << done.err;
  EXPECT_FALSE(all_there()) << "gc removed nothing once the store was free";
}

// Pids of live processes whose command line contains every one of `words`.
std::vector<pid_t> ProcessesWith(const std::vector<std::string>& words) {
  std::vector<pid_t> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = ReadFileContents(entry.path() / "cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.empty() || Exited(std::stoi(name))) continue;
    if (std::all_of(words.begin(), words.end(),
                    [&](const std::string& w) { return cmdline.find(w) != std::string::npos; })) {
      out.push_back(std::stoi(name));
    }
  }
  return out;
}

// Asks a restored memory_hog to check its memory byte for byte.
void ExpectMemoryIntact(const Cryod& d, const std::string& job) {
  ASSERT_EQ(d.Cryo({"kill", "--signal", "USR2", job}).exit_code, 0);
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::string logs = Logs(d, job);
        return logs.find("intact") != std::string::npos ||
               logs.find("damaged") != std::string::npos;
      },
      seconds(30)))
      << Logs(d, job);
  std::string logs = Logs(d, job);
  EXPECT_NE(logs.find("intact"), std::string::npos) << logs;
  EXPECT_EQ(logs.find("damaged"), std::string::npos) << logs;
}

// Large memory comes back through userfaultfd (filled by cryod while CRIU
// holds the restored tasks), small memory and --lazy-restore off through the
// image stream: every byte where it was, pages added in the middle of the
// address space included.
TEST(Checkpoint, MemoryComesBackByteForByteThroughUserfaultfdOrTheStream) {
  for (std::string mode : {"auto", "off"}) {
    SCOPED_TRACE("lazy_restore " + mode);
    Cryod d({"--lazy-restore", mode});
    ASSERT_EQ(
        d.Cryo({"run", "-d", "--name", "m", "--", TestProgram("memory_hog"), "256"}).exit_code, 0);
    ASSERT_TRUE(WaitForOutput(d, "m", "ready"));
    ASSERT_EQ(d.Cryo({"kill", "--signal", "USR1", "m"}).exit_code, 0);
    ASSERT_TRUE(WaitForOutput(d, "m", "grown"));
    ASSERT_FALSE(CheckpointJson(d, "m", /*stop=*/true).is_null());
    RestoreDetached(d, "m");
    EXPECT_EQ(d.DaemonLog().find("memory lazily") != std::string::npos, mode == "auto")
        << d.DaemonLog();
    ExpectMemoryIntact(d, "m");
    // The restored job checkpoints and restores again.
    ASSERT_FALSE(CheckpointJson(d, "m", /*stop=*/true).is_null());
    RestoreDetached(d, "m", "m2");
    ExpectMemoryIntact(d, "m2");
  }
}

// cryod asks CRIU whether it can restore lazily as it starts, not during
// the first restore (on a fresh machine that is the restore that matters);
// with --lazy-restore off it does not ask at all.
TEST(Checkpoint, CryodAsksCriuAtStartWhetherLazyPagesWork) {
  auto answered = [](const Cryod& d) {
    std::string log = d.DaemonLog();
    return log.find("through userfaultfd") != std::string::npos ||
           log.find("CRIU cannot restore lazily here") != std::string::npos;
  };
  {
    Cryod d({"--lazy-restore", "auto"});
    EXPECT_TRUE(WaitUntil([&] { return answered(d); }, seconds(10))) << d.DaemonLog();
  }
  Cryod off({"--lazy-restore", "off"});
  ASSERT_EQ(off.Cryo({"ps"}).exit_code, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_FALSE(answered(off)) << off.DaemonLog();
}

// Runs memory_hog ARGS as job `name`, waits until it is ready and
// checkpoints it with --stop. The checkpoint's id ("" on failure).
std::string StoppedMemoryHog(const Cryod& d, const std::string& name,
                             const std::vector<std::string>& args) {
  std::vector<std::string> run{"run", "-d", "--name", name, "--", TestProgram("memory_hog")};
  run.insert(run.end(), args.begin(), args.end());
  EXPECT_EQ(d.Cryo(run).exit_code, 0);
  if (!WaitForOutput(d, name, "ready")) return "";
  auto ck = CheckpointJson(d, name, /*stop=*/true);
  return ck.is_null() ? "" : ck["id"].get<std::string>();
}

// Memory a forked child shares with its parent stays shared after a restore
// only if CRIU restores it: through userfaultfd every process would get its
// own copy. Such a checkpoint is restored the ordinary way.
TEST(Checkpoint, MemorySharedAfterAForkIsNotRestoredThroughUserfaultfd) {
  Cryod d;
  ASSERT_FALSE(StoppedMemoryHog(d, "f", {"128", "random", "1", "fork"}).empty());
  RestoreDetached(d, "f");
  std::string log = d.DaemonLog();
  EXPECT_NE(log.find("processes share much of it"), std::string::npos) << log;
  EXPECT_EQ(log.find("memory lazily"), std::string::npos) << log;
  ExpectMemoryIntact(d, "f");
}

// A chunk of lazily restored memory that fails its check: the restore
// fails naming `cryo verify`, and CRIU, which held the restored tasks while
// their memory was filled, kills them rather than run them with a hole.
TEST(Checkpoint, ACorruptChunkOfLazyMemoryFailsTheRestoreAndRunsNothing) {
  Cryod d;
  std::string id = StoppedMemoryHog(d, "c", {"128", "random"});
  ASSERT_FALSE(id.empty());
  // A chunk in the middle of the pages image: lazy memory, never staged.
  std::string victim;
  auto files = ManifestJson(d, id)["files"];
  for (const auto& f : files) {
    if (f["name"].get<std::string>().starts_with("pages-") && f["chunks"].size() > 16) {
      victim = ChunkPath(d, f["chunks"][f["chunks"].size() / 2][0].get<std::string>());
    }
  }
  ASSERT_FALSE(victim.empty()) << files.dump().substr(0, 2000);
  std::string original = ReadFileContents(victim);
  std::string flipped = original;
  flipped[flipped.size() / 2] ^= 0x01;
  std::ofstream(victim, std::ios::binary | std::ios::trunc) << flipped;

  auto r = d.Cryo({"restore", "-d", "--name", "broken", id});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("verify"), std::string::npos) << r.err;
  EXPECT_TRUE(d.Job("broken").is_null());
  EXPECT_TRUE(WaitUntil(
      [] {
        return ProcessesWith({"memory_hog", "128"}).empty();
      },
      seconds(10)))
      << "a half-restored job is alive";

  std::ofstream(victim, std::ios::binary | std::ios::trunc) << original;
  RestoreDetached(d, id, "repaired");
  ExpectMemoryIntact(d, "repaired");
}

// cryod dies while it fills the restored memory: the monitor, waiting for
// its answer at CRIU's post-restore notification, fails it, and CRIU kills
// the half-filled tasks instead of letting them run with holes. The
// checkpoint restores afterwards.
TEST(Checkpoint, DaemonKilledWhileMemoryIsFilledLeavesNoHalfRestoredJob) {
  Cryod d;
  ASSERT_FALSE(StoppedMemoryHog(d, "k", {"1024", "random"}).empty());
  BackgroundCommand restore(d.CryoArgv({"restore", "-d", "--name", "half", "k"}), d.WithSocket({}));
  // The restored task (the original is gone): it waits in CRIU's restorer
  // until its gigabyte is in.
  ASSERT_TRUE(WaitUntil(
      [&] {
        return !ProcessesWith({"memory_hog", "1024"}).empty();
      },
      seconds(30)));
  d.Kill9();
  auto r = restore.Finish(seconds(30));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(WaitUntil(
      [] {
        return ProcessesWith({"memory_hog", "1024"}).empty();
      },
      seconds(10)))
      << "a half-restored job is alive";
  d.Start();
  EXPECT_TRUE(d.Job("half").is_null() || d.Job("half")["state"] != "running") << d.Job("half");
  RestoreDetached(d, "k", "whole");
  ExpectMemoryIntact(d, "whole");
}

}  // namespace
}  // namespace cryo::testing
