// SPDX-License-Identifier: Apache-2.0
// Jobs under a real cryod: run, ps, logs, kill, rm, ownership, restarts.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "harness.h"

namespace cryo::testing {
namespace {

using std::chrono::seconds;

const As kAlice{4242, 4242, {4242, 5000}};
constexpr uid_t kBobUid = 4343;
const As kBob{kBobUid, kBobUid, {kBobUid}};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Field `n` (1-based) of /proc/PID/stat.
std::string StatField(pid_t pid, int n) {
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  size_t close = stat.rfind(')');
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  for (int i = 3; i <= n; ++i) rest >> field;
  return field;
}

std::string StatusLine(pid_t pid, const std::string& key) {
  std::istringstream in(ReadFile("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(key + ":")) return line.substr(key.size() + 2);
  }
  return "";
}

bool LogsContain(const Cryod& d, const std::string& job, const std::string& text,
                 const As& as = {}) {
  return WaitUntil([&] {
    return d.Cryo({"logs", job}, {.as = as}).out.find(text) != std::string::npos;
  });
}

std::string StateOf(const Cryod& d, const std::string& name) {
  auto j = d.Job(name);
  return j.is_null() ? "absent" : j["state"].get<std::string>();
}

TEST(Jobs, ForegroundRunStreamsOutputAndReturnsExitCode) {
  Cryod d;
  auto r = d.Cryo({"run", "--", "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"});
  EXPECT_EQ(r.exit_code, 7);
  EXPECT_EQ(r.out, "to-stdout\n");
  EXPECT_EQ(r.err, "to-stderr\n");
}

TEST(Jobs, RunPassesEnvironmentWorkingDirectoryAndExtraVariables) {
  Cryod d;
  auto r = d.Cryo({"run", "--env", "EXTRA=given", "--", "sh", "-c", "echo $INHERITED $EXTRA; pwd"},
                  {.env = {"INHERITED=kept"}, .cwd = "/usr/share"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "kept given\n/usr/share\n");
}

TEST(Jobs, JobRunsWithTheCallersUidGidAndSupplementaryGroups) {
  Cryod d;
  auto r = d.Cryo({"run", "--", "sh", "-c", "id -u; id -g; id -G"}, {.as = kAlice, .cwd = "/tmp"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "4242\n4242\n4242 5000\n");
}

TEST(Jobs, DetachedJobAppearsInPsJsonHasLogsAndCanBeKilled) {
  Cryod d;
  auto r = d.Cryo({"run", "-d", "--name", "napper", "--on-sigterm", "forward", "--", "sh", "-c",
                   "echo started; exec sleep 1000"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "napper\n");
  ASSERT_TRUE(LogsContain(d, "napper", "started\n"));

  auto job = d.Job("napper");
  ASSERT_FALSE(job.is_null());
  EXPECT_EQ(job["state"], "running");
  EXPECT_EQ(job["uid"], 0);
  EXPECT_EQ(job["command"], "sh -c echo started; exec sleep 1000");
  pid_t pid = job["pid"];
  ASSERT_GT(pid, 0);
  EXPECT_EQ(ReadFile("/proc/" + std::to_string(pid) + "/comm"), "sleep\n");

  r = d.Cryo({"kill", "napper"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(WaitUntil([&] { return StateOf(d, "napper") == "exited"; }));
  EXPECT_EQ(d.Job("napper")["exit_code"], 128 + SIGTERM);
  EXPECT_TRUE(d.Ps(/*all=*/false).empty()) << "ps without --all lists only live jobs";
}

TEST(Jobs, GeneratedNamesAreUniqueAndDuplicateLiveNamesAreRefused) {
  Cryod d;
  auto a = d.Cryo({"run", "-d", "--", "sleep", "1000"});
  auto b = d.Cryo({"run", "-d", "--", "sleep", "1000"});
  ASSERT_EQ(a.exit_code, 0);
  ASSERT_EQ(b.exit_code, 0);
  EXPECT_NE(a.out, b.out);
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "one", "--", "sleep", "1000"}).exit_code, 0);
  auto dup = d.Cryo({"run", "-d", "--name", "one", "--", "sleep", "1000"});
  EXPECT_EQ(dup.exit_code, 125);
  EXPECT_NE(dup.err.find("already running"), std::string::npos) << dup.err;
}

TEST(Jobs, KillWithSignalReachesTheProgramsOwnHandler) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "h", "--on-sigterm", "forward", "--",
                    TestProgram("term_handler")})
                .exit_code,
            0);
  ASSERT_TRUE(LogsContain(d, "h", "ready"));
  ASSERT_EQ(d.Cryo({"kill", "--signal", "SIGTERM", "h"}).exit_code, 0);
  auto follow = d.Cryo({"logs", "-f", "h"});  // returns when the job has ended
  EXPECT_EQ(follow.out, "ready\nhandler ran\n");
  EXPECT_EQ(d.Job("h")["exit_code"], 0);
}

TEST(Jobs, SignalsSentToForegroundRunAreForwardedToTheJob) {
  Cryod d;
  BackgroundCommand run(
      d.CryoArgv({"run", "--on-sigterm", "forward", "--", TestProgram("term_handler")}),
      d.WithSocket({}));
  ASSERT_TRUE(run.WaitForOutput("ready", seconds(10)));
  run.Signal(SIGTERM);
  auto r = run.Finish(seconds(10));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "ready\nhandler ran\n");
}

TEST(Jobs, JobHasItsOwnPidNamespaceSessionAndCgroup) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "tree", "--", "sh", "-c",
                    "sleep 1000 & sleep 1000 & echo up; wait"})
                .exit_code,
            0);
  ASSERT_TRUE(LogsContain(d, "tree", "up"));
  pid_t pid = d.Job("tree")["pid"];
  pid_t init = std::stoi(StatField(pid, 4));  // ppid

  // The program is pid 2 of a new namespace whose pid 1 is cryo-init.
  EXPECT_EQ(StatusLine(pid, "NSpid"), std::to_string(pid) + "\t2");
  EXPECT_EQ(StatusLine(init, "NSpid"), std::to_string(init) + "\t1");
  EXPECT_EQ(ReadFile("/proc/" + std::to_string(init) + "/comm"), "cryo-init\n");
  // Both are session leaders, without a controlling terminal.
  EXPECT_EQ(StatField(pid, 6), std::to_string(pid));
  EXPECT_EQ(StatField(init, 6), std::to_string(init));
  EXPECT_EQ(StatField(pid, 7), "0");

  // The job's cgroup holds exactly init, the shell and its two children.
  std::string cgroup;
  std::istringstream lines(ReadFile("/proc/" + std::to_string(pid) + "/cgroup"));
  for (std::string line; std::getline(lines, line);) {
    if (line.find(":freezer:") != std::string::npos)
      cgroup = "/sys/fs/cgroup/freezer" + line.substr(line.find(":/") + 1);
    if (line.starts_with("0::") && cgroup.empty() &&
        !std::filesystem::exists("/sys/fs/cgroup/freezer")) {
      cgroup = "/sys/fs/cgroup" + line.substr(3);
    }
  }
  ASSERT_NE(cgroup.find("/cryo/" + d.Job("tree")["id"].get<std::string>()), std::string::npos)
      << cgroup;
  std::set<pid_t> in_cgroup;
  std::istringstream procs(ReadFile(cgroup + "/cgroup.procs"));
  for (pid_t p; procs >> p;) in_cgroup.insert(p);
  std::set<pid_t> tree{init, pid};
  std::istringstream kids(
      ReadFile("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children"));
  for (pid_t p; kids >> p;) tree.insert(p);
  EXPECT_EQ(tree.size(), 4u);
  EXPECT_EQ(in_cgroup, tree);

  ASSERT_EQ(d.Cryo({"kill", "--signal", "KILL", "tree"}).exit_code, 0);
  ASSERT_TRUE(WaitUntil([&] { return StateOf(d, "tree") == "exited"; }));
  EXPECT_TRUE(WaitUntil([&] { return !std::filesystem::exists(cgroup); }))
      << "cgroup left behind: " << cgroup;
  EXPECT_NE(kill(pid, 0), 0) << "the program outlived its job";
}

TEST(Jobs, AnotherUserCanNeitherSeeNorSignalNorReadNorRemoveAJob) {
  Cryod d;
  ASSERT_EQ(
      d.Cryo({"run", "-d", "--name", "alices", "--", "sh", "-c", "echo secret; exec sleep 1000"},
             {.as = kAlice, .cwd = "/tmp"})
          .exit_code,
      0);
  ASSERT_TRUE(LogsContain(d, "alices", "secret", kAlice));
  EXPECT_TRUE(d.Ps(true, kBob).empty());
  for (const auto& cmd : std::vector<std::vector<std::string>>{
           {"logs", "alices"}, {"kill", "alices"}, {"rm", "--force", "alices"}}) {
    auto r = d.Cryo(cmd, {.as = kBob});
    EXPECT_EQ(r.exit_code, 4) << cmd[0] << ": " << r.err;
    EXPECT_NE(r.err.find("belongs to another user"), std::string::npos) << r.err;
    EXPECT_EQ(r.out.find("secret"), std::string::npos);
  }
  // Bob can neither take the name while it runs.
  EXPECT_EQ(d.Cryo({"run", "-d", "--name", "alices", "--", "true"}, {.as = kBob, .cwd = "/tmp"})
                .exit_code,
            125);
  EXPECT_EQ(StateOf(d, "alices"), "running");
  // Alice sees her job, root sees everyone's and may stop it.
  EXPECT_EQ(d.Ps(true, kAlice).size(), 1u);
  EXPECT_EQ(d.Cryo({"kill", "alices"}).exit_code, 0);
  EXPECT_TRUE(WaitUntil([&] { return StateOf(d, "alices") == "exited"; }));
}

TEST(Jobs, RestartedDaemonKeepsItsJobTableAndReadoptsRunningJobs) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "--name", "done", "--", "true"}).exit_code, 0);
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "talker", "--", "sh", "-c",
                    "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.05; done"})
                .exit_code,
            0);
  ASSERT_TRUE(LogsContain(d, "talker", "tick 1\n"));
  pid_t pid = d.Job("talker")["pid"];

  d.Kill9();
  // The job keeps running (and writing) while cryod is away.
  EXPECT_EQ(kill(pid, 0), 0);
  d.Start();

  auto talker = d.Job("talker");
  EXPECT_EQ(talker["state"], "running");
  EXPECT_EQ(talker["pid"], pid);
  EXPECT_EQ(d.Job("done")["state"], "exited");
  std::string before = d.Cryo({"logs", "talker"}).out;
  EXPECT_TRUE(WaitUntil([&] {
    return d.Cryo({"logs", "talker"}).out.size() > before.size();
  })) << "output stopped flowing";
  ASSERT_EQ(d.Cryo({"kill", "--signal", "KILL", "talker"}).exit_code, 0);
  EXPECT_TRUE(WaitUntil([&] { return StateOf(d, "talker") == "exited"; }));
  EXPECT_EQ(d.Job("talker")["exit_code"], 128 + SIGKILL);
}

TEST(Jobs, JobThatEndsWhileDaemonIsDownIsReportedWithItsExitCode) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "brief", "--", TestProgram("term_handler")}).exit_code,
            0);
  ASSERT_TRUE(LogsContain(d, "brief", "ready"));
  pid_t pid = d.Job("brief")["pid"];
  d.Kill9();
  kill(pid, SIGTERM);
  ASSERT_TRUE(WaitUntil([&] { return kill(pid, 0) != 0; }));
  d.Start();
  ASSERT_TRUE(WaitUntil([&] { return StateOf(d, "brief") == "exited"; }));
  EXPECT_EQ(d.Job("brief")["exit_code"], 0);
  EXPECT_EQ(d.Cryo({"logs", "brief"}).out, "ready\nhandler ran\n");
}

// A zombie among `pids`, if any.
bool AnyZombie(const std::vector<pid_t>& pids) {
  for (pid_t p : pids) {
    if (std::filesystem::exists("/proc/" + std::to_string(p)) && StatField(p, 3) == "Z")
      return true;
  }
  return false;
}

TEST(Jobs, OrphansAreReapedAndEndedJobsLeaveNoZombies) {
  Cryod d;
  // Three orphans that end at once, reparented to cryo-init.
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "orphans", "--on-sigterm", "forward", "--", "sh", "-c",
                    "for i in 1 2 3; do (true &); done; echo spawned; exec sleep 1000"})
                .exit_code,
            0);
  ASSERT_TRUE(LogsContain(d, "orphans", "spawned"));
  auto job = d.Job("orphans");
  std::string cgroup =
      ReadFile(d.state_dir() + "/jobs/" + job["id"].get<std::string>() + "/job.json");
  auto record = nlohmann::json::parse(cgroup);
  auto procs_of_job = [&] {
    std::vector<pid_t> pids;
    std::istringstream procs(ReadFile(record["cgroup"].get<std::string>() + "/cgroup.procs"));
    for (pid_t p; procs >> p;) pids.push_back(p);
    return pids;
  };
  EXPECT_TRUE(WaitUntil([&] { return procs_of_job().size() == 2; }))
      << "orphans not reaped by cryo-init";
  EXPECT_FALSE(AnyZombie(procs_of_job()));

  pid_t monitor = record["monitor_pid"];
  ASSERT_EQ(d.Cryo({"kill", "orphans"}).exit_code, 0);
  ASSERT_TRUE(WaitUntil([&] { return StateOf(d, "orphans") == "exited"; }));
  EXPECT_TRUE(WaitUntil([&] {
    return !std::filesystem::exists("/proc/" + std::to_string(monitor));
  })) << "the job's monitor was not reaped by cryod";
}

TEST(Jobs, RemoveForgetsEndedJobsAndRefusesRunningOnesWithoutForce) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "--name", "old", "--", "true"}).exit_code, 0);
  ASSERT_EQ(d.Cryo({"rm", "old"}).exit_code, 0);
  EXPECT_TRUE(d.Job("old").is_null());

  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "busy", "--", "sleep", "1000"}).exit_code, 0);
  auto refused = d.Cryo({"rm", "busy"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("--force"), std::string::npos) << refused.err;
  pid_t pid = d.Job("busy")["pid"];
  ASSERT_EQ(d.Cryo({"rm", "--force", "busy"}).exit_code, 0);
  EXPECT_TRUE(d.Job("busy").is_null());
  EXPECT_TRUE(WaitUntil([&] { return kill(pid, 0) != 0; }));
}

TEST(Jobs, NewRunReplacesAnEndedJobOfTheSameName) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "--name", "again", "--", "echo", "first"}).exit_code, 0);
  ASSERT_EQ(d.Cryo({"run", "--name", "again", "--", "echo", "second"}).exit_code, 0);
  EXPECT_EQ(d.Cryo({"logs", "again"}).out, "second\n");
  EXPECT_EQ(d.Ps().size(), 1u);
}

TEST(Jobs, JobWhoseMonitorVanishesIsReportedLostAndEnded) {
  Cryod d;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "orphaned", "--", "sleep", "1000"}).exit_code, 0);
  pid_t pid = d.Job("orphaned")["pid"];
  auto record = nlohmann::json::parse(ReadFile(
      d.state_dir() + "/jobs/" + d.Job("orphaned")["id"].get<std::string>() + "/job.json"));
  ASSERT_EQ(kill(record["monitor_pid"].get<pid_t>(), SIGKILL), 0);
  EXPECT_TRUE(WaitUntil([&] { return StateOf(d, "orphaned") == "lost"; }))
      << StateOf(d, "orphaned");
  EXPECT_EQ(d.Job("orphaned")["pid"], 0);
  EXPECT_TRUE(WaitUntil([&] { return kill(pid, 0) != 0; }))
      << "an unsupervised job was left running";
}

TEST(Daemon, ClientFindsDaemonThroughSocketFlag) {
  Cryod d;
  auto r = RunCommand({CryoBinary(), "--socket", d.socket(), "run", "--", "echo", "via flag"},
                      {.env = {"CRYO_SOCKET=/nonexistent.sock"}});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "via flag\n");
}

TEST(Daemon, ConfigFileSetsStateDirectoryAndSocket) {
  Cryod scratch;  // only for its directory
  std::string dir = scratch.Scratch() + "/configured";
  std::filesystem::create_directory(dir);
  chmod(dir.c_str(), 0755);
  std::string config = dir + "/cryod.conf";
  std::ofstream(config) << "# a test configuration\nstate_dir = " << dir
                        << "/state\nsocket = " << dir << "/sock\nlog_level = debug\n";
  chmod(config.c_str(), 0644);
  BackgroundCommand cryod({CryodBinary(), "--config", config});
  CommandOptions via_config{.env = {"CRYO_SOCKET=" + dir + "/sock"}};
  ASSERT_TRUE(WaitUntil([&] {
    return RunCommand({CryoBinary(), "ps"}, via_config).exit_code == 0;
  }));
  auto r = RunCommand({CryoBinary(), "run", "--name", "configured", "--", "true"}, via_config);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(dir + "/state/jobs"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/state/store"));
  cryod.Signal(SIGTERM);
  EXPECT_EQ(cryod.Finish(seconds(10)).exit_code, 0);

  // A config file others may write is refused: it names what runs as root.
  chmod(config.c_str(), 0666);
  auto refused = RunCommand({CryodBinary(), "--config", config});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("must be owned by root and writable only by root"), std::string::npos)
      << refused.err;
}

TEST(BadInput, UnknownJobIsNamedInTheError) {
  Cryod d;
  for (const auto& cmd : std::vector<std::vector<std::string>>{
           {"logs", "ghost"}, {"kill", "ghost"}, {"rm", "ghost"}}) {
    auto r = d.Cryo(cmd);
    EXPECT_EQ(r.exit_code, 3) << cmd[0];
    EXPECT_NE(r.err.find("no job named 'ghost'"), std::string::npos) << r.err;
  }
}

TEST(BadInput, MissingProgramIsNamedAndLeavesNoHalfCreatedJob) {
  Cryod d;
  auto r = d.Cryo({"run", "--name", "nope", "--", "no-such-program-xyz", "arg"});
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_NE(r.err.find("no-such-program-xyz"), std::string::npos) << r.err;
  EXPECT_TRUE(d.Ps().empty());
  EXPECT_TRUE(std::filesystem::is_empty(d.state_dir() + "/jobs"));
  for (const char* root : {"/sys/fs/cgroup/freezer/cryo", "/sys/fs/cgroup/cryo"}) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(root, ec)) {
      EXPECT_EQ(e.path().filename().string().find("nope"), std::string::npos);
    }
  }
  // A file that is not executable: 126, like a shell.
  std::string plain = d.state_dir() + "/../not-executable";
  std::ofstream(plain) << "#!/bin/sh\necho ran\n";
  ::chmod(plain.c_str(), 0644);
  auto r2 = d.Cryo({"run", "--", plain});
  EXPECT_EQ(r2.exit_code, 126) << r2.err;
  EXPECT_NE(r2.err.find("not-executable"), std::string::npos) << r2.err;
  EXPECT_EQ(r2.out, "");
  EXPECT_TRUE(d.Ps().empty());
}

TEST(BadInput, BadNamesSignalsAndUsageAreRefusedClearly) {
  Cryod d;
  auto r = d.Cryo({"run", "--name", "bad name!", "--", "true"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_NE(r.err.find("invalid job name"), std::string::npos) << r.err;
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", "s", "--", "sleep", "1000"}).exit_code, 0);
  r = d.Cryo({"kill", "--signal", "NOPE", "s"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown signal 'NOPE'"), std::string::npos) << r.err;
  r = d.Cryo({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  r = d.Cryo({"run", "--env", "NOEQUALS", "--", "true"});
  EXPECT_EQ(r.exit_code, 2);
}

TEST(BadInput, NonUtf8ArgumentsAreRefusedAndTheDaemonSurvives) {
  Cryod d;
  auto r = d.Cryo({"run", "--", "echo", "caf\xe9"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_NE(r.err.find("valid UTF-8"), std::string::npos) << r.err;
  r = d.Cryo({"run", "--env", "BAD=\xff\xfe", "--", "true"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_EQ(d.Cryo({"run", "--", "echo", "caf\xc3\xa9"}).out, "caf\xc3\xa9\n");
}

TEST(BadInput, CliSaysHowToStartCryodWhenNothingAnswers) {
  auto r = RunCommand({CryoBinary(), "ps"}, {.env = {"CRYO_SOCKET=/tmp/no-cryod-here.sock"}});
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_NE(r.err.find("cannot reach cryod at /tmp/no-cryod-here.sock"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("sudo cryod"), std::string::npos) << r.err;
  auto run = RunCommand({CryoBinary(), "run", "--", "true"},
                        {.env = {"CRYO_SOCKET=/tmp/no-cryod-here.sock"}});
  EXPECT_EQ(run.exit_code, 125);
}

TEST(BadInput, SecondDaemonOnTheSameSocketRefusesToStart) {
  Cryod d;
  auto r = RunCommand({CryodBinary(), "--state-dir", d.state_dir() + "2", "--socket", d.socket()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("another cryod is already listening"), std::string::npos) << r.err;
  EXPECT_EQ(d.Cryo({"ps"}).exit_code, 0) << "the first cryod must still answer";
}

}  // namespace
}  // namespace cryo::testing
