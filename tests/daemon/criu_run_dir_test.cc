// SPDX-License-Identifier: Apache-2.0
#include "criu_run_dir.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace cryo {
namespace {

namespace fs = std::filesystem;

// A parent directory that, like /dev/shm, anyone may write to.
class CriuRunDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "makes directories of root's: needs root";
    char tmpl[] = "/tmp/cryo-rundir-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    parent_ = tmpl;
    ::chmod(parent_.c_str(), 01777);
    dir_ = parent_ + "/cryo-criu";
  }
  void TearDown() override {
    if (!parent_.empty()) fs::remove_all(parent_);
  }

  // Whether dir_ is now a directory of root's, mode 0700, and the only
  // thing moved aside (if any) is what was there before.
  void ExpectRootsOwn() {
    struct stat st {};
    ASSERT_EQ(::lstat(dir_.c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_EQ(st.st_uid, 0u);
    EXPECT_EQ(st.st_mode & 07777, 0700u);
  }
  size_t Entries() {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(parent_)) ++n;
    return n;
  }

  std::string parent_;
  std::string dir_;
};

TEST_F(CriuRunDirTest, CreatesTheDirectory) {
  ASSERT_TRUE(PrepareCriuRunDir(dir_).has_value());
  ExpectRootsOwn();
  EXPECT_EQ(Entries(), 1u);
}

TEST_F(CriuRunDirTest, KeepsRootsOwnDirectoryAndItsCache) {
  ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
  std::ofstream(dir_ + "/criu.kdat") << "cache";
  ASSERT_TRUE(PrepareCriuRunDir(dir_).has_value());
  ExpectRootsOwn();
  EXPECT_TRUE(fs::exists(dir_ + "/criu.kdat"));
}

TEST_F(CriuRunDirTest, MovesAsideWhatOthersCouldHavePlanted) {
  std::string elsewhere = parent_ + "/elsewhere";
  ASSERT_EQ(::mkdir(elsewhere.c_str(), 0700), 0);
  std::ofstream(elsewhere + "/criu.kdat") << "planted";
  auto another_users = [&] {
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
    std::ofstream(dir_ + "/criu.kdat") << "planted";
    ASSERT_EQ(::chown(dir_.c_str(), 65534, 65534), 0);
  };
  auto writable_by_others = [&] {
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
    ASSERT_EQ(::chmod(dir_.c_str(), 0777), 0);
  };
  auto link = [&] { ASSERT_EQ(::symlink(elsewhere.c_str(), dir_.c_str()), 0); };
  auto file = [&] { std::ofstream(dir_) << "not a directory"; };
  for (const auto& [what, plant] :
       std::initializer_list<std::pair<const char*, std::function<void()>>>{
           {"another user's directory", another_users},
           {"a directory others can write", writable_by_others},
           {"a symbolic link", link},
           {"a file", file}}) {
    SCOPED_TRACE(what);
    plant();
    size_t before = Entries();
    ASSERT_TRUE(PrepareCriuRunDir(dir_).has_value());
    ExpectRootsOwn();
    EXPECT_FALSE(fs::exists(dir_ + "/criu.kdat"));
    EXPECT_EQ(Entries(), before + 1) << "what was there is moved aside, not removed";
    EXPECT_TRUE(fs::exists(elsewhere + "/criu.kdat")) << "a link's target is left alone";
    fs::remove_all(dir_);
  }
}

}  // namespace
}  // namespace cryo
