// SPDX-License-Identifier: Apache-2.0
// The image streamer against a client that speaks CRIU's side of the
// protocol as criu/img-streamer.c does (a u32 length and a request, the
// reply, then a pipe's write end passed with SCM_RIGHTS and one byte). The
// end-to-end tests restore real jobs with real CRIU through it.
#include "cryo/image_streamer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cryo/file_util.h"
#include "cryo/unique_fd.h"
#include "fakes/memory_store.h"
#include "image_test_data.h"
#include "temp_dir.h"

namespace cryo {
namespace {

// CRIU's side: one connection, requests, pipes.
class FakeCriu {
 public:
  explicit FakeCriu(const std::string& dir) : sock_(::socket(AF_UNIX, SOCK_STREAM, 0)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::string path = dir + "/" + kStreamerServeSocket;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    connected_ = ::connect(sock_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  bool connected() const { return connected_; }
  int fd() const { return sock_.get(); }

  // Sends a raw request message (already encoded) with its length, in host
  // byte order as CRIU writes it.
  void SendRaw(const std::string& msg) {
    uint32_t len = static_cast<uint32_t>(msg.size());
    std::string out(reinterpret_cast<const char*>(&len), sizeof len);
    out += msg;
    ASSERT_TRUE(WriteAll(sock_.get(), out).has_value());
  }
  // Sends `bytes` as they are.
  void SendBytes(const std::string& bytes) {
    ASSERT_TRUE(WriteAll(sock_.get(), bytes).has_value());
  }
  static std::string Encode(const std::string& name) {
    return "\x0a" + std::string(1, static_cast<char>(name.size())) + name;
  }
  // Asks for `name` and reads the answer: whether the server has it.
  std::optional<bool> Ask(const std::string& name) {
    SendRaw(Encode(name));
    char reply[6];
    if (ReadFull(sock_.get(), reply).value_or(0) != sizeof reply) {
      ADD_FAILURE() << "no reply";
      return std::nullopt;
    }
    uint32_t len;
    std::memcpy(&len, reply, sizeof len);  // host byte order, as CRIU reads it
    EXPECT_EQ(len, 2u);
    EXPECT_EQ(reply[4], '\x08');
    return reply[5] != 0;
  }
  // Asks for `name` and passes a fresh pipe's write end: the read end, or
  // an invalid fd if the server has no such file.
  UniqueFd Open(const std::string& name) {
    if (!Ask(name).value_or(false)) return UniqueFd();
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    UniqueFd r(fds[0]), w(fds[1]);
    SendFds({w.get()});
    return r;
  }
  // Asks for `name`: its contents, or nullopt if the server says it has none.
  std::optional<std::string> Get(const std::string& name) {
    UniqueFd r = Open(name);
    if (!r.valid()) return std::nullopt;
    auto data = ReadToEnd(r.get());
    return data.value_or("");
  }
  // Passes `fds` with one dummy byte, as CRIU passes a pipe.
  void SendFds(const std::vector<int>& fds) {
    char dummy = 0;
    iovec iov{&dummy, 1};
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    ASSERT_EQ(::sendmsg(sock_.get(), &msg, 0), 1);
  }
  void Close() { sock_.reset(); }
  // Stops sending (as a CRIU that dies does) but can still see the server
  // hang up.
  void StopSending() { ASSERT_EQ(::shutdown(sock_.get(), SHUT_WR), 0); }
  // Waits until the server hangs up (it read what was sent and gave up);
  // false if it has not within a bound far above any real wait.
  bool WaitForHangUp() {
    pollfd p{sock_.get(), POLLIN, 0};
    if (::poll(&p, 1, 20000) != 1) return false;
    char c;
    return ::read(sock_.get(), &c, 1) == 0;
  }

 private:
  UniqueFd sock_;
  bool connected_ = false;
};

// Whether the other end of `fd` (a pipe's or a socket's) is closed everywhere,
// without waiting.
bool PeerClosed(int fd, short events) {
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)) != 0;
}

// While it lives, no new thread can start in this process: its stack could
// not be mapped, so std::thread throws std::system_error.
class NoNewThreads {
 public:
  NoNewThreads() {
    EXPECT_EQ(::pthread_getattr_default_np(&saved_), 0);
    pthread_attr_t huge;
    ::pthread_attr_init(&huge);
    // Larger than any x86-64 or arm64 address space.
    EXPECT_EQ(::pthread_attr_setstacksize(&huge, size_t{1} << 58), 0);
    EXPECT_EQ(::pthread_setattr_default_np(&huge), 0);
    ::pthread_attr_destroy(&huge);
  }
  ~NoNewThreads() {
    EXPECT_EQ(::pthread_setattr_default_np(&saved_), 0);
    ::pthread_attr_destroy(&saved_);
  }

 private:
  pthread_attr_t saved_;
};

class ImageStreamerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    contents_["core-1.img"] = "core of process 1\n";
    contents_["pages-1.img"] = RandomBytes(3 << 20, 5) + std::string(1 << 20, '\0');
    contents_["empty.img"] = "";
    for (const auto& [name, data] : contents_) {
      std::ofstream(images_.path() + "/" + name, std::ios::binary) << data;
    }
    auto files = StoreImages(images_.path(), store_, key_, nullptr);
    ASSERT_TRUE(files.has_value()) << files.error().ToString();
    files_ = *files;
  }
  std::unique_ptr<ImageStreamServer> Listen(ImageProgress progress = {}) {
    auto server = ImageStreamServer::Listen(served_.path(), files_, kCurrentChunkHash, store_, key_,
                                            std::move(progress));
    EXPECT_TRUE(server.has_value()) << server.error().ToString();
    return server ? std::move(*server) : nullptr;
  }

  // The stored file named `name`, or nullptr.
  const ImageFile* Stored(std::string_view name) const {
    for (const auto& f : files_) {
      if (f.name == name) return &f;
    }
    return nullptr;
  }

  // Finish() must fail: its message ("" if it did not).
  static std::string FinishError(ImageStreamServer& server) {
    auto status = server.Finish();
    EXPECT_FALSE(status.has_value()) << "Finish() succeeded";
    return status ? "" : status.error().message();
  }

  TempDir images_, served_;
  MemoryStore store_;
  Key key_ = TestKey();
  std::map<std::string, std::string> contents_;
  std::vector<ImageFile> files_;
};

TEST_F(ImageStreamerTest, ServesEveryFileByNameInAnyOrderAndSaysWhichAreMissing) {
  std::atomic<uint64_t> fed{0};
  auto server = Listen([&](uint64_t n) { fed += n; });
  ASSERT_NE(server, nullptr);
  FakeCriu criu(served_.path());
  ASSERT_TRUE(criu.connected());
  EXPECT_EQ(criu.Get("pages-1.img"), contents_["pages-1.img"]);
  EXPECT_FALSE(criu.Get("memfd.img").has_value()) << "an image the checkpoint lacks";
  EXPECT_EQ(criu.Get("core-1.img"), contents_["core-1.img"]);
  EXPECT_EQ(criu.Get("empty.img"), "");
  EXPECT_EQ(criu.Get("core-1.img"), contents_["core-1.img"]) << "asked again";
  criu.Close();
  EXPECT_TRUE(server->Finish().has_value());
  EXPECT_EQ(fed.load(), contents_["pages-1.img"].size() + 2 * contents_["core-1.img"].size());
}

// Checkpoints written before BLAKE3 chunk names restore as they did.
TEST_F(ImageStreamerTest, ServesCheckpointsNamedWithEveryChunkHash) {
  for (ChunkHash hash : kChunkHashes) {
    SCOPED_TRACE(std::string(ChunkHashName(hash)));
    MemoryStore store;
    auto files = StoreImages(images_.path(), store, key_, nullptr, {}, hash);
    ASSERT_TRUE(files.has_value()) << files.error().ToString();
    TempDir served;
    auto server = ImageStreamServer::Listen(served.path(), *files, hash, store, key_);
    ASSERT_TRUE(server.has_value()) << server.error().ToString();
    FakeCriu criu(served.path());
    ASSERT_TRUE(criu.connected());
    EXPECT_EQ(criu.Get("pages-1.img"), contents_["pages-1.img"]);
    EXPECT_EQ(criu.Get("core-1.img"), contents_["core-1.img"]);
    criu.Close();
    EXPECT_TRUE((*server)->Finish().has_value());
  }
}

// Chunks go into CRIU's pipe by reference (vmsplice): the server must keep
// each unchanged until it has been read, however slowly. Buffers freed too
// early are reused for the next chunks and the reader sees their bytes.
TEST_F(ImageStreamerTest, ASlowReaderStillGetsEveryByteAsStored) {
  std::string big = RandomBytes(24 << 20, 9);
  std::ofstream(images_.path() + "/pages-2.img", std::ios::binary) << big;
  auto files = StoreImages(images_.path(), store_, key_, nullptr);
  ASSERT_TRUE(files.has_value()) << files.error().ToString();
  files_ = *files;
  auto server = Listen();
  ASSERT_NE(server, nullptr);
  FakeCriu criu(served_.path());
  ASSERT_TRUE(criu.connected());
  UniqueFd r = criu.Open("pages-2.img");
  ASSERT_TRUE(r.valid());
  std::string got;
  char buf[64 << 10];
  for (ssize_t n; (n = ::read(r.get(), buf, sizeof buf)) != 0;) {
    ASSERT_GT(n, 0) << std::strerror(errno);
    got.append(buf, static_cast<size_t>(n));
    // Slow: the server runs ahead until the pipe is full, and its fetchers
    // decode the next chunks meanwhile.
    if (got.size() % (1 << 20) < sizeof buf) ::usleep(20000);
  }
  ASSERT_EQ(got.size(), big.size());
  EXPECT_TRUE(got == big) << "bytes differ from offset "
                          << std::mismatch(got.begin(), got.end(), big.begin()).first - got.begin();
  criu.Close();
  EXPECT_TRUE(server->Finish().has_value());
}

TEST_F(ImageStreamerTest, AChunkThatFailsVerificationIsNeverWrittenAndEndsTheFile) {
  // Damage the third chunk of pages-1.img in the store.
  const ImageFile* pages = Stored("pages-1.img");
  ASSERT_NE(pages, nullptr);
  ASSERT_GE(pages->chunks.size(), 4u);
  std::string key = ChunkKey(pages->chunks[2].hash);
  std::string stored = *store_.Get(key);
  stored[stored.size() / 2] ^= 0x40;
  ASSERT_TRUE(store_.Put(key, stored).has_value());
  uint64_t before_damage = pages->chunks[0].size + pages->chunks[1].size;

  auto server = Listen();
  FakeCriu criu(served_.path());
  auto got = criu.Get("pages-1.img");
  ASSERT_TRUE(got.has_value());
  // Only the verified chunks before the damaged one arrive, intact.
  EXPECT_EQ(got->size(), before_damage);
  EXPECT_EQ(*got, contents_["pages-1.img"].substr(0, before_damage));
  criu.Close();
  auto status = server->Finish();
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().kind(), ErrorKind::kCorrupt);
  EXPECT_NE(status.error().message().find("image pages-1.img: chunk "), std::string::npos)
      << status.error().message();
  EXPECT_TRUE(server->chunk_failed());
}

// Chunks are read into the memory they are spliced from and decoded there:
// a compressed chunk that fails to decompress, or a chunk longer than that
// memory, must end the file there too.
TEST_F(ImageStreamerTest, ADamagedCompressedOrLengthenedChunkEndsTheFile) {
  const ImageFile* pages = Stored("pages-1.img");
  ASSERT_NE(pages, nullptr);
  const ChunkRef& last = pages->chunks.back();  // zeros: stored compressed
  std::string key = ChunkKey(last.hash);
  const std::string intact = *store_.Get(key);
  ASSERT_EQ(intact[0], '\1') << "zstd";
  std::string damaged = intact;
  damaged[damaged.size() / 2] ^= 0x40;
  for (const std::string& stored : {damaged, intact + std::string(last.size + 10, 'x')}) {
    ASSERT_TRUE(store_.Put(key, stored).has_value());
    auto server = Listen();
    FakeCriu criu(served_.path());
    auto got = criu.Get("pages-1.img");
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(got->size(), pages->size - last.size);
    EXPECT_TRUE(*got == contents_["pages-1.img"].substr(0, got->size()));
    criu.Close();
    auto status = server->Finish();
    ASSERT_FALSE(status.has_value());
    EXPECT_EQ(status.error().kind(), ErrorKind::kCorrupt);
    EXPECT_NE(status.error().message().find("is corrupt"), std::string::npos)
        << status.error().message();
    EXPECT_TRUE(server->chunk_failed());
  }
}

TEST_F(ImageStreamerTest, AMalformedRequestIsAnErrorNotACrash) {
  auto server = Listen();
  FakeCriu criu(served_.path());
  criu.SendRaw(
      std::string("\x12\x03"
                  "abc",
                  5));  // field 2, not 1
  EXPECT_TRUE(criu.WaitForHangUp());
  std::string why = FinishError(*server);
  EXPECT_NE(why.find("malformed"), std::string::npos) << why;
  EXPECT_FALSE(server->chunk_failed());
}

TEST_F(ImageStreamerTest, FinishReturnsPromptlyWhenCriuNeitherReadsNorClosesAPipe) {
  // Chunk buffers from the heap, not from mappings of their own, so that
  // memory the server frees is handed out again below.
  ::mallopt(M_MMAP_THRESHOLD, 64 << 20);
  auto server = Listen();
  FakeCriu criu(served_.path());
  UniqueFd never_read = criu.Open("pages-1.img");
  ASSERT_TRUE(never_read.valid());
  // The feeder has begun; the pipe, far smaller than the file, fills up.
  pollfd p{never_read.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, -1), 1);
  auto finished = std::async(std::launch::async, [&] { return server->Finish(); });
  if (finished.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    ADD_FAILURE() << "Finish() waits for a pipe nobody reads";
    never_read.reset();  // lets it end, so that the test does not hang
  }
  auto status = finished.get();
  ASSERT_FALSE(status.has_value()) << "the file was cut short";
  EXPECT_NE(status.error().message().find("image pages-1.img"), std::string::npos)
      << status.error().message();
  EXPECT_FALSE(server->chunk_failed());
  // What the pipe still holds (spliced chunks the server has given up on)
  // is still the image, however the server's memory is reused meanwhile.
  server.reset();
  // From new threads too: they take over the malloc arenas the server's
  // threads used.
  auto reuse = [] {
    std::vector<std::unique_ptr<char, decltype(&std::free)>> held;
    for (size_t size = 64 << 10; size <= (1 << 20); size += 4096) {
      held.emplace_back(static_cast<char*>(std::aligned_alloc(4096, size)), &std::free);
      std::memset(held.back().get(), 0xab, size);
    }
    return held;
  };
  auto main_arena = reuse();
  std::vector<decltype(main_arena)> others(4);
  {
    std::vector<std::jthread> threads;
    for (auto& o : others) threads.emplace_back([&o, &reuse] { o = reuse(); });
  }
  ::mallopt(M_MMAP_THRESHOLD, 128 << 10);
  ASSERT_EQ(::fcntl(never_read.get(), F_SETFL, O_NONBLOCK), 0);
  std::string rest;
  char buf[64 << 10];
  for (ssize_t n; (n = ::read(never_read.get(), buf, sizeof buf)) > 0;) rest.append(buf, n);
  EXPECT_GT(rest.size(), 0u);
  EXPECT_TRUE(contents_["pages-1.img"].starts_with(rest)) << "the pipe holds other bytes";
}

TEST_F(ImageStreamerTest, FinishReturnsPromptlyWhenCriuStopsMidRequest) {
  auto server = Listen();
  FakeCriu criu(served_.path());
  std::string request = FakeCriu::Encode("core-1.img");
  uint32_t len = static_cast<uint32_t>(request.size());
  criu.SendBytes(std::string(reinterpret_cast<const char*>(&len), sizeof len) +
                 request.substr(0, 3));
  auto finished = std::async(std::launch::async, [&] { return server->Finish(); });
  if (finished.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    ADD_FAILURE() << "Finish() waits for the rest of a request";
    criu.Close();  // lets it end, so that the test does not hang
  }
  auto status = finished.get();
  EXPECT_TRUE(status.has_value()) << "nothing was cut short: " << status.error().ToString();
}

TEST_F(ImageStreamerTest, CriuClosingAPipeEarlyIsNotAnError) {
  auto server = Listen();
  FakeCriu criu(served_.path());
  UniqueFd pages = criu.Open("pages-1.img");
  ASSERT_TRUE(pages.valid());
  char some[4096];
  ASSERT_EQ(ReadFull(pages.get(), some).value_or(0), sizeof some);
  pages.reset();  // CRIU needs no more of it, or failed
  EXPECT_EQ(criu.Get("core-1.img"), contents_["core-1.img"]) << "serving goes on";
  criu.Close();
  auto status = server->Finish();
  EXPECT_TRUE(status.has_value()) << status.error().ToString();
}

TEST_F(ImageStreamerTest, CriuHangingUpMidRequestIsNotAnError) {
  auto server = Listen();
  FakeCriu criu(served_.path());
  std::string request = FakeCriu::Encode("core-1.img");
  uint32_t len = static_cast<uint32_t>(request.size());
  criu.SendBytes(std::string(reinterpret_cast<const char*>(&len), sizeof len) +
                 request.substr(0, 3));
  criu.StopSending();  // CRIU died while writing it
  EXPECT_TRUE(criu.WaitForHangUp());
  auto status = server->Finish();
  EXPECT_TRUE(status.has_value()) << status.error().ToString();
}

TEST_F(ImageStreamerTest, CriuHangingUpBeforeSendingThePipeIsNotAnError) {
  auto server = Listen();
  FakeCriu criu(served_.path());
  EXPECT_EQ(criu.Ask("core-1.img"), true);
  criu.StopSending();  // CRIU died before it passed the pipe
  EXPECT_TRUE(criu.WaitForHangUp());
  auto status = server->Finish();
  EXPECT_TRUE(status.has_value()) << status.error().ToString();
}

TEST_F(ImageStreamerTest, CriuResettingTheConnectionIsNotAnError) {
  auto server = Listen();
  FakeCriu criu(served_.path());
  EXPECT_EQ(criu.Get("core-1.img"), contents_["core-1.img"]);
  criu.SendRaw(FakeCriu::Encode("pages-1.img"));
  // The reply arrives and CRIU closes without reading it: the server reads
  // ECONNRESET where it waits for the pipe.
  pollfd p{criu.fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, -1), 1);
  criu.Close();
  auto status = server->Finish();
  EXPECT_TRUE(status.has_value()) << status.error().ToString();
}

TEST_F(ImageStreamerTest, MoreThanOneFdForAFileIsRefusedAndAllAreClosed) {
  auto server = Listen();
  FakeCriu criu(served_.path());
  ASSERT_EQ(criu.Ask("core-1.img"), true);
  // Three write ends: more than the server's control buffer takes.
  std::vector<UniqueFd> readers, writers;
  for (int i = 0; i < 3; ++i) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    readers.emplace_back(fds[0]);
    writers.emplace_back(fds[1]);
  }
  criu.SendFds({writers[0].get(), writers[1].get(), writers[2].get()});
  writers.clear();
  ASSERT_TRUE(criu.WaitForHangUp());
  for (const auto& r : readers) EXPECT_TRUE(PeerClosed(r.get(), POLLIN)) << "an fd kept open";
  std::string why = FinishError(*server);
  EXPECT_NE(why.find("more than one"), std::string::npos) << why;
}

TEST_F(ImageStreamerTest, AnFdThatIsNotAPipeIsRefusedAndClosed) {
  auto server = Listen();
  FakeCriu criu(served_.path());
  ASSERT_EQ(criu.Ask("core-1.img"), true);
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  UniqueFd sent(pair[0]), kept(pair[1]);
  criu.SendFds({sent.get()});
  sent.reset();
  ASSERT_TRUE(criu.WaitForHangUp()) << "the server fed a socket";
  EXPECT_TRUE(PeerClosed(kept.get(), POLLIN)) << "the socket was kept open";
  std::string why = FinishError(*server);
  EXPECT_NE(why.find("not a pipe"), std::string::npos) << why;
}

TEST_F(ImageStreamerTest, APipesReadEndIsRefusedAndClosed) {
  auto server = Listen();
  FakeCriu criu(served_.path());
  ASSERT_EQ(criu.Ask("core-1.img"), true);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  UniqueFd r(fds[0]), w(fds[1]);
  criu.SendFds({r.get()});
  r.reset();
  ASSERT_TRUE(criu.WaitForHangUp()) << "the server took a read end";
  EXPECT_TRUE(PeerClosed(w.get(), POLLOUT)) << "the read end was kept open";
  std::string why = FinishError(*server);
  EXPECT_NE(why.find("not open for writing"), std::string::npos) << why;
}

TEST_F(ImageStreamerTest, AFeederThreadThatCannotStartFailsTheStreamCleanly) {
  auto server = Listen();
  FakeCriu criu(served_.path());
  {
    NoNewThreads no_threads;
    // The pipe is closed at once; the server hangs up so CRIU fails soon.
    EXPECT_EQ(criu.Get("pages-1.img"), "");
    EXPECT_TRUE(criu.WaitForHangUp());
  }
  std::string why = FinishError(*server);
  EXPECT_NE(why.find("cannot start a thread to feed image pages-1.img"), std::string::npos) << why;
  EXPECT_FALSE(server->chunk_failed());
}

TEST_F(ImageStreamerTest, ListenFailsCleanlyWhenItsThreadCannotStart) {
  NoNewThreads no_threads;
  auto server = ImageStreamServer::Listen(served_.path(), files_, kCurrentChunkHash, store_, key_);
  ASSERT_FALSE(server.has_value());
  EXPECT_NE(server.error().message().find("thread"), std::string::npos) << server.error().message();
}

TEST_F(ImageStreamerTest, FinishWithoutAClientReturnsAtOnce) {
  auto server = Listen();
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(server->Finish().has_value());
  EXPECT_EQ(server->fed_ms(), 0);
}

TEST_F(ImageStreamerTest, ASocketPathTooLongIsRefused) {
  std::string deep = served_.path() + "/" + std::string(100, 'd');
  ASSERT_TRUE(MakeDirs(deep, 0700).has_value());
  auto server = ImageStreamServer::Listen(deep, files_, kCurrentChunkHash, store_, key_);
  ASSERT_FALSE(server.has_value());
  EXPECT_NE(server.error().message().find("too long"), std::string::npos);
}

}  // namespace
}  // namespace cryo
