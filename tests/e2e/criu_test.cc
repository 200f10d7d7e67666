// SPDX-License-Identifier: Apache-2.0
// The CRIU that tools/setup.sh built works on this machine.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace cryo::testing
