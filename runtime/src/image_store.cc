// SPDX-License-Identifier: Apache-2.0
// Checkpoint images as content-defined, deduplicated, zstd-compressed chunks
// plus a manifest authenticated with a keyed MAC. Layout in image_store.h and
// runtime/FORMAT.md.
#include "cryo/image_store.h"

#include <blake3.h>
#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sodium.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>

#include "buffer_pool.h"
#include "chunker.h"
#include "cryo/file_util.h"
#include "cryo/unique_fd.h"

namespace cryo {
namespace {

using nlohmann::json;

constexpr unsigned char kCodecRaw = 0;
constexpr unsigned char kCodecZstd = 1;
constexpr int kZstdLevel = 1;
constexpr size_t kHashBytes = 32;
constexpr size_t kHashHexChars = 2 * kHashBytes;
constexpr std::string_view kManifestMagic = "cryo-manifest";

// ---------------------------------------------------------------------------
// Keys and hashes

void EnsureSodium() {
  static const bool ok = sodium_init() >= 0;  // thread-safe static init
  if (!ok) {
    std::fputs("cryo: libsodium failed to initialise\n", stderr);
    std::abort();
  }
}

using SubKey = std::array<unsigned char, crypto_generichash_KEYBYTES>;
static_assert(Key::kBytes == crypto_kdf_KEYBYTES);

// Chunk names and manifest MACs use separate subkeys, so that neither use
// can be turned into the other.
SubKey DeriveSubKey(const Key& key, const char (&context)[crypto_kdf_CONTEXTBYTES + 1]) {
  EnsureSodium();
  SubKey sub;
  crypto_kdf_derive_from_key(sub.data(), sub.size(), 1, context, key.bytes().data());
  return sub;
}
SubKey ManifestSubKey(const Key& key) { return DeriveSubKey(key, "cryomanf"); }

std::array<unsigned char, kHashBytes> KeyedHash(const SubKey& sub, std::string_view data) {
  std::array<unsigned char, kHashBytes> out;
  crypto_generichash(out.data(), out.size(), reinterpret_cast<const unsigned char*>(data.data()),
                     data.size(), sub.data(), sub.size());
  return out;
}

std::string ToHex(const std::array<unsigned char, kHashBytes>& bin) {
  char hex[kHashHexChars + 1];
  sodium_bin2hex(hex, sizeof hex, bin.data(), bin.size());
  return std::string(hex, kHashHexChars);
}

std::array<unsigned char, kHashBytes> HmacSha256(const SubKey& sub, std::string_view data) {
  std::array<unsigned char, kHashBytes> out;
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), sub.data(), static_cast<int>(sub.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(),
           &len) == nullptr ||
      len != kHashBytes) {
    std::fputs("cryo: OpenSSL's HMAC-SHA-256 failed\n", stderr);
    std::abort();
  }
  return out;
}

static_assert(std::tuple_size_v<SubKey> == BLAKE3_KEY_LEN && BLAKE3_OUT_LEN == kHashBytes);

std::array<unsigned char, kHashBytes> KeyedBlake3(const SubKey& sub, std::string_view data) {
  blake3_hasher hasher;
  blake3_hasher_init_keyed(&hasher, sub.data());
  blake3_hasher_update(&hasher, data.data(), data.size());
  std::array<unsigned char, kHashBytes> out;
  blake3_hasher_finalize(&hasher, out.data(), out.size());
  return out;
}

// Each way of naming chunks: its name in manifests, the context of its
// subkey, its keyed hash.
struct ChunkHashSpec {
  ChunkHash hash;
  std::string_view name;
  char context[crypto_kdf_CONTEXTBYTES + 1];
  std::array<unsigned char, kHashBytes> (*digest)(const SubKey&, std::string_view);
};
constexpr ChunkHashSpec kChunkHashSpecs[] = {
    {ChunkHash::kBlake3, "blake3-keyed", "cryoblk3", KeyedBlake3},
    {ChunkHash::kHmacSha256, "hmac-sha256", "cryohmac", HmacSha256},
    {ChunkHash::kBlake2b, "blake2b-256", "cryochnk", KeyedHash},
};

const ChunkHashSpec& SpecOf(ChunkHash hash) {
  for (const auto& spec : kChunkHashSpecs) {
    if (spec.hash == hash) return spec;
  }
  std::fputs("cryo: a chunk hash without a spec\n", stderr);
  std::abort();
}

// Names chunks. Thread-safe. Zero chunks, common in memory images, are
// hashed once per size.
class ChunkHasher {
 public:
  ChunkHasher(const Key& key, ChunkHash hash)
      : spec_(SpecOf(hash)), key_(DeriveSubKey(key, spec_.context)) {}

  std::string Hash(std::string_view data) {
    if (!IsAllZero(reinterpret_cast<const unsigned char*>(data.data()), data.size()))
      return Compute(data);
    {
      std::lock_guard lock(mu_);
      if (auto it = zero_hashes_.find(data.size()); it != zero_hashes_.end()) return it->second;
    }
    std::string hash = Compute(data);
    std::lock_guard lock(mu_);
    zero_hashes_.emplace(data.size(), hash);
    return hash;
  }

 private:
  std::string Compute(std::string_view data) const { return ToHex(spec_.digest(key_, data)); }

  const ChunkHashSpec& spec_;
  const SubKey key_;
  std::mutex mu_;
  std::unordered_map<size_t, std::string> zero_hashes_;
};

bool IsHashHex(std::string_view s) {
  return s.size() == kHashHexChars && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// "3f9a12b4c5d6..." : enough of a hash to find its chunk in a message.
std::string ShortHash(std::string_view hash) { return std::string(hash.substr(0, 12)) + "..."; }

bool IsValidFileName(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

// ---------------------------------------------------------------------------
// Chunk encoding: 1 byte codec + payload.

struct ZstdCCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct ZstdDCtxFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};
using ZstdCCtx = std::unique_ptr<ZSTD_CCtx, ZstdCCtxFree>;
using ZstdDCtx = std::unique_ptr<ZSTD_DCtx, ZstdDCtxFree>;

// Encodes `data` into `out` (reused between chunks to spare allocations):
// zstd if that is smaller, raw otherwise.
void EncodeChunk(ZSTD_CCtx* cctx, std::string_view data, std::string& out) {
  out.resize_and_overwrite(1 + ZSTD_compressBound(data.size()), [&](char* buf, size_t cap) {
    size_t n = ZSTD_compressCCtx(cctx, buf + 1, cap - 1, data.data(), data.size(), kZstdLevel);
    if (!ZSTD_isError(n) && n < data.size()) {
      buf[0] = static_cast<char>(kCodecZstd);
      return 1 + n;
    }
    buf[0] = static_cast<char>(kCodecRaw);
    std::memcpy(buf + 1, data.data(), data.size());
    return 1 + data.size();
  });
}

// Decodes a stored chunk of `size` plaintext bytes. A raw chunk's plaintext
// is its payload, inside `stored`; a compressed one is decompressed into
// `out`, which must have room for `size` bytes and not overlap `stored`.
// The error is the reason it is corrupt.
Result<std::string_view> DecodeChunk(ZSTD_DCtx* dctx, std::string_view stored, uint64_t size,
                                     char* out) {
  if (stored.empty()) return Fail(ErrorKind::kCorrupt, "empty object");
  auto codec = static_cast<unsigned char>(stored[0]);
  std::string_view payload = stored.substr(1);
  auto wrong_size = [&](uint64_t got) {
    return Fail(ErrorKind::kCorrupt,
                "holds " + std::to_string(got) + " bytes, expected " + std::to_string(size));
  };
  switch (codec) {
    case kCodecRaw:
      if (payload.size() != size) return wrong_size(payload.size());
      return payload;
    case kCodecZstd: {
      unsigned long long content = ZSTD_getFrameContentSize(payload.data(), payload.size());
      if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN)
        return Fail(ErrorKind::kCorrupt, "bad zstd frame");
      if (content != size) return wrong_size(content);
      size_t n = ZSTD_decompressDCtx(dctx, out, size, payload.data(), payload.size());
      if (ZSTD_isError(n))
        return Fail(ErrorKind::kCorrupt, std::string("zstd: ") + ZSTD_getErrorName(n));
      if (n != size)
        return Fail(ErrorKind::kCorrupt, "decompresses to " + std::to_string(n) + " bytes");
      return std::string_view(out, size);
    }
    default:
      return Fail(ErrorKind::kCorrupt, "unknown codec " + std::to_string(codec));
  }
}

// ---------------------------------------------------------------------------
// Files

// The names of the regular files in `dir` (not following symlinks), sorted.
Result<std::vector<std::string>> ListRegularFiles(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return SysFail("open directory " + dir);
  std::vector<std::string> names;
  errno = 0;
  while (dirent* e = ::readdir(d.get())) {
    struct stat st {};
    if (::fstatat(::dirfd(d.get()), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
      return SysFail("stat " + dir + "/" + e->d_name);
    if (S_ISREG(st.st_mode)) names.emplace_back(e->d_name);
    errno = 0;
  }
  if (errno != 0) return SysFail("read directory " + dir);
  std::sort(names.begin(), names.end());
  return names;
}

Status PwriteAll(int fd, std::string_view data, uint64_t offset) {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return SysFail("write");
    }
    data.remove_prefix(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return {};
}

size_t WorkerCount() { return std::max(2u, std::thread::hardware_concurrency()); }

// Keeps the error of the earliest piece of work that failed, so that a
// parallel run reports what a sequential one would.
class FirstError {
 public:
  void Set(size_t order, Error error) {
    std::lock_guard lock(mu_);
    if (!error_ || order < order_) {
      error_ = std::move(error);
      order_ = order;
    }
    failed_.store(true, std::memory_order_relaxed);
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  Status status() const {
    std::lock_guard lock(mu_);
    if (error_) return std::unexpected(*error_);
    return {};
  }

 private:
  mutable std::mutex mu_;
  std::optional<Error> error_;
  size_t order_ = 0;
  std::atomic<bool> failed_{false};
};

// ---------------------------------------------------------------------------
// Storing: one thread cuts chunks and queues them, workers hash, compress and
// upload them.

struct ChunkTask {
  std::string_view data;
  std::shared_ptr<char> buffer;  // holds `data`
  size_t file;
  size_t index;
  size_t order;  // position among all chunks of the call
};

// Work for the workers: a chunk to store, or a part of the search for cut
// points.
using UploadJob = std::variant<ChunkTask, std::function<void()>>;

// A bounded queue of chunks, so the cutter stays close to the workers and
// the bytes it read are still in cache when they are hashed; searches for
// cut points, which the cutter waits for, go first and are not counted.
class ChunkQueue {
 public:
  explicit ChunkQueue(size_t capacity) : capacity_(capacity) {}
  void Push(ChunkTask task) {
    std::unique_lock lock(mu_);
    not_full_.wait(lock, [&] { return chunks_.size() < capacity_; });
    chunks_.push_back(std::move(task));
    not_empty_.notify_one();
  }
  void PushUrgent(std::function<void()> job) {
    std::lock_guard lock(mu_);
    urgent_.push_back(std::move(job));
    not_empty_.notify_one();
  }
  // nullopt once the queue is closed and drained.
  std::optional<UploadJob> Pop() {
    std::unique_lock lock(mu_);
    not_empty_.wait(lock, [&] { return !chunks_.empty() || !urgent_.empty() || closed_; });
    if (!urgent_.empty()) {
      UploadJob job = std::move(urgent_.front());
      urgent_.pop_front();
      return job;
    }
    if (chunks_.empty()) return std::nullopt;
    UploadJob job = std::move(chunks_.front());
    chunks_.pop_front();
    not_full_.notify_one();
    return job;
  }
  void Close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    not_empty_.notify_all();
  }

 private:
  const size_t capacity_;
  std::mutex mu_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;
  std::deque<ChunkTask> chunks_;
  std::deque<std::function<void()>> urgent_;
  bool closed_ = false;
};

// Reading bytes of an image file into a buffer and searching them for cut
// candidates (FindCutCandidates), in parts that the workers and the cutting
// thread take as they come: the copying out of the page cache and the
// search are shared by every core.
struct PartsRead {
  static constexpr size_t kPartBytes = size_t{1} << 20;
  // More than one candidate per this many bytes (random data has one per
  // ~128 KiB) and a part is cut one byte after another instead.
  static constexpr size_t kDensestBytes = 256;

  // Bytes [offset, offset + n) of the file `path`, open at `fd`, go to
  // buffer + pos.
  PartsRead(int file_fd, std::string file_path, uint64_t file_offset, char* to, size_t to_pos,
            size_t bytes)
      : fd(file_fd),
        path(std::move(file_path)),
        offset(file_offset),
        buffer(to),
        pos(to_pos),
        n(bytes),
        parts((n + kPartBytes - 1) / kPartBytes),
        found(parts),
        complete(parts, 1),
        status(parts),
        done(static_cast<ptrdiff_t>(parts)) {}

  // Reads and searches parts until none is left.
  void Run() {
    for (size_t k; (k = next.fetch_add(1)) < parts;) {
      status[k] = ReadPart(k);
      done.count_down();
    }
  }

  Status ReadPart(size_t k) {
    size_t from = k * kPartBytes;
    size_t len = std::min(n - from, kPartBytes);
    uint64_t at = offset + from;
    // The bytes before the part, for the hash: read again from the file
    // rather than from the buffer, where another thread may be putting them.
    std::array<unsigned char, kGearWindow - 1> before;
    size_t before_len = static_cast<size_t>(std::min<uint64_t>(at, before.size()));
    if (auto r = PreadAll(before.data(), before_len, at - before_len); !r) return r;
    auto* dest = reinterpret_cast<unsigned char*>(buffer + pos + from);
    if (auto r = PreadAll(dest, len, at); !r) return r;
    complete[k] = FindCutCandidates({before.data(), before_len}, dest, len, pos + from,
                                    len / kDensestBytes + 8, found[k]);
    return {};
  }

  Status PreadAll(unsigned char* dest, size_t len, uint64_t at) {
    while (len > 0) {
      ssize_t got = ::pread(fd, dest, len, static_cast<off_t>(at));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) return SysFail("read " + path);
      if (got == 0) return Fail(ErrorKind::kInternal, path + " shrank while it was being stored");
      dest += got;
      len -= static_cast<size_t>(got);
      at += static_cast<uint64_t>(got);
    }
    return {};
  }

  const int fd;
  const std::string path;
  const uint64_t offset;
  char* const buffer;
  const size_t pos;
  const size_t n;
  const size_t parts;
  std::vector<std::vector<CutCandidate>> found;  // per part
  std::vector<char> complete;                    // per part
  std::vector<Status> status;                    // per part
  std::atomic<size_t> next{0};
  std::latch done;
};

class ImageUploader {
 public:
  ImageUploader(Store& store, const Key& key, ChunkHash hash) : store_(store), hasher_(key, hash) {}

  // A new image file; returns its number. Cutting thread only.
  size_t AddFile(std::string name) {
    std::lock_guard lock(mu_);
    files_.push_back({.name = std::move(name)});
    results_.emplace_back();
    next_index_.push_back(0);
    return files_.size() - 1;
  }
  void SetSize(size_t file, uint64_t size) {
    std::lock_guard lock(mu_);
    files_[file].size = size;
  }

  // Cuts chunks of file number `file` from `window`, the file's bytes from
  // the end of its last chunk so far, held by `buffer`, and queues them.
  // Unless `last` (the window reaches the end of the file), stops where a cut
  // could depend on bytes beyond the window. Returns the bytes it cut.
  // With `candidates`, every cut candidate in the window, cuts from them;
  // their positions count from `window.data() - base`.
  size_t Cut(size_t file, std::string_view window, const std::shared_ptr<char>& buffer, bool last,
             const std::vector<CutCandidate>* candidates, size_t base) {
    const auto* p = reinterpret_cast<const unsigned char*>(window.data());
    size_t offset = 0;
    size_t next = 0;  // the first candidate at or after `offset`
    while (offset < window.size() && !errors_.failed()) {
      size_t left = window.size() - offset;
      if (!last && left < kMaxChunk) break;
      size_t len;
      if (candidates == nullptr) {
        len = ChunkLength(p + offset, left);
      } else {
        const auto& c = *candidates;
        len = ChunkLengthFrom(p + offset, left, std::span(c).subspan(next), base + offset);
        while (next < c.size() && c[next].pos < base + offset + len) ++next;
      }
      queue_.Push({window.substr(offset, len), buffer, file, next_index_[file]++, order_++});
      offset += len;
    }
    return offset;
  }

  // Starts `read`: the workers take its parts before any chunk.
  void StartRead(const std::shared_ptr<PartsRead>& read) {
    for (size_t i = 0; i < std::min(read->parts, workers_.size()); ++i) {
      queue_.PushUrgent([read] { read->Run(); });
    }
  }
  // Takes the parts of `read` no worker took yet and waits for the others;
  // appends the candidates found to `out`. Returns whether it found them
  // all (false: too many to keep).
  Result<bool> FinishRead(PartsRead& read, std::vector<CutCandidate>& out) {
    read.Run();
    read.done.wait();
    for (const Status& s : read.status) {
      if (!s) return std::unexpected(s.error());
    }
    for (size_t k = 0; k < read.parts; ++k) {
      if (!read.complete[k]) return false;
      out.insert(out.end(), read.found[k].begin(), read.found[k].end());
    }
    return true;
  }

  // Records an error of the cutting thread (after those of chunks cut so far).
  void SetError(Error error) { errors_.Set(order_, std::move(error)); }
  bool failed() const { return errors_.failed(); }

  // Runs the workers until Finish(); in the background (see SetBackground)
  // if `background`.
  void Start(bool background) {
    background_ = background;
    for (size_t i = 0; i < WorkerCount(); ++i) workers_.emplace_back([this] { Work(); });
  }
  // Moves the workers to the lowest CPU priority, or back to the normal one
  // (which takes CAP_SYS_NICE; without it they stay where they are).
  void SetBackground(bool background) {
    std::lock_guard lock(mu_);
    background_ = background;
    for (pid_t tid : worker_tids_) (void)::setpriority(PRIO_PROCESS, tid, background ? 19 : 0);
  }
  // Where progress goes from now on, with what went nowhere before.
  void SetProgress(ImageProgress progress) {
    std::lock_guard lock(progress_mu_);
    progress_ = std::move(progress);
    if (progress_ && unreported_ > 0) progress_(std::exchange(unreported_, 0));
  }
  // Waits for the queued chunks; the files, sorted by name, with their
  // chunk lists.
  Result<std::vector<ImageFile>> Finish(StoreStats* stats) {
    queue_.Close();
    workers_.clear();  // joins
    if (auto s = errors_.status(); !s) return std::unexpected(s.error());
    StoreStats total;
    std::vector<ImageFile> files = std::move(files_);
    for (size_t f = 0; f < files.size(); ++f) {
      files[f].chunks = std::move(results_[f]);
      total.bytes += files[f].size;
      total.chunks += files[f].chunks.size();
    }
    std::sort(files.begin(), files.end(),
              [](const ImageFile& a, const ImageFile& b) { return a.name < b.name; });
    total.new_bytes = new_bytes_;
    total.new_chunks = new_chunks_;
    if (stats != nullptr) *stats = total;
    return files;
  }

 private:
  void Work() {
    {
      std::lock_guard lock(mu_);
      worker_tids_.push_back(::gettid());
      if (background_) (void)::setpriority(PRIO_PROCESS, 0, 19);
    }
    ZstdCCtx cctx(ZSTD_createCCtx());
    std::string encoded;
    while (auto job = queue_.Pop()) {
      if (auto* search = std::get_if<std::function<void()>>(&*job)) {
        (*search)();  // even after an error: the cutter waits for it
        continue;
      }
      auto* task = std::get_if<ChunkTask>(&*job);
      if (errors_.failed()) continue;  // drain
      if (auto s = Upload(*task, cctx.get(), encoded); !s) {
        errors_.Set(task->order, s.error().WithContext("image " + FileName(task->file) +
                                                       ": chunk " + std::to_string(task->index)));
      } else {
        Report(task->data.size());
      }
    }
  }

  std::string FileName(size_t file) {
    std::lock_guard lock(mu_);
    return files_[file].name;
  }

  void Report(uint64_t bytes) {
    std::lock_guard lock(progress_mu_);
    if (progress_) {
      progress_(bytes);
    } else {
      unreported_ += bytes;
    }
  }

  Status Upload(const ChunkTask& task, ZSTD_CCtx* cctx, std::string& encoded) {
    std::string hash = hasher_.Hash(task.data);
    bool first_sighting;
    {
      std::lock_guard lock(mu_);
      auto& chunks = results_[task.file];
      if (chunks.size() <= task.index) chunks.resize(task.index + 1);
      chunks[task.index] = ChunkRef{hash, task.data.size()};
      first_sighting = seen_.insert(hash).second;
    }
    if (!first_sighting) return {};  // a duplicate within this call
    std::string key = ChunkKey(hash);
    auto exists = store_.Exists(key);
    if (!exists) return std::unexpected(exists.error());
    if (*exists) return {};
    EncodeChunk(cctx, task.data, encoded);
    auto wrote = store_.PutIfAbsent(key, encoded);
    if (!wrote) return std::unexpected(wrote.error());
    if (*wrote) {
      new_bytes_ += encoded.size();
      ++new_chunks_;
    }
    return {};
  }

  Store& store_;
  ChunkHasher hasher_;
  ChunkQueue queue_{4 * WorkerCount()};
  FirstError errors_;
  // Used by the cutting thread only:
  size_t order_ = 0;
  std::vector<size_t> next_index_;  // per file
  std::atomic<uint64_t> new_bytes_{0};
  std::atomic<uint64_t> new_chunks_{0};
  std::mutex progress_mu_;  // guards the two below
  ImageProgress progress_;
  uint64_t unreported_ = 0;
  std::mutex mu_;  // guards the five below
  std::vector<ImageFile> files_;
  std::vector<std::vector<ChunkRef>> results_;
  std::unordered_set<std::string> seen_;
  std::vector<pid_t> worker_tids_;
  bool background_ = false;
  std::vector<std::jthread> workers_;  // last: joined before the rest is destroyed
};

// Image files are read into buffers this many at a time: the one being cut,
// the next, and those whose chunks the workers still hash.
constexpr size_t kReadBuffers = 5;

Result<UniqueFd> OpenImage(const std::string& path, bool consume) {
  auto fd = OpenFile(path, (consume ? O_RDWR : O_RDONLY) | O_NOFOLLOW);
  if (!fd) return std::unexpected(fd.error());
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return SysFail("stat " + path);
  if (!S_ISREG(st.st_mode)) return Fail(ErrorKind::kInvalidArgument, path + " is not a file");
  return std::move(*fd);
}

Result<uint64_t> FileSize(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return SysFail("stat " + path);
  return static_cast<uint64_t>(st.st_size);
}

// A buffer's bytes of an image file, from the start of a chunk: those
// carried over from the buffer before, which end at kCarryRoom, then those
// read into it.
struct Window {
  static constexpr size_t kCarryRoom = kMaxChunk;

  std::shared_ptr<char> buffer;
  size_t begin = kCarryRoom;  // in the buffer
  size_t end = kCarryRoom;
  uint64_t offset = 0;                   // in the file, of the byte at `begin`
  std::vector<CutCandidate> candidates;  // positions in the buffer
  bool carried_complete = true;          // whether those of the carried bytes are all there
  std::shared_ptr<PartsRead> read;       // of the bytes from kCarryRoom on

  std::string_view bytes() const { return {buffer.get() + begin, end - begin}; }
};

// Reads bytes [from, size) of the image file `path`, open at `fd` (number
// `file`), into buffers of `buffers` and cuts them into chunks for
// `uploader`; each buffer's last partial chunk starts the next. `from` is
// where the file's last chunk so far ended. `last`: `size` is the end of the
// file; otherwise stops where a cut could depend on bytes beyond `size`.
// With `consume`, the bytes cut are given back (hole punching). Stops early
// once `*stop` is set. Returns the offset where the last chunk it cut ends.
//
// The next buffer is read and searched for cut points while this one is
// cut, by the workers and this thread: the cutting itself is then quick,
// and no core waits for the other.
Result<uint64_t> ReadAndCut(int fd, const std::string& path, size_t file, uint64_t from,
                            uint64_t size, bool last, BufferPool& buffers, ImageUploader& uploader,
                            bool consume, const std::atomic<bool>* stop = nullptr) {
  uint64_t read_to = from;
  // A window for the next bytes of the file, being read.
  auto start_window = [&] {
    Window w{.buffer = buffers.Take()};
    size_t n = static_cast<size_t>(
        std::min<uint64_t>(BufferPool::kBufferBytes - Window::kCarryRoom, size - read_to));
    w.end = Window::kCarryRoom + n;
    w.read = std::make_shared<PartsRead>(fd, path, read_to, w.buffer.get(), Window::kCarryRoom, n);
    uploader.StartRead(w.read);
    read_to += n;
    return w;
  };
  Window cur = start_window();
  cur.offset = from;
  for (;;) {
    bool end = read_to == size;
    std::optional<Window> next;
    bool stopping = uploader.failed() || (stop != nullptr && stop->load());
    if (!end && !stopping) next = start_window();
    auto complete = uploader.FinishRead(*cur.read, cur.candidates);
    if (!complete) {
      // The next window's parts must not outlive this call's file.
      if (next) (void)uploader.FinishRead(*next->read, next->candidates);
      return std::unexpected(complete.error());
    }
    bool all = *complete && cur.carried_complete;
    size_t cut = uploader.Cut(file, cur.bytes(), cur.buffer, last && end,
                              all ? &cur.candidates : nullptr, cur.begin);
    if (consume && cut > 0) {
      // The bytes are in the buffer: give the file's memory back now, so
      // that the chunks written next reuse it while it is still warm.
      (void)::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        static_cast<off_t>(cur.offset), static_cast<off_t>(cut));
    }
    if (end || stopping || uploader.failed() || (stop != nullptr && stop->load())) {
      if (next) (void)uploader.FinishRead(*next->read, next->candidates);
      return cur.offset + cut;
    }
    // What follows the last cut (less than kMaxChunk, see Cut) goes just
    // before the bytes being read, with its candidates.
    size_t carry = cur.bytes().size() - cut;
    size_t carry_from = cur.begin + cut;  // in cur's buffer
    next->begin = Window::kCarryRoom - carry;
    next->offset = cur.offset + cut;
    std::memcpy(next->buffer.get() + next->begin, cur.buffer.get() + carry_from, carry);
    if (all) {
      for (const CutCandidate& c : cur.candidates) {
        if (c.pos >= carry_from)
          next->candidates.push_back(
              {static_cast<uint32_t>(c.pos - carry_from + next->begin), c.hard});
      }
    } else {
      // The search gave up in this window: search the carried bytes again.
      const auto* carried =
          reinterpret_cast<const unsigned char*>(next->buffer.get() + next->begin);
      next->carried_complete = FindCutCandidates(
          {}, carried, carry, next->begin, carry / PartsRead::kDensestBytes + 8, next->candidates);
    }
    cur = std::move(*next);
  }
}

// CRIU writes a memory image from its start to its end, and never again.
bool IsMemoryImage(std::string_view name) {
  return name.starts_with("pages-") && name.ends_with(".img");
}

// How often a session looks for more of the images CRIU writes, when it
// found nothing to do.
constexpr auto kFollowInterval = std::chrono::milliseconds(10);

}  // namespace

struct ImageStoreSession::State {
  State(std::string images_dir, Store& store, const Key& key, ChunkHash hash, bool consume_images)
      : dir(std::move(images_dir)), consume(consume_images), uploader(store, key, hash) {}

  // A memory image being followed.
  struct Followed {
    size_t file;
    UniqueFd fd;
    uint64_t cut = 0;  // where its last chunk so far ends
  };

  // Stores what CRIU has written of the memory images, until told to stop.
  void Follow() {
    (void)::setpriority(PRIO_PROCESS, 0, 19);  // this thread's
    while (!stopping) {
      auto advanced = Advance();
      if (!advanced) {
        uploader.SetError(advanced.error());
        return;
      }
      if (!*advanced) {
        std::unique_lock lock(mu);
        wake.wait_for(lock, kFollowInterval, [&] { return stopping.load(); });
      }
    }
  }

  // One look at the memory images; whether it cut anything.
  Result<bool> Advance() {
    auto names = ListRegularFiles(dir);
    if (!names) return std::unexpected(names.error());
    bool cut_any = false;
    for (const auto& name : *names) {
      if (!IsMemoryImage(name) || uploader.failed()) continue;
      auto it = followed.find(name);
      if (it == followed.end()) {
        auto fd = OpenImage(dir + "/" + name, consume);
        if (!fd) return std::unexpected(fd.error());
        it = followed.emplace(name, Followed{uploader.AddFile(name), std::move(*fd)}).first;
      }
      uint64_t before = it->second.cut;
      if (auto size = CutMore(name, it->second, /*last=*/false); !size) {
        return std::unexpected(size.error());
      }
      cut_any = cut_any || it->second.cut > before;
    }
    return cut_any;
  }

  // Cuts what there is of image `name` beyond `f.cut` (all of it if `last`,
  // when the dump is complete) and moves `f.cut` on. Returns the file size.
  Result<uint64_t> CutMore(const std::string& name, Followed& f, bool last) {
    std::string path = dir + "/" + name;
    auto size = FileSize(f.fd.get(), path);
    if (!size) return std::unexpected(size.error());
    if (*size < f.cut)
      return Fail(ErrorKind::kInternal, path + " shrank while it was being stored");
    if (!last && *size - f.cut < kMaxChunk) return size;
    auto cut = ReadAndCut(f.fd.get(), path, f.file, f.cut, *size, last, buffers, uploader, consume,
                          last ? nullptr : &stopping);
    if (!cut) return std::unexpected(cut.error());
    f.cut = *cut;
    return size;
  }

  void StopFollowing() {
    {
      std::lock_guard lock(mu);
      stopping = true;  // under mu: the follower cannot miss the wake-up
    }
    wake.notify_all();
    if (follower.joinable()) follower.join();
  }

  // Stores every image from where following left it.
  Status StoreRest() {
    auto names = ListRegularFiles(dir);
    if (!names) return std::unexpected(names.error());
    size_t seen = 0;
    for (const auto& name : *names) {
      if (uploader.failed()) break;
      std::string path = dir + "/" + name;
      auto it = followed.find(name);
      std::optional<Followed> fresh;
      if (it != followed.end()) {
        ++seen;
      } else {
        auto fd = OpenImage(path, consume);
        if (!fd) return std::unexpected(fd.error());
        fresh = Followed{uploader.AddFile(name), std::move(*fd)};
      }
      Followed& f = fresh ? *fresh : it->second;
      auto size = CutMore(name, f, /*last=*/true);
      if (!size) return std::unexpected(size.error());
      uploader.SetSize(f.file, *size);
    }
    if (!uploader.failed() && seen != followed.size()) {
      return Fail(ErrorKind::kInternal,
                  "a memory image in " + dir + " vanished while it was stored");
    }
    return {};
  }

  const std::string dir;
  const bool consume;
  BufferPool buffers{kReadBuffers};  // before the uploader: outlives the workers that read them
  ImageUploader uploader;
  bool started = false;
  bool finished = false;
  std::map<std::string, Followed> followed;  // the follower's, then Finish's
  std::mutex mu;
  std::condition_variable wake;
  std::atomic<bool> stopping{false};  // set under mu
  std::thread follower;
};

ImageStoreSession::ImageStoreSession(std::string dir, Store& store, const Key& key, ChunkHash hash,
                                     bool consume)
    : state_(std::make_unique<State>(std::move(dir), store, key, hash, consume)) {}

ImageStoreSession::~ImageStoreSession() {
  state_->StopFollowing();
  if (state_->started && !state_->finished) (void)state_->uploader.Finish(nullptr);
}

void ImageStoreSession::Follow() {
  if (state_->started) return;
  state_->started = true;
  state_->uploader.Start(/*background=*/true);
  state_->follower = std::thread([s = state_.get()] { s->Follow(); });
}

void ImageStoreSession::SetProgress(ImageProgress progress) {
  state_->uploader.SetProgress(std::move(progress));
}

Result<std::vector<ImageFile>> ImageStoreSession::Finish(StoreStats* stats) {
  State& s = *state_;
  s.StopFollowing();
  if (s.started) {
    s.uploader.SetBackground(false);
  } else {
    s.started = true;
    s.uploader.Start(/*background=*/false);
  }
  if (!s.uploader.failed()) {
    if (auto stored = s.StoreRest(); !stored) s.uploader.SetError(stored.error());
  }
  s.finished = true;
  return s.uploader.Finish(stats);
}

namespace {

// ---------------------------------------------------------------------------
// Fetching and verifying

// Checks what can be checked of `files` before touching the store.
Status ValidateImageFiles(const std::vector<ImageFile>& files) {
  std::set<std::string_view> names;
  for (const auto& file : files) {
    if (!IsValidFileName(file.name))
      return Fail(ErrorKind::kCorrupt, "image file name \"" + file.name + "\" is not a plain name");
    if (!names.insert(file.name).second)
      return Fail(ErrorKind::kCorrupt, "image " + file.name + " is listed twice");
    uint64_t sum = 0;
    for (const auto& chunk : file.chunks) {
      if (!IsHashHex(chunk.hash))
        return Fail(ErrorKind::kCorrupt, "image " + file.name + ": malformed chunk hash");
      if (chunk.size == 0 || chunk.size > kMaxChunk)
        return Fail(ErrorKind::kCorrupt, "image " + file.name + ": chunk " + ShortHash(chunk.hash) +
                                             " has impossible size " + std::to_string(chunk.size));
      sum += chunk.size;
    }
    if (sum != file.size)
      return Fail(ErrorKind::kCorrupt, "image " + file.name + ": chunks add up to " +
                                           std::to_string(sum) + " bytes, the manifest says " +
                                           std::to_string(file.size));
  }
  return {};
}

}  // namespace

struct ChunkReader::State {
  State(const Key& key, ChunkHash hash) : hasher(key, hash), dctx(ZSTD_createDCtx()) {}
  ChunkHasher hasher;
  ZstdDCtx dctx;
  std::string compressed;  // a compressed chunk, moved out of the way of its plaintext
  std::string plain;       // Read's buffer
};

ChunkReader::ChunkReader(Store& store, const Key& key, ChunkHash hash)
    : store_(store), state_(std::make_unique<State>(key, hash)) {}
ChunkReader::~ChunkReader() = default;

Result<std::string_view> ChunkReader::Read(const ImageFile& file, size_t index) {
  size_t room = ReadRoom(file.chunks.at(index));
  state_->plain.resize_and_overwrite(room, [](char*, size_t n) { return n; });
  return ReadInto(file, index, state_->plain);
}

Result<std::string_view> ChunkReader::ReadInto(const ImageFile& file, size_t index,
                                               std::span<char> out) {
  const ChunkRef& ref = file.chunks.at(index);
  std::string what = "image " + file.name + ": chunk " + ShortHash(ref.hash);
  if (out.size() < ReadRoom(ref)) {
    return Fail(ErrorKind::kInternal, what + ": no room to read it into");
  }
  // Intact, the stored chunk is a codec byte and at most `ref.size` bytes.
  auto got = store_.GetInto(ChunkKey(ref.hash), out);
  if (!got) {
    if (got.error().kind() == ErrorKind::kNotFound)
      return Fail(ErrorKind::kCorrupt, what + " is missing from " + store_.url());
    return std::unexpected(got.error().WithContext(what + " from " + store_.url()));
  }
  if (*got > out.size()) {
    return Fail(ErrorKind::kCorrupt, what + " is corrupt (" + std::to_string(*got) +
                                         " bytes stored for " + std::to_string(ref.size) + ")");
  }
  std::string_view stored(out.data(), *got);
  if (!stored.empty() && static_cast<unsigned char>(stored[0]) == kCodecZstd) {
    // The plaintext goes where the payload of a raw chunk would be.
    state_->compressed.assign(stored);
    stored = state_->compressed;
  }
  auto plain = DecodeChunk(state_->dctx.get(), stored, ref.size, out.data() + 1);
  if (!plain)
    return Fail(ErrorKind::kCorrupt, what + " is corrupt (" + plain.error().message() + ")");
  if (state_->hasher.Hash(*plain) != ref.hash)
    return Fail(ErrorKind::kCorrupt, what + " is corrupt (hash mismatch)");
  return *plain;
}

namespace {

struct FetchTask {
  size_t file;
  size_t index;
  uint64_t offset;
};

// Fetches and verifies every chunk of `files` in parallel; writes each into
// fds[file] at its offset when `fds` is given, except chunks of zeros (the
// files must have their final size already, so those read back as zeros).
Status FetchChunks(const std::vector<ImageFile>& files, ChunkHash hash, Store& store,
                   const Key& key, const std::vector<UniqueFd>* fds, const ImageProgress& progress,
                   const ChunkFilter& want = {}) {
  std::vector<FetchTask> tasks;
  for (size_t f = 0; f < files.size(); ++f) {
    uint64_t offset = 0;
    for (size_t i = 0; i < files[f].chunks.size(); ++i) {
      if (!want || want(f, i)) tasks.push_back({f, i, offset});
      offset += files[f].chunks[i].size;
    }
  }
  std::atomic<size_t> next{0};
  FirstError errors;
  auto fetch_one = [&](const FetchTask& task, ChunkReader& reader) -> Status {
    const ImageFile& file = files[task.file];
    auto plain = reader.Read(file, task.index);
    if (!plain) return std::unexpected(plain.error());
    // The files were sized beforehand: zero chunks stay holes.
    bool zero = IsAllZero(reinterpret_cast<const unsigned char*>(plain->data()), plain->size());
    if (fds != nullptr && !zero) {
      if (auto w = PwriteAll((*fds)[task.file].get(), *plain, task.offset); !w)
        return std::unexpected(w.error().WithContext("image " + file.name));
    }
    return {};
  };
  auto work = [&] {
    ChunkReader reader(store, key, hash);
    while (!errors.failed()) {
      size_t t = next.fetch_add(1);
      if (t >= tasks.size()) break;
      if (auto s = fetch_one(tasks[t], reader); !s) {
        errors.Set(t, s.error());
      } else if (progress) {
        progress(files[tasks[t].file].chunks[tasks[t].index].size);
      }
    }
  };
  {
    std::vector<std::jthread> workers;
    size_t count = std::min(WorkerCount(), std::max<size_t>(tasks.size(), 1));
    for (size_t i = 1; i < count; ++i) workers.emplace_back(work);
    work();
  }
  return errors.status();
}

// ---------------------------------------------------------------------------
// Manifest

json FileToJson(const ImageFile& file) {
  json chunks = json::array();
  for (const auto& c : file.chunks) chunks.push_back(json::array({c.hash, c.size}));
  return {{"name", file.name}, {"size", file.size}, {"chunks", std::move(chunks)}};
}

// Throws json::exception on a missing or mistyped field.
std::optional<ImageFile> FileFromJson(const json& j) {
  ImageFile file;
  file.name = j.at("name").get<std::string>();
  file.size = j.at("size").get<uint64_t>();
  for (const auto& c : j.at("chunks")) {
    if (!c.is_array() || c.size() != 2) return std::nullopt;
    file.chunks.push_back({c.at(0).get<std::string>(), c.at(1).get<uint64_t>()});
  }
  return file;
}

std::string ManifestMac(const Key& key, std::string_view body) {
  return ToHex(KeyedHash(ManifestSubKey(key), body));
}

Status ValidateManifest(const Manifest& m) {
  if (m.id.empty()) return Fail(ErrorKind::kCorrupt, "manifest has no checkpoint id");
  if (auto s = ValidateImageFiles(m.files); !s)
    return std::unexpected(s.error().WithContext("manifest " + m.id));
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------
// Public functions

Result<Key> Key::LoadOrCreate(const std::string& path) {
  EnsureSodium();
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    std::array<unsigned char, kBytes> bytes;
    randombytes_buf(bytes.data(), bytes.size());
    auto s = WriteFileAtomic(
        path, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), 0600);
    if (!s) return std::unexpected(s.error().WithContext("create key file " + path));
    Key key(bytes);
    sodium_memzero(bytes.data(), bytes.size());
    return key;
  }
  if (fd < 0) return SysFail("open key file " + path);
  UniqueFd owner(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return SysFail("stat key file " + path);
  if (!S_ISREG(st.st_mode))
    return Fail(ErrorKind::kCorrupt, "key file " + path + " is not a regular file");
  if ((st.st_mode & 066) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Fail(ErrorKind::kPermissionDenied, "key file " + path + " has mode " + mode +
                                                  ": others could read or replace it (run "
                                                  "'chmod 600 " +
                                                  path + "')");
  }
  std::array<char, kBytes + 1> buf;
  auto n = ReadFull(fd, buf);
  if (!n) return std::unexpected(n.error().WithContext("read key file " + path));
  if (*n != kBytes) {
    sodium_memzero(buf.data(), buf.size());
    return Fail(ErrorKind::kCorrupt, "key file " + path + " holds " +
                                         (*n > kBytes ? "more than 32" : std::to_string(*n)) +
                                         " bytes; a cryo key is exactly 32 random bytes");
  }
  std::array<unsigned char, kBytes> bytes;
  std::memcpy(bytes.data(), buf.data(), kBytes);
  sodium_memzero(buf.data(), buf.size());
  Key key(bytes);
  sodium_memzero(bytes.data(), bytes.size());
  return key;
}

std::vector<size_t> ChunkBoundaries(std::string_view data) {
  std::vector<size_t> ends;
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  for (size_t offset = 0; offset < data.size();) {
    offset += ChunkLength(p + offset, data.size() - offset);
    ends.push_back(offset);
  }
  return ends;
}

bool IsIntactChunk(std::string_view hash, std::string_view stored, const Key& key) {
  if (stored.empty()) return false;
  uint64_t size = stored.size() - 1;
  if (static_cast<unsigned char>(stored[0]) == kCodecZstd) {
    unsigned long long content = ZSTD_getFrameContentSize(stored.data() + 1, stored.size() - 1);
    if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN ||
        content > kMaxChunk)
      return false;
    size = content;
  }
  ZstdDCtx dctx(ZSTD_createDCtx());
  std::string buf(size, '\0');
  auto plain = DecodeChunk(dctx.get(), stored, size, buf.data());
  if (!plain) return false;
  for (ChunkHash h : kChunkHashes) {
    if (ChunkHasher(key, h).Hash(*plain) == hash) return true;
  }
  return false;
}

std::string_view ChunkHashName(ChunkHash hash) { return SpecOf(hash).name; }

std::optional<ChunkHash> ParseChunkHash(std::string_view name) {
  for (ChunkHash hash : kChunkHashes) {
    if (ChunkHashName(hash) == name) return hash;
  }
  return std::nullopt;
}

std::string ChunkKey(std::string_view hash) {
  return "chunks/" + std::string(hash.substr(0, 2)) + "/" + std::string(hash);
}
std::string ManifestKey(std::string_view id) { return "manifests/" + std::string(id); }
std::string LatestRefKey(std::string_view job) { return "refs/" + std::string(job) + "/latest"; }

Result<std::vector<ImageFile>> StoreImages(const std::string& dir, Store& store, const Key& key,
                                           StoreStats* stats, const ImageProgress& progress,
                                           ChunkHash hash, bool consume) {
  ImageStoreSession session(dir, store, key, hash, consume);
  session.SetProgress(progress);
  return session.Finish(stats);
}

Status FetchImages(const std::vector<ImageFile>& files, ChunkHash hash, Store& store,
                   const Key& key, const std::string& dir, const ImageProgress& progress,
                   const ChunkFilter& want) {
  if (auto s = ValidateImageFiles(files); !s) return s;
  std::vector<UniqueFd> fds;
  std::vector<std::string> created;
  auto status = [&]() -> Status {
    for (const auto& file : files) {
      std::string path = dir + "/" + file.name;
      auto fd = OpenFile(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
      if (!fd) return std::unexpected(fd.error().WithContext("restore image " + file.name));
      created.push_back(path);
      if (::ftruncate(fd->get(), static_cast<off_t>(file.size)) != 0)
        return SysFail("restore image " + file.name + ": resize " + path);
      fds.push_back(std::move(*fd));
    }
    if (auto s = FetchChunks(files, hash, store, key, &fds, progress, want); !s) return s;
    for (size_t f = 0; f < files.size(); ++f) {
      struct stat st {};
      if (::fstat(fds[f].get(), &st) != 0) return SysFail("stat " + created[f]);
      if (static_cast<uint64_t>(st.st_size) != files[f].size)
        return Fail(ErrorKind::kCorrupt, "image " + files[f].name + ": is " +
                                             std::to_string(st.st_size) + " bytes, expected " +
                                             std::to_string(files[f].size));
    }
    return {};
  }();
  if (!status) {
    // Leave no partial images behind for someone to restore from.
    for (const auto& path : created) ::unlink(path.c_str());
  }
  return status;
}

Status VerifyImages(const std::vector<ImageFile>& files, ChunkHash hash, Store& store,
                    const Key& key) {
  if (auto s = ValidateImageFiles(files); !s) return s;
  return FetchChunks(files, hash, store, key, nullptr, {});
}

std::string EncodeManifest(const Manifest& m, const Key& key) {
  json files = json::array();
  for (const auto& file : m.files) files.push_back(FileToJson(file));
  json j = {
      {"format_version", Manifest::kFormatVersion},
      {"chunk_hash", ChunkHashName(m.chunk_hash)},
      {"id", m.id},
      {"job", m.job},
      {"parent", m.parent},
      {"created_unix_ms", m.created_unix_ms},
      {"host", m.host},
      {"kernel", m.kernel},
      {"criu_version", m.criu_version},
      {"uid", m.uid},
      {"gid", m.gid},
      {"groups", m.groups},
      {"argv", m.argv},
      {"env", m.env},
      {"cwd", m.cwd},
      {"criu_options", m.criu_options},
      {"stdout_key", m.stdout_key},
      {"stderr_key", m.stderr_key},
      {"shim_sockets", m.shim_sockets},
      {"on_sigterm", m.on_sigterm},
      {"files", std::move(files)},
      {"image_bytes", m.image_bytes},
      {"stored_bytes", m.stored_bytes},
      {"phases", m.phases},
  };
  // Invalid UTF-8 (possible in argv and env) is replaced rather than thrown.
  std::string body = j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  return std::string(kManifestMagic) + " " + std::to_string(Manifest::kFormatVersion) + " " +
         ManifestMac(key, body) + "\n" + body;
}

Result<Manifest> DecodeManifest(std::string_view data, const Key& key) {
  size_t eol = data.substr(0, 128).find('\n');
  std::string_view header = data.substr(0, eol);
  if (eol == std::string_view::npos || !header.starts_with(std::string(kManifestMagic) + " "))
    return Fail(ErrorKind::kCorrupt, "not a cryo manifest (bad header)");
  header.remove_prefix(kManifestMagic.size() + 1);
  size_t space = header.find(' ');
  std::string_view version = header.substr(0, space);
  if (version != "1" && version != std::to_string(Manifest::kFormatVersion))
    return Fail(ErrorKind::kCorrupt, "manifest format version \"" + std::string(version) +
                                         "\" is not supported by this cryo (it reads versions "
                                         "1 to " +
                                         std::to_string(Manifest::kFormatVersion) + ")");
  std::string_view mac_hex = space == std::string_view::npos ? "" : header.substr(space + 1);
  std::array<unsigned char, kHashBytes> mac{};
  size_t mac_len = 0;
  // Only the canonical (lower-case) spelling: no byte of a manifest can
  // change without it being refused.
  if (!IsHashHex(mac_hex) ||
      sodium_hex2bin(mac.data(), mac.size(), mac_hex.data(), mac_hex.size(), nullptr, &mac_len,
                     nullptr) != 0 ||
      mac_len != kHashBytes)
    return Fail(ErrorKind::kCorrupt, "not a cryo manifest (malformed MAC)");
  std::string_view body = data.substr(eol + 1);
  auto expected = KeyedHash(ManifestSubKey(key), body);
  if (sodium_memcmp(mac.data(), expected.data(), kHashBytes) != 0)
    return Fail(ErrorKind::kCorrupt,
                "manifest authentication failed: it was modified or written with another key");

  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Fail(ErrorKind::kCorrupt, "manifest body is not a JSON object");
  Manifest m;
  try {
    m.format_version = j.at("format_version").get<int>();
    if (std::to_string(m.format_version) != version)
      return Fail(ErrorKind::kCorrupt, "manifest format version " +
                                           std::to_string(m.format_version) +
                                           " does not match its header");
    if (m.format_version == 1) {
      m.chunk_hash = ChunkHash::kBlake2b;
    } else {
      auto hash = ParseChunkHash(j.at("chunk_hash").get<std::string>());
      if (!hash)
        return Fail(ErrorKind::kCorrupt,
                    "manifest: unknown chunk hash " + j.at("chunk_hash").dump());
      m.chunk_hash = *hash;
    }
    m.id = j.at("id").get<std::string>();
    m.job = j.at("job").get<std::string>();
    m.parent = j.at("parent").get<std::string>();
    m.created_unix_ms = j.at("created_unix_ms").get<int64_t>();
    m.host = j.at("host").get<std::string>();
    m.kernel = j.at("kernel").get<std::string>();
    m.criu_version = j.at("criu_version").get<std::string>();
    m.uid = j.at("uid").get<uid_t>();
    m.gid = j.at("gid").get<gid_t>();
    m.groups = j.at("groups").get<std::vector<gid_t>>();
    m.argv = j.at("argv").get<std::vector<std::string>>();
    m.env = j.at("env").get<std::vector<std::string>>();
    m.cwd = j.at("cwd").get<std::string>();
    m.criu_options = j.at("criu_options").get<std::map<std::string, std::string>>();
    m.stdout_key = j.at("stdout_key").get<std::string>();
    m.stderr_key = j.at("stderr_key").get<std::string>();
    // Optional: manifests from before the shim lack them.
    m.shim_sockets = j.value("shim_sockets", std::vector<uint64_t>{});
    m.on_sigterm = j.value("on_sigterm", std::string("checkpoint"));
    for (const auto& file : j.at("files")) {
      auto parsed = FileFromJson(file);
      if (!parsed)
        return Fail(ErrorKind::kCorrupt, "manifest: malformed chunk list in " + file.dump());
      m.files.push_back(std::move(*parsed));
    }
    m.image_bytes = j.at("image_bytes").get<uint64_t>();
    m.stored_bytes = j.at("stored_bytes").get<uint64_t>();
    m.phases = j.at("phases").get<PhaseTimes>();
  } catch (const json::exception& e) {
    return Fail(ErrorKind::kCorrupt, std::string("manifest: ") + e.what());
  }
  if (auto s = ValidateManifest(m); !s) return std::unexpected(s.error());
  return m;
}

}  // namespace cryo
