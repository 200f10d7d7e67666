// SPDX-License-Identifier: Apache-2.0
// What a checkpoint and a restore report while they run (`progress` frames,
// the line on a terminal) and when done (their phases and timings).
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <regex>

#include "cryo/daemon.pb.h"
#include "cryo/protocol.h"
#include "cryo/unique_fd.h"
#include "harness.h"

namespace cryo::testing {
namespace {

using std::chrono::seconds;

bool WaitForCounting(const Cryod& d, const std::string& job) {
  return WaitUntil(
      [&] {
        return d.Cryo({"logs", job}).out.find("count 3") != std::string::npos;
      },
      seconds(20));
}

void RunCounter(const Cryod& d, const std::string& name) {
  ASSERT_EQ(d.Cryo({"run", "-d", "--name", name, "--", TestProgram("counter")}).exit_code, 0);
  ASSERT_TRUE(WaitForCounting(d, name)) << d.DaemonLog();
}

// Sends `request` on a fresh connection and returns every response up to
// and including the final one.
std::vector<proto::Response> Exchange(const Cryod& d, proto::Request request) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", d.socket().c_str());
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  request.set_protocol_version(kProtocolVersion);
  EXPECT_TRUE(WriteFrame(fd.get(), request).has_value());
  std::vector<proto::Response> out;
  for (;;) {
    proto::Response r;
    auto got = ReadFrame(fd.get(), &r);
    if (!got || !*got) {
      ADD_FAILURE() << "the connection ended before the final answer";
      return out;
    }
    out.push_back(r);
    if (!r.has_progress()) return out;
  }
}

// Checks the `progress` frames before the final answer: phases among
// `phases`, in that order, bytes within their total.
void ExpectProgress(const std::vector<proto::Response>& frames,
                    const std::vector<std::string>& phases) {
  ASSERT_GE(frames.size(), 2u) << "no progress frame before the answer";
  size_t rank = 0;
  for (size_t i = 0; i + 1 < frames.size(); ++i) {
    ASSERT_TRUE(frames[i].has_progress()) << "frame " << i;
    const auto& p = frames[i].progress();
    auto it = std::find(phases.begin(), phases.end(), p.phase());
    ASSERT_NE(it, phases.end()) << "unknown phase " << p.phase();
    auto r = static_cast<size_t>(it - phases.begin());
    EXPECT_GE(r, rank) << "phase " << p.phase() << " after a later one";
    rank = r;
    if (p.total_bytes() > 0) {
      EXPECT_LE(p.done_bytes(), p.total_bytes()) << p.phase();
    }
    EXPECT_GE(p.elapsed_ms(), 0);
  }
  // The operation's first phase is reported as soon as it begins.
  EXPECT_EQ(frames.front().progress().phase(), phases.front());
}

proto::Request CheckpointRequest(const std::string& name, bool progress) {
  proto::Request req;
  req.mutable_checkpoint()->set_name(name);
  req.mutable_checkpoint()->set_progress(progress);
  return req;
}

proto::Request RestoreRequest(const std::string& ref, const std::string& name, bool progress) {
  proto::Request req;
  req.mutable_restore()->set_ref(ref);
  req.mutable_restore()->set_name(name);
  req.mutable_restore()->set_progress(progress);
  return req;
}

// Runs `argv` with stdin, stdout and stderr on a pseudo-terminal; returns
// everything it wrote there.
CommandResult RunOnTerminal(const std::vector<std::string>& argv,
                            const std::vector<std::string>& env) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  winsize size{};
  size.ws_row = 24;
  size.ws_col = 200;
  int terminal = -1;
  pid_t pid = ::forkpty(&terminal, nullptr, nullptr, &size);
  if (pid == 0) {
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  CommandResult result;
  if (pid < 0) return result;
  UniqueFd owner(terminal);
  char buf[4096];
  for (;;) {
    pollfd p{terminal, POLLIN, 0};
    if (::poll(&p, 1, 60000) <= 0) break;  // hung: fail below
    ssize_t n = ::read(terminal, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EIO: the program has ended and closed the terminal
    result.out.append(buf, static_cast<size_t>(n));
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// What remains of terminal output once every redrawn line is gone: the text
// after the last "erase line" on each line.
std::string Settled(const std::string& screen) {
  std::string out;
  std::string line;
  for (size_t i = 0; i < screen.size(); ++i) {
    if (screen.compare(i, 4, "\r\x1b[K") == 0) {
      line.clear();
      i += 3;
    } else if (screen[i] == '\r') {
      continue;  // the terminal's "\r\n"
    } else if (screen[i] == '\n') {
      out += line + "\n";
      line.clear();
    } else {
      line += screen[i];
    }
  }
  return out + line;
}

void ExpectPlausible(const nlohmann::json& phases, const std::vector<std::string>& parts) {
  ASSERT_TRUE(phases.is_object()) << phases.dump();
  ASSERT_TRUE(phases.contains("total")) << phases.dump();
  int64_t sum = 0;
  for (const auto& part : parts) {
    ASSERT_TRUE(phases.contains(part)) << part << " missing: " << phases.dump();
    EXPECT_GE(phases[part].get<int64_t>(), 0) << part;
    sum += phases[part].get<int64_t>();
  }
  EXPECT_LE(sum, phases["total"].get<int64_t>()) << phases.dump();
  EXPECT_LT(phases["total"].get<int64_t>(), 60000) << phases.dump();
}

TEST(Progress, CheckpointAndRestoreSendProgressFramesWhenAsked) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunCounter(d, "c"));

  auto frames = Exchange(d, CheckpointRequest("c", /*progress=*/true));
  ASSERT_FALSE(frames.empty());
  ASSERT_TRUE(frames.back().has_checkpoint()) << frames.back().DebugString();
  ExpectProgress(frames, {"dump", "store", "publish"});
  std::string id = frames.back().checkpoint().id();

  frames = Exchange(d, RestoreRequest(id, "copy", /*progress=*/true));
  ASSERT_FALSE(frames.empty());
  ASSERT_TRUE(frames.back().has_job()) << frames.back().DebugString() << d.DaemonLog();
  ExpectProgress(frames, {"fetch", "restore"});
  EXPECT_EQ(frames.back().job().name(), "copy");
  EXPECT_TRUE(frames.back().job().restore_phases_ms().contains("fetch"));
}

TEST(Progress, NoProgressFramesUnlessAsked) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunCounter(d, "c"));
  auto frames = Exchange(d, CheckpointRequest("c", /*progress=*/false));
  ASSERT_EQ(frames.size(), 1u) << frames.front().DebugString();
  ASSERT_TRUE(frames[0].has_checkpoint());
  frames = Exchange(d, RestoreRequest(frames[0].checkpoint().id(), "copy", /*progress=*/false));
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_TRUE(frames[0].has_job()) << frames[0].DebugString();
}

TEST(Progress, TerminalShowsOneUpdatingLineThenTheResult) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunCounter(d, "c"));
  std::vector<std::string> env{"CRYO_SOCKET=" + d.socket(), "TERM=xterm"};

  auto r = RunOnTerminal(d.CryoArgv({"checkpoint", "c"}), env);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("\r\x1b[Kcheckpoint c: freeze/dump"), std::string::npos) << r.out;
  // Erased, then the summary and the id: the id is the last line.
  std::string settled = Settled(r.out);
  EXPECT_EQ(settled.find("checkpoint c: freeze/dump"), std::string::npos) << settled;
  EXPECT_TRUE(std::regex_search(settled, std::regex("new in the store; freeze [0-9]+ ms, dump")))
      << settled;
  EXPECT_TRUE(std::regex_search(settled, std::regex("\n[0-9a-f]{16}\n$"))) << settled;

  r = RunOnTerminal(d.CryoArgv({"restore", "-d", "--name", "copy", "c"}), env);
  ASSERT_EQ(r.exit_code, 0) << r.out << d.DaemonLog();
  EXPECT_NE(r.out.find("\r\x1b[Krestore c: fetch"), std::string::npos) << r.out;
  settled = Settled(r.out);
  EXPECT_TRUE(std::regex_search(settled, std::regex("; fetch [0-9]+ ms, restore [0-9]+ ms")))
      << settled;
  EXPECT_TRUE(settled.ends_with("\ncopy\n")) << settled;
}

TEST(Progress, NotATerminalNoProgressAndTheSameOutput) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunCounter(d, "c"));
  auto r = d.Cryo({"checkpoint", "c"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::regex_match(r.out, std::regex("[0-9a-f]{16}\n"))) << r.out;
  EXPECT_EQ(r.err.find('\r'), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << r.err;
  EXPECT_TRUE(std::regex_match(r.err, std::regex("checkpoint of c: [^\n]*\n"))) << r.err;

  r = d.Cryo({"restore", "-d", "--name", "copy", "c"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "copy\n");
  EXPECT_EQ(r.err.find('\r'), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << r.err;
}

TEST(Progress, CheckpointJsonHasPlausiblePhases) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunCounter(d, "c"));
  auto r = d.Cryo({"checkpoint", "--json", "c"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ck = nlohmann::json::parse(r.out);
  ExpectPlausible(ck["phases_ms"], {"freeze", "dump", "store", "publish"});
  // The manifest keeps those that were over when it was written.
  auto list = nlohmann::json::parse(d.Cryo({"checkpoints", "--json", "c"}).out);
  ASSERT_EQ(list.size(), 1u);
  for (const char* phase : {"freeze", "dump", "store"}) {
    EXPECT_EQ(list[0]["phases_ms"][phase], ck["phases_ms"][phase]) << phase;
  }

  r = d.Cryo({"checkpoint", "--stop", "--json", "c"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectPlausible(nlohmann::json::parse(r.out)["phases_ms"],
                  {"freeze", "dump", "store", "publish"});
}

TEST(Progress, RestoreJsonHasPlausiblePhases) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunCounter(d, "c"));
  ASSERT_EQ(d.Cryo({"checkpoint", "--stop", "c"}).exit_code, 0);
  auto r = d.Cryo({"restore", "-d", "--json", "c"});
  ASSERT_EQ(r.exit_code, 0) << r.err << d.DaemonLog();
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["job"], "c");
  EXPECT_EQ(j["restored_from"], d.Job("c")["restored_from"]);
  ExpectPlausible(j["phases_ms"], {"fetch", "restore"});
  EXPECT_TRUE(WaitForCounting(d, "c"));

  auto refused = d.Cryo({"restore", "--json", "c"});
  EXPECT_EQ(refused.exit_code, 2) << "--json without -d: " << refused.err;
}

TEST(Progress, DaemonLogHasEveryPhase) {
  Cryod d;
  ASSERT_NO_FATAL_FAILURE(RunCounter(d, "c"));
  ASSERT_EQ(d.Cryo({"checkpoint", "c"}).exit_code, 0);
  ASSERT_EQ(d.Cryo({"restore", "-d", "--name", "copy", "c"}).exit_code, 0);
  std::string log = d.DaemonLog();
  EXPECT_TRUE(std::regex_search(
      log, std::regex("checkpoint stored.* freeze_ms=[0-9]+ dump_ms=[0-9]+ store_ms=[0-9]+ "
                      "publish_ms=[0-9]+ total_ms=[0-9]+")))
      << log;
  EXPECT_TRUE(std::regex_search(
      log, std::regex("job restored.* fetch_ms=[0-9]+ restore_ms=[0-9]+ total_ms=[0-9]+")))
      << log;
}

}  // namespace
}  // namespace cryo::testing
