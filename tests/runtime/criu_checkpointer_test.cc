// SPDX-License-Identifier: Apache-2.0
// How cryod's side of CRIU's RPC copes with a CRIU that misbehaves. A
// script stands in for CRIU here; tests/e2e/criu_test.cc drives the real one.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include "cryo/checkpointer.h"
#include "temp_dir.h"

namespace cryo {
namespace {

bool Gone(pid_t pid) {
  for (int i = 0; i < 200; ++i) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string pid_field, comm, state;
    if (!(stat >> pid_field >> comm >> state) || state == "Z") return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// CRIU killed in the middle of a dump can leave a helper of its own that
// holds its end of the socket: the session must end with CRIU, not wait for
// the helper (in cryod, with the job frozen).
TEST(CriuCheckpointerTest, ACriuThatDiesLeavingAHelperEndsTheSession) {
  TempDir dir;
  std::string criu = dir.Join("criu");
  std::string helper_pid = dir.Join("helper.pid");
  std::ofstream(criu) << "#!/bin/sh\n"
                      << "sleep 1000 &\n"  // holds fd 3, the socket, as a helper would
                      << "echo $! > " << helper_pid << "\n"
                      << "exit 0\n";
  ASSERT_EQ(::chmod(criu.c_str(), 0700), 0);
  auto checkpointer = CreateCriuCheckpointer(criu);
  ASSERT_TRUE(checkpointer.has_value()) << checkpointer.error().ToString();
  auto asked = std::async(std::launch::async, [&] { return (*checkpointer)->Version(); });
  bool answered = asked.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  pid_t helper = 0;
  std::ifstream(helper_pid) >> helper;
  if (!answered) {
    if (helper > 0) ::kill(helper, SIGKILL);  // lets the session end, and the test
    FAIL() << "the session waited for CRIU's helper";
  }
  auto version = asked.get();
  EXPECT_FALSE(version.has_value()) << "no answer, and yet: " << *version;
  ASSERT_GT(helper, 0);
  EXPECT_TRUE(Gone(helper)) << "CRIU's helper is still alive";
}

}  // namespace
}  // namespace cryo
