// SPDX-License-Identifier: Apache-2.0
// The image streamer against a client that speaks CRIU's side of the
// protocol as criu/img-streamer.c does (a u32 length and a request, the
// reply, then a pipe's write end passed with SCM_RIGHTS and one byte). The
// end-to-end tests restore real jobs with real CRIU through it.
#include "cryo/image_streamer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>

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

  // Sends a raw request message (already encoded) with its length.
  void SendRaw(const std::string& msg) {
    uint32_t len = static_cast<uint32_t>(msg.size());
    std::string out(reinterpret_cast<const char*>(&len), 4);  // little-endian here
    out += msg;
    ASSERT_TRUE(WriteAll(sock_.get(), out).has_value());
  }
  // Asks for `name`: its contents, or nullopt if the server says it has none.
  std::optional<std::string> Get(const std::string& name) {
    std::string msg = "\x0a" + std::string(1, static_cast<char>(name.size())) + name;
    SendRaw(msg);
    char reply[6];
    if (ReadFull(sock_.get(), reply).value_or(0) != sizeof reply) {
      ADD_FAILURE() << "no reply";
      return std::nullopt;
    }
    EXPECT_EQ(std::string(reply, 5), std::string("\x02\x00\x00\x00\x08", 5));
    if (reply[5] == 0) return std::nullopt;
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    UniqueFd r(fds[0]), w(fds[1]);
    SendPipe(w.get());
    w.reset();
    auto data = ReadToEnd(r.get());
    return data.value_or("");
  }
  void Close() { sock_.reset(); }
  // Waits until the server hangs up (it read what was sent and gave up).
  bool WaitForHangUp() {
    char c;
    return ::read(sock_.get(), &c, 1) == 0;
  }

 private:
  void SendPipe(int fd) {
    char dummy = 0;
    iovec iov{&dummy, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    ASSERT_EQ(::sendmsg(sock_.get(), &msg, 0), 1);
  }

  UniqueFd sock_;
  bool connected_ = false;
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

TEST_F(ImageStreamerTest, AChunkThatFailsVerificationIsNeverWrittenAndEndsTheFile) {
  // Damage the third chunk of pages-1.img in the store.
  const ImageFile* pages = nullptr;
  for (const auto& f : files_) {
    if (f.name == "pages-1.img") pages = &f;
  }
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
}

TEST_F(ImageStreamerTest, AMalformedRequestIsAnErrorNotACrash) {
  auto server = Listen();
  FakeCriu criu(served_.path());
  criu.SendRaw(
      std::string("\x12\x03"
                  "abc",
                  5));  // field 2, not 1
  EXPECT_TRUE(criu.WaitForHangUp());
  auto status = server->Finish();
  ASSERT_FALSE(status.has_value());
  EXPECT_NE(status.error().message().find("malformed"), std::string::npos);
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
