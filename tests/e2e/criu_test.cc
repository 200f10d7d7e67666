// SPDX-License-Identifier: Apache-2.0
// The CRIU that tools/setup.sh built works on this machine.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include <filesystem>

#include "cryo/checkpointer.h"
#include "cryo/file_util.h"
#include "harness.h"

namespace cryo::testing {
namespace {

TEST(Criu, CheckPassesOnThisMachine) {
  auto r = RunCommand({CriuBinary(), "check"});
  ASSERT_EQ(r.exit_code, 0) << CriuBinary()
                            << " check failed: CRIU is missing or does not work on this "
                            << "kernel; run tools/setup.sh (it builds CRIU >= 4.2).\n"
                            << r.out << r.err;
  EXPECT_NE((r.out + r.err).find("Looks good"), std::string::npos) << r.out << r.err;
}

TEST(Criu, IsAtLeastVersion42) {
  auto r = RunCommand({CriuBinary(), "--version"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  int major = 0, minor = 0;
  ASSERT_EQ(std::sscanf(r.out.c_str(), "Version: %d.%d", &major, &minor), 2) << r.out;
  EXPECT_TRUE(major > 4 || (major == 4 && minor >= 2))
      << "CRIU " << major << "." << minor << " is too old for this kernel; need >= 4.2";
}

// CRIU caches what it learns of the kernel where tools/setup.sh built it to
// (RUNDIR), which cryod makes a root-only tmpfs as it starts
// (daemon/criu_run_dir.h): CRIU then skips ~20 ms of probing per run.
TEST(Criu, KeepsItsKernelCacheInCryodsRootOnlyTmpfs) {
  const std::string dir = "/run/cryo-criu";
  Cryod d;
  struct stat st {};
  ASSERT_EQ(::lstat(dir.c_str(), &st), 0) << dir << " missing: " << d.DaemonLog();
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  struct statfs fs {};
  ASSERT_EQ(::statfs(dir.c_str(), &fs), 0);
  EXPECT_EQ(fs.f_type, static_cast<decltype(fs.f_type)>(TMPFS_MAGIC));
  // Whatever an earlier run left: the cache comes from this CRIU's run.
  std::filesystem::remove(dir + "/criu.kdat");
  // (A CRIU of another test saving its cache at that very moment would keep
  // this one from saving it: O_EXCL on the temp file. Hence a few tries.)
  for (int attempt = 0; attempt < 3 && !std::filesystem::exists(dir + "/criu.kdat"); ++attempt) {
    auto r = RunCommand({CriuBinary(), "check"});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  }
  EXPECT_TRUE(std::filesystem::exists(dir + "/criu.kdat"))
      << "CRIU did not cache its kernel facts in " << dir << ": built without RUNDIR=" << dir
      << "? (tools/setup.sh)";
}

// cryod asks CRIU its version for every checkpoint's manifest; starting a
// CRIU for that costs more than a checkpoint of a small job does otherwise.
// The answer is kept per binary, and asked again once the binary changes.
TEST(Criu, VersionIsAskedOncePerBinary) {
  char pattern[] = "/tmp/cryo_criu.XXXXXX";
  ASSERT_NE(::mkdtemp(pattern), nullptr);
  std::string dir = pattern;
  std::string copy = dir + "/criu";
  std::filesystem::copy_file(CriuBinary(), copy);
  ASSERT_EQ(::chmod(copy.c_str(), 0755), 0);

  auto criu = CreateCriuCheckpointer(copy);
  ASSERT_TRUE(criu) << criu.error().ToString();
  auto version = (*criu)->Version();
  ASSERT_TRUE(version) << version.error().ToString();
  int major = 0, minor = 0;
  EXPECT_EQ(std::sscanf(version->c_str(), "%d.%d", &major, &minor), 2) << *version;

  // The same file, no longer executable: the answer comes from the cache
  // (any new CRIU a checkpointer starts from it would fail).
  ASSERT_EQ(::chmod(copy.c_str(), 0644), 0);
  auto again = (*criu)->Version();
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(*again, *version);

  // Changed (a new modification time): asked again, which now fails, and
  // says where.
  timespec times[2] = {{0, UTIME_OMIT}, {12345, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, copy.c_str(), times, 0), 0);
  auto changed = (*criu)->Version();
  ASSERT_FALSE(changed);
  EXPECT_NE(changed.error().ToString().find(copy), std::string::npos) << changed.error().ToString();

  // And a path where nothing can run is refused up front.
  EXPECT_FALSE(CreateCriuCheckpointer(copy));
  EXPECT_FALSE(CreateCriuCheckpointer("criu"));
  ASSERT_TRUE(RemoveTree(dir));
}

}  // namespace
}  // namespace cryo::testing
