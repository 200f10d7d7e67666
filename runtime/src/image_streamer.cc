// SPDX-License-Identifier: Apache-2.0
#include "cryo/image_streamer.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "cryo/file_util.h"
#include "cryo/unique_fd.h"

namespace cryo {
namespace {

using Clock = std::chrono::steady_clock;

// CRIU's requests are a file name; anything longer is not one.
constexpr uint32_t kMaxRequest = 4096;
// Pipes as large as an unprivileged process may make them (1 MiB by
// default): fewer wake-ups of CRIU and of us.
constexpr int kPipeBytes = 1 << 20;
// Chunks of a file fetched and verified ahead of the one being written, and
// by how many threads.
constexpr size_t kAhead = 8;
constexpr size_t kFetchers = 2;

// img_streamer_request_entry{required string filename = 1}: the only field,
// once, length-delimited. Returns nullopt for anything else.
std::optional<std::string> ParseRequest(std::string_view msg) {
  if (msg.empty() || static_cast<unsigned char>(msg[0]) != 0x0a) return std::nullopt;
  uint64_t len = 0;
  size_t i = 1;
  for (int shift = 0; i < msg.size() && shift < 35; shift += 7) {
    auto b = static_cast<unsigned char>(msg[i++]);
    len |= uint64_t{b & 0x7fu} << shift;
    if ((b & 0x80) == 0) {
      if (len != msg.size() - i) return std::nullopt;
      return std::string(msg.substr(i));
    }
  }
  return std::nullopt;
}

// img_streamer_reply_entry{required bool exists = 1}, with its length.
std::string Reply(bool exists) {
  return std::string("\x02\x00\x00\x00\x08", 5) + (exists ? '\x01' : '\x00');
}

Status SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return SysFail("send to CRIU");
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

// Reads exactly buf.size() bytes; false at a clean end of file before any.
Result<bool> ReadExact(int fd, std::span<char> buf) {
  auto n = ReadFull(fd, buf);
  if (!n) return std::unexpected(n.error());
  if (*n == 0) return false;
  if (*n != buf.size()) return Fail(ErrorKind::kInternal, "CRIU's request was cut short");
  return true;
}

// The pipe end CRIU passes with a one-byte payload.
Result<UniqueFd> ReceivePipe(int sock) {
  char dummy;
  iovec iov{&dummy, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return SysFail("receive a pipe from CRIU");
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (n != 1 || c == nullptr || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
      c->cmsg_len != CMSG_LEN(sizeof(int))) {
    return Fail(ErrorKind::kInternal, "CRIU sent no pipe after a file request");
  }
  int fd;
  std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return UniqueFd(fd);
}

class StreamServer final : public ImageStreamServer {
 public:
  StreamServer(UniqueFd listener, UniqueFd stop, const std::vector<ImageFile>& files,
               ChunkHash hash, Store& store, const Key& key, ImageProgress progress)
      : listener_(std::move(listener)),
        stop_(std::move(stop)),
        files_(files),
        hash_(hash),
        store_(store),
        key_(key),
        progress_(std::move(progress)),
        start_(Clock::now()) {
    serving_ = std::jthread([this] { Serve(); });
  }
  ~StreamServer() override { (void)Finish(); }

  Status Finish() override {
    uint64_t one = 1;
    (void)!::write(stop_.get(), &one, sizeof one);
    if (serving_.joinable()) serving_.join();
    std::vector<std::jthread> feeders;
    {
      std::lock_guard lock(mu_);
      feeders = std::move(feeders_);
    }
    feeders.clear();  // joins
    std::lock_guard lock(mu_);
    if (error_) return std::unexpected(*error_);
    return {};
  }

  int64_t fed_ms() const override { return fed_ms_.load(); }

 private:
  void SetError(Error e) {
    std::lock_guard lock(mu_);
    if (!error_) error_ = std::move(e);
  }

  // Waits for `fd` to be readable; false once Finish() was called.
  bool WaitReadable(int fd) {
    pollfd p[2] = {{fd, POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    for (;;) {
      int r = ::poll(p, 2, -1);
      if (r < 0 && errno == EINTR) continue;
      return r > 0 && p[1].revents == 0;
    }
  }

  void Serve() {
    if (!WaitReadable(listener_.get())) return;
    UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) {
      SetError(SysFail("accept CRIU's image stream").error());
      return;
    }
    while (WaitReadable(conn.get())) {
      auto more = ServeOne(conn.get());
      if (!more) SetError(more.error());
      if (!more || !*more) break;
    }
    // CRIU is done asking; the feeders may still be writing.
  }

  // Answers one request; false when CRIU hung up.
  Result<bool> ServeOne(int conn) {
    char len_bytes[4];
    auto got = ReadExact(conn, len_bytes);
    if (!got) return std::unexpected(got.error());
    if (!*got) return false;
    uint32_t len = 0;
    for (int i = 3; i >= 0; --i) len = (len << 8) | static_cast<unsigned char>(len_bytes[i]);
    if (len == 0 || len > kMaxRequest) {
      return Fail(ErrorKind::kInternal, "CRIU sent a malformed image request");
    }
    std::string msg(len, '\0');
    auto body = ReadExact(conn, msg);
    if (!body) return std::unexpected(body.error());
    if (!*body) return Fail(ErrorKind::kInternal, "CRIU's request was cut short");
    auto name = ParseRequest(msg);
    if (!name) return Fail(ErrorKind::kInternal, "CRIU sent a malformed image request");
    const ImageFile* file = nullptr;
    for (const auto& f : files_) {
      if (f.name == *name) file = &f;
    }
    if (auto s = SendAll(conn, Reply(file != nullptr)); !s) return std::unexpected(s.error());
    if (file == nullptr) return true;  // an optional image this checkpoint lacks
    auto pipe = ReceivePipe(conn);
    if (!pipe) return std::unexpected(pipe.error());
    std::lock_guard lock(mu_);
    ++pending_;
    feeders_.emplace_back([this, file, fd = std::move(*pipe)]() mutable {
      Feed(*file, std::move(fd));
      std::lock_guard l(mu_);
      if (--pending_ == 0) {
        fed_ms_ =
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start_).count();
      }
    });
    return true;
  }

  // Writes `file` into `pipe`, chunk by chunk in order, each verified first.
  // Two fetchers read and verify up to kAhead chunks ahead of the writer.
  void Feed(const ImageFile& file, UniqueFd pipe) {
    (void)::fcntl(pipe.get(), F_SETPIPE_SZ, kPipeBytes);
    const size_t n = file.chunks.size();
    std::mutex mu;
    std::condition_variable changed;
    std::vector<std::optional<Result<std::string>>> ring(kAhead);
    size_t written = 0;  // chunks the writer has taken; guarded by mu
    bool stop = false;   // guarded by mu
    std::atomic<size_t> next{0};
    auto fetch = [&] {
      ChunkReader reader(store_, key_, hash_);
      for (size_t i; (i = next.fetch_add(1)) < n;) {
        {
          std::unique_lock lock(mu);
          changed.wait(lock, [&] { return stop || i < written + kAhead; });
          if (stop) return;
        }
        auto chunk = reader.Read(file, i);
        std::lock_guard lock(mu);
        ring[i % kAhead] = chunk ? Result<std::string>(std::string(*chunk))
                                 : Result<std::string>(std::unexpected(chunk.error()));
        changed.notify_all();
      }
    };
    std::vector<std::jthread> fetchers;
    for (size_t f = 0; f < std::min<size_t>(kFetchers, n); ++f) fetchers.emplace_back(fetch);
    auto halt = [&] {
      std::lock_guard lock(mu);
      stop = true;
      changed.notify_all();
    };
    for (size_t i = 0; i < n; ++i) {
      Result<std::string> chunk;
      {
        std::unique_lock lock(mu);
        changed.wait(lock, [&] { return ring[i % kAhead].has_value(); });
        chunk = std::move(*ring[i % kAhead]);
        ring[i % kAhead].reset();
        ++written;
        changed.notify_all();
      }
      if (!chunk) {
        // Ends the file early: CRIU's restore fails on it.
        SetError(chunk.error());
        return halt();
      }
      if (auto s = WriteAll(pipe.get(), *chunk); !s) {
        // CRIU stopped reading this file (it failed, or needs no more).
        return halt();
      }
      if (progress_) progress_(chunk->size());
    }
  }

  UniqueFd listener_;
  UniqueFd stop_;
  const std::vector<ImageFile>& files_;
  const ChunkHash hash_;
  Store& store_;
  const Key& key_;
  const ImageProgress progress_;
  const Clock::time_point start_;
  std::atomic<int64_t> fed_ms_{0};
  std::mutex mu_;  // guards the three below
  std::optional<Error> error_;
  std::vector<std::jthread> feeders_;
  int pending_ = 0;
  std::jthread serving_;  // last: stopped before the rest goes
};

}  // namespace

Result<std::unique_ptr<ImageStreamServer>> ImageStreamServer::Listen(
    const std::string& images_dir, const std::vector<ImageFile>& files, ChunkHash hash,
    Store& store, const Key& key, ImageProgress progress) {
  std::string path = images_dir + "/" + kStreamerServeSocket;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    return Fail(ErrorKind::kInvalidArgument, "image stream socket path too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock.valid()) return SysFail("socket");
  ::unlink(path.c_str());
  if (::bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return SysFail("bind " + path);
  }
  if (::listen(sock.get(), 1) != 0) return SysFail("listen " + path);
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC));
  if (!stop.valid()) return SysFail("eventfd");
  return std::make_unique<StreamServer>(std::move(sock), std::move(stop), files, hash, store, key,
                                        std::move(progress));
}

}  // namespace cryo
