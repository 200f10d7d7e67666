// SPDX-License-Identifier: Apache-2.0
#include "store/file/file_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_NOREPLACE
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "cryo/file_util.h"
#include "cryo/unique_fd.h"

namespace cryo {
namespace {

constexpr std::string_view kUrlScheme = "file://";
// Names starting with '.' are never keys, so the store's own files cannot
// collide with objects and List skips them by that one rule.
constexpr std::string_view kTempPrefix = ".tmp-";
constexpr std::string_view kLockName = ".lock";
constexpr std::string_view kGuardName = ".guard";

struct DirCloser {
  void operator()(DIR* dir) const { ::closedir(dir); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

// Keys may come from file names or user input; show NULs rather than cut.
std::string Quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\0') {
      out += "\\0";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Why `key` is not a valid key, or an empty view when it is.
std::string_view KeyProblem(std::string_view key) {
  if (key.empty()) return "it is empty";
  if (key.find('\0') != std::string_view::npos) return "it contains a NUL byte";
  if (key.front() == '/') return "it is absolute";
  if (key.back() == '/') return "it ends with '/'";
  if (key.find("//") != std::string_view::npos) return "it contains '//'";
  if (key.find("..") != std::string_view::npos) return "it contains '..'";
  for (size_t start = 0; start < key.size();) {
    if (key[start] == '.')
      return "a component starts with '.' (reserved for the store's own files)";
    size_t slash = key.find('/', start);
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return {};
}

// Temp names only need to be unique among concurrent writers of one
// directory, possibly on several hosts (NFS); O_EXCL catches the rest.
std::string RandomHex() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kDigits[] = "0123456789abcdef";
  uint64_t v = rng();
  std::string out(16, '0');
  for (char& c : out) {
    c = kDigits[v & 0xf];
    v >>= 4;
  }
  return out;
}

std::string ParentDir(const std::string& path) { return path.substr(0, path.rfind('/')); }

Status FillTemp(int fd, const std::string& tmp, std::string_view data, bool sync) {
  // The mode must not depend on the caller's umask: objects hold secrets
  // (too open) and must stay readable by the store's owner (too narrow).
  if (::fchmod(fd, 0600) != 0) return SysFail("chmod " + tmp);
  if (auto w = WriteAll(fd, data); !w) return std::unexpected(w.error().WithContext(tmp));
  if (sync) {
    if (::fsync(fd) != 0) return SysFail("fsync " + tmp);
  } else {
    // Start writing it back now, without waiting: the Flush that makes it
    // durable then finds most of a checkpoint's chunks on disk already,
    // rather than all of them still to write. Only a hint; errors surface
    // at Flush.
    (void)::sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
  }
  return {};
}

// Writes `data` to a new temp file in `dir` (which must exist) and returns
// its path. The caller renames or unlinks it.
Result<std::string> WriteTempIn(const std::string& dir, std::string_view data, bool sync) {
  for (int attempt = 0;; ++attempt) {
    std::string tmp = dir + "/" + std::string(kTempPrefix) + RandomHex();
    auto fd = OpenFile(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (!fd) {
      if (fd.error().sys_errno() == EEXIST && attempt < 8) continue;
      return std::unexpected(fd.error());
    }
    if (auto s = FillTemp(fd->get(), tmp, data, sync); !s) {
      ::unlink(tmp.c_str());
      return std::unexpected(s.error());
    }
    return tmp;
  }
}

// Creates the temp file beside `path`, creating the parent directories
// only when they are missing: most writes go to existing directories, and
// mkdir -p from / would cost a system call per path component each time.
Result<std::string> WriteTempFor(const std::string& path, std::string_view data, bool sync) {
  std::string dir = ParentDir(path);
  auto tmp = WriteTempIn(dir, data, sync);
  if (tmp || tmp.error().sys_errno() != ENOENT) return tmp;
  if (auto s = MakeDirs(dir, 0700); !s) return std::unexpected(s.error());
  return WriteTempIn(dir, data, sync);
}

// Moves `tmp` to `path` unless `path` exists; false when it did. `tmp` is
// gone afterwards either way.
Result<bool> PlaceNoReplace(const std::string& tmp, const std::string& path) {
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) == 0) {
    return true;
  }
  int err = errno;
  if (err != EINVAL && err != ENOSYS) {
    ::unlink(tmp.c_str());
    if (err == EEXIST) return false;
    return SysFail("rename " + tmp + " to " + path, err);
  }
  // Some file systems (NFS among them) have no RENAME_NOREPLACE; link()
  // refuses an existing name just as atomically, at the cost of an unlink.
  bool linked = ::link(tmp.c_str(), path.c_str()) == 0;
  err = errno;
  ::unlink(tmp.c_str());
  if (linked) return true;
  if (err == EEXIST) return false;
  return SysFail("link " + tmp + " to " + path, err);
}

Status SyncDir(const std::string& dir) {
  auto fd = OpenFile(dir, O_RDONLY | O_DIRECTORY);
  if (!fd) return std::unexpected(fd.error());
  if (::fsync(fd->get()) != 0) return SysFail("fsync " + dir);
  return {};
}

// The content of `path`, or nullopt when there is no such file.
Result<std::optional<std::string>> ReadIfPresent(const std::string& path) {
  auto fd = OpenFile(path, O_RDONLY);
  if (!fd) {
    int err = fd.error().sys_errno();
    if (err == ENOENT || err == ENOTDIR) return std::nullopt;
    return std::unexpected(fd.error());
  }
  auto data = ReadToEnd(fd->get());
  if (!data) return std::unexpected(data.error().WithContext(path));
  return std::optional<std::string>(std::move(*data));
}

// d_type is DT_UNKNOWN on some file systems; then ask stat. An entry that
// vanished meanwhile reads as DT_UNKNOWN and is skipped.
Result<unsigned char> EntryType(DIR* dir, const dirent& entry) {
  if (entry.d_type != DT_UNKNOWN) return entry.d_type;
  struct stat st {};
  if (::fstatat(::dirfd(dir), entry.d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return static_cast<unsigned char>(DT_UNKNOWN);
    return SysFail(std::string("stat ") + entry.d_name);
  }
  if (S_ISDIR(st.st_mode)) return static_cast<unsigned char>(DT_DIR);
  if (S_ISREG(st.st_mode)) return static_cast<unsigned char>(DT_REG);
  return static_cast<unsigned char>(DT_UNKNOWN);
}

std::string CasMismatch(const std::optional<std::string>& current,
                        const std::optional<std::string>& expected) {
  if (!current) return "the object is absent but was expected to exist";
  if (!expected) return "the object exists but was expected to be absent";
  return "its content differs from the expected one";
}

class FileStore final : public Store {
 public:
  FileStore(std::string root, UniqueFd root_fd)
      : root_(std::move(root)),
        url_(std::string(kUrlScheme) + root_),
        root_fd_(std::move(root_fd)) {}

  const std::string& url() const override { return url_; }

  Status Put(std::string_view key, std::string_view data) override {
    if (auto s = CheckKey(key); !s) return s;
    std::string path = PathOf(key);
    auto tmp = WriteTempFor(path, data, /*sync=*/false);
    if (!tmp) return std::unexpected(tmp.error().WithContext(Doing("put", key)));
    if (::rename(tmp->c_str(), path.c_str()) != 0) {
      auto e = SysFail("rename " + *tmp + " to " + path);
      ::unlink(tmp->c_str());
      return std::unexpected(e.error().WithContext(Doing("put", key)));
    }
    return {};
  }

  Result<bool> PutIfAbsent(std::string_view key, std::string_view data) override {
    if (auto s = CheckKey(key); !s) return std::unexpected(s.error());
    std::string path = PathOf(key);
    // Content-addressed chunks are mostly present already; checking first
    // saves writing the data only to throw it away.
    auto present = IsObject(path);
    if (!present) return std::unexpected(present.error().WithContext(Doing("put", key)));
    if (*present) return false;
    auto tmp = WriteTempFor(path, data, /*sync=*/false);
    if (!tmp) return std::unexpected(tmp.error().WithContext(Doing("put", key)));
    auto placed = PlaceNoReplace(*tmp, path);
    if (!placed) return std::unexpected(placed.error().WithContext(Doing("put", key)));
    return *placed;
  }

  Result<std::string> Get(std::string_view key) override {
    if (auto s = CheckKey(key); !s) return std::unexpected(s.error());
    auto data = ReadIfPresent(PathOf(key));
    if (!data) return std::unexpected(data.error().WithContext(Doing("get", key)));
    if (!*data) return SysFail(Doing("get", key) + ": no such object", ENOENT);
    return std::move(**data);
  }

  // One read(2) into `out` (two syscalls fewer than Get, and no copy):
  // restore reads every chunk this way.
  Result<size_t> GetInto(std::string_view key, std::span<char> out) override {
    if (auto s = CheckKey(key); !s) return std::unexpected(s.error());
    std::string path = PathOf(key);
    auto fd = OpenFile(path, O_RDONLY);
    if (!fd) {
      int err = fd.error().sys_errno();
      if (err == ENOENT || err == ENOTDIR)
        return SysFail(Doing("get", key) + ": no such object", ENOENT);
      return std::unexpected(fd.error().WithContext(Doing("get", key)));
    }
    struct stat st {};
    if (::fstat(fd->get(), &st) != 0)
      return std::unexpected(SysFail("fstat " + path).error().WithContext(Doing("get", key)));
    auto size = static_cast<size_t>(st.st_size);
    if (size > out.size()) return size;
    // Fewer bytes than that if it shrank meanwhile: what is there.
    auto got = ReadFull(fd->get(), out.first(size));
    if (!got) return std::unexpected(got.error().WithContext(Doing("get", key) + ": " + path));
    return *got;
  }

  Result<bool> Exists(std::string_view key) override {
    if (auto s = CheckKey(key); !s) return std::unexpected(s.error());
    auto present = IsObject(PathOf(key));
    if (!present) return std::unexpected(present.error().WithContext(Doing("check", key)));
    return *present;
  }

  Result<std::vector<std::string>> List(std::string_view prefix) override {
    std::vector<std::string> keys;
    if (auto s = Walk("", prefix, keys); !s) {
      return std::unexpected(s.error().WithContext("list " + Quote(prefix) + " in " + url_));
    }
    std::sort(keys.begin(), keys.end());
    return keys;
  }

  Status Delete(std::string_view key) override {
    if (auto s = CheckKey(key); !s) return s;
    // Emptied directories stay: removing them would race with a Put that
    // has just created its temp file's directory.
    std::string path = PathOf(key);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT && errno != ENOTDIR) {
      return SysFail(Doing("delete", key) + ": unlink " + path);
    }
    return {};
  }

  Status CompareAndSwap(std::string_view key, const std::optional<std::string>& expected,
                        std::string_view data) override {
    if (auto s = CheckKey(key); !s) return s;
    std::string doing = Doing("compare-and-swap", key);
    auto lock = LockStore();
    if (!lock) return std::unexpected(lock.error().WithContext(doing));
    std::string path = PathOf(key);
    auto current = ReadIfPresent(path);
    if (!current) return std::unexpected(current.error().WithContext(doing));
    if (*current != expected) {
      return Fail(ErrorKind::kFailedPrecondition,
                  doing + ": " + CasMismatch(*current, expected) +
                      " (another writer changed it first; read it again and retry)");
    }
    // References are the commit point of a checkpoint, so they are made
    // durable here rather than at the next Flush. A parent directory
    // created just now becomes durable with that Flush (the contract
    // requires one after every CompareAndSwap).
    auto tmp = WriteTempFor(path, data, /*sync=*/true);
    if (!tmp) return std::unexpected(tmp.error().WithContext(doing));
    if (::rename(tmp->c_str(), path.c_str()) != 0) {
      auto e = SysFail("rename " + *tmp + " to " + path);
      ::unlink(tmp->c_str());
      return std::unexpected(e.error().WithContext(doing));
    }
    if (auto s = SyncDir(ParentDir(path)); !s) return std::unexpected(s.error().WithContext(doing));
    return {};
  }

  // flock() on root/.guard (see Flock): shared for kUse, exclusive for
  // kCollect, so guards of one process exclude each other as those of two
  // do (on NFS, Linux takes it as a lock of the whole file on the server).
  Result<std::unique_ptr<StoreGuard>> Guard(GuardMode mode,
                                            std::chrono::milliseconds wait) override {
    struct Held final : StoreGuard {
      explicit Held(UniqueFd f) : fd(std::move(f)) {}
      UniqueFd fd;  // closing it unlocks
    };
    if (mode == GuardMode::kUse) {
      auto fd = Flock(kGuardName, LOCK_SH);
      if (!fd) return std::unexpected(fd.error());
      return std::make_unique<Held>(std::move(*fd));
    }
    for (auto deadline = std::chrono::steady_clock::now() + wait;;) {
      auto fd = Flock(kGuardName, LOCK_EX | LOCK_NB);
      if (fd) return std::make_unique<Held>(std::move(*fd));
      if (fd.error().sys_errno() != EWOULDBLOCK) return std::unexpected(fd.error());
      if (std::chrono::steady_clock::now() >= deadline) {
        return Fail(ErrorKind::kUnavailable,
                    url_ + " is in use by another process (a checkpoint, restore or verify " +
                        "of a cryod sharing it)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  Status Flush() override {
    // One syncfs() writes back every file of the file system, which is
    // far cheaper than an fsync per object for thousands of chunks.
    if (::syncfs(root_fd_.get()) != 0) return SysFail("flush " + url_ + ": syncfs " + root_);
    return {};
  }

 private:
  std::string PathOf(std::string_view key) const { return root_ + "/" + std::string(key); }

  std::string Doing(std::string_view verb, std::string_view key) const {
    return std::string(verb) + " " + Quote(key) + " in " + url_;
  }

  Status CheckKey(std::string_view key) const {
    std::string_view problem = KeyProblem(key);
    if (problem.empty()) return {};
    return Fail(ErrorKind::kInvalidArgument,
                "invalid key " + Quote(key) + " for " + url_ + ": " + std::string(problem) +
                    " (keys are relative paths like chunks/ab/ab12..., manifests/<id>)");
  }

  // Whether a regular file is at `path`; a directory is not an object.
  static Result<bool> IsObject(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR) return false;
      return SysFail("stat " + path);
    }
    return S_ISREG(st.st_mode);
  }

  // Holds the store-wide lock until the returned fd is closed.
  Result<UniqueFd> LockStore() const { return Flock(kLockName, LOCK_EX); }

  // Opens the store's own file `name` anew and flock()s it with `op`
  // (waiting unless LOCK_NB), until the returned fd is closed. flock()
  // excludes other open file descriptions, so this one mechanism serialises
  // the threads of this process as well as other processes (and other
  // hosts over NFS). With LOCK_NB, fails with EWOULDBLOCK as its errno.
  Result<UniqueFd> Flock(std::string_view name, int op) const {
    std::string path = root_ + "/" + std::string(name);
    auto fd = OpenFile(path, O_RDWR | O_CREAT, 0600);
    if (!fd) return std::unexpected(fd.error());
    while (::flock(fd->get(), op) != 0) {
      if (errno != EINTR) return SysFail("lock " + path);
    }
    return fd;
  }

  // Appends the keys starting with `prefix` under the directory `rel`
  // ("" for the root, else a key prefix ending in '/').
  Status Walk(const std::string& rel, std::string_view prefix,
              std::vector<std::string>& keys) const {
    std::string dir = root_ + "/" + rel;
    DirPtr d(::opendir(dir.c_str()));
    if (!d) {
      if (!rel.empty() && errno == ENOENT) return {};  // removed under us
      return SysFail("open directory " + dir);
    }
    for (;;) {
      errno = 0;
      const dirent* entry = ::readdir(d.get());
      if (entry == nullptr) {
        if (errno != 0) return SysFail("read directory " + dir);
        return {};
      }
      std::string_view name = entry->d_name;
      if (name.starts_with('.')) continue;  // ".", "..", temp files, the lock
      auto type = EntryType(d.get(), *entry);
      if (!type) return std::unexpected(type.error().WithContext(dir));
      std::string key = rel + std::string(name);
      if (*type == DT_DIR) {
        key += '/';
        // Descend only where a matching key can be.
        if (!key.starts_with(prefix) && !prefix.starts_with(key)) continue;
        if (auto s = Walk(key, prefix, keys); !s) return s;
      } else if (*type == DT_REG && key.starts_with(prefix)) {
        keys.push_back(std::move(key));
      }
    }
  }

  const std::string root_;
  const std::string url_;
  const UniqueFd root_fd_;  // for syncfs()
};

}  // namespace

Result<std::unique_ptr<Store>> CreateFileStore(const FileStoreConfig& config) {
  std::string root = config.root;
  if (root.empty() || root.front() != '/' || root.find('\0') != std::string::npos) {
    return Fail(ErrorKind::kInvalidArgument, "store root " + Quote(root) +
                                                 " must be an absolute path, like "
                                                 "/var/lib/cryo/store");
  }
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  if (auto s = MakeDirs(root, 0700); !s) {
    return std::unexpected(s.error().WithContext("create store root " + root));
  }
  struct stat st {};
  if (::stat(root.c_str(), &st) != 0) return SysFail("store root " + root);
  if (!S_ISDIR(st.st_mode)) {
    return Fail(ErrorKind::kFailedPrecondition,
                "store root " + root + " exists and is not a directory (choose another path)");
  }
  auto fd = OpenFile(root, O_RDONLY | O_DIRECTORY);
  if (!fd) return std::unexpected(fd.error().WithContext("open store root"));
  return std::make_unique<FileStore>(std::move(root), std::move(*fd));
}

Result<FileStoreConfig> FileStoreConfigFromUrl(std::string_view url) {
  if (!url.starts_with(kUrlScheme)) {
    return Fail(ErrorKind::kInvalidArgument, "store URL " + Quote(url) +
                                                 " is not a file:// URL (a valid one looks like "
                                                 "file:///var/lib/cryo/store)");
  }
  std::string_view path = url.substr(kUrlScheme.size());
  if (path.empty() || path.front() != '/') {
    return Fail(ErrorKind::kInvalidArgument,
                "store URL " + Quote(url) +
                    " must name an absolute path: file:// followed by /path, as in "
                    "file:///var/lib/cryo/store");
  }
  return FileStoreConfig{std::string(path)};
}

}  // namespace cryo
