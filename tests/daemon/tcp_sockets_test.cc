// SPDX-License-Identifier: Apache-2.0
#include "tcp_sockets.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>

namespace cryo {
namespace {

// A child process that holds only the sockets `open` makes (every fd it
// inherited closed first), until the object goes away.
class ProcessWith {
 public:
  explicit ProcessWith(const std::function<bool()>& open) {
    int ready[2];
    EXPECT_EQ(::pipe(ready), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      for (int fd = 3; fd < 1024; ++fd) {
        if (fd != ready[1]) ::close(fd);
      }
      char ok = open() ? 'y' : 'n';
      (void)!::write(ready[1], &ok, 1);
      ::pause();
      ::_exit(0);
    }
    ::close(ready[1]);
    char ok = 'n';
    EXPECT_EQ(::read(ready[0], &ok, 1), 1);
    EXPECT_EQ(ok, 'y') << "the child could not make its sockets";
    ::close(ready[0]);
  }
  ~ProcessWith() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

bool ListenTcp(int family) {
  int fd = ::socket(family, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in6 a6{.sin6_family = AF_INET6};
  sockaddr_in a4{.sin_family = AF_INET};
  bool v6 = family == AF_INET6;
  auto* addr = v6 ? reinterpret_cast<sockaddr*>(&a6) : reinterpret_cast<sockaddr*>(&a4);
  return ::bind(fd, addr, v6 ? sizeof a6 : sizeof a4) == 0 && ::listen(fd, 1) == 0;
}

TEST(HoldsTcpSocketsTest, AListeningSocketCounts) {
  ProcessWith v4([] { return ListenTcp(AF_INET); });
  ProcessWith v6([] { return ListenTcp(AF_INET6); });
  EXPECT_EQ(HoldsTcpSockets({v4.pid()}), true);
  EXPECT_EQ(HoldsTcpSockets({v6.pid()}), true);
}

TEST(HoldsTcpSocketsTest, AConnectionCounts) {
  ProcessWith p([] {
    int server = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{.sin_family = AF_INET, .sin_addr = {htonl(INADDR_LOOPBACK)}};
    socklen_t len = sizeof a;
    if (::bind(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(server, 1) != 0 ||
        ::getsockname(server, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      return false;
    }
    int client = ::socket(AF_INET, SOCK_STREAM, 0);
    if (::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return false;
    int accepted = ::accept(server, nullptr, nullptr);
    ::close(server);  // only the two ends of the connection stay
    return accepted >= 0;
  });
  EXPECT_EQ(HoldsTcpSockets({p.pid()}), true);
}

TEST(HoldsTcpSocketsTest, OtherSocketsDoNot) {
  ProcessWith none([] { return true; });
  ProcessWith others([] {
    int pair[2];
    int udp = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{.sin_family = AF_INET};
    return ::socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0 && udp >= 0 &&
           ::bind(udp, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  });
  EXPECT_EQ(HoldsTcpSockets({none.pid()}), false);
  EXPECT_EQ(HoldsTcpSockets({others.pid()}), false);
  EXPECT_EQ(HoldsTcpSockets({none.pid(), others.pid()}), false);
  EXPECT_EQ(HoldsTcpSockets({}), false);
}

TEST(HoldsTcpSocketsTest, AnyProcessOfTheJobCounts) {
  ProcessWith none([] { return true; });
  ProcessWith tcp([] { return ListenTcp(AF_INET); });
  EXPECT_EQ(HoldsTcpSockets({none.pid(), tcp.pid()}), true);
}

// A socket in the process's own network namespace is in that namespace's
// table, not ours.
TEST(HoldsTcpSocketsTest, ASocketInAnotherNetworkNamespaceCounts) {
  ProcessWith p([] { return ::unshare(CLONE_NEWNET) == 0 && ListenTcp(AF_INET); });
  EXPECT_EQ(HoldsTcpSockets({p.pid()}), true);
}

TEST(HoldsTcpSocketsTest, AProcessThatIsGoneIsAnError) {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(pid, nullptr, 0), pid);
  auto holds = HoldsTcpSockets({pid});
  ASSERT_FALSE(holds);
  EXPECT_NE(holds.error().ToString().find(std::to_string(pid)), std::string::npos)
      << holds.error().ToString();
}

}  // namespace
}  // namespace cryo
