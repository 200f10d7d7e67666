// SPDX-License-Identifier: Apache-2.0
#include "cryo/image_streamer.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <system_error>
#include <thread>
#include <utility>

#include "cryo/unique_fd.h"

namespace cryo {
namespace {

using Clock = std::chrono::steady_clock;

// CRIU's requests are a file name; anything longer is not one.
constexpr uint32_t kMaxRequest = 4096;
// Pipes as large as an unprivileged process may make them (1 MiB by
// default): fewer wake-ups of CRIU and of us.
constexpr int kPipeBytes = 1 << 20;
// Chunks of a file fetched and verified ahead of the one being written.
constexpr size_t kAhead = 8;

// Threads that fetch and verify a file's chunks: CRIU, reading them, needs
// a core of its own. On 2 cores one fetcher restores faster than two, which
// take CPU from CRIU and contend with it for the pipe (measured: 1 GiB in
// 0.99 s instead of 1.14 s, cryod's CPU 0.82 s instead of 0.95 s); a
// fetcher alone, in the thread that splices, is slower still (1.5 s).
size_t FetcherCount() {
  unsigned cores = std::thread::hardware_concurrency();
  return cores >= 3 ? 2 : 1;
}

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

// The u32 in front of every message is in host byte order: CRIU writes and
// reads it as a uint32_t as it is in memory (pb_write_one and pb_read_one in
// criu/protobuf.c), and only ever talks to a streamer on the same machine.
uint32_t DecodeLength(const char (&bytes)[4]) {
  uint32_t len;
  std::memcpy(&len, bytes, sizeof len);
  return len;
}

// img_streamer_reply_entry{required bool exists = 1}, after its length.
std::string Reply(bool exists) {
  const char body[] = {'\x08', exists ? '\x01' : '\x00'};
  uint32_t len = sizeof body;
  std::string out(sizeof len, '\0');
  std::memcpy(out.data(), &len, sizeof len);
  out.append(body, sizeof body);
  return out;
}

// Whether nobody reads the pipe whose write end `fd` is any more.
bool ReaderGone(int fd) {
  pollfd p{fd, POLLOUT, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLERR) != 0;
}

// A chunk read into whole pages of its own, so that once spliced into a pipe
// they can be taken out of our address space while the pipe keeps them.
class PageBuffer {
 public:
  // Room for `size` bytes, uninitialised.
  static PageBuffer WithRoom(size_t size) {
    PageBuffer b;
    b.capacity_ = std::max(kPage, (size + kPage - 1) / kPage * kPage);
    b.base_ = static_cast<char*>(std::aligned_alloc(kPage, b.capacity_));
    if (b.base_ == nullptr) throw std::bad_alloc();
    b.room_ = size;
    return b;
  }
  PageBuffer(PageBuffer&& other) noexcept
      : base_(std::exchange(other.base_, nullptr)),
        capacity_(other.capacity_),
        room_(other.room_),
        bytes_(other.bytes_) {}
  PageBuffer& operator=(PageBuffer&& other) noexcept {
    std::swap(base_, other.base_);
    std::swap(capacity_, other.capacity_);
    std::swap(room_, other.room_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  ~PageBuffer() { std::free(base_); }

  std::span<char> room() { return {base_, room_}; }
  // What of the room the buffer stands for from now on: the chunk's
  // plaintext, somewhere in room().
  void Keep(std::string_view bytes) { bytes_ = bytes; }
  std::string_view bytes() const { return bytes_; }

  // Puts fresh pages where ours were: whoever still references the old ones
  // (a pipe) keeps them, and nothing we do later can change them. False if
  // the kernel refused; the buffer is then never freed (see SplicedChunks).
  bool Detach() {
    void* fresh = ::mmap(base_, capacity_, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (fresh != MAP_FAILED) return true;
    base_ = nullptr;  // leaked on purpose
    return false;
  }

 private:
  static constexpr size_t kPage = 4096;
  PageBuffer() = default;

  char* base_ = nullptr;
  size_t capacity_ = 0;
  size_t room_ = 0;
  std::string_view bytes_;
};

// Verified chunks whose pages CRIU's pipe references instead of copies
// (vmsplice): each must stay as it is until CRIU has read it, so it is kept
// until the pipe's count of unread bytes (FIONREAD) says CRIU is past it.
// At most a pipe's worth of chunks is held. Used by one thread.
class SplicedChunks {
 public:
  explicit SplicedChunks(int pipe) : pipe_(pipe) {}
  SplicedChunks(const SplicedChunks&) = delete;
  SplicedChunks& operator=(const SplicedChunks&) = delete;
  // What is still held when the feeder gives up on a CRIU that neither
  // reads nor closes its pipe: the pipe keeps the pages, our memory gets
  // fresh ones, so CRIU can never read what we write there next.
  ~SplicedChunks() {
    for (auto& [chunk, end] : held_) chunk.Detach();
  }

  // The first `in_pipe` bytes of `chunk` went into the pipe.
  void Add(PageBuffer chunk, size_t in_pipe) {
    spliced_ += in_pipe;
    held_.emplace_back(std::move(chunk), spliced_);
    Release();
  }

  // Frees the chunks CRIU has read; true once none is held.
  bool Release() {
    int unread = 0;
    if (held_.empty() || ::ioctl(pipe_, FIONREAD, &unread) != 0) return held_.empty();
    uint64_t read = spliced_ - static_cast<uint64_t>(unread);
    while (!held_.empty() && held_.front().second <= read) held_.pop_front();
    return held_.empty();
  }

  // Nobody can read the pipe any more: its pages are nobody's concern.
  void Clear() { held_.clear(); }

 private:
  const int pipe_;
  uint64_t spliced_ = 0;
  std::deque<std::pair<PageBuffer, uint64_t>> held_;  // each with its end in the stream
};

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
    serving_ = std::jthread([this] { Serve(); });  // may throw std::system_error
  }
  ~StreamServer() override { (void)Finish(); }

  Status Finish() override {
    stopped_ = true;
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

  bool chunk_failed() const override {
    std::lock_guard lock(mu_);
    return chunk_failed_;
  }

  int64_t fed_ms() const override { return fed_ms_.load(); }

 private:
  // Keeps the first failure, but a chunk's failure over any other.
  void SetError(Error e, bool chunk) {
    std::lock_guard lock(mu_);
    if (!error_ || (chunk && !chunk_failed_)) {
      error_ = std::move(e);
      chunk_failed_ = chunk;
    }
  }

  // Waits until `fd` has one of `events` (or an error, or a hang-up) or
  // Finish() was called; false if the latter and `fd` is not ready, so that
  // what CRIU sent or closed before Finish() is still seen.
  bool Wait(int fd, short events) {
    pollfd p[2] = {{fd, events, 0}, {stop_.get(), POLLIN, 0}};
    for (;;) {
      int r = ::poll(p, 2, -1);
      if (r < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      if (p[0].revents != 0) return true;
      if (p[1].revents != 0) return false;
    }
  }

  // Every socket and pipe below is non-blocking, so that Finish() can
  // interrupt any wait for CRIU: a blocked read or write could not be.

  void Serve() {
    UniqueFd conn;
    for (;;) {
      conn.reset(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (conn.valid()) break;
      if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) {
        if (!Wait(listener_.get(), POLLIN)) return;
        continue;
      }
      SetError(SysFail("accept CRIU's image stream").error(), false);
      return;
    }
    while (!stopped_) {
      auto more = ServeOne(conn.get());
      if (!more) SetError(more.error(), false);
      if (!more || !*more) break;
    }
    // CRIU is done asking (or we hung up on it); the feeders may still be
    // writing.
  }

  // Reads exactly buf.size() bytes of CRIU's connection; false if CRIU hung
  // up first (even mid-message: it was ended) or Finish() was called.
  Result<bool> Read(int conn, std::span<char> buf) {
    size_t got = 0;
    while (got < buf.size()) {
      ssize_t n = ::read(conn, buf.data() + got, buf.size() - got);
      if (n > 0) {
        got += static_cast<size_t>(n);
      } else if (n == 0 || errno == ECONNRESET) {
        return false;
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!Wait(conn, POLLIN)) return false;
      } else if (errno != EINTR) {
        return SysFail("read CRIU's image request");
      }
    }
    return true;
  }

  // Sends all of `data` to CRIU; false if CRIU hung up or Finish() was
  // called.
  Result<bool> Send(int conn, std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(conn, data.data(), data.size(), MSG_NOSIGNAL);
      if (n >= 0) {
        data.remove_prefix(static_cast<size_t>(n));
      } else if (errno == EPIPE || errno == ECONNRESET) {
        return false;
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!Wait(conn, POLLOUT)) return false;
      } else if (errno != EINTR) {
        return SysFail("send to CRIU");
      }
    }
    return true;
  }

  // The write end of a pipe CRIU passes with a one-byte payload, made
  // non-blocking. No fd (and no error) if CRIU hung up or Finish() was
  // called; an error, with whatever came closed, for anything but one
  // pipe's write end.
  Result<UniqueFd> ReceivePipe(int conn) {
    char dummy;
    iovec iov{&dummy, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    for (;;) {
      n = ::recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
      if (n >= 0) break;
      if (errno == ECONNRESET) return UniqueFd();
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!Wait(conn, POLLIN)) return UniqueFd();
      } else if (errno != EINTR) {
        return SysFail("receive a pipe from CRIU");
      }
    }
    // Own whatever fds came first, so that every refusal below closes them.
    std::vector<UniqueFd> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      auto* data = reinterpret_cast<char*>(CMSG_DATA(c));
      size_t room = static_cast<size_t>(control + msg.msg_controllen - data);
      if (c->cmsg_len < CMSG_LEN(0)) break;
      size_t count = std::min(c->cmsg_len - CMSG_LEN(0), room) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, data + i * sizeof fd, sizeof fd);
        fds.emplace_back(fd);
      }
    }
    if (n == 0) return UniqueFd();  // CRIU hung up
    if ((msg.msg_flags & MSG_CTRUNC) != 0) {
      return Fail(ErrorKind::kInternal,
                  "CRIU sent more than one pipe's fd after a file request (control data cut "
                  "short)");
    }
    if (n != 1 || fds.size() != 1) {
      return Fail(ErrorKind::kInternal, "CRIU sent no pipe after a file request");
    }
    UniqueFd pipe = std::move(fds[0]);
    struct stat st {};
    if (::fstat(pipe.get(), &st) != 0) return SysFail("fstat the pipe CRIU sent");
    if (!S_ISFIFO(st.st_mode)) {
      return Fail(ErrorKind::kInternal, "CRIU sent an fd that is not a pipe after a file request");
    }
    int flags = ::fcntl(pipe.get(), F_GETFL);
    if (flags < 0) return SysFail("fcntl the pipe CRIU sent");
    if ((flags & O_ACCMODE) != O_WRONLY) {
      return Fail(ErrorKind::kInternal,
                  "CRIU sent a pipe not open for writing (only) after a file request");
    }
    if (::fcntl(pipe.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
      return SysFail("make the pipe CRIU sent non-blocking");
    }
    return pipe;
  }

  // Answers one request; false when CRIU hung up or Finish() was called.
  Result<bool> ServeOne(int conn) {
    char len_bytes[4];
    auto got = Read(conn, len_bytes);
    if (!got || !*got) return got;
    uint32_t len = DecodeLength(len_bytes);
    if (len == 0 || len > kMaxRequest) {
      return Fail(ErrorKind::kInternal, "CRIU sent a malformed image request");
    }
    std::string msg(len, '\0');
    got = Read(conn, msg);
    if (!got || !*got) return got;
    auto name = ParseRequest(msg);
    if (!name) return Fail(ErrorKind::kInternal, "CRIU sent a malformed image request");
    const ImageFile* file = nullptr;
    for (const auto& f : files_) {
      if (f.name == *name) file = &f;
    }
    auto sent = Send(conn, Reply(file != nullptr));
    if (!sent || !*sent) return sent;
    if (file == nullptr) return true;  // an optional image this checkpoint lacks
    auto pipe = ReceivePipe(conn);
    if (!pipe) return std::unexpected(pipe.error());
    if (!pipe->valid()) return false;
    return StartFeeder(*file, std::move(*pipe));
  }

  // A thread of its own feeds `file` into `pipe`. If none can be started,
  // the pipe is closed (CRIU sees the file end at once) and the error
  // returned makes us hang up.
  Result<bool> StartFeeder(const ImageFile& file, UniqueFd pipe) {
    {
      std::lock_guard lock(mu_);
      ++pending_;
    }
    try {
      std::jthread feeder([this, &file, fd = std::move(pipe)]() mutable {
        // A write to a pipe CRIU closed fails with EPIPE; SIGPIPE, which
        // would end the process unless ignored, stays pending for this
        // thread and goes with it.
        sigset_t pipe_signal;
        sigemptyset(&pipe_signal);
        sigaddset(&pipe_signal, SIGPIPE);
        ::pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
        Feed(file, std::move(fd));
        std::lock_guard l(mu_);
        if (--pending_ == 0) {
          fed_ms_ =
              std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start_).count();
        }
      });
      std::lock_guard lock(mu_);
      feeders_.push_back(std::move(feeder));
    } catch (const std::system_error& e) {
      std::lock_guard lock(mu_);
      --pending_;
      return SysFail("cannot start a thread to feed image " + file.name + " to CRIU",
                     e.code().value());
    }
    return true;
  }

  // Puts `chunk` into CRIU's pipe, then hands it to `spliced`, which keeps
  // it as long as the pipe may still reference it. Returns false if CRIU
  // closed the pipe (it failed, or needs no more of the file). Fails if
  // Finish() is called while CRIU neither reads nor closes it.
  Result<bool> WriteToCriu(const ImageFile& file, int pipe, PageBuffer chunk,
                           SplicedChunks& spliced) {
    const std::string_view bytes = chunk.bytes();
    size_t done = 0;
    auto keep = [&](Result<bool> result) {
      spliced.Add(std::move(chunk), done);
      return result;
    };
    while (done < bytes.size()) {
      if (stopped_) {
        if (ReaderGone(pipe)) return keep(false);
        return keep(Fail(ErrorKind::kUnavailable,
                         "image " + file.name +
                             ": the stream was stopped before CRIU read all of it (CRIU neither "
                             "read nor closed its pipe)"));
      }
      iovec iov{const_cast<char*>(bytes.data()) + done, bytes.size() - done};
      ssize_t n = ::vmsplice(pipe, &iov, 1, SPLICE_F_NONBLOCK);
      if (n >= 0) {
        done += static_cast<size_t>(n);
      } else if (errno == EPIPE) {
        return keep(false);
      } else if (errno == EAGAIN) {
        // Woken by CRIU reading or closing, or by Finish(): the loop's start tells.
        if (!Wait(pipe, POLLOUT) && !stopped_) return keep(SysFail("poll CRIU's pipe"));
      } else if (errno != EINTR) {
        return keep(SysFail("write image " + file.name + " to CRIU"));
      }
    }
    return keep(true);
  }

  // Writes `file` into `pipe`, then waits until CRIU has read the chunks
  // spliced into it (or closed it, or the stream is stopped).
  void Feed(const ImageFile& file, UniqueFd pipe) {
    (void)::fcntl(pipe.get(), F_SETPIPE_SZ, kPipeBytes);
    SplicedChunks spliced(pipe.get());
    FeedChunks(file, pipe.get(), spliced);
    for (auto pause = std::chrono::microseconds(100); !spliced.Release() && !stopped_;
         pause = std::min(2 * pause, std::chrono::microseconds(5000))) {
      if (ReaderGone(pipe.get())) return spliced.Clear();
      std::this_thread::sleep_for(pause);
    }
    if (ReaderGone(pipe.get())) spliced.Clear();
  }

  // Splices `file` into `pipe`, chunk by chunk in order, each verified
  // first. Fetchers (FetcherCount()) read and verify up to kAhead chunks
  // ahead of the writer.
  void FeedChunks(const ImageFile& file, int pipe, SplicedChunks& spliced) {
    const size_t n = file.chunks.size();
    std::mutex mu;
    std::condition_variable changed;
    std::vector<std::optional<Result<PageBuffer>>> ring(kAhead);
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
        // Read, decoded and verified where it is spliced from: no copy.
        auto buffer = PageBuffer::WithRoom(ChunkReader::ReadRoom(file.chunks[i]));
        auto chunk = reader.ReadInto(file, i, buffer.room());
        if (chunk) buffer.Keep(*chunk);
        std::lock_guard lock(mu);
        ring[i % kAhead] = chunk ? Result<PageBuffer>(std::move(buffer))
                                 : Result<PageBuffer>(std::unexpected(chunk.error()));
        changed.notify_all();
      }
    };
    auto halt = [&] {
      std::lock_guard lock(mu);
      stop = true;
      changed.notify_all();
    };
    std::vector<std::jthread> fetchers;  // last: joined before the rest goes
    try {
      for (size_t f = 0; f < std::min(FetcherCount(), n); ++f) fetchers.emplace_back(fetch);
    } catch (const std::system_error& e) {
      // Nothing written: CRIU sees the file end at once.
      SetError(
          SysFail("cannot start a thread to fetch image " + file.name, e.code().value()).error(),
          false);
      return halt();
    }
    for (size_t i = 0; i < n; ++i) {
      Result<PageBuffer> chunk = [&] {
        std::unique_lock lock(mu);
        changed.wait(lock, [&] { return ring[i % kAhead].has_value(); });
        Result<PageBuffer> taken = std::move(*ring[i % kAhead]);
        ring[i % kAhead].reset();
        ++written;
        changed.notify_all();
        return taken;
      }();
      if (!chunk) {
        // Ends the file early: CRIU's restore fails on it.
        SetError(chunk.error(), true);
        return halt();
      }
      size_t size = chunk->bytes().size();
      auto sent = WriteToCriu(file, pipe, std::move(*chunk), spliced);
      if (!sent) SetError(sent.error(), false);
      if (!sent || !*sent) return halt();
      if (progress_) progress_(size);
    }
  }

  UniqueFd listener_;
  UniqueFd stop_;  // an eventfd, readable once Finish() was called
  const std::vector<ImageFile>& files_;
  const ChunkHash hash_;
  Store& store_;
  const Key& key_;
  const ImageProgress progress_;
  const Clock::time_point start_;
  std::atomic<bool> stopped_{false};  // set by Finish() before stop_
  std::atomic<int64_t> fed_ms_{0};
  mutable std::mutex mu_;  // guards the four below
  std::optional<Error> error_;
  bool chunk_failed_ = false;
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
  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!sock.valid()) return SysFail("socket");
  ::unlink(path.c_str());
  if (::bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return SysFail("bind " + path);
  }
  if (::listen(sock.get(), 1) != 0) return SysFail("listen " + path);
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC));
  if (!stop.valid()) return SysFail("eventfd");
  try {
    return std::make_unique<StreamServer>(std::move(sock), std::move(stop), files, hash, store, key,
                                          std::move(progress));
  } catch (const std::system_error& e) {
    return SysFail("cannot start the thread serving the image stream", e.code().value());
  }
}

}  // namespace cryo
