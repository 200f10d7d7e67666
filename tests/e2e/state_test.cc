// SPDX-License-Identifier: Apache-2.0
// Kinds of process state through a checkpoint, a kill and a restore, under a
// real cryod and real CRIU: regular files with their offsets, a pipe, a unix
// socketpair, eventfd and timerfd in epoll, a shared file mapping, shared
// anonymous memory, and a TCP connection from outside the job. Each program
// checks its own invariants (and prints "BROKEN" when one fails); each test
// proves by what the program prints that it went on instead of restarting.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cryo/unique_fd.h"
#include "harness.h"

namespace cryo::testing {
namespace {

using std::chrono::seconds;

// The numbers after `word ` in `text`, in order.
std::vector<long> Numbers(const std::string& text, const std::string& word) {
  std::vector<long> out;
  std::regex re(word + " ([0-9]+)");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
       ++it) {
    out.push_back(std::stol((*it)[1]));
  }
  return out;
}

std::string Logs(const Cryod& d, const std::string& job) { return d.Cryo({"logs", job}).out; }

std::string ReadFileContents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool WaitForOutput(const Cryod& d, const std::string& job, const std::string& text) {
  return WaitUntil([&] { return Logs(d, job).find(text) != std::string::npos; }, seconds(20));
}

// Waits until `job` has printed more than `n` numbers after `word`.
bool WaitForMore(const Cryod& d, const std::string& job, const std::string& word, size_t n) {
  return WaitUntil([&] { return Numbers(Logs(d, job), word).size() > n; }, seconds(20));
}

void RunDetached(const Cryod& d, const std::string& name, const std::vector<std::string>& argv) {
  std::vector<std::string> args{"run", "-d", "--name", name, "--"};
  args.insert(args.end(), argv.begin(), argv.end());
  auto r = d.Cryo(args);
  ASSERT_EQ(r.exit_code, 0) << r.err << d.DaemonLog();
}

// `cryo checkpoint [--stop] JOB`: it must succeed, and the job must be gone
// (--stop) or still running.
void Checkpoint(const Cryod& d, const std::string& job, bool stop) {
  std::vector<std::string> args{"checkpoint", job};
  if (stop) args.insert(args.begin() + 1, "--stop");
  auto r = d.Cryo(args);
  ASSERT_EQ(r.exit_code, 0) << r.err << d.DaemonLog();
  ASSERT_EQ(d.Job(job)["state"], stop ? "checkpointed" : "running");
}

// Restores `job` detached from its latest checkpoint; it must be running.
void RestoreDetached(const Cryod& d, const std::string& job) {
  auto r = d.Cryo({"restore", "-d", job});
  ASSERT_EQ(r.exit_code, 0) << r.err << d.DaemonLog();
  ASSERT_EQ(d.Job(job)["state"], "running");
}

void ExpectUnbroken(const Cryod& d, const std::string& job) {
  std::string logs = Logs(d, job);
  EXPECT_EQ(logs.find("BROKEN"), std::string::npos) << logs;
}

// Checks a restored job went on from where it was: its first number is at
// most one `step` past the last one seen before, it did not start over (the
// stdout pipe's unread contents are restored too, so a few lines may repeat,
// but the job is frozen well before the dump and its output is drained), and
// it keeps counting past the checkpoint. Callers let the job count past 20
// first, so that a restart from 0 cannot pass.
void ExpectContinued(const Cryod& d, const std::string& job, const std::string& word,
                     long last_before, long step = 1) {
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto n = Numbers(Logs(d, job), word);
        return !n.empty() && n.back() > last_before + 5 * step;
      },
      seconds(20)))
      << "no progress after the restore: " << Logs(d, job) << d.DaemonLog();
  auto after = Numbers(Logs(d, job), word);
  EXPECT_LE(after.front(), last_before + step) << "numbers were lost";
  EXPECT_GE(after.front(), last_before - 10 * step)
      << "the program restarted instead of continuing";
  EXPECT_TRUE(std::is_sorted(after.begin(), after.end())) << Logs(d, job);
}

// The common cycle: once `job` has printed a few `word` numbers, checkpoint
// it with --stop, restore it and check it continued. `last` gets the last
// number printed before the checkpoint.
void StopRestoreAndExpectContinued(const Cryod& d, const std::string& job, const std::string& word,
                                   long* last, long step = 1) {
  ASSERT_TRUE(WaitForMore(d, job, word, 20)) << Logs(d, job);
  ASSERT_NO_FATAL_FAILURE(Checkpoint(d, job, /*stop=*/true));
  *last = Numbers(Logs(d, job), word).back();
  ASSERT_NO_FATAL_FAILURE(RestoreDetached(d, job));
  ASSERT_NO_FATAL_FAILURE(ExpectContinued(d, job, word, *last, step));
  ExpectUnbroken(d, job);
}

// Checks that `path` holds the records 0..n-1 of file_records, each once, in
// order; returns n.
size_t ExpectRecordsInOrder(const std::string& path) {
  std::string text = ReadFileContents(path);
  EXPECT_EQ(text.size() % 16, 0u) << "a torn record";
  size_t n = text.size() / 16;
  for (size_t i = 0; i < n; ++i) {
    std::string number = std::to_string(i);
    std::string expected = "record " + std::string(8 - number.size(), '0') + number + "\n";
    if (text.compare(i * 16, 16, expected) != 0) {
      ADD_FAILURE() << "record " << i << " is '" << text.substr(i * 16, 16) << "'";
      break;
    }
  }
  return n;
}

TEST(State, RegularFileOffsetsContinue) {
  Cryod d;
  std::string path = d.Scratch() + "/records";
  ASSERT_NO_FATAL_FAILURE(RunDetached(d, "f", {TestProgram("file_records"), path}));
  ASSERT_TRUE(WaitForMore(d, "f", "record", 20));
  ASSERT_NO_FATAL_FAILURE(Checkpoint(d, "f", /*stop=*/true));
  long last = Numbers(Logs(d, "f"), "record").back();
  // Killed at the checkpoint: the file ends with the last record written
  // (printed, or written just before the freeze).
  size_t at_stop = ExpectRecordsInOrder(path);
  EXPECT_GE(at_stop, static_cast<size_t>(last + 1));
  EXPECT_LE(at_stop, static_cast<size_t>(last + 2));

  ASSERT_NO_FATAL_FAILURE(RestoreDetached(d, "f"));
  ASSERT_NO_FATAL_FAILURE(ExpectContinued(d, "f", "record", last));
  // Stop it again so the file holds still, then read all of it: the writes
  // went on at the restored offset (no gap, no repeat, nothing overwritten)
  // and the reading fd's offset followed (the program checks every record).
  ASSERT_NO_FATAL_FAILURE(Checkpoint(d, "f", /*stop=*/true));
  ExpectUnbroken(d, "f");
  long final_last = Numbers(Logs(d, "f"), "record").back();
  size_t records = ExpectRecordsInOrder(path);
  EXPECT_GE(records, static_cast<size_t>(final_last + 1));
  EXPECT_GT(records, at_stop + 5);
}

TEST(State, PipeBetweenParentAndChildContinues) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunDetached(d, "p", {TestProgram("pipe_pair")}));
  long last = 0;
  ASSERT_NO_FATAL_FAILURE(StopRestoreAndExpectContinued(d, "p", "piped", &last));
}

TEST(State, UnixSocketpairPingPongContinuesBothWays) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunDetached(d, "s", {TestProgram("socketpair_pingpong")}));
  long last = 0;
  ASSERT_NO_FATAL_FAILURE(StopRestoreAndExpectContinued(d, "s", "pong", &last, /*step=*/2));
  // The child's answers are odd: both directions carried on.
  for (long n : Numbers(Logs(d, "s"), "pong")) ASSERT_EQ(n % 2, 1) << n;
}

// Runs event_loop (with `mode`), stops and restores it, and checks that the
// timerfd still fires and the eventfd kept its value.
void ExpectEventLoopContinued(const std::vector<std::string>& mode) {
  Cryod d;
  std::vector<std::string> argv{TestProgram("event_loop")};
  argv.insert(argv.end(), mode.begin(), mode.end());
  ASSERT_NO_FATAL_FAILURE(RunDetached(d, "ev", argv));
  long last = 0;
  ASSERT_NO_FATAL_FAILURE(StopRestoreAndExpectContinued(d, "ev", "tick", &last));
  // Nothing has read the eventfd yet: it holds one per tick since the
  // start, those before the checkpoint included.
  ASSERT_EQ(d.Cryo({"kill", "--signal", "USR1", "ev"}).exit_code, 0);
  ASSERT_TRUE(WaitForOutput(d, "ev", "eventfd ")) << Logs(d, "ev");
  std::string logs = Logs(d, "ev");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(logs, m, std::regex("eventfd ([0-9]+) ticks ([0-9]+)")));
  long value = std::stol(m[1]), ticks = std::stol(m[2]);
  EXPECT_EQ(value, ticks) << "the eventfd lost the ticks counted before the checkpoint";
  EXPECT_GT(ticks, last);
  // The loop goes on after the drain.
  size_t seen = Numbers(Logs(d, "ev"), "tick").size();
  EXPECT_TRUE(WaitForMore(d, "ev", "tick", seen + 3));
  ExpectUnbroken(d, "ev");
}

// A one-shot timerfd armed again after each expiry.
TEST(State, EventfdValueAndTimerfdInEpollContinue) { ExpectEventLoopContinued({}); }

// A timer with a 20 ms interval has always expired, unread, by the time
// the frozen job is dumped: CRIU 4.2 alone restores it disarmed (CRIU issue
// #3162), and cryod re-arms it in the images (criu_image_fixes.h).
TEST(State, PeriodicTimerfdStillFiresAfterRestore) { ExpectEventLoopContinued({"periodic"}); }

TEST(State, SharedFileMappingContinuesAndReachesTheFile) {
  Cryod d;
  std::string path = d.Scratch() + "/mapped";
  auto file_count = [&] {
    auto n = Numbers(ReadFileContents(path), "mapped");
    return n.empty() ? -1L : n.front();
  };
  ASSERT_NO_FATAL_FAILURE(RunDetached(d, "m", {TestProgram("mmap_counter"), path}));
  ASSERT_TRUE(WaitForMore(d, "m", "mapped", 20));
  ASSERT_NO_FATAL_FAILURE(Checkpoint(d, "m", /*stop=*/true));
  long last = Numbers(Logs(d, "m"), "mapped").back();
  // The job is gone; its count is in the file.
  long in_file = file_count();
  EXPECT_GE(in_file, last);
  EXPECT_LE(in_file, last + 1);

  ASSERT_NO_FATAL_FAILURE(RestoreDetached(d, "m"));
  ASSERT_NO_FATAL_FAILURE(ExpectContinued(d, "m", "mapped", last));
  // The restored mapping is still the file's: what the program counts now
  // shows up in the file.
  EXPECT_TRUE(WaitUntil([&] { return file_count() > in_file + 10; }, seconds(20)))
      << "the file stays at " << file_count();
  ExpectUnbroken(d, "m");
}

TEST(State, SharedAnonymousMemoryStaysSharedBetweenParentAndChild) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunDetached(d, "shm", {TestProgram("shared_anon")}));
  long last = 0;
  // The parent prints only what the child wrote: counting on after the
  // restore means the two still share the page. The parent looks every
  // 10 ms and can miss one increment (the freeze may stop it before the
  // child, a loaded machine may delay it): a step of 2, and twice the usual
  // count first, so that a restart from 0 still cannot pass.
  ASSERT_TRUE(WaitForMore(d, "shm", "seen", 40)) << Logs(d, "shm");
  ASSERT_NO_FATAL_FAILURE(StopRestoreAndExpectContinued(d, "shm", "seen", &last, /*step=*/2));
}

// A TCP client in the test process, outside the job.
class Client {
 public:
  // Connects to 127.0.0.1:`port`; check connected().
  explicit Client(int port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ =
        fd_.valid() && ::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  bool connected() const { return connected_; }
  void Close() { fd_.reset(); }

  // Sends "req K" and returns the answer line ("" if none within 20 s).
  std::string Request(long k) {
    std::string line = "req " + std::to_string(k) + "\n";
    if (::send(fd_.get(), line.data(), line.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(line.size())) {
      return "";
    }
    auto deadline = std::chrono::steady_clock::now() + seconds(20);
    for (;;) {
      if (size_t end = pending_.find('\n'); end != std::string::npos) {
        std::string answer = pending_.substr(0, end);
        pending_.erase(0, end + 1);
        return answer;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{fd_.get(), POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) != 1) return "";
      char buf[256];
      ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
      if (n <= 0) return "";
      pending_.append(buf, static_cast<size_t>(n));
    }
  }

 private:
  UniqueFd fd_;
  bool connected_ = false;
  std::string pending_;
};

std::string Answer(long k, long served) {
  return "resp " + std::to_string(k) + " served " + std::to_string(served);
}

// Starts tcp_server as `job` on a free port and returns the port.
void StartServer(const Cryod& d, const std::string& job, int* port) {
  ASSERT_NO_FATAL_FAILURE(RunDetached(d, job, {TestProgram("tcp_server"), "0"}));
  ASSERT_TRUE(WaitForOutput(d, job, "listening ")) << Logs(d, job);
  *port = static_cast<int>(Numbers(Logs(d, job), "listening").front());
  ASSERT_GT(*port, 0);
}

TEST(State, TcpConnectionFromOutsideSurvivesStopAndRestore) {
  Cryod d;
  int port = 0;
  ASSERT_NO_FATAL_FAILURE(StartServer(d, "tcp", &port));
  Client client(port);
  ASSERT_TRUE(client.connected()) << std::strerror(errno);
  for (long k = 1; k <= 3; ++k) ASSERT_EQ(client.Request(k), Answer(k, k));

  ASSERT_NO_FATAL_FAILURE(Checkpoint(d, "tcp", /*stop=*/true));
  ASSERT_NO_FATAL_FAILURE(RestoreDetached(d, "tcp"));
  // The same socket, the same connection: the server's count goes on.
  for (long k = 4; k <= 6; ++k) {
    ASSERT_EQ(client.Request(k), Answer(k, k)) << Logs(d, "tcp") << d.DaemonLog();
  }
  EXPECT_TRUE(WaitForOutput(d, "tcp", "served 6 6")) << Logs(d, "tcp");
  // The restored server can be checkpointed again, the connection with it.
  ASSERT_NO_FATAL_FAILURE(Checkpoint(d, "tcp", /*stop=*/true));
  ASSERT_NO_FATAL_FAILURE(RestoreDetached(d, "tcp"));
  EXPECT_EQ(client.Request(7), Answer(7, 7)) << Logs(d, "tcp") << d.DaemonLog();
}

TEST(State, TcpConnectionFromOutsideSurvivesCheckpointOfARunningServer) {
  Cryod d;
  int port = 0;
  ASSERT_NO_FATAL_FAILURE(StartServer(d, "tcp", &port));
  Client client(port);
  ASSERT_TRUE(client.connected()) << std::strerror(errno);
  for (long k = 1; k <= 3; ++k) ASSERT_EQ(client.Request(k), Answer(k, k));
  ASSERT_NO_FATAL_FAILURE(Checkpoint(d, "tcp", /*stop=*/false));
  for (long k = 4; k <= 6; ++k) {
    ASSERT_EQ(client.Request(k), Answer(k, k)) << Logs(d, "tcp") << d.DaemonLog();
  }
  // A second client is served once the first is done: the listening socket
  // came through too.
  Client second(port);
  ASSERT_TRUE(second.connected()) << std::strerror(errno);
  client.Close();
  EXPECT_EQ(second.Request(1), Answer(1, 1)) << Logs(d, "tcp");
}

// The CRIU options a checkpoint of `job` recorded in its manifest: the
// latest one, read from the store's files.
nlohmann::json CriuOptionsOfLatest(const Cryod& d, const std::string& job) {
  std::string store = d.state_dir() + "/store";
  std::string id = ReadFileContents(store + "/refs/" + job + "/latest");
  std::ifstream in(store + "/manifests/" + id);
  std::string header;
  std::getline(in, header);
  std::stringstream body;
  body << in.rdbuf();
  auto m = nlohmann::json::parse(body.str(), nullptr, false);
  return m.is_object() ? m["criu_options"] : nlohmann::json(nullptr);
}

// cryod dumps a job with CRIU's tcp_established and network lock only when
// it holds a TCP socket (the lock costs most of a small job's dump). It
// looks again at every checkpoint: a job dumped without any, restored, that
// then opens a connection keeps it through the next checkpoint.
TEST(State, TcpSocketsOpenedAfterARestoreAreKeptByTheNextCheckpoint) {
  Cryod d;
  std::string go = d.state_dir() + "/go";
  ASSERT_NO_FATAL_FAILURE(
      RunDetached(d, "late",
                  {"/bin/sh", "-c",
                   "echo waiting; while [ ! -e " + go + " ]; do sleep 0.05; done; exec " +
                       TestProgram("tcp_server") + " 0"}));
  ASSERT_TRUE(WaitForOutput(d, "late", "waiting")) << Logs(d, "late");
  ASSERT_NO_FATAL_FAILURE(Checkpoint(d, "late", /*stop=*/true));
  EXPECT_EQ(CriuOptionsOfLatest(d, "late"), nlohmann::json({{"tcp_established", "false"}}));
  ASSERT_NO_FATAL_FAILURE(RestoreDetached(d, "late"));

  std::ofstream(go).put('x');
  ASSERT_TRUE(WaitForOutput(d, "late", "listening ")) << Logs(d, "late") << d.DaemonLog();
  int port = static_cast<int>(Numbers(Logs(d, "late"), "listening").front());
  Client client(port);
  ASSERT_TRUE(client.connected()) << std::strerror(errno);
  for (long k = 1; k <= 3; ++k) ASSERT_EQ(client.Request(k), Answer(k, k));
  ASSERT_NO_FATAL_FAILURE(Checkpoint(d, "late", /*stop=*/true));
  EXPECT_EQ(CriuOptionsOfLatest(d, "late"),
            nlohmann::json({{"tcp_established", "true"}, {"network_lock", "nftables"}}));
  ASSERT_NO_FATAL_FAILURE(RestoreDetached(d, "late"));
  for (long k = 4; k <= 6; ++k) {
    ASSERT_EQ(client.Request(k), Answer(k, k)) << Logs(d, "late") << d.DaemonLog();
  }
}

}  // namespace
}  // namespace cryo::testing
