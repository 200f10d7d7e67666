// SPDX-License-Identifier: Apache-2.0
#include "cryo/config.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>

#include "cryo/file_util.h"
#include "temp_dir.h"

namespace cryo {
namespace {

Error ParseError(std::string_view text) {
  auto r = ParseDaemonConfig(text, DaemonConfig{});
  EXPECT_FALSE(r.has_value()) << text;
  return r ? Error(ErrorKind::kInternal, "parsed") : r.error();
}

TEST(ConfigTest, AppliesKeysAndIgnoresCommentsAndBlankLines) {
  auto r = ParseDaemonConfig(
      "# cryod settings\n"
      "\n"
      "state_dir = /srv/cryo\n"
      "   \t\n"
      "socket=/run/c.sock   # trailing comment\n"
      "\tstore = s3://ckpt/prod\r\n"
      "criu = /opt/criu/sbin/criu\n"
      "log_level = debug",
      DaemonConfig{});
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->state_dir, "/srv/cryo");
  EXPECT_EQ(r->socket_path, "/run/c.sock");
  EXPECT_EQ(r->store_url, "s3://ckpt/prod");
  EXPECT_EQ(r->criu_path, "/opt/criu/sbin/criu");
  EXPECT_EQ(r->log_level, "debug");
}

TEST(ConfigTest, KeysNotInTextKeepBaseValues) {
  DaemonConfig base;
  base.socket_path = "/tmp/flag.sock";
  auto r = ParseDaemonConfig("log_level = warn\n", base);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->socket_path, "/tmp/flag.sock");
  EXPECT_EQ(r->state_dir, "/var/lib/cryo");
  EXPECT_EQ(r->log_level, "warn");
}

TEST(ConfigTest, UnknownKeyNamesTheLine) {
  Error e = ParseError("# comment\nstate_dir = /x\nstate_dri = /y\n");
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_NE(e.message().find("line 3"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find("state_dri"), std::string::npos) << e.message();
}

TEST(ConfigTest, LineWithoutEqualsNamesTheLine) {
  Error e = ParseError("\n\nstate_dir /x\n");
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_NE(e.message().find("line 3"), std::string::npos) << e.message();
}

TEST(ConfigTest, RelativePathsAreRefused) {
  for (const char* text :
       {"state_dir = var/lib/cryo", "state_dir =", "socket = cryod.sock", "criu = ./criu"}) {
    Error e = ParseError(text);
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << text;
    EXPECT_NE(e.message().find("line 1"), std::string::npos) << e.message();
  }
}

TEST(ConfigTest, BadLogLevelIsRefused) {
  Error e = ParseError("log_level = verbose\n");
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_NE(e.message().find("verbose"), std::string::npos) << e.message();
}

TEST(ConfigTest, MemoryScratchIsATmpfsDirectoryOrOff) {
  EXPECT_EQ(DaemonConfig().memory_scratch, "/dev/shm");
  auto off = ParseDaemonConfig("memory_scratch = off\n", DaemonConfig());
  ASSERT_TRUE(off.has_value()) << off.error().ToString();
  EXPECT_EQ(off->memory_scratch, "off");
  auto dir = ParseDaemonConfig("memory_scratch = /run/cryo-shm\n", DaemonConfig());
  ASSERT_TRUE(dir.has_value()) << dir.error().ToString();
  EXPECT_EQ(dir->memory_scratch, "/run/cryo-shm");
  Error e = ParseError("memory_scratch = shm\n");
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_NE(e.message().find("memory_scratch"), std::string::npos) << e.message();
}

TEST(ConfigTest, StoreDefaultsToStateDir) {
  DaemonConfig config;
  config.state_dir = "/srv/cryo";
  EXPECT_EQ(config.EffectiveStoreUrl(), "file:///srv/cryo/store");
  config.store_url = "s3://ckpt/prod";
  EXPECT_EQ(config.EffectiveStoreUrl(), "s3://ckpt/prod");
}

// The tests run as root, so a file they create is owned by root.
class ConfigFileTest : public testing::Test {
 protected:
  void WriteConfig(mode_t mode) {
    ASSERT_TRUE(WriteFileAtomic(path_, "log_level = error\n", mode).has_value());
    ASSERT_EQ(::chmod(path_.c_str(), mode), 0);
  }
  TempDir dir_;
  std::string path_ = dir_.Join("cryod.conf");
};

TEST_F(ConfigFileTest, WorldWritableFileIsRefused) {
  WriteConfig(0666);
  auto r = LoadDaemonConfig(path_, DaemonConfig{});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kPermissionDenied);
  EXPECT_NE(r.error().message().find(path_), std::string::npos) << r.error().message();
}

TEST_F(ConfigFileTest, GroupWritableFileIsRefused) {
  WriteConfig(0664);
  auto r = LoadDaemonConfig(path_, DaemonConfig{});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kPermissionDenied);
}

TEST_F(ConfigFileTest, RootOwnedReadOnlyFileIsLoaded) {
  ASSERT_EQ(::geteuid(), 0u) << "this test needs root";
  WriteConfig(0644);
  auto r = LoadDaemonConfig(path_, DaemonConfig{});
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->log_level, "error");
}

TEST_F(ConfigFileTest, ParseErrorNamesTheFile) {
  ASSERT_TRUE(WriteFileAtomic(path_, "bogus = 1\n", 0644).has_value());
  auto r = LoadDaemonConfig(path_, DaemonConfig{});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kInvalidArgument);
  EXPECT_NE(r.error().message().find(path_ + ": line 1"), std::string::npos) << r.error().message();
}

TEST_F(ConfigFileTest, MissingFileIsNotFound) {
  auto r = LoadDaemonConfig(path_, DaemonConfig{});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kNotFound);
}

}  // namespace
}  // namespace cryo
