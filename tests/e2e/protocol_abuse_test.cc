// SPDX-License-Identifier: Apache-2.0
// Malformed clients get an error (or a closed connection) and cryod lives on.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "cryo/protocol.h"
#include "cryo/unique_fd.h"
#include "harness.h"

namespace cryo::testing {
namespace {

UniqueFd ConnectRaw(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  return fd;
}

// Sends raw bytes, half-closes, and returns the error cryod answered with
// ("" when it only closed the connection).
std::string SendRaw(const std::string& socket, const std::string& bytes) {
  UniqueFd fd = ConnectRaw(socket);
  (void)!::write(fd.get(), bytes.data(), bytes.size());
  ::shutdown(fd.get(), SHUT_WR);
  proto::Response r;
  auto got = ReadFrame(fd.get(), &r);
  if (!got || !*got) return "";
  EXPECT_TRUE(r.has_error()) << "a malformed request must not succeed";
  return r.error().kind() + ": " + r.error().message();
}

std::string Frame(const std::string& body) {
  uint32_t len = static_cast<uint32_t>(body.size());
  return std::string(reinterpret_cast<const char*>(&len), 4) + body;
}

TEST(ProtocolAbuse, MalformedFramesAreRefusedAndTheDaemonSurvives) {
  Cryod d;
  EXPECT_NE(SendRaw(d.socket(), Frame("\xff\xff\xff garbage that is not protobuf")).find("corrupt"),
            std::string::npos);
  EXPECT_NE(SendRaw(d.socket(), "\xff\xff\xff\x7f").find("exceeds the limit"), std::string::npos);
  EXPECT_NE(SendRaw(d.socket(), Frame("short")).size(), 0u);
  SendRaw(d.socket(), "\x05\x00");  // truncated header
  SendRaw(d.socket(), "");          // connect and leave

  proto::Request wrong_version;
  wrong_version.set_protocol_version(99);
  wrong_version.mutable_ps();
  EXPECT_NE(
      SendRaw(d.socket(), Frame(wrong_version.SerializeAsString())).find("protocol version 99"),
      std::string::npos);

  proto::Request empty;
  empty.set_protocol_version(kProtocolVersion);
  EXPECT_NE(SendRaw(d.socket(), Frame(empty.SerializeAsString())).find("empty or unknown request"),
            std::string::npos);

  proto::Request bad_signal;
  bad_signal.set_protocol_version(kProtocolVersion);
  bad_signal.mutable_kill()->set_name("x");
  bad_signal.mutable_kill()->set_signal(100000);
  EXPECT_NE(SendRaw(d.socket(), Frame(bad_signal.SerializeAsString())).find("no signal"),
            std::string::npos);

  proto::Request no_argv;
  no_argv.set_protocol_version(kProtocolVersion);
  no_argv.mutable_run()->set_cwd("/");
  EXPECT_NE(SendRaw(d.socket(), Frame(no_argv.SerializeAsString())).find("nothing to run"),
            std::string::npos);

  proto::Request relative_cwd;
  relative_cwd.set_protocol_version(kProtocolVersion);
  relative_cwd.mutable_run()->add_argv("true");
  relative_cwd.mutable_run()->set_cwd("relative");
  EXPECT_NE(SendRaw(d.socket(), Frame(relative_cwd.SerializeAsString())).find("absolute"),
            std::string::npos);

  auto ps = d.Cryo({"ps"});
  EXPECT_EQ(ps.exit_code, 0) << "cryod died: " << d.DaemonLog();
  auto run = d.Cryo({"run", "--", "echo", "alive"});
  EXPECT_EQ(run.out, "alive\n");
}

}  // namespace
}  // namespace cryo::testing
