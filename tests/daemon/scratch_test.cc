// SPDX-License-Identifier: Apache-2.0
#include "scratch.h"

#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
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

std::string RandomTag() {
  std::random_device rd;
  return "test-" + std::to_string(rd()) + std::to_string(rd());
}

mode_t Mode(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// A disk directory and a tag of its own, both removed at the end.
class ScratchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/cryo-scratch-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    tag_ = RandomTag();
    memory_root_ = std::string(kTmpfs) + "/cryo-" + tag_;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    fs::remove_all(memory_root_, ec);
  }
  ScratchSpace::Options Options() const {
    return {.disk_dir = dir_ + "/work", .memory_dir = kTmpfs, .tag = tag_};
  }

  std::string dir_;
  std::string tag_;
  std::string memory_root_;
};

TEST_F(ScratchTest, SmallImagesGoToAPrivateDirectoryInMemory) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  auto scratch = ScratchSpace::Create(Options());
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  ASSERT_EQ((*scratch)->memory_root(), memory_root_);
  EXPECT_EQ(Mode(memory_root_), 0700u);
  std::string path;
  {
    auto work = (*scratch)->Allocate("op1", 1 << 20);
    ASSERT_TRUE(work.has_value()) << work.error().ToString();
    EXPECT_TRUE(work->in_memory());
    path = work->path();
    EXPECT_EQ(path, memory_root_ + "/op1");
    EXPECT_TRUE(fs::is_directory(work->images()));
    std::ofstream(work->images() + "/pages-1.img") << "secret";
  }
  EXPECT_FALSE(fs::exists(path)) << "a work directory outlived its operation";
}

TEST_F(ScratchTest, ImagesLargerThanMemoryGoToDisk) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  auto scratch = ScratchSpace::Create(Options());
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  auto work = (*scratch)->Allocate("big", MeminfoBytes("MemTotal") * 2);
  ASSERT_TRUE(work.has_value()) << work.error().ToString();
  EXPECT_FALSE(work->in_memory());
  EXPECT_EQ(work->path(), dir_ + "/work/big");
  EXPECT_TRUE(fs::is_directory(work->images()));
}

TEST_F(ScratchTest, AProcessRestoredBesideItsImagesCountsToo) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  auto scratch = ScratchSpace::Create(Options());
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  // Images of a third of the available memory fit alone, not beside a
  // process twice that size.
  uint64_t third = MeminfoBytes("MemAvailable") / 3;
  auto alone = (*scratch)->Allocate("alone", third / 2);
  ASSERT_TRUE(alone.has_value());
  EXPECT_TRUE(alone->in_memory());
  auto beside = (*scratch)->Allocate("beside", third, 3 * third);
  ASSERT_TRUE(beside.has_value());
  EXPECT_FALSE(beside->in_memory());
}

TEST_F(ScratchTest, ConcurrentOperationsDoNotCountOnTheSameMemory) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  auto scratch = ScratchSpace::Create(Options());
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  uint64_t share = MeminfoBytes("MemAvailable") * 6 / 10;
  {
    auto first = (*scratch)->Allocate("first", share);
    ASSERT_TRUE(first.has_value());
    EXPECT_TRUE(first->in_memory());
    auto second = (*scratch)->Allocate("second", share);
    ASSERT_TRUE(second.has_value());
    EXPECT_FALSE(second->in_memory()) << "both reserved 60% of the available memory";
  }
  // Both are over: their reservations are released.
  auto third = (*scratch)->Allocate("third", share);
  ASSERT_TRUE(third.has_value());
  EXPECT_TRUE(third->in_memory());
}

TEST_F(ScratchTest, LeftoversOfADeadDaemonAreRemoved) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  ASSERT_EQ(::mkdir(memory_root_.c_str(), 0700), 0);
  ASSERT_TRUE(MakeDirs(memory_root_ + "/old/images", 0700).has_value());
  ASSERT_TRUE(MakeDirs(dir_ + "/work/old-disk/images", 0700).has_value());
  auto scratch = ScratchSpace::Create(Options());
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  EXPECT_EQ((*scratch)->memory_root(), memory_root_);
  EXPECT_FALSE(fs::exists(memory_root_ + "/old"));
  EXPECT_FALSE(fs::exists(dir_ + "/work/old-disk"));
  EXPECT_TRUE(fs::is_directory(dir_ + "/work"));
}

// Someone else made our name in the shared tmpfs first: a directory others
// can enter, or a link elsewhere. Images must not go there.
TEST_F(ScratchTest, AMemoryDirectoryThatIsNotPrivateIsNotUsed) {
  if (!IsTmpfs(kTmpfs)) GTEST_SKIP() << kTmpfs << " is not a tmpfs here";
  ASSERT_EQ(::mkdir(memory_root_.c_str(), 0755), 0);
  ::chmod(memory_root_.c_str(), 0755);
  auto open = ScratchSpace::Create(Options());
  ASSERT_TRUE(open.has_value()) << open.error().ToString();
  EXPECT_EQ((*open)->memory_root(), "");
  auto work = (*open)->Allocate("op", 4096);
  ASSERT_TRUE(work.has_value());
  EXPECT_FALSE(work->in_memory());
  EXPECT_EQ(Mode(memory_root_), 0755u) << "cryod changed a directory it does not trust";

  ASSERT_EQ(::rmdir(memory_root_.c_str()), 0);
  ASSERT_EQ(::symlink(dir_.c_str(), memory_root_.c_str()), 0);
  auto linked = ScratchSpace::Create(Options());
  ASSERT_TRUE(linked.has_value()) << linked.error().ToString();
  EXPECT_EQ((*linked)->memory_root(), "");
  ::unlink(memory_root_.c_str());
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

TEST(ScratchTag, IsStableAndDiffersBetweenStateDirectories) {
  EXPECT_EQ(ScratchTag("/var/lib/cryo"), ScratchTag("/var/lib/cryo"));
  EXPECT_NE(ScratchTag("/var/lib/cryo"), ScratchTag("/var/lib/cryo2"));
  EXPECT_EQ(ScratchTag("/var/lib/cryo").size(), 16u);
}

TEST(EstimateImageBytes, CountsTheResidentMemoryOfTheProcesses) {
  // This process has touched at least a few MiB (its code, gtest).
  uint64_t one = EstimateImageBytes({::getpid()});
  EXPECT_GT(one, uint64_t{16} << 20);
  EXPECT_GT(EstimateImageBytes({::getpid(), ::getpid()}), one);
  // A process that is gone counts nothing.
  EXPECT_EQ(EstimateImageBytes({}), uint64_t{16} << 20);
}

}  // namespace
}  // namespace cryo
