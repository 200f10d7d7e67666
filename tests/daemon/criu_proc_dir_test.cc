// SPDX-License-Identifier: Apache-2.0
#include "criu_proc_dir.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ctime>
#include <string>

namespace cryo {
namespace {

// A child process whose working directory is a fresh temporary directory.
class ProcessInTempDir {
 public:
  ProcessInTempDir() {
    char tmpl[] = "/tmp/cryo-procdir-XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    int ready[2];
    EXPECT_EQ(::pipe(ready), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      if (::chdir(dir_.c_str()) != 0) ::_exit(1);
      (void)!::write(ready[1], "x", 1);
      ::pause();
      ::_exit(0);
    }
    char c;
    EXPECT_EQ(::read(ready[0], &c, 1), 1);
    ::close(ready[0]);
    ::close(ready[1]);
  }
  ~ProcessInTempDir() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    std::string rm = "rm -rf " + dir_;
    (void)!::system(rm.c_str());
  }
  pid_t pid() const { return pid_; }
  std::string ProcDir() const { return dir_ + "/proc.crtools"; }

 private:
  std::string dir_;
  pid_t pid_ = -1;
};

void Age(const std::string& path, time_t seconds) {
  timespec t[2] = {{::time(nullptr) - seconds, 0}, {::time(nullptr) - seconds, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), t, 0), 0);
}

TEST(CriuProcDirTest, OnlyAStaleEmptyDirectoryIsRemoved) {
  ProcessInTempDir p;
  const std::string dir = p.ProcDir();
  EXPECT_FALSE(RemoveStaleCriuProcDir(p.pid(), std::chrono::seconds(30))) << "none there";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  EXPECT_FALSE(RemoveStaleCriuProcDir(p.pid(), std::chrono::seconds(30)));
  EXPECT_EQ(::access(dir.c_str(), F_OK), 0) << "one made a moment ago may be a running dump's";
  ASSERT_NO_FATAL_FAILURE(Age(dir, 3600));
  EXPECT_FALSE(RemoveStaleCriuProcDir(999999999, std::chrono::seconds(30))) << "no such task";
  EXPECT_TRUE(RemoveStaleCriuProcDir(p.pid(), std::chrono::seconds(30)));
  EXPECT_NE(::access(dir.c_str(), F_OK), 0);
  // Not empty (or mounted on): left alone.
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(::mkdir((dir + "/inside").c_str(), 0700), 0);
  ASSERT_NO_FATAL_FAILURE(Age(dir, 3600));
  EXPECT_FALSE(RemoveStaleCriuProcDir(p.pid(), std::chrono::seconds(30)));
  EXPECT_EQ(::access(dir.c_str(), F_OK), 0);
}

TEST(CriuProcDirTest, AFileOfThatNameIsNotTouched) {
  ProcessInTempDir p;
  int fd = ::open(p.ProcDir().c_str(), O_CREAT | O_WRONLY, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  ASSERT_NO_FATAL_FAILURE(Age(p.ProcDir(), 3600));
  EXPECT_FALSE(RemoveStaleCriuProcDir(p.pid(), std::chrono::seconds(30)));
  EXPECT_EQ(::access(p.ProcDir().c_str(), F_OK), 0);
}

TEST(CriuProcDirTest, TellsTheCollisionFromOtherDumpFailures) {
  EXPECT_TRUE(IsCriuProcDirCollision(
      Error(ErrorKind::kInternal,
            "criu dump failed\nfrom CRIU's log dump.log:\n  pie: 1: Error "
            "(criu/pie/parasite.c:634): Can't create a directory (-17)\n  pie: 1: Error "
            "(criu/pie/parasite.c:657): Can't get /proc fd")));
  EXPECT_FALSE(IsCriuProcDirCollision(Error(
      ErrorKind::kInternal, "criu dump failed\n  Error (criu/cr-dump.c:1975): Dumping FAILED.")));
  EXPECT_FALSE(IsCriuProcDirCollision(
      Error(ErrorKind::kInternal, "pie: 1: Error: Can't create a directory (-13)")));
}

}  // namespace
}  // namespace cryo
