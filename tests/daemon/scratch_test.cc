// SPDX-License-Identifier: Apache-2.0
#include "scratch.h"

#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "cryo/file_util.h"

namespace cryo {
namespace {

namespace fs = std::filesystem;

constexpr char kTmpfs[] = "/dev/shm";

bool IsTmpfs(const std::string& dir) {
  struct statfs st {};
  return ::statfs(dir.c_str(), &st) == 0 && st.f_type == TMPFS_MAGIC;
}

uint64_t MeminfoBytes(const std::string& field) {
  std::ifstream in("/proc/meminfo");
  std::string name;
  uint64_t kib = 0;
  std::string unit;
  while (in >> name >> kib >> unit) {
    if (name == field + ":") return kib * 1024;
  }
  return 0;
}

mode_t Mode(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// What the code under test may put in memory: the smaller of the tmpfs's
// free space and the available memory less the margin (as scratch.cc).
uint64_t MemoryCapacity() {
  struct statvfs fs {};
  if (::statvfs(kTmpfs, &fs) != 0) return 0;
  uint64_t tmpfs = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  uint64_t margin = std::max<uint64_t>(uint64_t{1} << 30, MeminfoBytes("MemTotal") / 10);
  uint64_t available = MeminfoBytes("MemAvailable");
  uint64_t memory = available > margin ? available - margin : 0;
  uint64_t slack = uint64_t{64} << 20;
  return std::min(memory, tmpfs > slack ? tmpfs - slack : 0);
}

// A disk directory and a record file of their own, removed at the end.
class ScratchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/cryo-scratch-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    if (auto recorded = ReadFileToString(Options().record)) fs::remove_all(*recorded, ec);
    for (const auto& p : made_) fs::remove_all(p, ec);
    fs::remove_all(dir_, ec);
  }
  ScratchSpace::Options Options() const {
    return {.disk_dir = dir_ + "/work", .memory_dir = kTmpfs, .record = dir_ + "/memory-scratch"};
  }
  std::string dir_;
  std::vector<std::string> made_;
};

TEST_F(ScratchTest, SmallImagesGoToAPrivateDirectoryInMemory) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  if (MemoryCapacity() < (uint64_t{64} << 20)) GTEST_SKIP() << "too little memory free";
  auto scratch = ScratchSpace::Create(Options());
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  std::string root = (*scratch)->memory_root();
  ASSERT_TRUE(root.starts_with(std::string(kTmpfs) + "/cryo-")) << root;
  EXPECT_EQ(Mode(root), 0700u);
  EXPECT_EQ(ReadFileToString(Options().record).value_or(""), root);
  std::string path;
  {
    auto work = (*scratch)->Allocate("op1", 1 << 20);
    ASSERT_TRUE(work.has_value()) << work.error().ToString();
    EXPECT_TRUE(work->in_memory());
    path = work->path();
    EXPECT_EQ(path, root + "/op1");
    EXPECT_TRUE(fs::is_directory(work->images()));
    std::ofstream(work->images() + "/pages-1.img") << "secret";
  }
  EXPECT_FALSE(fs::exists(path)) << "a work directory outlived its operation";
  (*scratch)->Close();
  EXPECT_FALSE(fs::exists(root));
  EXPECT_FALSE(fs::exists(Options().record));
}

TEST_F(ScratchTest, ImagesLargerThanMemoryOrOfUnknownSizeGoToDisk) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  auto scratch = ScratchSpace::Create(Options());
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  auto big = (*scratch)->Allocate("big", MeminfoBytes("MemTotal") * 2);
  ASSERT_TRUE(big.has_value()) << big.error().ToString();
  EXPECT_FALSE(big->in_memory());
  EXPECT_EQ(big->path(), dir_ + "/work/big");
  EXPECT_TRUE(fs::is_directory(big->images()));
  auto unknown = (*scratch)->Allocate("unknown", std::nullopt);
  ASSERT_TRUE(unknown.has_value());
  EXPECT_FALSE(unknown->in_memory());
  // Sizes that overflow any sum go to disk, not to memory.
  auto huge = (*scratch)->Allocate("huge", UINT64_MAX - 1, UINT64_MAX - 1);
  ASSERT_TRUE(huge.has_value());
  EXPECT_FALSE(huge->in_memory());
}

TEST_F(ScratchTest, AProcessRestoredBesideItsImagesCountsToo) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  uint64_t cap = MemoryCapacity();
  if (cap < (uint64_t{256} << 20)) GTEST_SKIP() << "too little memory free";
  auto scratch = ScratchSpace::Create(Options());
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  // Images of a quarter of what fits go in alone, not beside a process that
  // takes all of it.
  auto alone = (*scratch)->Allocate("alone", cap / 4);
  ASSERT_TRUE(alone.has_value());
  EXPECT_TRUE(alone->in_memory());
  auto beside = (*scratch)->Allocate("beside", cap / 4, cap);
  ASSERT_TRUE(beside.has_value());
  EXPECT_FALSE(beside->in_memory());
}

TEST_F(ScratchTest, ConcurrentOperationsDoNotCountOnTheSameMemory) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  uint64_t cap = MemoryCapacity();
  if (cap < (uint64_t{256} << 20)) GTEST_SKIP() << "too little memory free";
  auto scratch = ScratchSpace::Create(Options());
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  uint64_t share = cap / 10 * 6;
  {
    auto first = (*scratch)->Allocate("first", share);
    ASSERT_TRUE(first.has_value());
    EXPECT_TRUE(first->in_memory());
    auto second = (*scratch)->Allocate("second", share);
    ASSERT_TRUE(second.has_value());
    EXPECT_FALSE(second->in_memory()) << "both reserved 60% of what fits";
  }
  // Both are over: their reservations are released.
  auto third = (*scratch)->Allocate("third", share);
  ASSERT_TRUE(third.has_value());
  EXPECT_TRUE(third->in_memory());
}

TEST_F(ScratchTest, LeftoversOfADeadDaemonAreRemoved) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  std::string old_root;
  {
    auto dead = ScratchSpace::Create(Options());
    ASSERT_TRUE(dead.has_value());
    old_root = (*dead)->memory_root();
    ASSERT_FALSE(old_root.empty());
    ASSERT_TRUE(MakeDirs(old_root + "/old/images", 0700).has_value());
    std::ofstream(old_root + "/old/images/pages-1.img") << "secret";
    // Destroyed without Close(): as a cryod that died.
  }
  made_.push_back(old_root);
  ASSERT_TRUE(MakeDirs(dir_ + "/work/old-disk/images", 0700).has_value());
  auto scratch = ScratchSpace::Create(Options());
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  EXPECT_FALSE(fs::exists(old_root)) << "secrets left in memory";
  EXPECT_FALSE(fs::exists(dir_ + "/work/old-disk"));
  EXPECT_TRUE(fs::is_directory(dir_ + "/work"));
  EXPECT_NE((*scratch)->memory_root(), old_root);

  // Also when memory scratch is off now.
  std::string second_root = (*scratch)->memory_root();
  auto off = Options();
  off.memory_dir = "";
  auto plain = ScratchSpace::Create(off);
  ASSERT_TRUE(plain.has_value());
  EXPECT_FALSE(fs::exists(second_root));
  EXPECT_EQ((*plain)->memory_root(), "");
}

// The record names something that is no longer our private directory (it
// was replaced by a link, or opened up): cryod must not follow or empty it.
TEST_F(ScratchTest, ARecordedPathThatIsNotOursIsLeftAlone) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  std::string victim = dir_ + "/victim";
  ASSERT_TRUE(MakeDirs(victim, 0700).has_value());
  std::ofstream(victim + "/precious") << "keep";
  std::string link = std::string(kTmpfs) + "/cryo-testlink" + std::to_string(::getpid());
  ASSERT_EQ(::symlink(victim.c_str(), link.c_str()), 0);
  made_.push_back(link);
  ASSERT_TRUE(WriteFileAtomic(Options().record, link).has_value());
  auto scratch = ScratchSpace::Create(Options());
  ASSERT_TRUE(scratch.has_value());
  made_.push_back((*scratch)->memory_root());
  EXPECT_TRUE(fs::exists(victim + "/precious"));
  ::unlink(link.c_str());

  std::string open_dir = std::string(kTmpfs) + "/cryo-testopen" + std::to_string(::getpid());
  ASSERT_EQ(::mkdir(open_dir.c_str(), 0755), 0);
  made_.push_back(open_dir);
  ::chmod(open_dir.c_str(), 0755);
  std::ofstream(open_dir + "/file") << "someone's";
  ASSERT_TRUE(WriteFileAtomic(Options().record, open_dir).has_value());
  auto again = ScratchSpace::Create(Options());
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(fs::exists(open_dir + "/file"));
}

// A tmpfs directory that others could write into without the sticky bit
// would let them replace our directory: not used.
TEST_F(ScratchTest, AMemoryDirectoryOthersCanReplaceThingsInIsNotUsed) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (the directory must be root's)";
  std::string open_dir = std::string(kTmpfs) + "/cryo-testshared" + std::to_string(::getpid());
  ASSERT_EQ(::mkdir(open_dir.c_str(), 0777), 0);
  made_.push_back(open_dir);
  ::chmod(open_dir.c_str(), 0777);
  auto options = Options();
  options.memory_dir = open_dir;
  auto scratch = ScratchSpace::Create(options);
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  EXPECT_EQ((*scratch)->memory_root(), "");
  auto work = (*scratch)->Allocate("op", 4096);
  ASSERT_TRUE(work.has_value());
  EXPECT_FALSE(work->in_memory());
  // With the sticky bit (as /dev/shm) it is fine.
  ::chmod(open_dir.c_str(), 01777);
  auto sticky = ScratchSpace::Create(options);
  ASSERT_TRUE(sticky.has_value());
  EXPECT_TRUE((*sticky)->memory_root().starts_with(open_dir + "/cryo-"));
  (*sticky)->Close();
}

TEST_F(ScratchTest, ADirectoryThatIsNotATmpfsIsNotUsedAsMemory) {
  auto options = Options();
  options.memory_dir = dir_;  // on /tmp's filesystem
  if (IsTmpfs(dir_)) GTEST_SKIP() << dir_ << " is a tmpfs here";
  auto scratch = ScratchSpace::Create(options);
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  EXPECT_EQ((*scratch)->memory_root(), "");
  auto work = (*scratch)->Allocate("op", 4096);
  ASSERT_TRUE(work.has_value());
  EXPECT_FALSE(work->in_memory());
}

TEST(EstimateImageBytes, CountsTheMemoryOfTheProcesses) {
  // This process has touched at least a few MiB (its code, gtest).
  auto one = EstimateImageBytes({::getpid()});
  ASSERT_TRUE(one.has_value());
  EXPECT_GT(*one, uint64_t{16} << 20);
  EXPECT_GT(EstimateImageBytes({::getpid(), ::getpid()}).value_or(0), *one);
  EXPECT_EQ(EstimateImageBytes({}), uint64_t{16} << 20);
  // A process that is gone: the size is unknown.
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  EXPECT_FALSE(EstimateImageBytes({child}).has_value());
}

}  // namespace
}  // namespace cryo
