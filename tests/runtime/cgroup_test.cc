// SPDX-License-Identifier: Apache-2.0
// FreezeForDump against the real freezer, with real vfork() children.
#include "cryo/cgroup.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>

#include "cryo/file_util.h"

namespace cryo {
namespace {

using std::chrono::milliseconds;

// The child of a vfork() shares our memory: only system calls in it. It
// says it is there on `ready`, sleeps `pause_ms` and execs /bin/true.
[[noreturn]] void __attribute__((noinline)) VforkAndWait(int ready, long pause_ms) {
  pid_t pid = vfork();
  if (pid == 0) {
    (void)!::write(ready, "v", 1);
    struct timespec pause = {pause_ms / 1000, (pause_ms % 1000) * 1000000};
    ::nanosleep(&pause, nullptr);
    ::execl("/bin/true", "true", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  if (pid > 0) ::waitpid(pid, nullptr, 0);
  for (;;) ::pause();
}

// A process in a cgroup of its own; with `vfork_pause_ms` >= 0 it vforks a
// child that waits that long before its exec, and the constructor returns
// once that child is there. Kills everything on destruction.
class Job {
 public:
  explicit Job(long vfork_pause_ms) {
    static int count = 0;
    auto cgroup =
        Cgroup::Create("unit-" + std::to_string(::getpid()) + "-" + std::to_string(count++));
    if (!cgroup) {
      ADD_FAILURE() << cgroup.error().ToString();
      return;
    }
    cgroup_ = std::move(*cgroup);
    int ready[2];
    if (::pipe(ready) != 0) return;
    std::string procs = cgroup_->procs_file();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(ready[0]);
      int fd = ::open(procs.c_str(), O_WRONLY);
      if (fd < 0 || ::write(fd, "0", 1) != 1) ::_exit(1);
      ::close(fd);
      if (vfork_pause_ms >= 0) VforkAndWait(ready[1], vfork_pause_ms);
      (void)!::write(ready[1], "r", 1);
      for (;;) ::pause();
    }
    ::close(ready[1]);
    char c = 0;
    EXPECT_EQ(::read(ready[0], &c, 1), 1) << "the job did not start";
    ::close(ready[0]);
  }
  ~Job() {
    if (cgroup_) (void)cgroup_->KillAndRemove();
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }
  const std::string& path() const { return cgroup_->path(); }
  pid_t pid() const { return pid_; }
  bool frozen() const { return cgroup_ && cgroup_->IsFrozen().value_or(false); }
  bool fully_frozen() const { return cgroup_ && cgroup_->IsFullyFrozen().value_or(false); }

 private:
  std::optional<Cgroup> cgroup_;
  pid_t pid_ = -1;
};

bool IsRoot() { return ::geteuid() == 0; }

TEST(FreezeForDumpTest, FreezesAJobWithoutVforkAtOnce) {
  if (!IsRoot()) GTEST_SKIP() << "needs root for the freezer";
  Job job(-1);
  auto took = FreezeForDump(job.path(), milliseconds(5000));
  ASSERT_TRUE(took.has_value()) << took.error().ToString();
  EXPECT_TRUE(job.fully_frozen());
  EXPECT_LT(took->count(), 2000);
  ASSERT_TRUE(ThawIfFrozen(job.path()).value_or(false));
  EXPECT_FALSE(job.frozen());
}

TEST(FreezeForDumpTest, WaitsUntilTheVforkChildHasExeced) {
  if (!IsRoot()) GTEST_SKIP() << "needs root for the freezer";
  Job job(600);
  auto took = FreezeForDump(job.path(), milliseconds(5000));
  ASSERT_TRUE(took.has_value()) << took.error().ToString();
  EXPECT_TRUE(job.fully_frozen());
  // It froze only after the child's exec, some 600 ms after it was there.
  EXPECT_GE(took->count(), 300);
  (void)ThawIfFrozen(job.path());
}

TEST(FreezeForDumpTest, GivesUpOnAVforkChildThatDoesNotExecAndLeavesTheJobRunning) {
  if (!IsRoot()) GTEST_SKIP() << "needs root for the freezer";
  Job job(20000);
  auto took = FreezeForDump(job.path(), milliseconds(400));
  ASSERT_FALSE(took.has_value());
  EXPECT_EQ(took.error().kind(), ErrorKind::kUnavailable);
  EXPECT_NE(took.error().message().find("kept sharing one address space"), std::string::npos)
      << took.error().ToString();
  EXPECT_NE(took.error().message().find(std::to_string(job.pid()) + " ("), std::string::npos)
      << "the processes are named: " << took.error().ToString();
  EXPECT_FALSE(job.frozen());
}

TEST(FreezeForDumpTest, NoCgroupIsAnError) {
  auto took = FreezeForDump("/sys/fs/cgroup/no-such-cryo-cgroup", milliseconds(100));
  ASSERT_FALSE(took.has_value());
  EXPECT_EQ(took.error().kind(), ErrorKind::kNotFound);
}

}  // namespace
}  // namespace cryo
