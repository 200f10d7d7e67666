// SPDX-License-Identifier: Apache-2.0
#include "criu_run_dir.h"

#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

namespace cryo {
namespace {

namespace fs = std::filesystem;

bool OnTmpfs(const std::string& path) {
  struct statfs s {};
  return ::statfs(path.c_str(), &s) == 0 && s.f_type == TMPFS_MAGIC;
}

// How many mounts sit on `path` (/proc/self/mountinfo, field 5).
int MountsOn(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string field;
    for (int i = 0; i < 5 && fields >> field; ++i) {
    }
    if (field == path) ++n;
  }
  return n;
}

// `dir` in a fresh parent of root's (0700) in `base`: on disk (/var/tmp,
// where cryod must mount a tmpfs) or on tmpfs (/dev/shm, where it need not).
class CriuRunDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "makes root's directories and mounts: needs root";
  }
  void Use(const std::string& base) {
    std::string tmpl = base + "/cryo-rundir-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    parent_ = tmpl;
    dir_ = parent_ + "/cryo-criu";
  }
  void TearDown() override {
    if (parent_.empty()) return;
    while (MountsOn(dir_) > 0 && ::umount2(dir_.c_str(), MNT_DETACH) == 0) {
    }
    fs::remove_all(parent_);
  }

  void ExpectRootsOnlyTmpfs() {
    struct stat st {};
    ASSERT_EQ(::lstat(dir_.c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_EQ(st.st_uid, 0u);
    EXPECT_EQ(st.st_mode & 07777, 0700u);
    EXPECT_TRUE(OnTmpfs(dir_));
  }

  std::string parent_;
  std::string dir_;
};

TEST_F(CriuRunDirTest, OnDiskGetsATmpfsOfRootsOnlyOnce) {
  Use("/var/tmp");
  if (OnTmpfs(parent_)) GTEST_SKIP() << "/var/tmp is tmpfs here";
  auto cached = PrepareCriuRunDir(dir_);
  ASSERT_TRUE(cached.has_value()) << cached.error().ToString();
  EXPECT_TRUE(*cached);
  ExpectRootsOnlyTmpfs();
  EXPECT_EQ(MountsOn(dir_), 1);
  // Every cryod prepares it as it starts: no second mount over the first.
  std::ofstream(dir_ + "/criu.kdat") << "cache";
  ASSERT_TRUE(PrepareCriuRunDir(dir_).value_or(false));
  EXPECT_EQ(MountsOn(dir_), 1);
  EXPECT_TRUE(fs::exists(dir_ + "/criu.kdat"));
}

TEST_F(CriuRunDirTest, OnTmpfsIsMadeRootsOnlyWithoutAMount) {
  Use("/dev/shm");
  ASSERT_EQ(::mkdir(dir_.c_str(), 0755), 0);
  ASSERT_TRUE(PrepareCriuRunDir(dir_).value_or(false));
  ExpectRootsOnlyTmpfs();
  EXPECT_EQ(MountsOn(dir_), 0);
}

TEST_F(CriuRunDirTest, RefusesAParentOthersCanWrite) {
  Use("/dev/shm");
  ASSERT_EQ(::chmod(parent_.c_str(), 01777), 0);
  auto cached = PrepareCriuRunDir(dir_);
  ASSERT_FALSE(cached.has_value());
  EXPECT_EQ(cached.error().kind(), ErrorKind::kPermissionDenied);
  EXPECT_NE(cached.error().ToString().find(parent_), std::string::npos)
      << cached.error().ToString();
  EXPECT_FALSE(fs::exists(dir_));
}

TEST_F(CriuRunDirTest, RefusesWhatIsNotADirectoryOfRoots) {
  Use("/dev/shm");
  std::string elsewhere = parent_ + "/elsewhere";
  ASSERT_EQ(::mkdir(elsewhere.c_str(), 0700), 0);
  auto link = [&] { ASSERT_EQ(::symlink(elsewhere.c_str(), dir_.c_str()), 0); };
  auto file = [&] { std::ofstream(dir_) << "not a directory"; };
  auto another_users = [&] {
    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
    ASSERT_EQ(::chown(dir_.c_str(), 65534, 65534), 0);
  };
  for (const auto& [what, plant] :
       std::initializer_list<std::pair<const char*, std::function<void()>>>{
           {"a symbolic link", link},
           {"a file", file},
           {"another user's directory", another_users}}) {
    SCOPED_TRACE(what);
    plant();
    auto cached = PrepareCriuRunDir(dir_);
    ASSERT_FALSE(cached.has_value());
    EXPECT_NE(cached.error().ToString().find("remove it"), std::string::npos)
        << cached.error().ToString();
    fs::remove(dir_);
  }
}

// A CRIU killed between writing criu.kdat.tmp (O_EXCL) and renaming it
// would keep every later CRIU from saving its cache.
TEST_F(CriuRunDirTest, RemovesATempFileACriuLeftLongAgo) {
  Use("/dev/shm");
  ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0);
  std::string temp = dir_ + "/criu.kdat.tmp";
  std::ofstream(temp) << "half";
  std::ofstream(dir_ + "/criu.kdat") << "cache";
  ASSERT_TRUE(PrepareCriuRunDir(dir_).value_or(false));
  EXPECT_TRUE(fs::exists(temp)) << "a CRIU may be writing it right now";
  fs::last_write_time(temp, fs::file_time_type::clock::now() - std::chrono::minutes(5));
  ASSERT_TRUE(PrepareCriuRunDir(dir_).value_or(false));
  EXPECT_FALSE(fs::exists(temp));
  EXPECT_TRUE(fs::exists(dir_ + "/criu.kdat"));
}

}  // namespace
}  // namespace cryo
