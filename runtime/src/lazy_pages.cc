// SPDX-License-Identifier: Apache-2.0
#include "cryo/lazy_pages.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "cryo/file_util.h"

namespace cryo {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;

// criu/include/magic.h
constexpr uint32_t kImgCommonMagic = 0x54564319;
constexpr uint32_t kPagemapMagic = 0x56084025;

// Addresses beyond this are not a pagemap's.
constexpr uint64_t kMaxAddress = uint64_t{1} << 57;
// Room for any chunk (1 MiB at most) as ChunkReader::ReadInto wants it.
constexpr size_t kBufferRoom = (size_t{1} << 20) + 64;

std::string Hex(uint64_t value) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(value));
  return buf;
}

CodedInputStream InputOver(std::string_view bytes) {
  return CodedInputStream(reinterpret_cast<const uint8_t*>(bytes.data()),
                          static_cast<int>(bytes.size()));
}

Error CorruptPagemap(const std::string& why) {
  return Error(ErrorKind::kCorrupt, "pagemap image: " + why);
}

// The varint fields we need of a message; others are skipped.
std::optional<std::map<int, uint64_t>> VarintFields(std::string_view message) {
  CodedInputStream in = InputOver(message);
  std::map<int, uint64_t> fields;
  while (true) {
    uint32_t tag = in.ReadTag();
    if (tag == 0) break;
    if (WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_VARINT) {
      uint64_t value = 0;
      if (!in.ReadVarint64(&value)) return std::nullopt;
      fields[static_cast<int>(WireFormatLite::GetTagFieldNumber(tag))] = value;
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return std::nullopt;
    }
  }
  if (!in.ConsumedEntireMessage() || in.CurrentPosition() != static_cast<int>(message.size())) {
    return std::nullopt;
  }
  return fields;
}

// Byte ranges of the pages image that hold lazy pages, merged, ascending.
std::vector<std::pair<uint64_t, uint64_t>> LazyRanges(const Pagemap& pagemap) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& run : pagemap.runs) {
    if (!run.present() || !run.lazy() || run.pages == 0) continue;
    if (!ranges.empty() && ranges.back().second == run.offset) {
      ranges.back().second += run.bytes();
    } else {
      ranges.emplace_back(run.offset, run.offset + run.bytes());
    }
  }
  return ranges;
}

std::vector<uint64_t> ChunkStarts(const ImageFile& file) {
  std::vector<uint64_t> starts{0};
  for (const auto& c : file.chunks) starts.push_back(starts.back() + c.size);
  return starts;
}

// Turns what `criu restore --lazy-pages` sends into (pid, userfaultfd)
// pairs (cryo/lazy_pages.h).
class UffdInbox {
 public:
  // Reads what `socket` has, without waiting. False at its end or on error.
  bool Read(int socket, std::string* error) {
    while (true) {
      char bytes[256];
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
      iovec iov{bytes, sizeof bytes};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      ssize_t n = ::recvmsg(socket, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          fds_.emplace_back(fd);
        }
      }
      if ((msg.msg_flags & MSG_CTRUNC) != 0) {
        *error = "CRIU sent more userfaultfds at once than expected";
        return false;
      }
      if (n == 0) return false;
      bytes_.append(bytes, static_cast<size_t>(n));
      if (!Parse(error)) return false;
    }
  }

  std::map<int32_t, UniqueFd>& uffds() { return uffds_; }

 private:
  bool Parse(std::string* error) {
    while (bytes_.size() >= sizeof(int32_t)) {
      int32_t pid;
      std::memcpy(&pid, bytes_.data(), sizeof pid);
      if (static_cast<uint32_t>(pid) == kRestoreFinished) {  // the tree runs
        bytes_.erase(0, sizeof pid);
        continue;
      }
      if (pid < 0) {  // a zombie: nothing to fill
        bytes_.erase(0, sizeof pid);
        continue;
      }
      if (pid == 0) {
        *error = "CRIU sent a userfaultfd for pid 0";
        return false;
      }
      // The pid, then one byte that carried the fd.
      if (bytes_.size() < sizeof pid + 1) return true;
      if (fds_.empty()) {
        *error = "CRIU sent no userfaultfd for task " + std::to_string(pid);
        return false;
      }
      uffds_[pid] = std::move(fds_.front());
      fds_.pop_front();
      bytes_.erase(0, sizeof pid + 1);
    }
    return true;
  }

  // criu/uffd.c LAZY_PAGES_RESTORE_FINISHED
  static constexpr uint32_t kRestoreFinished = 0x52535446;
  std::string bytes_;
  std::deque<UniqueFd> fds_;
  std::map<int32_t, UniqueFd> uffds_;
};

// Reads verified chunks into a buffer of its own, used again for each.
class BufferedChunkReader {
 public:
  BufferedChunkReader(Store& store, const Key& key, ChunkHash hash) : reader_(store, key, hash) {}
  Result<std::string_view> Read(const ImageFile& file, size_t index) {
    size_t need = std::max(ChunkReader::ReadRoom(file.chunks[index]), kBufferRoom);
    if (need > room_) {
      room_ = need;
      buffer_ = std::make_unique<char[]>(room_);
    }
    return reader_.ReadInto(file, index, {buffer_.get(), room_});
  }

 private:
  ChunkReader reader_;
  std::unique_ptr<char[]> buffer_;
  size_t room_ = 0;
};

uint64_t PageDown(uint64_t offset) { return offset / kPageBytes * kPageBytes; }
uint64_t PageUp(uint64_t offset) { return PageDown(offset + kPageBytes - 1); }

class Filler final : public LazyMemoryFiller {
 public:
  Filler(std::string socket_path, UniqueFd listener, UniqueFd control, const LazyTasks& tasks,
         ChunkHash hash, Store& store, const Key& key, ImageProgress progress)
      : socket_path_(std::move(socket_path)),
        listener_(std::move(listener)),
        control_(std::move(control)),
        tasks_(tasks),
        hash_(hash),
        store_(store),
        key_(key),
        progress_(std::move(progress)) {}

  ~Filler() override { (void)Finish(); }

  Status Begin() {
    if (auto s = Prepare(); !s) return s;
    try {
      thread_ = std::thread([this] { Run(); });
    } catch (const std::system_error& e) {
      return Fail(ErrorKind::kInternal, std::string("start filling memory: ") + e.what());
    }
    return {};
  }

  Status Finish() override {
    if (control_.valid()) ::shutdown(control_.get(), SHUT_RDWR);
    if (thread_.joinable()) thread_.join();
    if (listener_.valid()) {
      listener_.reset();
      ::unlink(socket_path_.c_str());
    }
    // Kept open until now: CRIU still tells it when the tree runs, and a
    // hung-up socket would fail its restore at the last step.
    connection_.reset();
    inbox_.uffds().clear();
    std::lock_guard lock(mu_);
    if (error_) return std::unexpected(*error_);
    return {};
  }

  bool filled() const override { return filled_.load(); }
  bool chunk_failed() const override {
    std::lock_guard lock(mu_);
    return chunk_failed_;
  }
  uint64_t filled_bytes() const override { return filled_bytes_.load(); }

 private:
  // A lazy run of a task: `bytes` at `offset` of its pages image, at `vaddr`.
  struct LazyRun {
    uint64_t offset, bytes, vaddr;
  };
  struct Task {
    uint64_t id = 0;
    int uffd = -1;
    const ImageFile* file = nullptr;
    std::vector<uint64_t> starts;  // of each chunk, and the end
    std::vector<LazyRun> runs;     // ascending offsets
  };
  struct Work {
    Task* task;
    size_t chunk;
  };
  // A page cut by a chunk boundary, put together from its pieces.
  struct Partial {
    std::unique_ptr<char[]> page;
    uint64_t bytes = 0;
  };

  void SetError(Error error, bool chunk) {
    std::lock_guard lock(mu_);
    if (!error_) {
      error_ = std::move(error);
      chunk_failed_ = chunk;
    }
    failed_ = true;
  }

  bool Accept() {
    UniqueFd client(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!client.valid()) return false;
    ucred peer{};
    socklen_t len = sizeof peer;
    // The socket is in cryod's root-only scratch space; still, only root's
    // CRIU may hand us memory to write.
    if (::getsockopt(client.get(), SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 || peer.uid != 0 ||
        connection_.valid()) {
      return false;
    }
    connection_ = std::move(client);
    return true;
  }

  void Receive() {
    std::string error;
    if (!inbox_.Read(connection_.get(), &error)) {
      connection_open_ = false;
      if (!error.empty()) SetError(Error(ErrorKind::kInvalidArgument, error), false);
    }
  }

  // The tasks with lazy pages, and the chunks that hold them.
  Status Prepare() {
    for (const auto& [id, lazy] : tasks_) {
      auto task = std::make_unique<Task>();
      task->id = id;
      task->file = lazy.pages;
      task->starts = ChunkStarts(*lazy.pages);
      for (const auto& run : lazy.pagemap.runs) {
        if (!run.lazy() || run.pages == 0) continue;
        if (!run.present()) {
          return Fail(ErrorKind::kCorrupt, "task " + std::to_string(id) +
                                               " has lazy pages the checkpoint does not hold at " +
                                               Hex(run.vaddr));
        }
        task->runs.push_back({run.offset, run.bytes(), run.vaddr});
        expected_ += run.bytes();
      }
      if (task->runs.empty()) continue;
      if (id > INT32_MAX) {
        return Fail(ErrorKind::kCorrupt, "task id " + std::to_string(id) + " is not a pid");
      }
      if (task->runs.back().offset + task->runs.back().bytes > task->starts.back()) {
        return Fail(ErrorKind::kCorrupt,
                    "pages image " + task->file->name + " is shorter than its pagemap says");
      }
      size_t c = 0;
      for (const auto& run : task->runs) {
        while (c < task->file->chunks.size() && task->starts[c + 1] <= run.offset) ++c;
        for (size_t i = c;
             i < task->file->chunks.size() && task->starts[i] < run.offset + run.bytes; ++i) {
          if (work_.empty() || work_.back().task != task.get() || work_.back().chunk < i) {
            work_.push_back({task.get(), i});
          }
        }
      }
      by_pid_[static_cast<int32_t>(id)] = std::move(task);
    }
    return {};
  }

  // Until asked to fill: takes the userfaultfds CRIU sends, and answers the
  // faults its restorer takes on lazy memory meanwhile (thread areas, rseq).
  void Run() {
    BufferedChunkReader reader(store_, key_, hash_);
    while (true) {
      std::vector<pollfd> fds = {
          {listener_.valid() && !connection_.valid() ? listener_.get() : -1, POLLIN, 0},
          {connection_.valid() && connection_open_ ? connection_.get() : -1, POLLIN, 0},
          {control_.get(), POLLIN, 0}};
      std::vector<int32_t> pids;
      for (const auto& [pid, uffd] : inbox_.uffds()) {
        fds.push_back({uffd.get(), POLLIN, 0});
        pids.push_back(pid);
      }
      int n = ::poll(fds.data(), fds.size(), -1);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        // Never to be answered: let whatever waits on us go on, to a failure.
        SetError(Error(ErrorKind::kInternal, std::string("poll: ") + std::strerror(errno)), false);
        inbox_.uffds().clear();
        ::shutdown(control_.get(), SHUT_RDWR);
        return;
      }
      if (fds[0].revents != 0) (void)Accept();
      if (fds[1].revents != 0) Receive();
      for (size_t i = 3; i < fds.size(); ++i) {
        if (fds[i].revents != 0) ServeFaults(reader, pids[i - 3], fds[i].fd);
      }
      if (fds[2].revents == 0) continue;
      char request = 0;
      ssize_t got = ::recv(control_.get(), &request, 1, 0);
      if (got < 0 && errno == EINTR) continue;
      if (got != 1 || request != 'F') return;  // the monitor is gone, or we finish
      Status s = FillAll(reader);
      if (!s) SetError(s.error(), false);  // the first error stays
      std::string answer = s ? "K" : "E" + s.error().ToString();
      (void)::send(control_.get(), answer.data(), answer.size(), MSG_NOSIGNAL);
      return;
    }
  }

  // The faults and events waiting on task `pid`'s userfaultfd.
  void ServeFaults(BufferedChunkReader& reader, int32_t pid, int uffd) {
    while (true) {
      uffd_msg msg{};
      ssize_t n = ::read(uffd, &msg, sizeof msg);
      if (n < 0 && errno == EINTR) continue;
      if (n != sizeof msg) return;
      if (msg.event != UFFD_EVENT_PAGEFAULT) {
        // Never from tasks that wait in CRIU's restorer: not followed.
        SetError(
            Error(ErrorKind::kInternal, "restored task " + std::to_string(pid) +
                                            " changed its memory (userfaultfd event " +
                                            std::to_string(msg.event) + ") before it was filled"),
            false);
        continue;
      }
      uint64_t page = PageDown(msg.arg.pagefault.address);
      if (auto s = ServeFault(reader, pid, uffd, page); !s) {
        // Zeros rather than a task stuck in the restorer, and CRIU with it:
        // the failure, recorded, kills the tree at post-restore.
        SetError(s.error(), false);
        (void)ZeroPage(uffd, page);
      }
    }
  }

  // One page: from the checkpoint, or zeros where it holds none. A chunk
  // that fails its check fails the filling, and zeros go there meanwhile:
  // the restorer must go on to CRIU's post-restore notification, whose
  // failed answer makes CRIU kill the tree before any of it runs.
  Status ServeFault(BufferedChunkReader& reader, int32_t pid, int uffd, uint64_t page) {
    auto it = by_pid_.find(pid);
    const LazyRun* run = nullptr;
    if (it != by_pid_.end()) {
      const auto& runs = it->second->runs;
      auto r = std::upper_bound(runs.begin(), runs.end(), page,
                                [](uint64_t at, const LazyRun& x) { return at < x.vaddr; });
      if (r != runs.begin() && page < std::prev(r)->vaddr + std::prev(r)->bytes)
        run = &*std::prev(r);
    }
    const Task* task = run != nullptr ? it->second.get() : nullptr;
    std::optional<std::string> data =
        task != nullptr ? PageOf(reader, *task, *run, page) : std::nullopt;
    if (!data) return ZeroPage(uffd, page);
    return Copy(uffd, static_cast<uint64_t>(pid), page, data->data(), kPageBytes);
  }

  Status ZeroPage(int uffd, uint64_t page) {
    uffdio_zeropage zero{};
    zero.range.start = page;
    zero.range.len = kPageBytes;
    if (::ioctl(uffd, UFFDIO_ZEROPAGE, &zero) != 0 && errno != EEXIST) {
      return Fail(ErrorKind::kInternal, "cannot map a zero page for a restored task at " +
                                            Hex(page) + ": " + std::strerror(errno));
    }
    return {};
  }

  // The page at `page` of `run`; nullopt (and the error set) if a chunk of
  // it failed.
  std::optional<std::string> PageOf(BufferedChunkReader& reader, const Task& task,
                                    const LazyRun& run, uint64_t page) {
    uint64_t offset = run.offset + (page - run.vaddr);
    std::string whole(kPageBytes, '\0');
    size_t c =
        static_cast<size_t>(std::upper_bound(task.starts.begin(), task.starts.end(), offset) -
                            task.starts.begin()) -
        1;
    for (uint64_t at = offset; at < offset + kPageBytes; ++c) {
      auto plain = reader.Read(*task.file, c);
      if (!plain) {
        SetError(plain.error(), true);
        return std::nullopt;
      }
      uint64_t from = at - task.starts[c];
      uint64_t take = std::min<uint64_t>(offset + kPageBytes - at, plain->size() - from);
      whole.replace(at - offset, take, plain->data() + from, take);
      at += take;
    }
    return whole;
  }

  Status FillAll(BufferedChunkReader& reader) {
    // Everything CRIU sent came before its post-restore notification.
    if (!connection_.valid()) {
      pollfd p{listener_.get(), POLLIN, 0};
      if (::poll(&p, 1, 0) == 1) (void)Accept();
    }
    if (connection_.valid() && connection_open_) Receive();
    for (const auto& [pid, uffd] : inbox_.uffds()) ServeFaults(reader, pid, uffd.get());
    {
      std::lock_guard lock(mu_);
      if (error_) return std::unexpected(*error_);
    }
    for (auto& [pid, task] : by_pid_) {
      auto uffd = inbox_.uffds().find(pid);
      if (uffd == inbox_.uffds().end()) {
        return Fail(ErrorKind::kInternal, "CRIU sent no userfaultfd for task " +
                                              std::to_string(pid) +
                                              ", whose memory is restored lazily");
      }
      task->uffd = uffd->second.get();
    }
    std::atomic<size_t> next{0};
    std::vector<std::thread> workers;
    try {
      for (size_t i = 0; i < WorkerCount(); ++i) {
        workers.emplace_back([&] { FillFrom(work_, next); });
      }
    } catch (const std::system_error& e) {
      SetError(Error(ErrorKind::kInternal, std::string("start filling memory: ") + e.what()),
               false);
    }
    for (auto& t : workers) t.join();
    std::lock_guard lock(mu_);
    if (error_) return std::unexpected(*error_);
    if (!partials_.empty() || filled_bytes_.load() != expected_) {
      error_ = Error(ErrorKind::kCorrupt,
                     "the pages images hold " + std::to_string(filled_bytes_.load()) +
                         " bytes of lazy memory, the pagemaps " + std::to_string(expected_));
      return std::unexpected(*error_);
    }
    // Closed before CRIU lets the tasks run: nothing of theirs waits on us.
    inbox_.uffds().clear();
    filled_ = true;
    return {};
  }

  // On 2 cores: two, each fetching, checking and copying its own chunks.
  static size_t WorkerCount() {
    return std::clamp<size_t>(std::thread::hardware_concurrency(), 2, 4);
  }

  void FillFrom(const std::vector<Work>& work, std::atomic<size_t>& next) {
    BufferedChunkReader reader(store_, key_, hash_);
    while (!failed_.load()) {
      size_t i = next.fetch_add(1);
      if (i >= work.size()) return;
      const Work& w = work[i];
      auto plain = reader.Read(*w.task->file, w.chunk);
      if (!plain) {
        SetError(plain.error(), true);
        return;
      }
      if (auto s = Place(*w.task, w.task->starts[w.chunk], *plain); !s) {
        SetError(s.error(), false);
        return;
      }
    }
  }

  // Puts the lazy pages of a chunk that starts at `start` of the task's
  // pages image in place: whole pages at once, those cut by the chunk's
  // edges once all their pieces are there.
  Status Place(const Task& task, uint64_t start, std::string_view plain) {
    uint64_t end = start + plain.size();
    auto run =
        std::upper_bound(task.runs.begin(), task.runs.end(), start,
                         [](uint64_t at, const LazyRun& r) { return at < r.offset + r.bytes; });
    for (; run != task.runs.end() && run->offset < end; ++run) {
      uint64_t from = std::max(start, run->offset), to = std::min(end, run->offset + run->bytes);
      auto at = [&](uint64_t offset) { return plain.data() + (offset - start); };
      auto vaddr = [&](uint64_t offset) { return run->vaddr + (offset - run->offset); };
      // A piece of the page `from` is in, whole pages, a piece of the last.
      uint64_t head_end = std::min(PageUp(from), to);
      uint64_t whole_end = std::max(PageDown(to), head_end);
      Status s;
      if (from < head_end) {
        s = Piece(task, PageDown(from), vaddr(PageDown(from)), from, at(from), head_end - from);
      }
      if (s && head_end < whole_end) {
        s = Copy(task.uffd, task.id, vaddr(head_end), at(head_end), whole_end - head_end);
      }
      if (s && whole_end < to) {
        s = Piece(task, whole_end, vaddr(whole_end), whole_end, at(whole_end), to - whole_end);
      }
      if (!s) return s;
    }
    return {};
  }

  // `bytes` of the page at `page` (an offset in the pages image) from `at`.
  Status Piece(const Task& task, uint64_t page, uint64_t vaddr, uint64_t at, const char* data,
               uint64_t bytes) {
    std::unique_ptr<char[]> whole;
    {
      std::lock_guard lock(mu_);
      Partial& p = partials_[{task.id, page}];
      if (!p.page) p.page = std::make_unique<char[]>(kPageBytes);
      std::memcpy(p.page.get() + (at - page), data, bytes);
      p.bytes += bytes;
      if (p.bytes < kPageBytes) return {};
      whole = std::move(p.page);
      partials_.erase({task.id, page});
    }
    return Copy(task.uffd, task.id, vaddr, whole.get(), kPageBytes);
  }

  // UFFDIO_COPY of whole pages, resumed where the kernel stopped. One copy
  // stays within one mapping (ENOENT otherwise), and a pagemap entry may
  // span two: such a range goes a page at a time. Pages already there were
  // put there by a fault (and maybe written to since): they stay, and count
  // once.
  Status Copy(int uffd, uint64_t id, uint64_t vaddr, const char* data, uint64_t bytes) {
    uint64_t done = 0, copied = 0;
    int busy = 0;
    bool page_at_a_time = false;
    while (done < bytes) {
      uint64_t len = page_at_a_time ? kPageBytes : bytes - done;
      uffdio_copy copy{};
      copy.dst = vaddr + done;
      copy.src = reinterpret_cast<uint64_t>(data + done);
      copy.len = len;
      if (::ioctl(uffd, UFFDIO_COPY, &copy) == 0) {
        copied += len;
        done += len;
        continue;
      }
      int err = errno;
      if (copy.copy > 0) {
        done += static_cast<uint64_t>(copy.copy);
        copied += static_cast<uint64_t>(copy.copy);
        continue;
      }
      if (err == EEXIST) {
        done += kPageBytes;
        continue;
      }
      if (err == ENOENT && len > kPageBytes) {
        page_at_a_time = true;
        continue;
      }
      // The address space is changing (never while the tasks wait in CRIU's
      // restorer): try again for a while.
      if ((err == EAGAIN || err == EINTR) && ++busy < kMaxBusyRetries) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      return Fail(ErrorKind::kInternal, "cannot fill the memory of restored task " +
                                            std::to_string(id) + " at " + Hex(vaddr + done) + ": " +
                                            std::strerror(err));
    }
    filled_bytes_ += copied;
    if (progress_ && copied > 0) progress_(copied);
    return {};
  }

  static constexpr int kMaxBusyRetries = 5000;

  std::map<int32_t, std::unique_ptr<Task>> by_pid_;
  std::vector<Work> work_;  // chunks holding lazy pages, task by task, in order
  uint64_t expected_ = 0;   // bytes of lazy pages
  std::string socket_path_;
  UniqueFd listener_;
  UniqueFd control_;
  UniqueFd connection_;
  bool connection_open_ = true;
  UffdInbox inbox_;
  const LazyTasks& tasks_;
  ChunkHash hash_;
  Store& store_;
  const Key& key_;
  ImageProgress progress_;
  std::thread thread_;
  std::atomic<bool> filled_{false};
  std::atomic<bool> failed_{false};
  std::atomic<uint64_t> filled_bytes_{0};

  mutable std::mutex mu_;
  std::map<std::pair<uint64_t, uint64_t>, Partial> partials_;  // by task and page offset
  bool chunk_failed_ = false;
  std::optional<Error> error_;
};

}  // namespace

Result<Pagemap> ParsePagemap(std::string_view image) {
  size_t at = 0;
  auto u32 = [&](uint32_t* out) {
    if (image.size() - at < 4) return false;
    std::memcpy(out, image.data() + at, 4);
    at += 4;
    return true;
  };
  uint32_t magic1 = 0, magic2 = 0;
  if (!u32(&magic1) || !u32(&magic2) || magic1 != kImgCommonMagic || magic2 != kPagemapMagic) {
    return std::unexpected(CorruptPagemap("bad magic"));
  }
  Pagemap map;
  bool head = true;
  uint64_t offset = 0;
  while (at < image.size()) {
    uint32_t len = 0;
    if (!u32(&len) || image.size() - at < len) {
      return std::unexpected(CorruptPagemap("truncated entry"));
    }
    auto fields = VarintFields(image.substr(at, len));
    at += len;
    if (!fields) return std::unexpected(CorruptPagemap("malformed entry"));
    if (head) {
      if (!fields->contains(1)) return std::unexpected(CorruptPagemap("no pages_id"));
      map.pages_id = static_cast<uint32_t>((*fields)[1]);
      head = false;
      continue;
    }
    if (!fields->contains(1)) return std::unexpected(CorruptPagemap("entry without vaddr"));
    PagemapRun run;
    run.vaddr = (*fields)[1];
    run.pages = fields->contains(5) ? (*fields)[5] : (fields->contains(2) ? (*fields)[2] : 0);
    // As CRIU reads older images (init_compat_pagemap_entry).
    if (fields->contains(3) && (*fields)[3] != 0) {
      run.flags = PagemapRun::kParent;
    } else {
      run.flags = fields->contains(4) ? static_cast<uint32_t>((*fields)[4]) : PagemapRun::kPresent;
    }
    if (run.vaddr % kPageBytes != 0 || run.vaddr >= kMaxAddress ||
        run.pages > (kMaxAddress - run.vaddr) / kPageBytes) {
      return std::unexpected(CorruptPagemap("an entry outside the address space"));
    }
    if (!map.runs.empty() && run.vaddr < map.runs.back().vaddr + map.runs.back().bytes()) {
      return std::unexpected(CorruptPagemap("entries out of order or overlapping"));
    }
    run.offset = offset;
    if (run.present()) offset += run.bytes();
    map.runs.push_back(run);
  }
  if (head) return std::unexpected(CorruptPagemap("no pagemap_head"));
  return map;
}

std::optional<uint64_t> PagemapImageId(std::string_view name) {
  constexpr std::string_view kPrefix = "pagemap-", kSuffix = ".img";
  if (!name.starts_with(kPrefix) || !name.ends_with(kSuffix)) return std::nullopt;
  std::string_view digits =
      name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
  uint64_t id = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size())
    return std::nullopt;
  return id;
}

std::string PagesImageName(uint32_t pages_id) {
  return "pages-" + std::to_string(pages_id) + ".img";
}

uint64_t LazyBytes(const LazyTasks& tasks) {
  uint64_t bytes = 0;
  for (const auto& [id, task] : tasks) {
    for (const auto& [begin, end] : LazyRanges(task.pagemap)) bytes += end - begin;
  }
  return bytes;
}

std::vector<bool> LazyOnlyChunks(const Pagemap& pagemap, const ImageFile& pages) {
  std::vector<bool> lazy(pages.chunks.size(), false);
  auto ranges = LazyRanges(pagemap);
  auto starts = ChunkStarts(pages);
  size_t r = 0;
  for (size_t c = 0; c < pages.chunks.size(); ++c) {
    while (r < ranges.size() && ranges[r].second <= starts[c]) ++r;
    lazy[c] =
        r < ranges.size() && ranges[r].first <= starts[c] && starts[c + 1] <= ranges[r].second;
  }
  return lazy;
}

Result<std::unique_ptr<LazyMemoryFiller>> LazyMemoryFiller::Start(
    const std::string& socket_path, UniqueFd control, const LazyTasks& tasks, ChunkHash hash,
    Store& store, const Key& key, ImageProgress progress) {
  for (const auto& [id, task] : tasks) {
    if (task.pages == nullptr) {
      return Fail(ErrorKind::kInvalidArgument,
                  "task " + std::to_string(id) + " has no pages image");
    }
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) {
    return Fail(ErrorKind::kInvalidArgument, "socket path too long: " + socket_path);
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listener.valid()) return SysFail("socket");
  ::unlink(socket_path.c_str());
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listener.get(), 4) != 0) {
    return SysFail("listen on " + socket_path);
  }
  auto filler = std::make_unique<Filler>(socket_path, std::move(listener), std::move(control),
                                         tasks, hash, store, key, std::move(progress));
  if (auto s = filler->Begin(); !s) return std::unexpected(s.error());
  return filler;
}

Status AskToFillLazyMemory(int control) {
  if (::send(control, "F", 1, MSG_NOSIGNAL) != 1) return SysFail("ask cryod to fill the memory");
  std::string answer(4096, '\0');
  ssize_t n;
  do {
    n = ::recv(control, answer.data(), answer.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) {
    return Fail(ErrorKind::kUnavailable, "cryod went away while it filled the restored memory");
  }
  answer.resize(static_cast<size_t>(n));
  if (answer == "K") return {};
  return Fail(ErrorKind::kFailedPrecondition,
              "cryod could not fill the restored memory: " + answer.substr(1));
}

}  // namespace cryo
