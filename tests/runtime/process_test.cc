// SPDX-License-Identifier: Apache-2.0
#include "cryo/process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "cryo/cgroup.h"
#include "cryo/file_util.h"
#include "temp_dir.h"

namespace cryo {
namespace {

// Reaps `pid` and returns its wait status.
int Reap(pid_t pid) {
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  return status;
}

// Runs `argv` with its stdout on a pipe and returns what it wrote.
std::string RunForOutput(std::vector<std::string> argv) {
  auto pipe = MakePipe();
  EXPECT_TRUE(pipe.has_value());
  if (!pipe) return "";
  auto& [r, w] = *pipe;
  std::string path = argv[0];
  auto child = Spawn({.path = path, .argv = std::move(argv), .fds = {{1, w.get()}}});
  EXPECT_TRUE(child.has_value()) << child.error().ToString();
  if (!child) return "";
  w.reset();  // the child holds the only write end now
  auto out = ReadToEnd(r.get());
  EXPECT_TRUE(out.has_value()) << out.error().ToString();
  int status = Reap(child->pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  return out.value_or("");
}

TEST(ProcessStartTimeTest, IsStableForOneProcess) {
  auto first = ProcessStartTime(::getpid());
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  auto second = ProcessStartTime(::getpid());
  ASSERT_TRUE(second.has_value()) << second.error().ToString();
  EXPECT_EQ(*first, *second);
  EXPECT_GT(*first, 0u);
}

TEST(ProcessStartTimeTest, MissingProcessIsNotFound) {
  auto r = ProcessStartTime(0x3fffffff);  // above any pid_max
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kNotFound);
}

TEST(OpenPidFdTest, OpensProcessWithMatchingStartTime) {
  auto started = ProcessStartTime(::getpid());
  ASSERT_TRUE(started.has_value()) << started.error().ToString();
  auto fd = OpenPidFd(::getpid(), *started);
  ASSERT_TRUE(fd.has_value()) << fd.error().ToString();
  EXPECT_TRUE(fd->valid());
  EXPECT_TRUE(SignalPidFd(fd->get(), 0).has_value());
}

TEST(OpenPidFdTest, WrongStartTimeIsNotFound) {
  auto started = ProcessStartTime(::getpid());
  ASSERT_TRUE(started.has_value()) << started.error().ToString();
  auto fd = OpenPidFd(::getpid(), *started + 1);
  ASSERT_FALSE(fd.has_value());
  EXPECT_EQ(fd.error().kind(), ErrorKind::kNotFound);
}

TEST(OpenPidFdTest, ReapedProcessIsNotFound) {
  auto child = Spawn({.path = "/bin/true", .argv = {"true"}});
  ASSERT_TRUE(child.has_value()) << child.error().ToString();
  auto started = ProcessStartTime(child->pid);
  ASSERT_TRUE(started.has_value()) << started.error().ToString();
  Reap(child->pid);
  auto fd = OpenPidFd(child->pid, *started);
  ASSERT_FALSE(fd.has_value());
  EXPECT_EQ(fd.error().kind(), ErrorKind::kNotFound);
}

TEST(SpawnTest, RunsProgramToSuccess) {
  auto child = Spawn({.path = "/bin/true", .argv = {"true"}});
  ASSERT_TRUE(child.has_value()) << child.error().ToString();
  EXPECT_GT(child->pid, 0);
  EXPECT_TRUE(child->pidfd.valid());
  int status = Reap(child->pid);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(SpawnTest, ReportsExitStatus) {
  auto child = Spawn({.path = "/bin/false", .argv = {"false"}});
  ASSERT_TRUE(child.has_value()) << child.error().ToString();
  int status = Reap(child->pid);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 1);
}

TEST(SpawnTest, MissingProgramIsNotFoundNamingThePath) {
  auto child = Spawn({.path = "/no/such/program", .argv = {"program"}});
  ASSERT_FALSE(child.has_value());
  EXPECT_EQ(child.error().kind(), ErrorKind::kNotFound);
  EXPECT_EQ(child.error().sys_errno(), ENOENT);
  EXPECT_NE(child.error().message().find("/no/such/program"), std::string::npos)
      << child.error().message();
}

TEST(SpawnTest, PassesFdAsChildStdout) { EXPECT_EQ(RunForOutput({"/bin/echo", "hi"}), "hi\n"); }

TEST(SpawnTest, ChildGetsExactlyTheGivenEnvironment) {
  EXPECT_EQ(RunForOutput({"/usr/bin/env"}), "");
  auto pipe = MakePipe();
  ASSERT_TRUE(pipe.has_value());
  auto& [r, w] = *pipe;
  auto child = Spawn({.path = "/usr/bin/env",
                      .argv = {"env"},
                      .env = {"A=1", "B=two words"},
                      .fds = {{1, w.get()}}});
  ASSERT_TRUE(child.has_value()) << child.error().ToString();
  w.reset();
  auto out = ReadToEnd(r.get());
  Reap(child->pid);
  ASSERT_TRUE(out.has_value()) << out.error().ToString();
  EXPECT_EQ(*out, "A=1\nB=two words\n");
}

TEST(SpawnTest, ChildStartsWithSignalsUnblockedAndDefault) {
  sigset_t term, old_mask;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ASSERT_EQ(::sigprocmask(SIG_BLOCK, &term, &old_mask), 0);
  struct sigaction ignore {
  }, old_usr1{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGUSR1, &ignore, &old_usr1), 0);

  std::string status = RunForOutput({"/bin/cat", "/proc/self/status"});
  ::sigaction(SIGUSR1, &old_usr1, nullptr);
  ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);

  EXPECT_NE(status.find("SigBlk:\t0000000000000000\n"), std::string::npos) << status;
  EXPECT_NE(status.find("SigIgn:\t0000000000000000\n"), std::string::npos) << status;
}

TEST(SpawnTest, ChildHasOnlyTheGivenFdsEvenInGapsBelowTheHighest) {
  auto pipe = MakePipe();
  ASSERT_TRUE(pipe.has_value());
  auto& [r, w] = *pipe;
  // A parent fd without close-on-exec, and a gap (child fds 0, 2, 3 unset).
  int leaky = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leaky, 0);
  auto child = Spawn({.path = "/bin/sh",
                      .argv = {"sh", "-c",
                               "for f in 0 2 3 5 " + std::to_string(leaky) +
                                   "; do [ -e /proc/self/fd/$f ] && echo open $f; done; "
                                   "[ -e /proc/self/fd/4 ] && echo four; true"},
                      .fds = {{1, w.get()}, {4, w.get()}}});
  ::close(leaky);
  ASSERT_TRUE(child.has_value()) << child.error().ToString();
  w.reset();
  auto out = ReadToEnd(r.get());
  Reap(child->pid);
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(*out, "four\n");
}

TEST(SpawnTest, TooManyFdsIsAnErrorNotASilentDrop) {
  std::vector<std::pair<int, int>> fds;
  for (int i = 0; i < 65; ++i) fds.push_back({i, 1});
  auto child = Spawn({.path = "/bin/true", .argv = {"true"}, .fds = fds});
  ASSERT_FALSE(child.has_value());
  EXPECT_EQ(child.error().kind(), ErrorKind::kInvalidArgument);
}

// Spawns cat into the cgroup `dir` and returns the /proc/self/cgroup it
// printed: where the program the child execs runs.
std::string CgroupSeenBySpawned(const std::string& dir) {
  auto pipe = MakePipe();
  EXPECT_TRUE(pipe.has_value());
  if (!pipe) return "";
  auto& [r, w] = *pipe;
  auto child = Spawn({.path = "/bin/cat",
                      .argv = {"cat", "/proc/self/cgroup"},
                      .fds = {{1, w.get()}},
                      .cgroup_procs = dir + "/cgroup.procs"});
  EXPECT_TRUE(child.has_value()) << child.error().ToString();
  if (!child) return "";
  w.reset();
  auto out = ReadToEnd(r.get());
  EXPECT_EQ(Reap(child->pid), 0);
  return out.value_or("");
}

TEST(SpawnTest, ChildRunsInTheJobCgroupFromItsStart) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to make a cgroup";
  auto cgroup = Cgroup::Create("spawn-test-" + std::to_string(::getpid()));
  ASSERT_TRUE(cgroup.has_value()) << cgroup.error().ToString();
  std::string leaf = cgroup->path().substr(cgroup->path().rfind('/'));
  std::string seen = CgroupSeenBySpawned(cgroup->path());
  EXPECT_NE(seen.find(leaf + "\n"), std::string::npos) << seen;
}

// In a cgroup2 hierarchy the child is born there (CLONE_INTO_CGROUP); the
// job cgroups of a machine with the v1 freezer are not, so this makes one.
TEST(SpawnTest, ChildIsBornIntoACgroup2Cgroup) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to make a cgroup";
  std::string root;
  for (const char* r : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
    if (::access((std::string(r) + "/cgroup.controllers").c_str(), F_OK) == 0) root = r;
  }
  if (root.empty()) GTEST_SKIP() << "no cgroup2 hierarchy mounted";
  std::string name = "cryo-spawn-test-" + std::to_string(::getpid());
  std::string dir = root + "/" + name;
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0) << std::strerror(errno);
  std::string seen = CgroupSeenBySpawned(dir);
  EXPECT_NE(seen.find("0::/" + name + "\n"), std::string::npos) << seen;
  EXPECT_EQ(::rmdir(dir.c_str()), 0) << std::strerror(errno);
}

TEST(SpawnTest, ACgroupThatCannotBeJoinedIsAnError) {
  TempDir dir;
  auto child =
      Spawn({.path = "/bin/true", .argv = {"true"}, .cgroup_procs = dir.path() + "/cgroup.procs"});
  ASSERT_FALSE(child.has_value());
  EXPECT_NE(child.error().message().find("/bin/true"), std::string::npos)
      << child.error().message();
}

TEST(ChildPidsTest, ListsSpawnedChild) {
  auto child = Spawn({.path = "/bin/sleep", .argv = {"sleep", "5"}});
  ASSERT_TRUE(child.has_value()) << child.error().ToString();
  auto children = ChildPids(::getpid());
  EXPECT_TRUE(SignalPidFd(child->pidfd.get(), SIGKILL).has_value());
  int status = Reap(child->pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;

  ASSERT_TRUE(children.has_value()) << children.error().ToString();
  EXPECT_NE(std::find(children->begin(), children->end(), child->pid), children->end());
}

}  // namespace
}  // namespace cryo
